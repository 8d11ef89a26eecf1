"""Client-side pacing to the account's limits, and adaptive concurrency. Pure: time is passed in.

Two rules decide when a request of ``c`` tokens may be sent:

* Smoothness (GCRA): requests are spaced at least ``60 / rpm`` seconds apart, and tokens flow at
  ``tpm / 60`` per second with at most one second's worth in a burst. No burst ever exceeds the
  per-second rate, which Alibaba's service enforces on its own.
* A sliding-window guard, the same rule the service applies: at most ``rpm`` requests and
  ``tpm`` tokens in any window. The window is one second longer than the service's 60 s so
  that network jitter between our send and their arrival cannot tip a request over.

On a 429 every send pauses until the server's Retry-After (or the backoff) has passed, and
:class:`Concurrency` halves the number of requests in flight, then grows it back by one per
window of successes (AIMD, as TCP does).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["Concurrency", "Pacer"]


class Pacer:
    """When the next request may go, given the account's requests and tokens per minute.

    Args:
        rpm: requests per minute, or ``None`` for no limit.
        tpm: tokens per minute, or ``None`` for no limit.
        window: the guard's window in seconds (service window + 1 s of slack).
    """

    def __init__(self, rpm: float | None, tpm: float | None, *, window: float = 61.0) -> None:
        if rpm is not None and rpm <= 0:
            raise ValueError(f"rpm must be positive or None; got {rpm}")
        if tpm is not None and tpm <= 0:
            raise ValueError(f"tpm must be positive or None; got {tpm}")
        self.rpm, self.tpm, self.window = rpm, tpm, window
        self._next_request = float("-inf")  # earliest time of the next request (GCRA)
        self._token_tat = float("-inf")  # theoretical arrival time of the token stream
        self._paused_until = float("-inf")
        self._log: deque[tuple[float, int]] = deque()
        self._log_tokens = 0

    @property
    def paced(self) -> bool:
        """Whether any limit applies."""
        return self.rpm is not None or self.tpm is not None

    def fits(self, tokens: int) -> bool:
        """Whether a request of ``tokens`` can ever be sent (it is within ``tpm``)."""
        return self.tpm is None or tokens <= self.tpm

    def _expire(self, now: float) -> None:
        while self._log and self._log[0][0] <= now - self.window:
            self._log_tokens -= self._log.popleft()[1]

    def earliest(self, now: float, tokens: int) -> float:
        """The earliest time, at or after ``now``, at which a request of ``tokens`` may go."""
        t = max(now, self._paused_until)
        if not self.paced:
            return t
        t = max(t, self._next_request)
        if self.tpm is not None:
            # One second's worth of tokens may go at once; a larger request waits for the stream.
            t = max(t, self._token_tat - 1.0)
        self._expire(now)
        if self.rpm is not None and len(self._log) >= self.rpm:
            t = max(t, self._log[len(self._log) - int(self.rpm)][0] + self.window)
        if self.tpm is not None and self._log_tokens + tokens > self.tpm:
            excess = self._log_tokens + tokens - self.tpm
            for sent, n in self._log:
                excess -= n
                if excess <= 0:
                    t = max(t, sent + self.window)
                    break
        return t

    def record(self, now: float, tokens: int) -> None:
        """Note that a request of ``tokens`` was sent at ``now``."""
        if self.rpm is not None:
            # max(): a sender that was idle is not owed a burst for the time it did not use.
            self._next_request = max(self._next_request, now) + 60.0 / self.rpm
        if self.tpm is not None:
            self._token_tat = max(self._token_tat, now) + tokens * 60.0 / self.tpm
        if self.paced:
            self._log.append((now, tokens))
            self._log_tokens += tokens

    def acquire(self, now: float, tokens: int) -> float:
        """Record a send at ``now`` if allowed and return 0; else return the seconds to wait."""
        t = self.earliest(now, tokens)
        if t > now:
            return t - now
        self.record(now, tokens)
        return 0.0

    def pause_until(self, when: float) -> None:
        """Hold every send until ``when`` (after a 429)."""
        self._paused_until = max(self._paused_until, when)


@dataclass(slots=True)
class Concurrency:
    """Additive-increase, multiplicative-decrease limit on requests in flight.

    Attributes:
        maximum: the configured ``max_concurrency``; the limit never exceeds it.
        limit: the current limit, fractional so that it can grow by ``1/limit`` per success.
    """

    maximum: int
    limit: float = 0.0
    #: requests in flight across every call sharing this limit (kept by the engines)
    in_flight: int = 0
    _last_cut: float = float("-inf")

    def __post_init__(self) -> None:
        if self.maximum < 1:
            raise ValueError(f"max_concurrency must be at least 1; got {self.maximum}")
        if not self.limit:
            self.limit = float(self.maximum)

    @property
    def allowed(self) -> int:
        """Requests that may be in flight now."""
        return max(1, int(self.limit))

    def on_success(self) -> None:
        """Grow by ``1/limit``: about one more slot per full window of successes."""
        self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)

    def on_throttle(self, sent_at: float, now: float) -> None:
        """Halve the limit, once per burst: 429s for requests sent before the last cut are
        answers to the same overload and do not cut again."""
        if sent_at < self._last_cut:
            return
        self.limit = max(1.0, self.limit / 2.0)
        self._last_cut = now
