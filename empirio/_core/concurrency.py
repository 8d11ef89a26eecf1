"""How many requests may be in flight: what the account's rate needs (Little's law), with
backoff. Pure: latencies and times are passed in."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .pace import Limits

__all__ = [
    "AUTO_CEILING",
    "HEADROOM",
    "INITIAL_LATENCY_S",
    "LATENCY_WINDOW",
    "UNPACED_CONCURRENCY",
    "Concurrency",
]


#: Requests in flight at most where no limit is known (an unpaced endpoint) and the user set
#: no ``max_concurrency``: nothing says how much the server takes, so stay modest.
UNPACED_CONCURRENCY = 8
#: The ceiling of requests in flight with ``max_concurrency="auto"``.
AUTO_CEILING = 256
#: Headroom over Little's law: in flight = rate x latency x HEADROOM + 1.
HEADROOM = 1.5
#: The latency assumed before any response, in seconds (the real service's is 0.3-2 s).
INITIAL_LATENCY_S = 1.0
#: Latencies kept; the target follows their 90th percentile.
LATENCY_WINDOW = 64


@dataclass(slots=True)
class Concurrency:
    """How many requests may be in flight: what the account's rate needs, with backoff.

    Requests in flight follow Little's law: a client that may send ``r`` requests a second,
    each taking ``L`` seconds, needs ``r * L`` of them in flight to reach the rate. The target
    is ``ceil(r * L90 * HEADROOM) + 1`` with ``L90`` the 90th percentile of the last
    :data:`LATENCY_WINDOW` latencies (before any, :data:`INITIAL_LATENCY_S`), and ``r`` the
    pacer's rate (``rpm / 60``, or ``tpm / 60`` over the mean tokens of a request), capped by
    ``maximum``. With no limits there is no rate: the target is ``maximum`` as given, or
    :data:`UNPACED_CONCURRENCY` for ``"auto"``. Where no rate is known, additive-increase,
    multiplicative-decrease over the target: a 429 halves the limit once per burst, successes
    grow it back. Where the pacer knows the account's rate, a 429 is the pacer's business (a
    wider margin, a pause): halving what is in flight would only starve the rate for minutes
    afterwards (one 429 at 1,200 RPM and 2 s latency cost 12 % of a run's speed).

    Attributes:
        maximum: the ceiling: ``max_concurrency``, or :data:`AUTO_CEILING` for ``"auto"``.
        auto: ``max_concurrency`` was ``"auto"`` (no ceiling chosen by the user).
        limits: the account's limits the pacer applies (``None``: unknown, unpaced).
        limit: the AIMD limit, fractional so that it can grow by ``1/limit`` per success.
    """

    maximum: int
    auto: bool = False
    limits: Limits | None = None
    limit: float = 0.0
    _last_cut: float = -math.inf
    _latencies: list[float] = field(default_factory=list)
    _p90: float | None = None  # of _latencies, kept as they change (read on every slot check)
    _tokens: float = 0.0  # mean tokens per request (exponentially weighted)
    _waiting: float = 0.0  # how long the oldest request in flight has been out, in seconds

    def __post_init__(self) -> None:
        if self.maximum < 1:
            raise ValueError(f"max_concurrency must be at least 1; got {self.maximum}")
        if not self.limit:
            self.limit = float(self.maximum)

    @property
    def rate(self) -> float | None:
        """Requests a second the pacer allows, or ``None`` where no limit applies."""
        limits = self.limits
        if limits is None or not limits.paced:
            return None
        rates = []
        if limits.rpm is not None:
            rates.append(limits.rpm / 60.0)
        if limits.tpm is not None and self._tokens > 0:
            rates.append(limits.tpm / 60.0 / self._tokens)
        return min(rates) if rates else None

    @property
    def latency(self) -> float:
        """The 90th percentile of recent latencies, or how long the oldest request in flight
        has been out if that is longer (before the first answer, nothing else is known), in
        seconds."""
        return max(INITIAL_LATENCY_S if self._p90 is None else self._p90, self._waiting)

    def waiting(self, seconds: float) -> None:
        """Note how long the oldest request in flight has been out, in seconds."""
        self._waiting = seconds

    @property
    def target(self) -> int:
        """Requests in flight the rate needs (see the class docstring)."""
        rate = self.rate
        if rate is None:
            return min(self.maximum, UNPACED_CONCURRENCY) if self.auto else self.maximum
        return max(1, min(self.maximum, math.ceil(rate * self.latency * HEADROOM) + 1))

    @property
    def allowed(self) -> int:
        """Requests that may be in flight now."""
        return max(1, min(int(self.limit), self.target))

    def observe(self, latency: float, tokens: int) -> None:
        """Take a finished request into account: its latency in seconds and its tokens."""
        if latency >= 0:
            self._latencies.append(latency)
            if len(self._latencies) > LATENCY_WINDOW:
                del self._latencies[0]
            ordered = sorted(self._latencies)
            self._p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        self._tokens = tokens if self._tokens == 0 else 0.9 * self._tokens + 0.1 * tokens

    def on_success(self) -> None:
        """Grow by ``1/limit``: about one more slot per full window of successes."""
        self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)

    def on_throttle(self, sent_at: float, now: float) -> None:
        """Halve what is allowed, once per burst, where no rate is known: 429s for requests
        sent before the last cut are answers to the same overload and do not cut again."""
        if sent_at < self._last_cut or self.rate is not None:
            return
        self.limit = max(1.0, min(self.limit, float(self.target)) / 2.0)
        self._last_cut = now
