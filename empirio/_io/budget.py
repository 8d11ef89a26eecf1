"""Where an account's pacing state lives: one budget per account, shared by every sender.

The limits belong to the account, not to a client object: every client, adapter, copy and
sibling in a process, and every process on the machine, that uses one key at one endpoint
draws on one :class:`~empirio._core.pace.BudgetState`. This module only keeps that state; every
decision is :mod:`empirio._core.pace`'s.

* ``scope="machine"`` (the default): a small SQLite file, named by a hash of the endpoint and
  key (never the key), in ``EMPIRIOLABS_BUDGET_DIR``, else ``$XDG_RUNTIME_DIR/empirio``, else
  ``~/.cache/empirio/budget``. Each decision is one ``BEGIN IMMEDIATE`` transaction, so
  processes take turns. Times are ``time.monotonic()``, which is one clock for every process of
  a machine; the file name includes the host, so a shared home directory is not shared state.
* ``scope="process"``: kept in memory, shared by the clients of this process (a forked child
  starts afresh).
* ``scope="client"``: kept by one client alone (the behaviour of 0.1).

A :class:`Budget` is the small interface a cluster-wide store (Redis, Ray) would implement.
After ``fork`` the child gets new locks and its own SQLite connection: nothing of the parent's
is used.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
import sqlite3
import struct
import threading
import time
import weakref
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from .._core.config import (
    SHARE_BUDGET_ENV,
    host_port,
    is_loopback_url,
    is_redis_url,
    resolve_share_budget,
)
from .._core.pace import (
    MAX_JITTER_S,
    MINUTE_S,
    Budget,
    BudgetState,
    Grant,
    Lateness,
    Limits,
    admit,
    ahead_for,
    checked_state,
    reserve,
    reserve_part,
    sent,
    sent_late,
    succeed,
    throttle,
)
from .._core.types import BudgetScope, ShareBudget
from .forksafe import hold_across_fork

__all__ = [
    "BUDGET_DIR_ENV",
    "SHARE_BUDGET_ENV",
    "Budget",
    "BudgetScope",
    "LocalBudget",
    "ShareBudget",
    "SqliteBudget",
    "budget_for",
    "is_redis_url",
    "resolve_share_budget",
]

logger = logging.getLogger("empirio")

#: Overrides where machine-wide budgets are kept.
BUDGET_DIR_ENV = "EMPIRIOLABS_BUDGET_DIR"
#: After the shared file failed, how long a process paces alone before trying it again, in s.
RETRY_FILE_S = 10.0
_T = TypeVar("_T")


class _Kept:
    """Applies the pure rules to a state that a subclass loads and stores.

    A store keeps its state in its own clock: ``time.monotonic()`` for this machine's stores
    (one clock for every process of a machine), the store's for a shared server (hosts'
    monotonic clocks are not comparable). Callers speak their own monotonic clock; only
    durations cross between the two.

    It also measures, in memory, what the rules need to know of this process: how late its
    sends leave (:class:`~empirio._core.pace.Lateness`) and how long a transaction takes
    (which says how far ahead :meth:`reserve` books).
    """

    #: Its transactions wait on a file or a server (see :class:`~empirio._core.pace.Budget`).
    blocking = True

    #: No request may go before this (caller's clock): a lower bound of the shared schedule
    #: (which only moves forward), so that many calls waiting for one slot ask the store once.
    _floor = -math.inf

    def __init__(self) -> None:
        self._measure_lock = threading.Lock()
        self._lateness = Lateness()
        self._round_trips: deque[float] = deque(maxlen=32)
        self._ahead = 0.0
        self._warned_invalid = False
        self._struck = False  # this process noted a 429 since its last success

    def _transact(
        self, now: float | None, fn: Callable[[BudgetState, float], tuple[_T, BudgetState]]
    ) -> tuple[_T, float]:
        """Apply ``fn(state, at)`` to the stored state and store the result; ``at`` is the
        store's clock reading that corresponds to the caller's ``now`` (``None``: the clock
        is read during the transaction). Returns ``fn``'s answer and the caller's time of
        ``at``."""
        raise NotImplementedError

    def _apply(
        self, now: float | None, fn: Callable[[BudgetState, float], tuple[_T, BudgetState]]
    ) -> tuple[_T, float]:
        def step(state: BudgetState, at: float) -> tuple[_T, BudgetState]:
            out, new = fn(state, at)
            floors.append((max(new.next_request, new.paused_until), at))
            return out, new

        floors: list[tuple[float, float]] = []
        out, local = self._transact(now, step)
        if floors:  # the last try's view of the schedule, in the caller's clock
            floor, at = floors[-1]
            self._floor = local + min(floor - at, MINUTE_S + MAX_JITTER_S)
        return out, local

    def _checked(self, read: Callable[[], BudgetState], where: str) -> BudgetState:
        """The stored state, checked (:func:`~empirio._core.pace.checked_state`): an
        unreadable or impossible one is replaced by a fresh state, with one warning."""
        try:
            return checked_state(read())
        except (ValueError, struct.error, TypeError, OverflowError) as exc:
            if not self._warned_invalid:
                self._warned_invalid = True
                logger.warning(
                    "the rate-limit budget state in %s is not valid (%s); replaced by a fresh "
                    "state (written by another version, or tampered with)",
                    where,
                    exc,
                )
            return BudgetState()

    def free_at(self) -> float:
        """No request goes before this, as far as this process knows (monotonic seconds)."""
        return self._floor

    def late(self, now: float) -> float:
        """How late this process's sends are measured to leave (see ``Lateness``), in s."""
        with self._measure_lock:
            return self._lateness.late(now)

    def note_sent(self, limits: Limits, admitted_at: float, now: float) -> bool:
        with self._measure_lock:
            self._lateness.observe(now, now - admitted_at)
            late = self._lateness.late(now)
        return sent_late(limits, admitted_at, now, late)

    def acquire(self, limits: Limits, now: float, tokens: int) -> float:
        if now < self._floor:
            return self._floor - now
        late = self.late(now)
        return self._apply(now, lambda s, at: admit(limits, s, at, tokens, late))[0]

    def acquire_part(self, limits: Limits, now: float, pieces: Sequence[int]) -> tuple[int, float]:
        late = self.late(now)

        def part(state: BudgetState, at: float) -> tuple[tuple[int, float], BudgetState]:
            wait, k, new = reserve_part(limits, state, at, pieces, late=late)
            return ((k, 0.0), new) if k and wait <= 0 else ((0, wait), state)

        return self._apply(now, part)[0]

    def reserve(self, limits: Limits, tokens: int, pieces: Sequence[int] = ()) -> Grant:
        start = time.monotonic()
        ahead = self._ahead
        if start + ahead < self._floor:
            return Grant(start, None, self._floor - ahead)
        late = self.late(start)

        def book(state: BudgetState, at: float) -> tuple[tuple[float, bool, int], BudgetState]:
            wait, booked, new = reserve(limits, state, at, tokens, ahead=ahead, late=late)
            if booked:
                return (wait, True, 0), new
            head, k, part = reserve_part(limits, state, at, pieces, ahead=ahead, late=late)
            return ((head, True, k), part) if k else ((min(wait, head), False, 0), new)

        (wait, booked, k), local = self._apply(None, book)
        self._measured(time.monotonic() - start)
        if not booked:
            return Grant(local, None, local + wait)
        return Grant(local, local + wait, part=k)

    def _measured(self, round_trip: float) -> None:
        """Note a transaction's duration; book as far ahead as their 90th percentile needs."""
        with self._measure_lock:
            self._round_trips.append(round_trip)
            ordered = sorted(self._round_trips)
            self._ahead = ahead_for(ordered[int(0.9 * (len(ordered) - 1))])

    def sent(self, limits: Limits, admitted_at: float, now: float) -> None:
        late = self.late(now)
        if not sent_late(limits, admitted_at, now, late):
            return
        lag = now - admitted_at
        self._apply(now, lambda s, at: (None, sent(limits, s, at - lag, at, late)))

    def throttled(self, limits: Limits, now: float, sent_at: float, delay: float) -> None:
        age = now - sent_at
        self._struck = True
        self._apply(now, lambda s, at: (None, throttle(limits, s, at, at - age, delay)))

    def succeeded(self) -> None:
        # Only a success after this process's own 429 can end strikes worth a transaction: one
        # per success would double the store's round trips (another process's strikes end with
        # its own next success).
        if self._struck:
            self._struck = False
            self._transact(math.nan, lambda s, at: (None, succeed(s)))

    def _after_fork_measures(self) -> None:
        self._measure_lock = threading.Lock()
        self._floor = -math.inf


