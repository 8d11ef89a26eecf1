"""Small concurrent calls of one client sent together: the waiting, for threads and for tasks.

Every decision (who may join, how long a merged call stays open, how its answer or failure is
shared back) is :mod:`empirio._core.coalesce`'s. Here: the open merged calls, under a lock; the
first caller of each waits for the others and sends it (threads), or a task does (asyncio:
a caller cancelled meanwhile does not cancel the others' requests). :meth:`Coalescer.call` and
:meth:`Coalescer.acall` mirror each other line for line.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from .._core.coalesce import MAX_TEXTS, Place, hold_for, key, share, share_error
from .._core.errors import EmpirioError
from .._core.flow import CallOptions
from .._core.result import EmbeddingResult

__all__ = ["Coalescer"]

Run = Callable[[list[str], CallOptions], EmbeddingResult]
ARun = Callable[[list[str], CallOptions], Awaitable[EmbeddingResult]]
_Outcome = EmbeddingResult | EmpirioError | None


class _Merged:
    """The calls gathered so far: their texts, end to end, and where each caller's are."""

    __slots__ = ("futures", "places", "texts")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.places: list[Place] = []
        self.futures: list[Any] = []

    def room(self, n: int) -> bool:
        return len(self.texts) + n <= MAX_TEXTS

    def add(self, texts: list[str], future: Any) -> None:
        self.places.append(Place(len(self.texts), len(texts)))
        self.texts.extend(texts)
        self.futures.append(future)


class Coalescer:
    """One client's open merged calls (see the module docstring).

    Args:
        next_slot_in: seconds until the account's budget may next admit a request.
    """

    def __init__(self, next_slot_in: Callable[[], float]) -> None:
        self._next_slot_in = next_slot_in
        self._lock = threading.Lock()
        self._open: dict[tuple[Hashable, ...], _Merged] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _join(self, where: Hashable, texts: list[str], options: CallOptions, future: Any) -> Any:
        """Join the open merged call of ``where`` (a loop, or ``None`` for threads) and
        ``options``; return it if this caller opened it (and so must send it), else ``None``."""
        slot = (where, *key(options.kind, options.output))
        with self._lock:
            merged = self._open.get(slot)
            if merged is not None and merged.room(len(texts)):
                merged.add(texts, future)
                return None
            merged = self._open[slot] = _Merged()
            merged.add(texts, future)
            return slot, merged

    def _close(self, slot: tuple[Hashable, ...], merged: _Merged) -> None:
        with self._lock:
            if self._open.get(slot) is merged:
                del self._open[slot]

    def call(self, texts: list[str], options: CallOptions, run: Run) -> EmbeddingResult:
        """``run(texts, options)`` for this caller, sent with the calls of other threads that
        arrive meanwhile."""
        future: concurrent.futures.Future[EmbeddingResult] = concurrent.futures.Future()
        opened = self._join(None, texts, options, future)
        if opened is not None:
            time.sleep(hold_for(self._next_slot_in()))
            self._close(*opened)
            self._send(opened[1], options, run)
        return future.result()

    async def acall(self, texts: list[str], options: CallOptions, run: ARun) -> EmbeddingResult:
        """:meth:`call` for tasks of the running loop."""
        future: asyncio.Future[EmbeddingResult] = asyncio.get_running_loop().create_future()
        opened = self._join(asyncio.get_running_loop(), texts, options, future)
        if opened is not None:
            task = asyncio.ensure_future(self._asend_later(opened, options, run))
            self._tasks.add(task)  # kept until done: the loop holds tasks only weakly
            task.add_done_callback(self._tasks.discard)
        return await future

    def _send(self, merged: _Merged, options: CallOptions, run: Run) -> None:
        try:
            outcomes = _shared(merged, run(merged.texts, options))
        except EmpirioError as exc:
            outcomes = share_error(exc, merged.places)
        except BaseException as exc:  # Ctrl-C in the sending thread: every caller hears it
            for future in merged.futures:
                future.set_exception(exc)
            raise
        for place, future, outcome in zip(merged.places, merged.futures, outcomes, strict=True):
            if outcome is None:  # its own input was refused: run alone, the others unharmed
                try:
                    outcome = run(merged.texts[place.start : place.stop], options)
                except EmpirioError as exc:
                    outcome = exc
            _settle(future, outcome)

    async def _asend_later(
        self, opened: tuple[tuple[Hashable, ...], _Merged], options: CallOptions, run: ARun
    ) -> None:
        await asyncio.sleep(hold_for(self._next_slot_in()))
        self._close(*opened)
        merged = opened[1]
        try:
            outcomes = _shared(merged, await run(merged.texts, options))
        except EmpirioError as exc:
            outcomes = share_error(exc, merged.places)
        except BaseException as exc:  # the loop is closing: every caller hears it
            for future in merged.futures:
                if not future.done():
                    future.set_exception(exc)
            raise
        for place, future, outcome in zip(merged.places, merged.futures, outcomes, strict=True):
            if outcome is None:  # its own input was refused: run alone, the others unharmed
                try:
                    outcome = await run(merged.texts[place.start : place.stop], options)
                except EmpirioError as exc:
                    outcome = exc
            _settle(future, outcome)


def _shared(merged: _Merged, result: EmbeddingResult) -> list[_Outcome]:
    return list(share(result, merged.places))


def _settle(future: Any, outcome: _Outcome) -> None:
    """Hand one caller its outcome, unless it stopped waiting (a cancelled task)."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
