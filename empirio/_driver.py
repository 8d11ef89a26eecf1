"""One call, sans I/O: plan segments, schedule requests, store answers, hand results out in order.

The sync and async shells in :mod:`empirio._client` each run the same loop over a
:class:`CallDriver`::

    for result in driver.ready(): ...          # finished segments, in input order
    step = driver.step(now, busy_elsewhere)    # None when the call is over
    ... send step.sends, wait for one to end or until step.wake_at ...
    driver.complete(attempt, outcome, now)
    ...
    driver.close(abandoned)                    # always, in a finally

A driver owns what it holds: the requests it has on the wire are counted from its own
records, never from a shared counter, so a call that fails, is cancelled, or dies with the
loop it ran on cannot leave slots taken (:meth:`EmbeddingClient._busy_elsewhere` counts only
the requests of calls that can still make progress).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ._decode import Decoded
from ._engine import Attempt, Engine, Step
from ._errors import EmpirioError
from ._plan import Kind, Output, PlannedRequest, SegmentPlan, assemble
from ._result import EmbeddingResult, Usage, UsageMeter

__all__ = ["Call", "CallDriver"]


@dataclass(frozen=True, slots=True)
class Call:
    """What one call asks for."""

    kind: Kind
    output: Output

    @property
    def dense(self) -> bool:
        return self.output != "sparse"

    @property
    def sparse(self) -> bool:
        return self.output != "dense"


class _Segment:
    """Buffers of one planned segment until every piece has its vector."""

    __slots__ = ("dense", "done", "plan", "remaining", "sparse", "usage")

    def __init__(self, plan: SegmentPlan, call: Call, dimensions: int) -> None:
        n = len(plan.pieces)
        self.plan = plan
        self.done = np.zeros(n, dtype=bool)
        # Zeros, not empty: a partial result assembles unfinished rows too, then drops them.
        self.dense = np.zeros((n, dimensions), dtype=np.float32) if call.dense else None
        self.sparse: list[dict[int, float]] | None = [{}] * n if call.sparse else None
        self.remaining = n
        self.usage = Usage()


class CallDriver:
    """Per-call state and decisions; the shell reads the clock, sleeps and sends.

    Args:
        call: what is asked for.
        dimensions: vector size.
        plans: the call's segments, planned lazily (planning may raise
            :class:`InvalidInputError`; nothing of that segment is sent).
        engine: this call's scheduler.
        meter: the client's running usage, to which every outcome is added.
        ahead: how many segments may be open at once (memory bound of streaming calls).
    """

    def __init__(
        self,
        call: Call,
        dimensions: int,
        plans: Iterator[SegmentPlan],
        engine: Engine,
        meter: UsageMeter,
        *,
        ahead: int,
    ) -> None:
        self.call = call
        self.dimensions = dimensions
        self.engine = engine
        self.meter = meter
        self.ahead = ahead
        self.segments: dict[int, _Segment] = {}
        self.next_out = 0
        self._plans = plans
        self._exhausted = False
        self._closed = False
        self._plan_error: EmpirioError | None = None

    # ------------------------------------------------------------------ the loop

    def ready(self) -> Iterator[EmbeddingResult]:
        """Finished segments, in input order."""
        while (seg := self.segments.get(self.next_out)) is not None and seg.remaining == 0:
            del self.segments[self.next_out]
            self.next_out += 1
            dense, sparse = assemble(seg.plan, seg.dense, seg.sparse)
            yield EmbeddingResult(dense, sparse, seg.usage, seg.plan.offset)

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
            failed = self._plan_error
        if failed is not None:
            failed.partial, failed.partial_indices = self._partial()
            raise failed
        if self._exhausted and not self.segments:
            return None
        step = self.engine.step(now, busy_elsewhere, poll)
        if step.wake_at is None and not step.sends and not self.engine.has_in_flight:
            raise RuntimeError("empirio: nothing in flight and nothing scheduled")  # a bug
        return step

    def complete(self, attempt: Attempt, outcome: Decoded | EmpirioError, now: float) -> int:
        """Take the outcome of ``attempt``; return how many inputs it finished (for progress)."""
        done = self.engine.complete(attempt, outcome, now)
        request = attempt.request
        finished = 0
        if done.decoded is not None:
            self._store(request, done.decoded)
            delta = Usage(requests=1, input_tokens=done.decoded.tokens)
            finished = len(request)
        else:
            delta = Usage(
                retries=int(done.retried), rate_limited=int(done.throttled), failed_requests=1
            )
        self._account(request.segment, delta)
        return finished

    def close(self) -> tuple[Attempt, ...]:
        """End the call: forget what is queued, and count what was still in flight as
        abandoned (possibly billed). Safe to call more than once; returns the abandoned."""
        if self._closed:
            return ()
        self._closed = True
        gone = self.engine.abandon()
        if gone:
            self.meter.add(
                Usage(
                    abandoned_requests=len(gone),
                    abandoned_tokens=sum(a.request.tokens for a in gone),
                )
            )
        return gone

    # ------------------------------------------------------------------ bookkeeping

    def _fill(self) -> None:
        while not self._exhausted and len(self.segments) < self.ahead:
            try:
                plan = next(self._plans, None)
            except EmpirioError as exc:  # bad input in a later segment: nothing of it is sent,
                self._plan_error = exc  # what was planned before it still goes
                return
            if plan is None:
                self._exhausted = True
                return
            self.segments[plan.index] = _Segment(plan, self.call, self.dimensions)
            self.engine.add(plan.requests)

    def _store(self, request: PlannedRequest, decoded: Decoded) -> None:
        seg = self.segments[request.segment]
        rows = list(request.pieces)
        if seg.dense is not None and decoded.dense is not None:
            seg.dense[rows] = decoded.dense
        if seg.sparse is not None and decoded.sparse is not None:
            for row, vec in zip(rows, decoded.sparse, strict=True):
                seg.sparse[row] = vec
        seg.done[rows] = True
        seg.remaining -= len(rows)

    def _partial(self) -> tuple[EmbeddingResult | None, tuple[int, ...]]:
        """The finished texts of the segments not yet handed out, in input order."""
        dense_parts: list[npt.NDArray[np.float32]] = []
        sparse_parts: list[dict[int, float]] = []
        indices: list[int] = []
        usage = Usage()
        for index in sorted(self.segments):
            seg = self.segments[index]
            usage = usage + seg.usage
            owners = np.fromiter((p.owner for p in seg.plan.pieces), np.intp, len(seg.done))
            unfinished = np.zeros(seg.plan.n_unique, dtype=bool)
            unfinished[owners[~seg.done]] = True
            finished = np.flatnonzero(~unfinished[seg.plan.inverse])
            if not len(finished):
                continue
            dense, sparse = assemble(seg.plan, seg.dense, seg.sparse)
            if dense is not None:
                dense_parts.append(dense[finished])
            if sparse is not None:
                sparse_parts.extend(sparse[i] for i in finished)
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
