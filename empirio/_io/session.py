"""A client's shared, mutable state and the lock around it; both shells step their calls here.

One :class:`Session` per client: the account's budget and limits, the in-flight ceiling, the
usage meter, the shared views, what the endpoint turned out not to support, and the calls under
way. Every change happens under :attr:`Session.lock`, in short sections that only call the pure
core (:mod:`empirio._core.driver`, :mod:`empirio._core.engine`, :mod:`empirio._core.pace`); the
shells read the clock and do the I/O outside it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, TypeVar, cast

import httpx

from .._core.cache_keys import NONCE_BYTES, cache_secret, seal
from .._core.concurrency import AUTO_CEILING, Concurrency
from .._core.decode import Decoded, advertised_limits, decode_error, decode_success
from .._core.driver import Call, CallDriver
from .._core.engine import SLOT_POLL_S, Attempt, BatchLimit, Engine, Step
from .._core.errors import (
    APIStatusError,
    CacheWarning,
    EmpirioError,
    InvalidInputError,
    UnsupportedFeatureError,
)
from .._core.flow import PIPELINE_MIN, CallOptions
from .._core.limits import LimitsInEffect
from .._core.observe import CallRecord
from .._core.pace import Budget, Limits
from .._core.plan import SegmentPlan
from .._core.result import EmbeddingResult, Usage, UsageMeter
from .._core.retry import RetryPolicy
from .._core.settings import ClientConfig, check_choice
from .._core.types import KINDS, OUTPUTS, Kind, Output
from .._core.views import ViewCache
from .budget import LocalBudget, budget_for
from .cache import EmbeddingCache
from .callers import caller_level
from .progress import Progress
from .telemetry import Telemetry

__all__ = ["Session", "StoreJob", "Stored", "note_sent", "store_pool"]

_T = TypeVar("_T")
#: How long past two polls a call refused a slot keeps its place without looking again, in
#: seconds: a thread or task woken late on a busy machine is still served in turn.
_QUEUE_GRACE_S = 0.05

logger = logging.getLogger("empirio")


class Session:
    """The state one client's calls share (see the module docstring).

    Args:
        config: the client's settings.
        cache: its persistent cache, if any (kept for the planner; written by :meth:`complete`).
    """

    def __init__(self, config: ClientConfig, cache: EmbeddingCache | None) -> None:
        self.config = config
        self.cache = cache
        #: What the cache's keys and seals are made with (see :mod:`empirio._core.cache_keys`).
        self.cache_secret = cache_secret(config.cache_material().get_secret_value())
        self.lock = threading.Lock()
        #: The limits pacing now and where each came from (they follow what a server
        #: advertises where nobody set them: see ``LimitsInEffect.adopt``).
        self.in_effect = LimitsInEffect(
            config.rpm, config.tpm, config.rpm_source, config.tpm_source
        )
        try:
            self.limits = Limits(config.rpm, config.tpm)
        except ValueError as exc:  # pragma: no cover - the config checked the rates
            raise EmpirioError(str(exc)) from None
        # An unpaced client needs no shared file: its budget only carries 429 pauses.
        key = config.api_key.get_secret_value()
        self.budget: Budget = (
            budget_for(config.share_budget, config.base_url, key, config.account)
            if self.limits.paced
            else LocalBudget()
        )
        self.concurrency = (
            Concurrency(AUTO_CEILING, auto=True, limits=self.limits)
            if config.max_concurrency == "auto"
            else Concurrency(config.max_concurrency, limits=self.limits)
        )
        self.batch_limit = BatchLimit(config.batch_size)
        self.policy = RetryPolicy(max_retries=config.max_retries)
        self.meter = UsageMeter()
        #: Each call as a span and metrics (OpenTelemetry, when installed).
        self.telemetry = Telemetry(config)
        # Told every increment of usage (EmbeddingClient.on_usage), and what they were told.
        self.listeners: list[Callable[[Usage], None]] = []
        self._told = Usage()
        self.views: ViewCache | None = ViewCache() if config.share_views else None
        # Set when the endpoint answers a sparse request without sparse vectors: sparse calls
        # are refused from then on, and dense calls stop asking for both views.
        self.no_sparse = False
        # Calls under way: driver -> (its requests on the wire, the loop it runs on or None)
        self.calls: dict[CallDriver, tuple[dict[Any, Attempt], asyncio.AbstractEventLoop | None]]
        self.calls = {}
        self.wired: set[CallDriver] = set()
        # Calls waiting for a slot that other calls hold, with nothing of their own on the wire:
        # how to wake each as a request of this client ends (``waiting``).
        self._waiting: dict[object, Callable[[], None]] = {}
        # Calls refused a slot that others hold, in the order they were first refused, each
        # with when it was last refused (monotonic seconds): a slot that frees is theirs first.
        self._queued: dict[CallDriver, float] = {}
        # Requests of this client ended so far (``request_ended``): a call refused a slot is
        # woken at once if one ended between its refusal and its wait (``waiting``).
        self._ended = 0

    def after_fork(self) -> None:
        """A forked child's session: a new lock, no calls (the parent's threads are gone) and
        no usage listeners; the usage so far and the budget (which renews its own state) are
        kept."""
        self.lock = threading.Lock()
        self.calls = {}
        self.wired = set()
        self._waiting = {}
        self._queued = {}
        # A listener is the parent's (a socket, an actor handle): the child's spending is its
        # own, and two processes writing one socket would interleave their lines.
        self.listeners = []

    # ------------------------------------------------------------------ what the flow reads

    @property
    def dimensions(self) -> int:
        return self.config.dimensions

    def check_call(self, kind: str, output: str) -> Call:
        check_choice("kind", kind, KINDS, error=InvalidInputError)
        check_choice("output", output, OUTPUTS, error=InvalidInputError)
        if output != "dense" and self.no_sparse:
            raise UnsupportedFeatureError(
                f"{self.config.base_url} does not return sparse vectors (an earlier response had "
                "none), so output='sparse' or 'both' cannot be served; dense calls still work"
            )
        return Call(cast(Kind, kind), cast(Output, output))

    def pipelines(self, texts: Sequence[str]) -> bool:
        return len(texts) > PIPELINE_MIN and self.config.overflow != "error"

    def take_parked(self, texts: list[str], call: Call) -> tuple[list[Any], list[str]] | None:
        with self.lock:
            views = self.views
            if views is None or call.output == "both" or not texts:
                return None
            parked = views.take(call.output, call.kind, texts)
        missing = list(dict.fromkeys(t for t, v in zip(texts, parked, strict=True) if v is None))
        return parked, missing

    def park_other(self, call: Call, missing: list[str], fetched: EmbeddingResult) -> None:
        other_dense = fetched.dense if call.output == "sparse" else None
        other_sparse = fetched.sparse if call.output == "dense" else None
        with self.lock:
            if self.views is not None:
                self.views.park(call.kind, missing, other_dense, other_sparse)

    def enable_shared_views(self) -> None:
        with self.lock:
            if self.views is None and not self.no_sparse:
                self.views = ViewCache()

    def next_slot_in(self) -> float:
        """Seconds until the account's budget may next admit a request (0 if it may now), as
        far as this process knows."""
        return max(0.0, self.budget.free_at() - time.monotonic())

    def limits_in_effect(self) -> LimitsInEffect:
        return self.in_effect

    @property
    def rpm(self) -> float | None:
        """Requests per minute pacing now (``None``: unpaced)."""
        return self.in_effect.rpm

    @property
    def tpm(self) -> float | None:
        """Tokens per minute pacing now (``None``: unpaced)."""
        return self.in_effect.tpm

    # ------------------------------------------------------------------ progress

    def progress(self, total: int | None, options: CallOptions) -> Progress:
        """The call's progress: a tqdm bar if asked for, and ``on_progress``."""
        enabled = (
            self.config.show_progress if options.show_progress is None else options.show_progress
        )
        return Progress.of(total, enabled, options.on_progress)

    # ------------------------------------------------------------------ calls under way

    def new_driver(
        self,
        plans: Iterator[SegmentPlan | None],
        call: Call,
        ahead: int,
        pending: dict[Any, Attempt],
        loop: asyncio.AbstractEventLoop | None,
        record: CallRecord,
    ) -> CallDriver:
        engine = Engine(
            budget=self.budget,
            limits=self.limits,
            concurrency=self.concurrency,
            policy=self.policy,
            batch_limit=self.batch_limit,
            record=record,
        )
        driver = CallDriver(
            call,
            self.config.dimensions,
            plans,
            engine,
            self.meter,
            ahead=ahead,
            keep_cache_pairs=self.cache is not None,
            record=record,
        )
        with self.lock:
            self.calls[driver] = (pending, loop)
        return driver

    def _busy_elsewhere(self, me: CallDriver, blocked: asyncio.AbstractEventLoop | None) -> int:
        """Requests other calls of this client have on the wire and can still finish.

        Derived afresh each time rather than kept as a count, so nothing can strand a slot:
        calls that cannot progress (:func:`_stalled`) are not counted. Must hold :attr:`lock`.
        """
        busy = 0
        for driver in list(self.wired):  # calls with requests out: few, whatever the calls
            entry = self.calls.get(driver)
            if entry is None:
                self.wired.discard(driver)
                continue
            pending, loop = entry
            if loop is not None and loop.is_closed():
                del self.calls[driver]  # died with its loop; its finally never ran
                self.wired.discard(driver)
                continue
            if driver is me or _stalled(loop, blocked):
                continue
            # Sent by the driver (some perhaps not yet handed to a task), less those finished
            # on the wire and waiting for their call to read them.
            finished = sum(1 for handle in list(pending) if handle.done())
            busy += max(0, driver.engine.n_in_flight - finished)
        return busy

    def _taken(
        self, me: CallDriver, blocked: asyncio.AbstractEventLoop | None, now: float, poll: float
    ) -> int:
        """Slots ``me`` may not take: those other calls hold (:meth:`_busy_elsewhere`), and one
        for each call refused a slot before ``me`` that still looks for one (first refused, first
        served). Without the queue a freed slot went to whichever call asked first: tasks of one
        loop, 3 on 2 slots, saw one of them wait 200-700 ms for calls of 25 ms while the other
        two went on (``bench/shared_client.py``). A queued call counts while it can progress
        and has been refused within two polls: one that stopped looking (a stream whose reader
        paused, a caller gone) holds no slot back for longer. Must hold :attr:`lock`."""
        ahead = 0
        for driver, refused_at in list(self._queued.items()):
            if driver is me:
                break
            entry = self.calls.get(driver)
            if entry is None:  # ended (its call's end() normally takes it out)
                del self._queued[driver]
                continue
            if _stalled(entry[1], blocked):
                continue
            if now - refused_at <= 2 * poll + _QUEUE_GRACE_S:
                ahead += 1
        return self._busy_elsewhere(me, blocked) + ahead

    def _queue(self, driver: CallDriver, step: Step | None, now: float) -> None:
        """``driver`` in :attr:`_queued` (at its first place) while refused a slot; out once it
        sends, waits for something else, or ends. Must hold :attr:`lock`."""
        if step is not None and step.for_slot:
            self._queued[driver] = now  # a call already queued keeps its place
        elif step is None or step.ask is None or step.sends:
            self._queued.pop(driver, None)

    def step(
        self, driver: CallDriver, blocked: asyncio.AbstractEventLoop | None, progress: Progress
    ) -> Stored[tuple[tuple[Attempt, ...], float | None, int | None] | None]:
        """The driver's next step: what to send now, how long to wait for a completion before
        asking again (``None``: until one completes), and, where the call waits for a slot
        that other calls hold, how many of the client's requests had ended when it was refused
        (for :meth:`waiting`; ``None``: it does not). ``None`` when the call is over.

        A generator of :data:`StoreJob`: a blocking budget is asked through the shell, outside
        the lock (the shells' ``_store``: in the caller's thread, or off the event loop).
        """
        with self.lock:
            # Calls waiting for a slot look again every SLOT_POLL_S, less often when many wait.
            poll = SLOT_POLL_S * max(1.0, len(self.calls) / self.concurrency.maximum)
            now, ended = time.monotonic(), self._ended  # read before the slots are looked at
            step = driver.step(now, self._taken(driver, blocked, now, poll), poll)
            self._queue(driver, step, now)
            self._note_wire(driver)
            known, driver.known_done = driver.known_done, 0
        progress.update(known)
        if step is None:
            return None
        sends = list(step.sends)
        # A send granted now leaves before the budget is asked again: one slow transaction
        # must not hold the sends already granted, nor send them together afterwards.
        while step.ask is not None and not sends:
            limits = driver.engine.limits
            ask = functools.partial(self.budget.reserve, limits, step.ask, step.pieces)
            grant = yield ask
            with self.lock:
                now, ended = time.monotonic(), self._ended
                step = driver.answer(now, grant, self._taken(driver, blocked, now, poll), poll)
                self._queue(driver, step, now)
                self._note_wire(driver)
            sends.extend(step.sends)
        if step.ask is not None:  # asked again as soon as these are sent
            return tuple(sends), 0.0, None
        timeout = None if step.wake_at is None else max(0.0, step.wake_at - time.monotonic())
        return tuple(sends), timeout, ended if step.for_slot else None

    def complete(
        self,
        driver: CallDriver,
        ended: list[tuple[Attempt, Decoded | EmpirioError]],
        progress: Progress,
    ) -> Stored[None]:
        """Take how the attempts of ``ended`` ended (all that finished together). A generator
        of :data:`StoreJob`: one job writes their vectors to the cache and tells a blocking
        budget, through the shell and outside the lock; once handed over it runs to its end,
        so a call cancelled meanwhile still caches every vector it paid for."""
        if not ended:  # a wake-up with nothing finished (pacing, polling): nothing to take
            return
        taken: list[tuple[Attempt, Decoded | EmpirioError, int, float | None]] = []
        notes: list[Callable[[], None]] = []
        with self.lock:
            for attempt, outcome in ended:
                finished = driver.complete(attempt, outcome, time.monotonic())
                taken.append((attempt, outcome, finished, driver.retry_in))
                if driver.budget_note is not None:
                    notes.append(driver.budget_note)
            # Their handles leave the shell's map of requests on the wire here, under the lock
            # and with the driver's count: a call that looks in between (woken as they ended)
            # must see their slots free, neither held nor freed twice (_busy_elsewhere).
            pending = self.calls.get(driver, ({}, None))[0]
            gone = {id(attempt) for attempt, _ in ended}
            for handle in [h for h, attempt in pending.items() if id(attempt) in gone]:
                del pending[handle]
            pairs = driver.take_cache_pairs()
            self._note_wire(driver)
        if notes or pairs:
            failure = yield functools.partial(_store, self.cache, self.cache_secret, pairs, notes)
            if failure is not None:  # the vectors themselves are safe: the call goes on
                warnings.warn(
                    f"{len(pairs)} vectors could not be written to the embedding cache: {failure}",
                    CacheWarning,
                    stacklevel=caller_level(),
                )
        self.tell_usage()
        for attempt, outcome, finished, retry_in in taken:
            if finished:
                progress.update(finished)
            elif not isinstance(outcome, Decoded):
                self._report(attempt, outcome, retry_in, progress)

    @staticmethod
    def _report(
        attempt: Attempt, outcome: EmpirioError, retry_in: float | None, progress: Progress
    ) -> None:
        """One INFO line for a failed attempt; the bar says what a retry waits for."""
        why = _describe(outcome)
        if retry_in is None:
            logger.info("request of %d inputs failed (%s)", len(attempt.request), why)
            return
        logger.info(
            "request of %d inputs failed (%s); retrying in %.1f s (attempt %d)",
            len(attempt.request),
            why,
            retry_in,
            attempt.retries + 2,
        )
        progress.waiting(f"retrying in {retry_in:.0f} s: {why}")

    def listen(self, listener: Callable[[Usage], None]) -> Callable[[], None]:
        """Add a usage listener (see ``EmbeddingClient.on_usage``); returns its remover."""
        with self.lock:
            if not self.listeners:
                self._told = self.meter.usage  # the first hears what is spent from now on
            self.listeners.append(listener)

        def stop() -> None:
            with self.lock, contextlib.suppress(ValueError):
                self.listeners.remove(listener)

        return stop

    def tell_usage(self) -> None:
        """Tell the listeners what was spent since they were last told. Outside the lock: a
        listener may block (a tally's network round trip) without holding up the calls."""
        if not self.listeners:
            return
        with self.lock:
            now, listeners = self.meter.usage, list(self.listeners)
            delta, self._told = now - self._told, now
        if delta == Usage():
            return
        for listener in listeners:
            try:
                listener(delta)
            except Exception:  # a listener's failure is its own, never the call's
                logger.exception("a usage listener failed")

    def _note_wire(self, driver: CallDriver) -> None:
        """Keep :attr:`wired`, the calls with requests out. Must hold :attr:`lock`."""
        if driver.engine.has_in_flight:
            self.wired.add(driver)
        else:
            self.wired.discard(driver)

    @contextlib.contextmanager
    def waiting(self, wake: Callable[[], None], ended: int | None) -> Iterator[None]:
        """While in it, ``wake`` is called (from any thread) as each request of this client
        ends (:meth:`request_ended`): a call waiting for a slot that another call holds
        (``Step.for_slot``) looks again as soon as it is free, not at its next poll (up to
        ``SLOT_POLL_S`` times the calls per slot later: with 8 threads sharing one slot, 80 ms
        per hand-over). Only such calls wait in it: one waiting for its pace is not woken by
        every answer. ``ended``: the count :meth:`step` gave with the refusal: a request that
        ended since (before ``wake`` was in place) wakes it at once, so that no end is missed
        (the first call refused holds its place: were it to sleep through its turn, every call
        behind it would wait too). ``wake`` must not block, nor raise."""
        token = object()
        self._waiting[token] = wake
        # Read once wake is in place; request_ended counts before it reads the waiters.
        if ended is not None and self._ended != ended:
            wake()
        try:
            yield
        finally:
            self._waiting.pop(token, None)

    def request_ended(self) -> None:
        """A request of this client ended (its slot is free): wake the calls that wait. Called
        from the thread that saw it end (a caller's, the I/O thread, a loop's); no lock: a dict's
        copy and updates are atomic, and the I/O thread must never wait for a caller (two ends
        at once may count one: the count only has to change)."""
        self._ended += 1  # before the waiters are read: see ``waiting``
        for wake in list(self._waiting.values()):
            wake()

    def end(self, driver: CallDriver) -> None:
        with self.lock:
            self.calls.pop(driver, None)
            self.wired.discard(driver)
            queued = self._queued.pop(driver, None) is not None
            gone = driver.close()
        if queued:  # calls refused a slot behind it look again now, not at their next poll
            self.request_ended()
        self.tell_usage()
        if gone:
            logger.warning(
                "%d requests (%d tokens) were abandoned in flight; the service may have billed "
                "them (see usage.abandoned_requests)",
                len(gone),
                sum(a.request.tokens for a in gone),
            )

    # ------------------------------------------------------------------ answers

    def read(
        self, status: int, content: bytes, headers: httpx.Headers, n: int, call: Call
    ) -> Decoded | EmpirioError:
        """A response, checked before it is trusted: the vectors, or the error it means."""
        if self.in_effect.listening:
            self._adopt_limits(headers)
        if 200 <= status < 300:
            try:
                return decode_success(
                    content,
                    n_inputs=n,
                    dimensions=self.config.dimensions,
                    dense=call.dense,
                    sparse=call.sparse,
                )
            except UnsupportedFeatureError as exc:
                with self.lock:
                    self.no_sparse, self.views = True, None
                return exc
            except EmpirioError as exc:
                return exc
        secret = (self.config.api_key.get_secret_value(),)
        return decode_error(status, content, headers, time.time(), secret)

    def _adopt_limits(self, headers: httpx.Headers) -> None:
        """Revise the limits nobody chose by what a server advertises in this answer (tighter
        at once, looser only when repeated: ``LimitsInEffect.adopt``): a local emulator is then
        not paced like the real account, and one odd answer does not unpace us for good.
        Calls under way pace to new limits at once."""
        advertised = advertised_limits(headers)
        if not advertised:
            return
        with self.lock:
            before = self.in_effect
            self.in_effect = after = before.adopt(advertised)
            if (after.rpm, after.tpm) == (before.rpm, before.tpm):
                return
            self.limits = Limits(after.rpm, after.tpm)
            self.concurrency.limits = self.limits
            for driver in self.calls:
                driver.engine.limits = self.limits
        logger.info(
            "pacing to the limits the server advertises: rpm=%s, tpm=%s", after.rpm, after.tpm
        )


