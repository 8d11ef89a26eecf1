"""One call, sans I/O: plan segments, schedule requests, store answers, hand results out in order.

The sync and async shells (:mod:`empirio._io.sync`, :mod:`empirio._io.aio`) each run the same
loop over a :class:`CallDriver`::

    for result in driver.ready(): ...          # finished segments, in input order
    step = driver.step(now, busy_elsewhere)    # None when the call is over
    while step.ask and not step.sends: step = driver.answer(now, budget.reserve(...), ...)
    ... send step.sends, wait for one to end or until step.wake_at ...
    driver.complete(attempt, outcome, now)
    ...
    driver.close(abandoned)                    # always, in a finally

A driver owns what it holds: the requests it has on the wire are counted from its own
records, never from a shared counter, so a call that fails, is cancelled, or dies with the
loop it ran on cannot leave slots taken (the session counts only the requests of calls that
can still make progress: :meth:`empirio._io.session.Session._busy_elsewhere`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .cache_keys import encode_dense, encode_sparse
from .decode import Decoded
from .engine import Attempt, Engine, Step
from .errors import EmpirioError
from .observe import CallRecord
from .pace import Grant
from .plan import Kind, Output, PlannedRequest, SegmentPlan, combine_windows
from .result import EmbeddingResult, Usage, UsageMeter
from .types import wants_dense, wants_sparse

__all__ = ["PLAN_POLL_S", "Call", "CallDriver", "known_result"]

#: How soon a driver waiting for a segment planned elsewhere looks again, in seconds.
PLAN_POLL_S = 0.005
_END = object()


@dataclass(frozen=True, slots=True)
class Call:
    """What one call asks for."""

    kind: Kind
    output: Output

    @property
    def dense(self) -> bool:
        return wants_dense(self.output)

    @property
    def sparse(self) -> bool:
        return wants_sparse(self.output)


class _Segment:
    """One planned segment's vectors, per distinct text, filled in as its requests finish.

    Known texts (cache hits) are filled from the start. A text sent whole is written when its
    request finishes; a text cut into windows keeps its windows aside until the last arrives.
    """

    __slots__ = (
        "dense",
        "have",
        "left",
        "mult",
        "plan",
        "remaining",
        "sizes",
        "sparse",
        "starts",
        "usage",
        "windows",
    )

    def __init__(self, plan: SegmentPlan, call: Call, dimensions: int) -> None:
        n = plan.n_unique
        self.plan = plan
        owners = np.fromiter((p.owner for p in plan.pieces), dtype=np.intp, count=len(plan.pieces))
        self.sizes = np.bincount(owners, minlength=n)  # pieces per distinct text
        self.mult = np.bincount(plan.inverse, minlength=n)  # caller's texts per distinct text
        self.left = self.sizes.copy()  # pieces still to come, per distinct text
        # Pieces are planned owner by owner, so a text's windows are consecutive.
        self.starts = np.searchsorted(owners, np.arange(n))
        self.have = self.left == 0
        known = plan.known
        # Every text known (a segment served from the cache, found in order): its rows are the
        # cache's array itself, not copied into a new one.
        whole = known.dense if known is not None and len(known.unique) == n else None
        self.dense: npt.NDArray[np.float32] | None = None
        if call.dense:
            self.dense = whole if whole is not None else np.zeros((n, dimensions), np.float32)
        self.sparse: list[dict[int, float]] | None = [{}] * n if call.sparse else None
        if known is not None:
            if self.dense is not None and known.dense is not None and whole is None:
                self.dense[list(known.unique)] = known.dense
            if self.sparse is not None and known.sparse is not None:
                for u, vec in zip(known.unique, known.sparse, strict=True):
                    self.sparse[u] = vec
        self.windows: dict[int, tuple[npt.NDArray[np.float32] | None, dict[int, float] | None]]
        self.windows = {}
        self.remaining = len(plan.pieces)
        self.usage = Usage()

    def store(self, request: PlannedRequest, decoded: Decoded) -> list[int]:
        """Take a request's vectors; return the distinct texts it completed."""
        pieces = self.plan.pieces
        done: list[int] = []
        for k, row in enumerate(request.pieces):
            owner = pieces[row].owner
            dense = decoded.dense[k] if decoded.dense is not None else None
            sparse = decoded.sparse[k] if decoded.sparse is not None else None
            self.left[owner] -= 1
            if self.sizes[owner] == 1:
                self._put(owner, dense, sparse)  # the usual case: a text sent whole
                done.append(owner)
                continue
            self.windows[row] = (dense, sparse)
            if self.left[owner] == 0:
                first = int(self.starts[owner])
                rows = range(first, first + int(self.sizes[owner]))
                parts = [self.windows.pop(r) for r in rows]
                dense_parts = [p[0] for p in parts if p[0] is not None]
                sparse_parts = [p[1] for p in parts if p[1] is not None]
                combined = combine_windows(
                    np.stack(dense_parts) if self.dense is not None else None,
                    sparse_parts if self.sparse is not None else None,
                    [pieces[r].tokens for r in rows],
                )
                self._put(owner, *combined)
                done.append(owner)
        self.remaining -= len(request.pieces)
        self.have[done] = True
        return done

    def _put(
        self, owner: int, dense: npt.NDArray[np.float32] | None, sparse: dict[int, float] | None
    ) -> None:
        if self.dense is not None and dense is not None:
            self.dense[owner] = dense
        if self.sparse is not None and sparse is not None:
            self.sparse[owner] = sparse

    def result(self, rows: npt.NDArray[np.intp] | None = None) -> EmbeddingResult:
        """The segment's texts (or the given ``rows`` of it) in input order."""
        inverse = self.plan.inverse if rows is None else self.plan.inverse[rows]
        if self.dense is None:
            dense = None
        elif rows is None and self.plan.n_unique == len(inverse) and _ascending(inverse):
            dense = self.dense  # no repeats, numbered as they first appear: already in order
        else:
            dense = self.dense[inverse]
        sparse = None if self.sparse is None else [dict(self.sparse[u]) for u in inverse.tolist()]
        return EmbeddingResult(dense, sparse, self.usage, self.plan.offset)

    def cache_pairs(self, owners: list[int]) -> list[tuple[str, bytes]]:
        """``(key, value)`` for each view of the given distinct texts, for the cache."""
        keys = self.plan.cache_keys
        if not keys or not owners:
            return []
        pairs: list[tuple[str, bytes]] = []
        if self.dense is not None:
            pairs.extend((keys["dense"][u], encode_dense(self.dense[u])) for u in owners)
        if self.sparse is not None:
            pairs.extend((keys["sparse"][u], encode_sparse(self.sparse[u])) for u in owners)
        return pairs


