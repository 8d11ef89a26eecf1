"""The async shell: drives a call's flow and its requests as tasks on the running loop, with
one ``httpx.AsyncClient`` per loop (:class:`~empirio._io.http.Transport`).

:class:`AsyncShell` and :class:`~empirio._io.sync.SyncShell` mirror each other line for line
(``tests/core/test_layers.py`` compares them). Planning of more than a few hundred texts, and
the conversion of vectors to lists, run off the loop: they would hold it, and with it the sends
of every other call on it, for tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any, TypeVar, cast

from .._core.decode import Decoded
from .._core.driver import Call
from .._core.engine import Attempt
from .._core.errors import EmpirioError
from .._core.flow import (
    CallOptions,
    Drive,
    Driven,
    Fetch,
    Flow,
    Gathered,
    PlanAll,
    Step,
    embed_flow,
)
from .._core.observe import CallRecord
from .._core.plan import SegmentPlan
from .._core.result import EmbeddingResult
from .http import Transport
from .planning import Planner, background_pool
from .progress import Progress
from .session import Session, Stored, StoreJob, store_pool

__all__ = ["AsyncShell"]

_T = TypeVar("_T")
#: Calls of more texts than this are planned (tokenised) off the event loop.
_PLAN_IN_THREAD = 200
#: A request in flight as a task, and a part's conversion to lists on a worker.
_Handle = asyncio.Task[Decoded | EmpirioError]
_Rows = asyncio.Future[list[list[float]]]


class AsyncShell:
    """Runs calls for the async methods of a client (see the module docstring)."""

    def __init__(self, session: Session, planner: Planner, transport: Transport) -> None:
        self.session, self.planner, self.transport = session, planner, transport

    async def call(self, texts: Sequence[str], options: CallOptions) -> Any:
        """One call of the client: its flow, driven to its end inside its span; its result."""
        with self.session.telemetry.call(texts, options) as record:
            return await self.run(embed_flow(self.session, texts, options), record)

    async def run(self, flow: Flow, record: CallRecord) -> Any:
        """Drive ``flow`` to its end, telling ``record`` what it does; return its result."""
        answer: Any = None
        error: EmpirioError | None = None
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(answer)
            except StopIteration as stop:
                return stop.value
            answer, error = None, None
            try:
                answer = await self._do(step, record)
            except EmpirioError as exc:
                error = exc

    async def _do(self, step: Step, record: CallRecord) -> Any:
        if isinstance(step, Fetch):
            return await self.run(embed_flow(self.session, step.texts, step.options), record)
        if isinstance(step, PlanAll):
            return record.planned(await self._plan(step))
        return await self._drive_all(step, record)

    async def _drive_all(self, step: Drive, record: CallRecord) -> Driven:
        """Drive a call to its end: its parts, their rows where asked for, or its failure."""
        if step.plan is not None:
            plans: Iterator[SegmentPlan | None] = iter([step.plan])
        else:
            plans = self.planner.pipelined(step.texts, step.call, step.positions)
        as_lists = step.lists_per_part
        parts = Gathered(step.size)  # each part copied into one array as it comes
        converted: list[_Rows] = []
        with (
            background_pool("empirio-lists") as pool,
            self.session.progress(step.total, step.options) as bar,
        ):
            bar.update(step.done)
            try:
                async for part in self.drive(plans, step.call, bar, record, ahead=step.ahead):
                    parts.add(part)
                    if as_lists:
                        converted.append(self._convert(pool, part))
            except EmpirioError as exc:
                return Driven(parts, None, exc)
            if not as_lists:
                return Driven(parts)
            return Driven(parts, await self._gather_rows(converted))

    async def stream(
        self,
        texts: Iterable[str],
        call: Call,
        options: CallOptions,
        segment_size: int,
        total: int | None,
    ) -> AsyncIterator[EmbeddingResult]:
        """One result per segment (``iter_embed``, ``aiter_embed``), in order, in bounded memory."""
        plans = self.planner.streamed(texts, call, segment_size)
        with (
            self.session.telemetry.call(texts, options, current=False) as record,
            self.session.progress(total, options) as bar,
        ):
            async for result in self.drive(plans, call, bar, record, ahead=2):
                record.handed_out += len(result)
                yield result

    async def drive(
        self,
        plans: Iterator[SegmentPlan | None],
        call: Call,
        progress: Progress,
        record: CallRecord,
        *,
        ahead: int,
    ) -> AsyncIterator[EmbeddingResult]:
        """The loop over one call's driver: send what it says, wait, hand outcomes back."""
        session = self.session
        loop, blocked = asyncio.get_running_loop(), None  # requests run as tasks on this loop
        pending: dict[_Handle, Attempt] = {}
        driver = session.new_driver(plans, call, ahead, pending, loop, record)
        try:
            await self._connect()
            while True:
                for result in driver.ready():
                    yield result
                step = await self._stored(session.step(driver, blocked, progress))
                if step is None:
                    return
                sends, timeout, for_slot = step
                for attempt in sends:
                    pending[self._send(attempt, call)] = attempt
                finished = await self._wait(pending, timeout, for_slot)
                ended = [(pending[h], h.result()) for h in finished]
                await self._stored(session.complete(driver, ended, progress))
        finally:
            session.end(driver)
            await self._cancel(pending)

    # ------------------------------------------------------------------ this shell's own I/O

    async def _plan(self, step: PlanAll) -> SegmentPlan:
        if len(step.texts) <= _PLAN_IN_THREAD:
            return self.planner.plan(step.texts, step.call)
        quiet = functools.partial(self.planner.plan_quietly, step.texts, step.call, 0, 0, 0)
        plan = await asyncio.get_running_loop().run_in_executor(None, quiet)
        return self.planner.warn_truncated(plan)

    async def _stored(self, work: Stored[_T]) -> _T:
        """Drive ``work``, a session step that asks for store I/O (budget transactions, cache
        writes) to be done outside the session's lock."""
        answer: Any = None
        while True:
            try:
                job = work.send(answer)
            except StopIteration as stop:
                return cast(_T, stop.value)
            answer = await self._store(job)

    async def _store(self, job: StoreJob) -> Any:
        """On the store threads, never on the loop: a budget file another process holds for
        seconds, or a slow Redis, would stall every task on it. A job handed to a thread runs
        to its end even if the call is cancelled meanwhile: vectors paid for reach the cache."""
        running = asyncio.get_running_loop().run_in_executor(store_pool(), job)
        running.add_done_callback(_retrieve)  # read even if nobody awaits it any more
        return await asyncio.shield(running)

    def _convert(self, pool: concurrent.futures.Executor, part: EmbeddingResult) -> _Rows:
        return asyncio.get_running_loop().run_in_executor(pool, part.dense_rows)

    async def _gather_rows(self, converted: list[_Rows]) -> list[list[float]]:
        return [row for rows in await asyncio.gather(*converted) for row in rows]

    async def _connect(self) -> None:
        """Make this loop's HTTP client before the first pacing decision (as in sync)."""
        await self.transport.for_loop()

    def _send(self, attempt: Attempt, call: Call) -> _Handle:
        handle = asyncio.ensure_future(self.transport.send(attempt, call, sync=False))
        session = self.session
        handle.add_done_callback(lambda _: session.request_ended())
        return handle

    async def _wait(
        self, pending: dict[_Handle, Attempt], within: float | None, for_slot: int | None = None
    ) -> set[_Handle]:
        """The requests that finished within ``within`` seconds (``None``: until one does).
        A call waiting for a slot that others hold (``for_slot``, none of its own on the wire)
        is woken as any request of the client ends."""
        if not pending and for_slot is None:
            await asyncio.sleep(within or 0.0)
            return set()
        if not pending:
            woken, loop = asyncio.Event(), asyncio.get_running_loop()
            wake = functools.partial(_wake, loop, woken)
            with self.session.waiting(wake, for_slot), contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within or 0.0):
                    await woken.wait()
            return set()
        done, _ = await asyncio.wait(pending, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        return done

    async def _cancel(self, pending: dict[_Handle, Attempt]) -> None:
        """Cancel the requests still in flight (the caller stopped early, or a BaseException)
        and let them end, unless the loop is closing under us."""
        for handle in pending:
            handle.cancel()
        if not pending:
            return
        with contextlib.suppress(RuntimeError):  # no running loop any more, or it is closing
            if not asyncio.get_running_loop().is_closed():
                await asyncio.gather(*pending, return_exceptions=True)


def _wake(loop: asyncio.AbstractEventLoop, woken: asyncio.Event) -> None:
    """Set ``woken`` on ``loop``, from any thread; nothing if the loop has closed meanwhile."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(woken.set)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a store job's outcome as read: a call cancelled while it ran no longer wants it,
    and asyncio would otherwise log its exception as never retrieved."""
    if not future.cancelled():
        future.exception()
