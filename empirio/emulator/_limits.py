"""The emulated account's rate limits: sliding one-minute windows of requests and tokens.

Pure: the caller passes the time in, so tests drive it with a fake clock.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass

__all__ = ["AccountLimiter", "Verdict"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a request is admitted; if not, which limit it broke and when to try again."""

    admitted: bool
    limit: str = ""
    retry_after: float = 0.0


class AccountLimiter:
    """Requests per minute and tokens per minute over a sliding 60 s window.

    Only admitted requests count, as upstream. With ``strict_burst`` the per-second rules hold
    too, as Alibaba's service enforces them (RPS = RPM/60, TPS = TPM/60): no more than
    ``max(1, rpm // 60)`` requests, and no more than ``tpm / 60`` tokens, in any one second
    (a request larger than that is admitted only into an empty second).

    Args:
        rpm: requests per minute, or ``None`` for no limit.
        tpm: tokens per minute, or ``None`` for no limit.
        strict_burst: also apply the per-second rules.
        window: the window's length in seconds (60 upstream; tests may shorten it).
    """

    def __init__(
        self,
        rpm: int | None = None,
        tpm: int | None = None,
        *,
        strict_burst: bool = False,
        window: float = 60.0,
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.window = window
        self.per_second = max(1, rpm // 60) if (strict_burst and rpm) else None
        self.tokens_per_second = tpm / 60.0 if (strict_burst and tpm) else None
        self._log: deque[tuple[float, int]] = deque()
        self._tokens = 0

    def _expire(self, now: float) -> None:
        while self._log and self._log[0][0] <= now - self.window:
            self._tokens -= self._log.popleft()[1]

    def check(self, now: float, tokens: int) -> Verdict:
        """Admit (and record) a request of ``tokens`` at time ``now`` (seconds), or refuse it."""
        self._expire(now)
        if self.rpm is not None and len(self._log) >= self.rpm:
            wait = self._log[len(self._log) - self.rpm][0] + self.window - now
            return Verdict(False, "requests", wait)
        if self.tpm is not None and self._tokens + tokens > self.tpm:
            if tokens > self.tpm:
                return Verdict(False, "tokens", self.window)
            # Wait until enough of the oldest entries have left the window.
            freed, wait = self._tokens + tokens - self.tpm, self.window
            for t, n in self._log:
                freed -= n
                if freed <= 0:
                    wait = t + self.window - now
                    break
            return Verdict(False, "tokens", wait)
        if self.per_second is not None or self.tokens_per_second is not None:
            recent = list(itertools.takewhile(lambda e: e[0] > now - 1.0, reversed(self._log)))
            recent.reverse()
            if self.per_second is not None and len(recent) >= self.per_second:
                return Verdict(False, "burst", recent[-self.per_second][0] + 1.0 - now)
            tps = self.tokens_per_second
            if tps is not None and recent and sum(n for _, n in recent) + tokens > tps:
                return Verdict(False, "token burst", recent[0][0] + 1.0 - now)
        self._log.append((now, tokens))
        self._tokens += tokens
        return Verdict(True)

    @staticmethod
    def header_seconds(wait: float) -> int:
        """``Retry-After`` value: whole seconds, rounded up, at least 1."""
        return max(1, math.ceil(wait))
