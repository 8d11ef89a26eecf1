"""The sync shell: drives a call's flow and its requests from the caller's thread.

The loop over the call's :class:`~empirio._core.driver.CallDriver` runs in the caller's thread
(so input is read, and warnings are raised, there), and requests run on a private event loop in
a daemon thread. Waiting on futures in slices of at most half a second keeps Ctrl-C prompt; an
interrupt cancels the requests in flight, which closes their connections at once (a blocking
socket read in a worker thread could only be waited out). It also makes a sync call inside a
running loop (a notebook cell) safe. With ``max_concurrency=1`` no second request is ever out:
each is sent from the caller's thread with sync httpx instead (no thread, no loop; Ctrl-C
interrupts the socket read of the main thread at once).

:class:`SyncShell` and :class:`~empirio._io.aio.AsyncShell` mirror each other line for line
(``tests/core/test_layers.py`` compares them).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import queue
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Iterator, Sequence
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
from .session import Session, Stored, StoreJob

__all__ = ["SyncShell"]

_T = TypeVar("_T")
#: A request in flight on the I/O thread, and a part's conversion to lists on a worker.
_Handle = concurrent.futures.Future[Decoded | EmpirioError]
_Rows = concurrent.futures.Future[list[list[float]]]
#: The longest a sync call waits in one piece, in seconds: how soon Ctrl-C is seen on platforms
#: where a blocking wait is not interrupted by signals.
_WAIT_SLICE_S = 0.5


class SyncShell:
    """Runs calls for the sync methods of a client (see the module docstring)."""

    def __init__(self, session: Session, planner: Planner, transport: Transport) -> None:
        self.session, self.planner, self.transport = session, planner, transport
        self._io: _IOLoop | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def call(self, texts: Sequence[str], options: CallOptions) -> Any:
        """One call of the client: its flow, driven to its end inside its span; its result."""
        with self.session.telemetry.call(texts, options) as record:
            return self.run(embed_flow(self.session, texts, options), record)

    def run(self, flow: Flow, record: CallRecord) -> Any:
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
                answer = self._do(step, record)
            except EmpirioError as exc:
                error = exc

    def _do(self, step: Step, record: CallRecord) -> Any:
        if isinstance(step, Fetch):
            return self.run(embed_flow(self.session, step.texts, step.options), record)
        if isinstance(step, PlanAll):
            return record.planned(self._plan(step))
        return self._drive_all(step, record)

    def _drive_all(self, step: Drive, record: CallRecord) -> Driven:
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
                for part in self.drive(plans, step.call, bar, record, ahead=step.ahead):
                    parts.add(part)
                    if as_lists:
                        converted.append(self._convert(pool, part))
            except EmpirioError as exc:
                return Driven(parts, None, exc)
            if not as_lists:
                return Driven(parts)
            return Driven(parts, self._gather_rows(converted))

    def stream(
        self,
        texts: Iterable[str],
        call: Call,
        options: CallOptions,
        segment_size: int,
        total: int | None,
    ) -> Iterator[EmbeddingResult]:
        """One result per segment (``iter_embed``, ``aiter_embed``), in order, in bounded memory."""
        plans = self.planner.streamed(texts, call, segment_size)
        with (
            self.session.telemetry.call(texts, options, current=False) as record,
            self.session.progress(total, options) as bar,
        ):
            for result in self.drive(plans, call, bar, record, ahead=2):
                record.handed_out += len(result)
                yield result

    def drive(
        self,
        plans: Iterator[SegmentPlan | None],
        call: Call,
        progress: Progress,
        record: CallRecord,
        *,
        ahead: int,
    ) -> Iterator[EmbeddingResult]:
        """The loop over one call's driver: send what it says, wait, hand outcomes back."""
        session = self.session
        loop, blocked = None, _running_loop()  # a loop this thread runs cannot progress now
        pending: dict[_Handle, Attempt] = {}
        driver = session.new_driver(plans, call, ahead, pending, loop, record)
        try:
            self._connect()
            while True:
                for result in driver.ready():  # noqa: UP028 (a mirror)
                    yield result
                step = self._stored(session.step(driver, blocked, progress))
                if step is None:
                    return
                sends, timeout, for_slot = step
                for attempt in sends:
                    pending[self._send(attempt, call)] = attempt
                finished = self._wait(pending, timeout, for_slot)
                ended = [(pending[h], h.result()) for h in finished]
                self._stored(session.complete(driver, ended, progress))
        finally:
            session.end(driver)
            self._cancel(pending)

    # ------------------------------------------------------------------ this shell's own I/O

    def _plan(self, step: PlanAll) -> SegmentPlan:
        return self.planner.plan(step.texts, step.call)

    def _stored(self, work: Stored[_T]) -> _T:
        """Drive ``work``, a session step that asks for store I/O (budget transactions, cache
        writes) to be done outside the session's lock."""
        answer: Any = None
        while True:
            try:
                job = work.send(answer)
            except StopIteration as stop:
                return cast(_T, stop.value)
            answer = self._store(job)

    def _store(self, job: StoreJob) -> Any:
        """Here, in the caller's thread."""
        return job()

    def _convert(self, pool: concurrent.futures.Executor, part: EmbeddingResult) -> _Rows:
        return pool.submit(part.dense_rows)

    def _gather_rows(self, converted: list[_Rows]) -> list[list[float]]:
        return [row for future in converted for row in future.result()]

    def _connect(self) -> None:
        """Start the I/O thread and its HTTP client before the first pacing decision: an httpx
        client takes tens of ms to build (its TLS context), which would delay the first send
        behind its slot. With one request in flight at most, the sync transports instead."""
        if self._one_at_a_time():
            if self.transport.user_http is None:
                self.transport.blocking_lanes()
            return
        io = self._io_loop()
        if self.transport.user_http is None:
            io.submit(self.transport.for_loop()).result()

    def _one_at_a_time(self) -> bool:
        """``max_concurrency=1``: each request is sent from the caller's thread, as ``_wait``
        reaches it (see :meth:`Transport.send_blocking`); the driver never wants a second
        one sent meanwhile."""
        return self.session.concurrency.maximum == 1

    def _send(self, attempt: Attempt, call: Call) -> _Handle:
        if self._one_at_a_time():
            # Sent by _wait, so that the attempt is among those pending while it is out (an
            # interrupt then counts it as abandoned in flight, as it would on the I/O thread).
            return _Blocking(functools.partial(self.transport.send_blocking, attempt, call))
        handle = self._io_loop().submit(self.transport.send(attempt, call, sync=True))
        wakeups, session = _wakeups(), self.session

        def ended(_: object) -> None:  # on the I/O thread
            wakeups.put(None)
            session.request_ended()

        handle.add_done_callback(ended)
        return handle

    def _wait(
        self, pending: dict[_Handle, Attempt], within: float | None, for_slot: int | None = None
    ) -> set[_Handle]:
        """The requests that finished within ``within`` seconds (``None``: until one does), waited
        for in slices so that Ctrl-C is seen.

        Each request tells the thread that sent it when it ends (a token in that thread's queue):
        ``concurrent.futures.wait`` would instead install and remove a waiter on every request
        in flight at every wait, 0.2 ms of CPU per answer at one in flight and growing with
        more. A token may be another call's (two streams read in turn on one thread): the
        requests are looked at again, and the wait goes on until its end. A call waiting for a
        slot that others hold (``for_slot``, none of its own on the wire) is woken as any
        request of the client ends."""
        for handle in pending:
            if isinstance(handle, _Blocking) and handle.set_running_or_notify_cancel():
                handle.set_result(handle.send())  # an exception (Ctrl-C) leaves it pending
                self.session.request_ended()
                return {handle}
        wait = _WAIT_SLICE_S if within is None else min(within, _WAIT_SLICE_S)
        if not pending and for_slot is None:  # a paced send, a plan
            time.sleep(wait)
            return set()
        wakeups, until = _wakeups(), time.monotonic() + wait
        if not pending:  # a slot others hold: woken as any request of the client ends
            wake = functools.partial(wakeups.put, None)
            with self.session.waiting(wake, for_slot), contextlib.suppress(queue.Empty):
                wakeups.get(timeout=wait)
            return set()
        while True:
            done = {handle for handle in pending if handle.done()}
            left = until - time.monotonic()
            if done or left <= 0:
                return done
            try:
                wakeups.get(timeout=left)
            except queue.Empty:
                continue
            while not wakeups.empty():  # tokens of requests that ended together
                wakeups.get_nowait()

    def _cancel(self, pending: dict[_Handle, Attempt]) -> None:
        """Reached with requests in flight only when the caller stopped early, or on Ctrl-C or
        another BaseException (a failure waits for them in driver.step): cancelling them closes
        their connections now instead of after the timeout."""
        for handle in pending:
            handle.cancel()

    def _io_loop(self) -> _IOLoop:
        with self.session.lock:
            if self._io is None:
                self._io = _IOLoop()
                self.transport.keep_with = (self._io.loop, self._io.keepers)
                # Framework objects are rarely closed by their users: stop the thread and close
                # its connections when this shell is collected.
                self._finalizer = weakref.finalize(self, self._io.close)
            return self._io

    def close(self) -> None:
        """Stop the private loop and its thread, closing their connections (and those of the
        sync transports)."""
        with self.session.lock:
            io, self._io = self._io, None
            finalizer, self._finalizer = self._finalizer, None
        if finalizer is not None:
            finalizer.detach()
        if io is not None:
            io.close()
        self.transport.close_blocking()

    def after_fork(self) -> None:
        """Forget the parent's thread and loop (not ours to stop); a new one on first use."""
        if self._finalizer is not None:
            self._finalizer.detach()
        self._io, self._finalizer = None, None


class _Blocking(concurrent.futures.Future[Decoded | EmpirioError]):
    """A request to be sent from the caller's thread when the shell waits (see ``_send``)."""

    def __init__(self, send: Callable[[], Decoded | EmpirioError]) -> None:
        super().__init__()
        self.send = send


_local = threading.local()


def _wakeups() -> queue.SimpleQueue[None]:
    """This thread's queue of tokens, one put by each request it sent as the request ends."""
    tokens: queue.SimpleQueue[None] | None = getattr(_local, "wakeups", None)
    if tokens is None:
        tokens = _local.wakeups = queue.SimpleQueue()
    return tokens


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _IOLoop:
    """A private event loop on a daemon thread, where the sync shell's requests run.

    Daemon, so an interpreter exiting after Ctrl-C never waits for it.
    """

    def __init__(self) -> None:
        self.keepers: list[AsyncGenerator[None, None]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="empirio-io", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            # Closes the loop's httpx.AsyncClient (see http._close_at_loop_shutdown), and with
            # it the connections; done on this thread whoever asked for the stop.
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        """Stop the loop, closing its connections; waits at most a few seconds (not at all
        when called on the loop's own thread, as a finalizer may be)."""
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # closed already
            return
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=5.0)