class LocalBudget(_Kept):
    """A budget kept in memory, guarded by a lock."""

    blocking = False

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._state = BudgetState()
        _LIVE.add(self)

    def _transact(
        self, now: float | None, fn: Callable[[BudgetState, float], tuple[_T, BudgetState]]
    ) -> tuple[_T, float]:
        with self._lock:
            at = time.monotonic() if now is None else now
            out, self._state = fn(self._state, at)
            return out, at

    def _after_fork(self) -> None:
        self._after_fork_measures()
        self._lock = threading.Lock()
        self._state = BudgetState()  # a child's budget starts afresh (see scope="process")


_HEADER = struct.Struct("<dddqdd")


def _pack(state: BudgetState) -> bytes:
    times = array("d", (t for t, _ in state.sends))
    tokens = array("q", (n for _, n in state.sends))
    head = _HEADER.pack(
        state.next_request,
        state.paused_until,
        state.jitter,
        state.strikes,
        state.last_cut,
        state.cold_until,
    )
    return head + times.tobytes() + tokens.tobytes()


def _unpack(blob: bytes) -> BudgetState:
    """The state ``blob`` holds; ``ValueError`` (or ``struct.error``) for one of another
    shape. Its values are checked by the caller (``checked_state``)."""
    next_request, paused_until, jitter, strikes, last_cut, cold_until = _HEADER.unpack_from(blob)
    rest = blob[_HEADER.size :]
    if len(rest) % 16:
        raise ValueError(f"a state of {len(blob)} bytes, which no version writes")
    n = len(rest) // 16
    times, tokens = array("d"), array("q")
    times.frombytes(rest[: 8 * n])
    tokens.frombytes(rest[8 * n : 16 * n])
    return BudgetState(
        next_request,
        paused_until,
        jitter,
        strikes,
        last_cut,
        tuple(zip(times, tokens, strict=True)),
        cold_until,
    )


