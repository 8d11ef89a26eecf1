"""Pacing to the account's limits, and adaptive concurrency. Pure: time is passed in.

The service enforces its limits at its own clock, per minute and per second (RPS = RPM/60,
TPS = TPM/60; a sliding window counts arrivals in ``(t - w, t]``). A request we send at ``s``
arrives at ``s + d`` with ``d`` varying by up to ``J`` seconds (network and scheduling jitter),
so two requests spaced exactly by the service's interval can land in one window. The rules
here hold the service's windows at *our* clock widened by ``J``:

* Requests: spaced ``I = max((60 + J + B) / rpm, (1 + J + B) / floor(rpm / 60))`` seconds
  apart on a schedule (GCRA) that lets a send late by up to ``B`` (:data:`LATE_S`, a sleep's
  or a busy loop's lateness) keep its slot instead of pushing every later one back, and owes
  nothing more to an idle sender. ``k + 1`` requests then span at least ``k * I - B``, so no
  window of 60 s holds more than ``rpm`` and none of 1 s more than ``floor(rpm / 60)`` (at
  least 1), even with every arrival shifted by up to ``J``.
* Tokens: the tokens sent in the last ``1 + J`` seconds plus this request's stay within
  ``tpm / 60`` (a request larger than that goes alone), and those of the last ``61 + J``
  seconds within ``tpm``.

A sender that was idle longer than a keep-alive (:data:`IDLE_S`) opens new connections, whose
set-up (TCP, TLS) delays the first requests by more than later ones: for :data:`COLD_S` after
such a start, :data:`COLD_JITTER_S` more is tolerated. Otherwise ``J`` starts at
:data:`JITTER_S` and adapts: a 429 doubles it (the service saw two requests
closer than we sent them), successes walk it back. A first 429 holds every sender for one
interval only, so one late packet does not stall the account for the second its Retry-After
names; a second 429 in a row means real overload (another machine on the account, or lower
limits than we were told), and every sender then waits as long as the server asked or the
backoff says.

:class:`BudgetState` is everything the senders of one account share; :func:`admit`,
:func:`throttle` and :func:`succeed` are the only ways it changes. Where it is kept (one
process, or a file shared by every process of the machine) is the shell's business
(:mod:`empirio._io.budget`).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from .types import LimitSource

__all__ = [
    "AUTO_CEILING",
    "COLD_JITTER_S",
    "COLD_S",
    "IDLE_S",
    "JITTER_S",
    "LATE_S",
    "MAX_JITTER_S",
    "MINUTE_S",
    "Budget",
    "BudgetState",
    "Concurrency",
    "LimitSource",
    "Limits",
    "LimitsInEffect",
    "admit",
    "sent",
    "sent_late",
    "succeed",
    "throttle",
]

#: Arrival jitter tolerated from the start, in seconds (with ``LATE_S``: 2.4 % of throughput).
JITTER_S = 0.02
#: How late a send may be and keep its place in the schedule, in seconds.
LATE_S = 0.005
#: Extra jitter tolerated while connections are being opened, in seconds.
COLD_JITTER_S = 0.1
#: How long a start counts as cold, in seconds.
COLD_S = 1.0
#: Idle longer than this (httpx's keep-alive expiry), in seconds, and a start is cold again.
IDLE_S = 5.0
#: The most jitter tolerated after repeated 429s, in seconds.
MAX_JITTER_S = 0.5
#: The per-minute window we keep, in seconds: the service's 60 plus one of slack.
MINUTE_S = 61.0
#: A little more than nothing, so that boundary cases fall on the safe side of a half-open window.
_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class LimitsInEffect:
    """The limits a client paces to now, and where each came from (see :data:`LimitSource`).

    ``str()`` says it in a sentence, e.g. ``50 requests and 2,000,000 tokens a minute (the
    defaults, until the server advertises its own)``.
    """

    rpm: float | None
    tpm: float | None
    rpm_source: LimitSource
    tpm_source: LimitSource

    def adopt(self, advertised: Mapping[str, float | None]) -> LimitsInEffect:
        """These limits once a server has advertised ``advertised`` (``rpm``/``tpm`` per minute,
        ``None`` for unlimited; see :func:`~empirio._core.decode.advertised_limits`): a limit
        nobody set (``"default"``) takes the server's and says so; a limit given as an argument
        or in the environment never changes, and what is not advertised stays as it is."""
        rpm, rpm_source = self.rpm, self.rpm_source
        tpm, tpm_source = self.tpm, self.tpm_source
        if rpm_source == "default" and "rpm" in advertised:
            rpm, rpm_source = advertised["rpm"], "server"
        if tpm_source == "default" and "tpm" in advertised:
            tpm, tpm_source = advertised["tpm"], "server"
        return LimitsInEffect(rpm, tpm, rpm_source, tpm_source)

    def __str__(self) -> str:
        def rate(value: float | None, unit: str) -> str:
            return f"no {unit} limit" if value is None else f"{value:,.0f} {unit}s"

        sources = {self.rpm_source, self.tpm_source}
        why = {
            "set": "as set",
            "default": "the defaults, until the server advertises its own",
            "server": "as the server advertises",
        }
        said = "; ".join(
            f"{name} {why[src]}"
            for name, src in (("rpm", self.rpm_source), ("tpm", self.tpm_source))
        )
        return (
            f"{rate(self.rpm, 'request')} and {rate(self.tpm, 'token')} a minute "
            f"({why[next(iter(sources))] if len(sources) == 1 else said})"
        )


@dataclass(frozen=True, slots=True)
class Limits:
    """An account's limits.

    Attributes:
        rpm: requests per minute, or ``None`` for no limit.
        tpm: tokens per minute, or ``None`` for no limit.
    """

    rpm: float | None
    tpm: float | None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and 0 < value < math.inf):
                raise ValueError(f"{name} must be a positive finite number or None; got {value!r}")

    @property
    def paced(self) -> bool:
        """Whether any limit applies."""
        return self.rpm is not None or self.tpm is not None

    @property
    def per_second_requests(self) -> int:
        """Requests the service admits in any one second: ``floor(rpm / 60)``, at least 1."""
        return max(1, int(self.rpm // 60)) if self.rpm is not None else 0

    def interval(self, jitter: float) -> float:
        """Seconds between two requests, tolerating ``jitter`` seconds of arrival jitter."""
        if self.rpm is None:
            return 0.0
        slack = jitter + LATE_S
        return max((60.0 + slack) / self.rpm, (1.0 + slack) / self.per_second_requests) + _EPS


@dataclass(frozen=True, slots=True)
class BudgetState:
    """What every sender of one account shares. Times are ``time.monotonic()`` seconds.

    Attributes:
        next_request: the earliest time of the next request.
        paused_until: no request before this (after a 429).
        jitter: the arrival jitter now tolerated, in seconds.
        strikes: 429s since the last success.
        last_cut: when the last 429 was taken into account; 429s for requests sent before it
            answer the same overload.
        sends: ``(time, tokens)`` of the requests of the last minute, oldest first (kept only
            when ``tpm`` applies).
        cold_until: until when the start counts as cold (see :data:`COLD_S`).
    """

    next_request: float = -math.inf
    paused_until: float = -math.inf
    jitter: float = JITTER_S
    strikes: int = 0
    last_cut: float = -math.inf
    sends: tuple[tuple[float, int], ...] = field(default=())
    cold_until: float = -math.inf

    def margin(self, now: float) -> float:
        """The arrival jitter tolerated at ``now``, in seconds."""
        return self.jitter + (COLD_JITTER_S if now < self.cold_until else 0.0)

    def settled(self, now: float) -> BudgetState:
        """This state with sends older than the minute window dropped, and any time further in
        the future than pacing can explain (a clock from before a reboot) forgotten."""
        horizon = now + 2 * MINUTE_S + 120.0
        if self.next_request > horizon or self.paused_until > horizon:
            return BudgetState(jitter=self.jitter)
        cut = now - MINUTE_S - MAX_JITTER_S - COLD_JITTER_S
        sends = self.sends
        if sends and (sends[0][0] <= cut or sends[-1][0] > horizon):
            sends = tuple(s for s in sends if cut < s[0] <= horizon)
        return self if sends is self.sends else replace(self, sends=sends)


def _time(send: tuple[float, int]) -> float:
    return send[0]


def _token_wait(limits: Limits, state: BudgetState, now: float, tokens: int) -> float:
    """The earliest time at or after ``now`` at which ``tokens`` more fit the token windows."""
    if limits.tpm is None:
        return now
    t = now
    per_second = limits.tpm / 60.0
    j = state.margin(now)
    for span, cap in ((1.0 + j, per_second), (MINUTE_S + j, limits.tpm)):
        inside = state.sends[bisect.bisect_right(state.sends, now - span, key=_time) :]
        total = sum(n for _, n in inside)
        if not inside or total + tokens <= cap:
            continue
        if tokens > cap:  # goes alone: wait until the window is empty
            t = max(t, inside[-1][0] + span + _EPS)
            continue
        excess = total + tokens - cap
        for sent, n in inside:
            excess -= n
            if excess <= 0:
                t = max(t, sent + span + _EPS)
                break
    return t


def admit(limits: Limits, state: BudgetState, now: float, tokens: int) -> tuple[float, BudgetState]:
    """Whether a request of ``tokens`` may go at ``now``.

    Returns:
        ``(0.0, state with the send recorded)`` if it may go, else ``(seconds to wait, state)``.
    """
    if not limits.paced:
        wait = state.paused_until - now
        return (wait, state) if wait > 0 else (0.0, state)
    state = state.settled(now)
    if now - state.next_request > IDLE_S:
        state = replace(state, cold_until=now + COLD_S)
    t = max(now, state.paused_until, state.next_request)
    if limits.tpm is not None and t <= now:
        t = _token_wait(limits, state, now, tokens)
    if t > now:
        return t - now, state
    sends = (*state.sends, (now, tokens)) if limits.tpm is not None else ()
    nxt = max(state.next_request, now - LATE_S) + limits.interval(state.margin(now))
    return 0.0, replace(state, next_request=nxt, sends=sends)


def sent(limits: Limits, state: BudgetState, admitted_at: float, now: float) -> BudgetState:
    """Take the moment a request actually left into account.

    A send held up between its slot and the wire (a garbage-collection pause, a busy I/O
    thread) by more than half the jitter margin would arrive closer to the next request than it
    was paced: the next then goes no sooner than one interval after this one really left.

    Args:
        admitted_at: when :func:`admit` let the request go.
        now: when it left.
    """
    if limits.rpm is None or now - admitted_at <= state.margin(now) / 2:
        return state
    nxt = now + limits.interval(state.margin(now))
    return state if nxt <= state.next_request else replace(state, next_request=nxt)


def sent_late(limits: Limits, admitted_at: float, now: float) -> bool:
    """Whether a send that left at ``now`` may be late enough for :func:`sent` to change the
    schedule (the smallest margin is :data:`JITTER_S`); most leave on time, and a budget then
    spares its store the transaction."""
    return limits.rpm is not None and now - admitted_at > JITTER_S / 2


def throttle(
    limits: Limits, state: BudgetState, now: float, sent_at: float, delay: float
) -> BudgetState:
    """Take a 429 into account: widen the jitter margin and hold every sender.

    Args:
        sent_at: when the refused request was sent; refusals of requests sent before the last
            429 was taken into account answer the same overload and change nothing.
        delay: how long the server asked to wait (or the backoff), in seconds.
    """
    if sent_at < state.last_cut:
        return state
    strikes = state.strikes + 1
    jitter = min(MAX_JITTER_S, max(2 * state.jitter, state.jitter + 0.02))
    # A first refusal is most likely one late packet: skip one interval. Another means overload.
    pause = min(delay, limits.interval(jitter)) if strikes == 1 and limits.paced else delay
    return replace(
        state,
        strikes=strikes,
        jitter=jitter,
        last_cut=now,
        paused_until=max(state.paused_until, now + pause),
    )


def succeed(state: BudgetState) -> BudgetState:
    """Take a success into account: the strikes end, and the jitter margin walks back towards
    :data:`JITTER_S` by 1 % of the distance per success."""
    if state.strikes == 0 and state.jitter <= JITTER_S:
        return state
    jitter = max(JITTER_S, state.jitter - 0.01 * (state.jitter - JITTER_S) - 1e-5)
    return replace(state, strikes=0, jitter=jitter)


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
    :data:`UNPACED_CONCURRENCY` for ``"auto"``. Over the target, additive-increase,
    multiplicative-decrease: a 429 halves the limit once per burst, successes grow it back.

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
        """Halve what is allowed, once per burst: 429s for requests sent before the last cut
        are answers to the same overload and do not cut again."""
        if sent_at < self._last_cut:
            return
        self.limit = max(1.0, min(self.limit, float(self.target)) / 2.0)
        self._last_cut = now


class Budget(Protocol):
    """The pacing state of one account, wherever it is kept (memory, a SQLite file, Redis:
    :mod:`empirio._io.budget`), through which the rules above are applied. Times are monotonic
    seconds of the caller's clock.

    Attributes:
        blocking: whether its transactions wait on a file or a server. The engine then asks it
            nothing itself (:attr:`~empirio._core.engine.Step.ask`,
            :attr:`~empirio._core.engine.Completion.budget_note`): the session asks it outside
            its lock, and the async shell off the event loop, where a file locked for seconds or
            a slow Redis would stall every other task.
    """

    blocking: bool

    def acquire(self, limits: Limits, now: float, tokens: int) -> float:
        """Record a send of ``tokens`` at ``now`` and return 0, or return the seconds to wait."""

    def sent(self, limits: Limits, admitted_at: float, now: float) -> None:
        """Note that a request admitted at ``admitted_at`` actually left at ``now``."""

    def throttled(self, limits: Limits, now: float, sent_at: float, delay: float) -> None:
        """Note a 429 for a request sent at ``sent_at``; ``delay`` is the server's wait."""

    def succeeded(self) -> None:
        """Note a success."""
