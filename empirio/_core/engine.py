"""The scheduling core, pure: which request to send next, when, and what to do with each outcome.

One engine drives one call. The sync shell (threads) and the async shell (asyncio) both loop::

    step = engine.step(now)          # requests to send now, and when to ask again
    ... send them, wait for one to finish or for step.wake_at ...
    engine.complete(attempt, outcome, now)

The engine never sleeps, reads the clock or does I/O, so every decision is testable with a fake
clock. What it decides:

* Order: retries that are due go first (they hold up the oldest results), then fresh requests in
  plan order.
* Limits: at most ``Concurrency.allowed`` requests in flight (a request booked ahead is in
  flight from the moment it is handed over), counting those other calls of the same client
  have on the wire (the shell says how many: a count derived afresh each time, so a call that
  dies cannot strand slots), and the account's budget
  (:mod:`empirio._io.budget`, rules in :mod:`empirio._core.pace`). A budget kept in memory is
  asked at once; one kept in a file or on a server (``Budget.blocking``) is asked by the caller,
  outside its locks and off any event loop: :attr:`Step.ask`, :meth:`Engine.answer`,
  :attr:`Completion.budget_note`. Its answer is a :class:`~empirio._core.pace.Grant`: a slot
  booked now or a little ahead; the attempt is handed to the shell at once, with its
  :attr:`Attempt.slot`, and the shell sends it at that time, whatever later transactions take
  (sends are handed over before the budget is asked again).
* Outcomes: a success is returned for storing and is never sent again. A 400 naming a smaller
  batch limit splits the request and lowers the limit for the client's life; a 413 halves it.
  408/409/429/5xx and lost connections are retried with backoff (429 also pauses every send and
  holds the account's senders and halves concurrency); 429s are retried for at least
  :data:`~empirio._core.retry.THROTTLE_WINDOW_S` however many retries that takes, unless the
  server asks for a wait longer than :data:`~empirio._core.retry.MAX_RETRY_AFTER`: then the
  call fails at once. Anything else is
  fatal: :attr:`failed` is set, nothing more is sent, and the shell raises it once the requests
  already in flight have ended (their results are kept).
"""

from __future__ import annotations

import functools
import heapq
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .concurrency import Concurrency
from .decode import Decoded, batch_limit_from
from .errors import (
    APIStatusError,
    EmpirioError,
)
from .observe import CallRecord
from .pace import Budget, Grant, Limits
from .plan import PlannedRequest
from .retry import MAX_RETRY_AFTER, RetryPolicy, is_retryable, waits_too_long

__all__ = ["SLOT_POLL_S", "Attempt", "BatchLimit", "Completion", "Engine", "Step"]