def note_sent(session: Session, attempt: Attempt) -> None:
    """Measure how late ``attempt`` really left against its slot (the budget keeps this
    process's lateness, in memory), and tell the budget if that is late enough to change the
    schedule (rarely): a blocking budget on a store thread, so that the loop sending it is not
    held up."""
    limits, now, budget = session.limits, time.monotonic(), session.budget
    if not budget.note_sent(limits, attempt.slot, now):
        return
    if budget.blocking:
        store_pool().submit(budget.sent, limits, attempt.slot, now)
    else:
        budget.sent(limits, attempt.slot, now)


def _store(
    cache: EmbeddingCache | None,
    secret: bytes,
    pairs: list[tuple[str, bytes]],
    notes: list[Callable[[], None]],
) -> Exception | None:
    """Write finished vectors to the cache, then tell the budget; a cache failure is returned
    (the caller warns), anything else raises."""
    failure: Exception | None = None
    if pairs and cache is not None:
        try:
            cache.store.mset(seal(secret, pairs, os.urandom(NONCE_BYTES * len(pairs))))
        except Exception as exc:  # any store's failure; the vectors themselves are safe
            failure = exc
    for note in notes:
        note()
    return failure


def _stalled(
    loop: asyncio.AbstractEventLoop | None, blocked: asyncio.AbstractEventLoop | None
) -> bool:
    """Whether a call on ``loop`` cannot progress: it is closed, not running, or ``blocked`` (a
    sync call is blocking it by running in its thread)."""
    return loop is not None and (loop.is_closed() or loop is blocked or not loop.is_running())


#: One piece of store I/O (a budget transaction, a cache write), for a shell to run: in the
#: caller's thread (sync), on :func:`store_pool` (async).
StoreJob = Callable[[], Any]
#: A session method that yields store jobs, receives their answers and returns a ``_T``.
Stored = Generator[StoreJob, Any, _T]

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def store_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The process's threads for store I/O off event loops (a few: each transaction is short,
    and one account's are serialised by its budget anyway)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="empirio-store")
        return _pool


def _forget_pool_in_child() -> None:
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()  # the parent's threads are not the child's


os.register_at_fork(after_in_child=_forget_pool_in_child)


def _describe(outcome: object) -> str:
    if isinstance(outcome, APIStatusError):
        return f"HTTP {outcome.status_code} {outcome.code or ''}".strip()
    return type(outcome).__name__
