"""The scheduling core, pure: which request to send next, when, and what to do with each outcome.

One engine drives one call. The sync shell (threads) and the async shell (asyncio) both loop::

    step = engine.step(now)          # requests to send now, and when to ask again
    ... send them, wait for one to finish or for step.wake_at ...
    engine.complete(attempt, outcome, now)

The engine never sleeps, reads the clock or does I/O, so every decision is testable with a fake
clock. What it decides:

* Order: retries that are due go first (they hold up the oldest results), then fresh requests in
  plan order.
* Limits: at most ``Concurrency.allowed`` requests in flight and the :class:`Pacer`'s schedule.
* Outcomes: a success is returned for storing and is never sent again. A 400 naming a smaller
  batch limit splits the request and lowers the limit for the client's life; a 413 halves it.
  408/409/429/5xx and lost connections are retried with backoff (429 also pauses every send and
  halves concurrency). Anything else is fatal: :attr:`failed` is set, and the shell cancels the
  rest and raises it.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from ._decode import Decoded, batch_limit_from
from ._errors import APIConnectionError, APIStatusError, EmpirioError
from ._pace import Concurrency, Pacer
from ._plan import PlannedRequest
from ._retry import RetryPolicy, is_retryable_status

__all__ = ["SLOT_POLL_S", "Attempt", "BatchLimit", "Engine", "Step"]

#: How often a call waits for a concurrency slot held by other calls, in seconds.
SLOT_POLL_S = 0.01


@dataclass(slots=True)
class BatchLimit:
    """Inputs per request; lowered for good when the service names a smaller limit."""

    size: int


@dataclass(frozen=True, slots=True)
class Attempt:
    """One sending of a request.

    Attributes:
        seq: unique within the engine.
        request: what is sent.
        retries: retries of this request before this attempt.
        sent_at: when it was sent (engine clock, seconds).
    """

    seq: int
    request: PlannedRequest
    retries: int
    sent_at: float


@dataclass(frozen=True, slots=True)
class Step:
    """What to do now: send these, then call again at ``wake_at`` unless a send finishes first."""

    sends: tuple[Attempt, ...]
    wake_at: float | None


@dataclass(slots=True)
class EngineStats:
    """Counters of one call."""

    retries: int = 0
    throttled: int = 0
    failed_attempts: int = 0
    splits: int = 0


class Engine:
    """Schedules one call's requests. Not thread-safe: the shell serialises calls to it (the
    pacer and concurrency it shares with other calls of the same client are guarded there)."""

    def __init__(
        self,
        *,
        pacer: Pacer,
        concurrency: Concurrency,
        policy: RetryPolicy,
        batch_limit: BatchLimit,
        rng: random.Random | None = None,
    ) -> None:
        self.pacer = pacer
        self.concurrency = concurrency
        self.policy = policy
        self.batch_limit = batch_limit
        self.rng = rng or random.Random()
        self.stats = EngineStats()
        self.failed: EmpirioError | None = None
        self._fresh: deque[tuple[PlannedRequest, int]] = deque()
        self._due: list[tuple[float, int, PlannedRequest, int]] = []  # heap by due time
        self._in_flight: dict[int, Attempt] = {}
        self._seq = 0
        self._next_id = 1 << 40  # ids for split parts, apart from the planner's

    # ------------------------------------------------------------------ state

    def add(self, requests: Iterable[PlannedRequest]) -> None:
        """Queue fresh requests, after those already queued."""
        self._fresh.extend((r, 0) for r in requests)

    @property
    def idle(self) -> bool:
        """Nothing queued, due or in flight."""
        return not (self._fresh or self._due or self._in_flight)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    # ------------------------------------------------------------------ decisions

    def _take(self, now: float) -> tuple[PlannedRequest, int] | None:
        if self._due and self._due[0][0] <= now:
            _, _, request, retries = heapq.heappop(self._due)
            return request, retries
        if self._fresh:
            return self._fresh.popleft()
        return None

    def _put_back(self, request: PlannedRequest, retries: int) -> None:
        self._fresh.appendleft((request, retries))

    def _split(self, request: PlannedRequest, size: int, retries: int) -> None:
        parts = request.split(size, self._next_id)
        self._next_id += len(parts)
        self.stats.splits += 1
        for part in reversed(parts):
            self._put_back(part, retries)

    def step(self, now: float) -> Step:
        """Start what may start at ``now``; say when to look again."""
        if self.failed is not None:
            return Step((), None)
        sends: list[Attempt] = []
        wake: float | None = None
        while self.concurrency.in_flight < self.concurrency.allowed:
            item = self._take(now)
            if item is None:
                break
            request, retries = item
            if len(request) > self.batch_limit.size:
                self._split(request, self.batch_limit.size, retries)
                continue
            wait = self.pacer.acquire(now, request.tokens)
            if wait > 0:
                self._put_back(request, retries)
                wake = now + wait
                break
            self._seq += 1
            attempt = Attempt(self._seq, request, retries, now)
            self._in_flight[attempt.seq] = attempt
            self.concurrency.in_flight += 1
            sends.append(attempt)
        # A retry that is not yet due needs a wake-up; one that is due but blocked by the
        # concurrency limit will be taken when a request in flight completes.
        if self._due and self._due[0][0] > now and (wake is None or self._due[0][0] < wake):
            wake = self._due[0][0]
        # Work waiting while every slot is held by *other* calls sharing the limit: nothing of
        # ours will complete to wake us, so look again shortly.
        if wake is None and not sends and not self._in_flight and not self.idle:
            wake = now + SLOT_POLL_S
        return Step(tuple(sends), wake)

    def complete(
        self, attempt: Attempt, outcome: Decoded | EmpirioError, now: float
    ) -> Decoded | None:
        """Record how ``attempt`` ended; return the decoded response if it succeeded."""
        if self._in_flight.pop(attempt.seq, None) is None:
            return None  # abandoned already
        self.concurrency.in_flight -= 1
        if isinstance(outcome, Decoded):
            self.concurrency.on_success()
            return outcome
        self.stats.failed_attempts += 1
        request = attempt.request
        if isinstance(outcome, APIStatusError):
            limit = batch_limit_from(outcome)
            if limit is not None and limit < len(request):
                self.batch_limit.size = min(self.batch_limit.size, limit)
                self._split(request, self.batch_limit.size, attempt.retries)
                return None
            if outcome.status_code == 413 and len(request) > 1:
                self._split(request, (len(request) + 1) // 2, attempt.retries)
                return None
        retryable = isinstance(outcome, APIConnectionError) or (
            isinstance(outcome, APIStatusError) and is_retryable_status(outcome.status_code)
        )
        if retryable and not self.policy.gives_up(attempt.retries):
            retry_after = outcome.retry_after if isinstance(outcome, APIStatusError) else None
            delay = self.policy.delay(attempt.retries, retry_after, self.rng.random())
            if isinstance(outcome, APIStatusError) and outcome.status_code == 429:
                self.stats.throttled += 1
                self.concurrency.on_throttle(attempt.sent_at, now)
                self.pacer.pause_until(now + delay)
            self.stats.retries += 1
            self._seq += 1
            heapq.heappush(self._due, (now + delay, self._seq, request, attempt.retries + 1))
            return None
        outcome.inputs = request.inputs
        self.failed = outcome
        return None

    def abandon(self) -> None:
        """Give up every request in flight (after a failure or when the caller stops early), so
        that the shared concurrency count is right for the client's next call."""
        self.concurrency.in_flight -= len(self._in_flight)
        self._in_flight.clear()
        self._fresh.clear()
        self._due.clear()