#: How often a call waits for a concurrency slot held by other calls looks again, in seconds: a
#: fallback, as the shells wake such a call as soon as a request of the client ends
#: (:attr:`Step.for_slot`).
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
        first_sent_at: when the request was first sent (``sent_at`` of its first attempt).
        slot: the time its budget slot was granted for: the shell holds the request until then
            (a slot booked ahead), and how late it really leaves is measured against it.
    """

    seq: int
    request: PlannedRequest
    retries: int
    sent_at: float
    first_sent_at: float
    slot: float = 0.0


@dataclass(frozen=True, slots=True)
class Step:
    """What to do now: send these, then call again at ``wake_at`` unless a send finishes first.

    With a blocking budget (a file, a server: ``Budget.blocking``) the engine does not ask it
    itself: ``ask`` is then the tokens of the next request, which goes once the budget books
    it. The caller sends ``sends`` first, asks ``budget.reserve(limits, ask)`` outside its
    locks and hands the :class:`~empirio._core.pace.Grant` to :meth:`Engine.answer`, which goes
    on from there.
    """

    sends: tuple[Attempt, ...]
    wake_at: float | None
    ask: int | None = None
    pieces: tuple[int, ...] = ()
    #: The call waits for a concurrency slot that other calls hold, with nothing of its own
    #: on the wire: its shell wakes it as any request of the client ends, not only at
    #: ``wake_at`` (a poll, as fallback).
    for_slot: bool = False


@dataclass(frozen=True, slots=True)
class Completion:
    """How an attempt ended, as the engine took it.

    Attributes:
        decoded: the response, if the attempt succeeded.
        retried: the request will be sent again (after a retryable failure).
        throttled: the answer was a 429.
        delay: seconds until it is sent again (when retried).
        budget_note: with a blocking budget, what to tell it (a success, a 429), for the caller
            to call outside its locks; with a budget in memory it is told at once.
    """

    decoded: Decoded | None = None
    retried: bool = False
    throttled: bool = False
    delay: float = 0.0
    budget_note: Callable[[], None] | None = None


class Engine:
    """Schedules one call's requests. Not thread-safe: the shell serialises calls to it (the
    concurrency it shares with other calls of the same client is guarded there; the budget
    guards itself)."""

    def __init__(
        self,
        *,
        budget: Budget,
        limits: Limits,
        concurrency: Concurrency,
        policy: RetryPolicy,
        batch_limit: BatchLimit,
        rng: random.Random | None = None,
        record: CallRecord | None = None,
    ) -> None:
        self.budget = budget
        #: Told each time the account's pace holds this call's next request (for tracing).
        self.record = record
        self.limits = limits
        self.concurrency = concurrency
        self.policy = policy
        self.batch_limit = batch_limit
        self.rng = rng or random.Random()
        self.failed: EmpirioError | None = None
        # (request, retries, first_sent_at or None if never sent)
        self._fresh: deque[tuple[PlannedRequest, int, float | None]] = deque()
        self._due: list[tuple[float, int, PlannedRequest, int, float | None]] = []  # heap
        self._in_flight: dict[int, Attempt] = {}
        # The request whose admission a blocking budget is being asked for, and until when
        # its last answer holds this call's requests back (asking it sooner would only cost a
        # transaction: a budget in memory is asked at every step instead).
        self._asking: tuple[PlannedRequest, int, float | None] | None = None
        self._held_until = -float("inf")
        self._seq = 0
        self._next_id = 1 << 40  # ids for split parts, apart from the planner's

    # ------------------------------------------------------------------ state

    def add(self, requests: Iterable[PlannedRequest]) -> None:
        """Queue fresh requests, after those already queued."""
        self._fresh.extend((r, 0, None) for r in requests)

    @property
    def idle(self) -> bool:
        """Nothing queued, due, asked for or in flight."""
        return not (self._fresh or self._due or self._in_flight or self._asking)

    @property
    def has_in_flight(self) -> bool:
        """Whether any attempt is sent and not yet completed."""
        return bool(self._in_flight)

    @property
    def n_in_flight(self) -> int:
        """Attempts sent and not yet completed."""
        return len(self._in_flight)

    # ------------------------------------------------------------------ decisions

    def _take(self, now: float) -> tuple[PlannedRequest, int, float | None] | None:
        if self._due and self._due[0][0] <= now:
            _, _, request, retries, first = heapq.heappop(self._due)
            return request, retries, first
        if self._fresh:
            return self._fresh.popleft()
        return None

    def _split(self, request: PlannedRequest, size: int, retries: int) -> None:
        parts = request.split(size, self._next_id)
        self._next_id += len(parts)
        for part in reversed(parts):
            self._fresh.appendleft((part, retries, None))

    def step(self, now: float, busy_elsewhere: int = 0, poll: float = SLOT_POLL_S) -> Step:
        """Start what may start at ``now``; say when to look again.

        Args:
            now: the shell's monotonic clock, in seconds.
            busy_elsewhere: requests that other calls sharing the concurrency limit have on
                the wire now.
            poll: seconds until a call with nothing of its own in flight, waiting for a slot
                other calls hold, looks again.
        """
        return self._step(now, busy_elsewhere, poll, [])

    def answer(
        self, now: float, grant: Grant, busy_elsewhere: int = 0, poll: float = SLOT_POLL_S
    ) -> Step:
        """Take a blocking budget's answer to :attr:`Step.ask` (a slot booked for
        ``grant.send_at``, or none before ``grant.retry_at``), then go on as :meth:`step` does
        at ``now``."""
        item, self._asking = self._asking, None
        if item is None:  # abandoned while the budget was asked: nothing was sent
            return Step((), None)
        sends: list[Attempt] = []
        if grant.send_at is None:
            self._fresh.appendleft(item)
            self._held_until = grant.retry_at
            self._held(now, grant.retry_at)
        else:  # handed over now; the shell holds it until its slot
            sends.append(self._send(self._part(item, grant.part), now, grant.send_at))
            self._held(now, grant.send_at)
        return self._step(now, busy_elsewhere, poll, sends)

    def _part(
        self, item: tuple[PlannedRequest, int, float | None], k: int
    ) -> tuple[PlannedRequest, int, float | None]:
        """``item``, or, when the budget had room for its first ``k`` inputs only (tokens
        bind), those: the rest goes next."""
        request, retries, first = item
        if not 0 < k < len(request):
            return item
        head, rest = request.cut(k, self._next_id)
        self._next_id += 2
        self._fresh.appendleft((rest, retries, first))
        return head, retries, first

    def _send(
        self, item: tuple[PlannedRequest, int, float | None], now: float, slot: float | None = None
    ) -> Attempt:
        request, retries, first = item
        self._seq += 1
        at = now if slot is None else max(now, slot)
        granted = at if slot is None else slot  # a slot already past: its lateness counts
        attempt = Attempt(self._seq, request, retries, at, at if first is None else first, granted)
        self._in_flight[attempt.seq] = attempt
        return attempt

    def _step(self, now: float, busy_elsewhere: int, poll: float, sends: list[Attempt]) -> Step:
        if self.failed is not None:
            return Step(tuple(sends), None)
        wake: float | None = None
        if self._asking is not None:  # sends went first; now the budget is asked again
            asked = self._asking[0]
            return Step(tuple(sends), None, ask=asked.tokens, pieces=asked.piece_tokens)
        # In flight follows latency, and a slow answer is a latency too: the oldest attempt
        # out (the first in the dict, which keeps the order they were sent in) says how slow.
        oldest = next(iter(self._in_flight.values()), None)
        self.concurrency.waiting(0.0 if oldest is None else now - oldest.sent_at)
        while len(self._in_flight) + busy_elsewhere < self.concurrency.allowed:
            if now < self._held_until:  # a blocking budget said so: ask it again then
                if self._fresh or self._due:
                    wake = _earliest(wake, self._held_until)
                break
            item = self._take(now)
            if item is None:
                break
            request, retries, _ = item
            if len(request) > self.batch_limit.size:
                self._split(request, self.batch_limit.size, retries)
                continue
            if self.budget.blocking:
                self._asking = item
                return Step(tuple(sends), wake, ask=request.tokens, pieces=request.piece_tokens)
            wait = self.budget.acquire(self.limits, now, request.tokens)
            if wait > 0 and self.limits.tpm is not None and len(request) > 1:
                k, part_wait = self.budget.acquire_part(self.limits, now, request.piece_tokens)
                if k:  # the second's remainder carries the first k now
                    sends.append(self._send(self._part(item, k), now))
                    continue
                wait = min(wait, part_wait)
            if wait > 0:
                self._fresh.appendleft(item)
                wake = _earliest(wake, now + wait)
                self._held(now, now + wait)
                break
            sends.append(self._send(item, now))
        # A retry that is not yet due needs a wake-up; one that is due but blocked by the
        # concurrency limit will be taken when a request in flight completes.
        if self._due and self._due[0][0] > now:
            wake = _earliest(wake, self._due[0][0])
        # Work waiting while every slot is held by *other* calls sharing the limit: nothing of
        # ours will complete to wake us, so look again shortly.
        if wake is None and not sends and not self._in_flight and not self.idle:
            return Step((), now + poll, for_slot=True)
        return Step(tuple(sends), wake)

    def complete(self, attempt: Attempt, outcome: Decoded | EmpirioError, now: float) -> Completion:
        """Record how ``attempt`` ended."""
        if self._in_flight.pop(attempt.seq, None) is None:
            return Completion()  # abandoned already
        if isinstance(outcome, Decoded):
            self.concurrency.observe(now - attempt.sent_at, attempt.request.tokens)
            self.concurrency.on_success()
            return Completion(decoded=outcome, budget_note=self._note(self.budget.succeeded))
        request = attempt.request
        if isinstance(outcome, APIStatusError):
            limit = batch_limit_from(outcome)
            if limit is not None and limit < len(request):
                self.batch_limit.size = min(self.batch_limit.size, limit)
                self._split(request, self.batch_limit.size, attempt.retries)
                return Completion()
            if outcome.status_code == 413 and len(request) > 1:
                self._split(request, (len(request) + 1) // 2, attempt.retries)
                return Completion()
        throttled = isinstance(outcome, APIStatusError) and outcome.status_code == 429
        retryable = is_retryable(outcome, attempt.retries)
        if (
            isinstance(outcome, APIStatusError)
            and retryable
            and waits_too_long(outcome.retry_after)
        ):
            # Hours of capped retries help nobody: fail now, saying what the server asked.
            retryable = False
            outcome.message = (
                f"{outcome.message} (the service asks to wait {outcome.retry_after:,.0f} s before "
                f"retrying, more than the {MAX_RETRY_AFTER:.0f} s a retry waits: not retried; "
                "see retry_after)"
            )
        elapsed = now - attempt.first_sent_at
        if retryable and not self.policy.gives_up(
            attempt.retries, throttled=throttled, elapsed=elapsed
        ):
            retry_after = outcome.retry_after if isinstance(outcome, APIStatusError) else None
            delay = self.policy.delay(attempt.retries, retry_after, self.rng.random())
            note = None
            if throttled:
                self.concurrency.on_throttle(attempt.sent_at, now)
                note = self._note(
                    functools.partial(
                        self.budget.throttled, self.limits, now, attempt.sent_at, delay
                    )
                )
            self._seq += 1
            heapq.heappush(
                self._due,
                (now + delay, self._seq, request, attempt.retries + 1, attempt.first_sent_at),
            )
            return Completion(retried=True, throttled=throttled, delay=delay, budget_note=note)
        outcome.inputs = request.inputs
        if self.failed is None:
            self.failed = outcome
        self._fresh.clear()
        self._due.clear()
        return Completion(throttled=throttled)

    def _held(self, now: float, until: float) -> None:
        if self.record is not None and until > now:
            self.record.held(now, until)

    def _note(self, tell: Callable[[], None]) -> Callable[[], None] | None:
        """Tell a budget in memory now; leave a blocking one's to the caller."""
        if self.budget.blocking:
            return tell
        tell()
        return None

    def abandon(self) -> tuple[Attempt, ...]:
        """Give up everything (the caller stopped early, was cancelled or interrupted); return
        the attempts that were in flight: the service may have billed them."""
        gone = tuple(self._in_flight.values())  # not the request being asked for: unsent
        self._in_flight.clear()
        self._asking = None
        self._fresh.clear()
        self._due.clear()
        return gone


def _earliest(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)