class SqliteBudget(_Kept):
    """A budget kept in a SQLite file that every process of the machine opens.

    If the file cannot be used (read-only, corrupt, locked for more than ``busy_timeout``), the
    budget says so in the log and goes on in memory for this process, trying the file again
    every :data:`RETRY_FILE_S` seconds (a lock held once for a few seconds must not leave every
    process pacing alone for good).
    """

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        super().__init__()
        self.path = path
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._fallback: LocalBudget | None = None
        self._retry_at = -math.inf  # with a fallback: when to try the file again (monotonic s)
        _LIVE.add(self)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,  # we issue BEGIN IMMEDIATE ourselves
            check_same_thread=False,  # guarded by self._lock
        )
        # Losing the last few sends on a power cut is harmless; a fsync per request is not.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("CREATE TABLE IF NOT EXISTS budget (id INTEGER PRIMARY KEY, state BLOB)")
        return conn

    def _transact(
        self, now: float | None, fn: Callable[[BudgetState, float], tuple[_T, BudgetState]]
    ) -> tuple[_T, float]:
        with self._lock:
            if self._fallback is None or time.monotonic() >= self._retry_at:
                try:
                    out = self._transact_file(now, fn)
                except (sqlite3.Error, OSError) as exc:
                    logger.warning(
                        "the shared rate-limit budget at %s cannot be used (%s); pacing this "
                        "process on its own, and trying it again in %.0f s",
                        self.path,
                        exc,
                        RETRY_FILE_S,
                    )
                    self._close()
                    self._fallback = self._fallback or LocalBudget()
                    self._retry_at = time.monotonic() + RETRY_FILE_S
                else:
                    if self._fallback is not None:
                        logger.warning("the shared rate-limit budget at %s is back", self.path)
                        self._fallback = None
                    return out
            fallback = self._fallback
        return fallback._transact(now, fn)

    def _transact_file(
        self, now: float | None, fn: Callable[[BudgetState, float], tuple[_T, BudgetState]]
    ) -> tuple[_T, float]:
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT state FROM budget WHERE id = 0").fetchone()
            state = (
                self._checked(lambda: _unpack(row[0]), str(self.path))
                if row is not None
                else BudgetState()
            )
            at = time.monotonic() if now is None else now  # with the file held: our turn
            out, new = fn(state, at)
            if new is not state:
                conn.execute(
                    "INSERT OR REPLACE INTO budget (id, state) VALUES (0, ?)", (_pack(new),)
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return out, at

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _after_fork(self) -> None:
        # The parent's connection (and any transaction it had open) is not ours to touch.
        self._after_fork_measures()
        self._lock = threading.Lock()
        self._conn = None
        if self._fallback is not None:
            self._fallback._after_fork()


def budget_dir() -> Path:
    """Where machine-wide budgets are kept (see the module docstring)."""
    explicit = os.environ.get(BUDGET_DIR_ENV)
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.access(runtime, os.W_OK):
        return Path(runtime) / "empirio"
    return Path.home() / ".cache" / "empirio" / "budget"


def _same_server(base_url: str) -> str:
    """``base_url`` with this machine's names made one (``localhost``, ``127.0.0.1`` and
    ``[::1]`` at one port are one server, so one account), and the host's case folded."""
    parts = urlsplit(base_url.rstrip("/"))
    port = host_port(base_url).rsplit(":", 1)[1]
    host = "loopback" if is_loopback_url(base_url) else (parts.hostname or "").lower()
    return f"{parts.scheme}://{host}:{port}{parts.path}"


def account_id(base_url: str, api_key: str, account: str | None = None) -> str:
    """A name for the account behind (endpoint, key) that reveals neither: by default each key
    is its own account; with ``account`` (the ``account=`` setting) every key that names the
    same account at the endpoint shares one budget."""
    if account is not None:
        h = hashlib.blake2b(digest_size=16, person=b"empirio-account")
        h.update(_same_server(base_url).encode())
        h.update(b"\0")
        h.update(account.encode("utf-8", "surrogatepass"))
        return h.hexdigest()
    h = hashlib.blake2b(digest_size=16, person=b"empirio-budget")
    h.update(_same_server(base_url).encode())
    h.update(b"\0")
    h.update(api_key.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


# One budget per account and scope for the whole process: this is the state the issue of
# "several clients of one key" needs shared, so it is module-level on purpose, guarded by a lock
# and renewed in a forked child.
_REGISTRY: dict[tuple[str, str], _Kept] = {}  # keyed by (scope or Redis URL, account)
_REGISTRY_LOCK = threading.Lock()
_LIVE: weakref.WeakSet[LocalBudget | SqliteBudget] = weakref.WeakSet()


def budget_for(
    scope: ShareBudget, base_url: str, api_key: str, account: str | None = None
) -> Budget:
    """The budget that clients of ``api_key`` (or of any key naming ``account``) at
    ``base_url`` share, in ``scope`` (or in the Redis that a ``redis://`` URL names: every
    process of every host)."""
    if scope == "client":
        return LocalBudget()
    account = account_id(base_url, api_key, account)
    with _REGISTRY_LOCK:
        budget = _REGISTRY.get((scope, account))
        if budget is None:
            if is_redis_url(scope):
                from .redis_budget import RedisBudget

                budget = RedisBudget(scope, account)
            elif scope == "machine":
                host = hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()
                budget = SqliteBudget(budget_dir() / f"{account}-{host}.sqlite3")
            else:
                budget = LocalBudget()
            _REGISTRY[(scope, account)] = budget
        return budget


def _after_fork_in_child() -> None:
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()
    for budget in list(_LIVE):
        budget._after_fork()


# As for the cache (see _forksafe): no thread may be inside SQLite when the process forks.
hold_across_fork(
    lambda: [b._lock for b in list(_LIVE) if isinstance(b, SqliteBudget)], _after_fork_in_child
)