def _ascending(inverse: npt.NDArray[np.intp]) -> bool:
    """Whether ``inverse`` is 0, 1, 2, ... (it then maps each row to itself)."""
    return bool(len(inverse) == 0 or (inverse[0] == 0 and (np.diff(inverse) == 1).all()))


def known_result(plan: SegmentPlan, call: Call, dimensions: int) -> EmbeddingResult:
    """The result of a segment whose every text was known (nothing to send)."""
    known = plan.known
    if plan.pieces or known is None or len(known.unique) != plan.n_unique:
        raise ValueError("the segment has texts to send")
    # Known rows are in distinct-text order already: one gather, no buffer.
    dense = None if known.dense is None or not call.dense else known.dense[plan.inverse]
    sparse = None
    if known.sparse is not None and call.sparse:
        sparse = [dict(known.sparse[u]) for u in plan.inverse.tolist()]
    return EmbeddingResult(dense, sparse, Usage(), plan.offset)


class CallDriver:
    """Per-call state and decisions; the shell reads the clock, sleeps and sends.

    Args:
        call: what is asked for.
        dimensions: vector size.
        plans: the call's segments, planned lazily (planning may raise
            :class:`InvalidInputError`; nothing of that segment is sent). ``None`` from it
            means the next plan is not ready yet (planned on another thread): asked again
            within ``PLAN_POLL_S``.
        engine: this call's scheduler.
        meter: the client's running usage, to which every outcome is added.
        ahead: how many segments may be open at once (memory bound of streaming calls).
        keep_cache_pairs: collect the vectors of finished texts for the cache
            (:meth:`take_cache_pairs`).
        record: the call's record, told its usage, retries and cache hits (the engine tells
            it the pace's holds).
    """

    def __init__(
        self,
        call: Call,
        dimensions: int,
        plans: Iterator[SegmentPlan | None],
        engine: Engine,
        meter: UsageMeter,
        *,
        ahead: int,
        keep_cache_pairs: bool = False,
        record: CallRecord | None = None,
    ) -> None:
        self.call = call
        #: What the call did, for tracing (the usage, retries and cache hits of this driver).
        self.record = record if record is not None else CallRecord()
        self.dimensions = dimensions
        self.engine = engine
        self.meter = meter
        self.ahead = ahead
        self.segments: dict[int, _Segment] = {}
        self.next_out = 0
        self._plans = plans
        self._exhausted = False
        self._closed = False
        # Bad input in a later segment, or the caller's iterable failing while it was read:
        # what was planned before it still goes and is handed out, then this is raised.
        self._plan_error: Exception | None = None
        self._planning = False  # the next plan is not ready yet (see ``plans``)
        #: Seconds until the request of the last :meth:`complete` is sent again, if it will be.
        self.retry_in: float | None = None
        #: What the last :meth:`complete` leaves to tell a blocking budget (``Completion``).
        self.budget_note: Callable[[], None] | None = None
        #: Whether to collect cache writes (the plans carry cache keys).
        self.keep_cache_pairs = keep_cache_pairs
        self._cache_pairs: list[tuple[str, bytes]] = []
        #: Caller's texts found known (cached) as segments were planned, for progress.
        self.known_done = 0

    # ------------------------------------------------------------------ the loop

    def ready(self) -> Iterator[EmbeddingResult]:
        """Finished segments, in input order."""
        while (seg := self.segments.get(self.next_out)) is not None and seg.remaining == 0:
            del self.segments[self.next_out]
            self.next_out += 1
            yield seg.result()

    def step(self, now: float, busy_elsewhere: int, poll: float) -> Step | None:
        """Plan ahead, then say what to send now and when to look again.

        Returns:
            ``None`` when every segment is planned, sent and handed out.

        Raises:
            EmpirioError: the call failed for good (a request failed, or a later segment's input
                is bad), once nothing of it is in flight any more: what was in flight is stored
                first, and the error carries every finished text as ``partial``.
        """
        if self.engine.failed is None and self._plan_error is None:
            self._fill()
        failed = self.engine.failed
        if failed is not None and self.engine.has_in_flight:
            return Step((), None)
        if failed is None and self._plan_error is not None and self.engine.idle:
            if not isinstance(self._plan_error, EmpirioError):
                ready = self.segments.get(self.next_out)
                if ready is not None and ready.remaining == 0:
                    return Step((), now)  # hand out every finished segment first
                raise self._plan_error  # the caller's own error, as its iterable raised it
            failed = self._plan_error
        if failed is not None:
            failed.partial, failed.partial_indices = self._partial()
            raise failed
        if self._exhausted and not self.segments:
            return None
        seg = self.segments.get(self.next_out)
        if seg is not None and seg.remaining == 0:
            return Step((), now)  # a segment of known texts is ready: hand it out first
        return self._shaped(self.engine.step(now, busy_elsewhere, poll), now)

    def answer(self, now: float, grant: Grant, busy_elsewhere: int, poll: float) -> Step:
        """Take the budget's answer to the last step's :attr:`~empirio._core.engine.Step.ask`
        (see :meth:`Engine.answer`) and go on: the step to take now."""
        if self._closed:
            return Step((), None)
        return self._shaped(self.engine.answer(now, grant, busy_elsewhere, poll), now)

    def _shaped(self, step: Step, now: float) -> Step:
        if step.ask is not None:
            return step
        if self._planning:  # a segment is being planned: look again soon
            soon = now + PLAN_POLL_S
            wake = soon if step.wake_at is None else min(step.wake_at, soon)
            return Step(step.sends, wake, for_slot=step.for_slot)
        if step.wake_at is None and not step.sends and not self.engine.has_in_flight:
            raise RuntimeError("empirio: nothing in flight and nothing scheduled")  # a bug
        return step

    def complete(self, attempt: Attempt, outcome: Decoded | EmpirioError, now: float) -> int:
        """Take the outcome of ``attempt``; return how many of the caller's texts it finished
        (for progress; a text cut into windows counts when its last window arrives)."""
        done = self.engine.complete(attempt, outcome, now)
        self.retry_in = done.delay if done.retried else None
        self.budget_note = done.budget_note
        request = attempt.request
        finished = 0
        if done.decoded is not None:
            seg = self.segments[request.segment]
            completed = seg.store(request, done.decoded)
            if self.keep_cache_pairs:
                self._cache_pairs.extend(seg.cache_pairs(completed))
            delta = Usage(requests=1, input_tokens=done.decoded.tokens)
            finished = int(seg.mult[completed].sum())
        else:
            delta = Usage(
                retries=int(done.retried), rate_limited=int(done.throttled), failed_requests=1
            )
            if done.retried and isinstance(outcome, EmpirioError):
                self.record.retried(now, outcome, done.delay, attempt.retries + 2)
        self._account(request.segment, delta)
        return finished

    def take_cache_pairs(self) -> list[tuple[str, bytes]]:
        """``(key, value)`` pairs for the cache, of the texts finished since the last take."""
        pairs, self._cache_pairs = self._cache_pairs, []
        return pairs

    def close(self) -> tuple[Attempt, ...]:
        """End the call: forget what is queued, and count what was still in flight as
        abandoned (possibly billed). Safe to call more than once; returns the abandoned."""
        if self._closed:
            return ()
        self._closed = True
        gone = self.engine.abandon()
        if gone:
            lost = Usage(
                abandoned_requests=len(gone), abandoned_tokens=sum(a.request.tokens for a in gone)
            )
            self.meter.add(lost)
            self.record.account(lost)
        return gone

    # ------------------------------------------------------------------ bookkeeping

    def _fill(self) -> None:
        self._planning = False
        while not self._exhausted and len(self.segments) < self.ahead:
            try:
                plan = next(self._plans, _END)
            except Exception as exc:  # bad input in a later segment, or the source failed:
                self._plan_error = exc  # nothing of it is sent; what was planned still goes
                return
            if plan is _END:
                self._exhausted = True
                return
            if plan is None:  # being planned elsewhere: look again soon, never block for it
                self._planning = True
                return
            assert isinstance(plan, SegmentPlan)
            seg = _Segment(plan, self.call, self.dimensions)
            self.segments[plan.index] = seg
            known = int(seg.mult[seg.have].sum())  # cached texts: done already
            self.known_done += known
            self.record.cache_hits += known
            self.engine.add(plan.requests)

    def _partial(self) -> tuple[EmbeddingResult | None, tuple[int, ...]]:
        """The finished texts of the segments not yet handed out, in input order."""
        dense_parts: list[npt.NDArray[np.float32]] = []
        sparse_parts: list[dict[int, float]] = []
        indices: list[int] = []
        usage = Usage()
        for index in sorted(self.segments):
            seg = self.segments[index]
            usage = usage + seg.usage
            finished = np.flatnonzero(seg.have[seg.plan.inverse])
            if not len(finished):
                continue
            part = seg.result(finished)
            if part.dense is not None:
                dense_parts.append(part.dense)
            if part.sparse is not None:
                sparse_parts.extend(part.sparse)
            indices.extend((seg.plan.offset + finished).tolist())
        if not indices:
            return None, ()
        dense_all = np.concatenate(dense_parts) if self.call.dense else None
        sparse_all = sparse_parts if self.call.sparse else None
        return EmbeddingResult(dense_all, sparse_all, usage), tuple(indices)

    def _account(self, segment: int, delta: Usage) -> None:
        seg = self.segments.get(segment)
        if seg is not None:
            seg.usage = seg.usage + delta
        self.meter.add(delta)
        self.record.account(delta)
