"""The embedded default :class:`~empirio.EmbeddingStore`: one SQLite file.

Written by hand on the standard library's ``sqlite3`` (the dependency policy's choice for
anything persistent): WAL mode, so readers never wait for a writer and several threads and
processes can share the file; each ``mset`` is one short transaction, committed before it
returns, so a process killed at any point loses nothing that was written.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .._core.errors import CacheError
from .forksafe import hold_across_fork

__all__ = ["SqliteStore"]

#: Keys per ``IN (...)`` query, and per part of :meth:`SqliteStore.iter_mget`: small enough
#: that a part's values (128 x 4 KB) are still in the CPU's cache when their seals are checked
#: (an all-hits read took 3.7 + 5.0 us a vector, read + checks, in parts of 100, against
#: 4.3 + 5.8 in parts of 1,000; measured with 0.4.0's HMAC).
_CHUNK = 128
#: Eviction removes this fraction more than needed, so that it runs rarely, not on every write.
_EVICT_SLACK = 0.1
_TABLE = "empirio_vectors"
#: Bytes of the file SQLite reads through a memory map rather than ``read`` calls (it caps this
#: at its compile-time maximum, 2 GB by default). A 4 KB vector spans two pages, each a system
#: call and a copy without the map: an all-hits read of 50,000 vectors took 7.1 us a vector
#: against 9.7. Writes still go through ``write`` (SQLite maps for reading only), so a full
#: disk is the same error as before. The price: a file cut short by something other than
#: SQLite while a read is under way stops the process with SIGBUS instead of an error, which
#: SQLite's own users (it re-checks the size at each transaction) never do.
_MMAP_BYTES = 1 << 31
# Rows get increasing row ids, so new vectors are appended to full pages (random keys as the
# table's own key would split pages and leave them half empty: 2x the disk, half the write
# speed); the keys live in their own small index. Measured with 4 KiB pages, SQLite's default,
# which wasted least at 256-2,048 dimensions (bench/cache.py).
_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {_TABLE} (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, "
    "value BLOB NOT NULL, used INTEGER NOT NULL)"
)


class SqliteStore:
    """Cached vectors in one SQLite file, shared by threads and processes.

    Args:
        path: the file; made (with its folder) if missing.
        max_bytes: an optional bound on the file's used size in bytes; when a write passes it,
            the least recently used vectors are removed (a read counts as a use).
        timeout: seconds to wait for another process's write before giving up.

    Raises:
        CacheError: the file is not a cache (corrupt, or another kind of file), is read-only,
            stays locked for ``timeout`` seconds, or cannot be made.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, max_bytes: int | None = None, timeout: float = 30.0
    ) -> None:
        if max_bytes is not None and (isinstance(max_bytes, bool) or not max_bytes > 0):
            raise CacheError(f"max_bytes must be a positive number of bytes; got {max_bytes!r}")
        if not timeout > 0:
            raise CacheError(f"timeout must be positive seconds; got {timeout!r}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._conn: sqlite3.Connection | None = None
        _STORES.add(self)
        with self._using() as conn:  # open now: a bad file is an error at once, not mid-job
            del conn

    def __repr__(self) -> str:
        bound = f", max_bytes={self.max_bytes}" if self.max_bytes is not None else ""
        return f"SqliteStore({str(self.path)!r}{bound})"

    # Pickles and copies carry the settings; the copy opens the file when first used.
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "max_bytes": self.max_bytes, "timeout": self.timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._after_fork()
        _STORES.add(self)

    def _after_fork(self) -> None:
        # A fork while another thread held the lock (a busy cache) would leave the child's copy
        # held for ever: the child gets a new lock, and opens its own connection on first use
        # (the parent's, and any transaction it had open, are not the child's to touch).
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._conn = None

    # ------------------------------------------------------------------ the protocol

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """The value of each key, or ``None``."""
        return [value for part in self.iter_mget(keys) for value in part]

    def iter_mget(self, keys: Sequence[str]) -> Iterator[list[bytes | None]]:
        """The values of ``keys`` (``None`` where there is none), in order, in consecutive parts
        of up to :data:`_CHUNK` keys, one query each, so that the caller checks each part while
        it is still in the CPU's cache. The store's lock is held for each query, not between
        parts."""
        for i in range(0, len(keys), _CHUNK):
            part = list(keys[i : i + _CHUNK])
            marks = ",".join("?" * len(part))
            with self._using() as conn:
                found: dict[str, bytes] = dict(
                    conn.execute(f"SELECT key, value FROM {_TABLE} WHERE key IN ({marks})", part)
                )
                if self.max_bytes is not None and found:
                    self._touch(conn, list(found))
            yield [found.get(k) for k in part]

    def mset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        """Store the pairs in one transaction, committed when this returns."""
        if not key_value_pairs:
            return
        now = time.time_ns()
        rows = [(k, sqlite3.Binary(v), now) for k, v in key_value_pairs]
        with self._using() as conn:
            with self._transaction(conn):
                conn.executemany(
                    f"INSERT INTO {_TABLE} (key, value, used) VALUES (?, ?, ?) ON CONFLICT(key) "
                    "DO UPDATE SET value = excluded.value, used = excluded.used",
                    rows,
                )
            if self.max_bytes is not None:
                self._evict(conn, self.max_bytes)

    # ------------------------------------------------------------------ the rest

    def size(self) -> tuple[int, int]:
        """``(vectors stored, bytes used)``; counting the vectors reads the whole index."""
        with self._using() as conn:
            (entries,) = conn.execute(f"SELECT count(*) FROM {_TABLE}").fetchone()
            return int(entries), self._used_bytes(conn)

    def close(self) -> None:
        """Close the file (it reopens on the next use)."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's connection is not ours
                self._pid, self._conn = os.getpid(), None
            try:
                if self._conn is None:
                    self._conn = self._connect()
                yield self._conn
            except sqlite3.Error as exc:
                raise self._error(exc) from None
            except OSError as exc:  # the path itself: permissions, a missing drive, ...
                raise CacheError(
                    f"the embedding cache {self.path} cannot be used: {exc.strerror}"
                ) from None

    def _connect(self) -> sqlite3.Connection:
        if self.path.is_dir():
            raise CacheError(f"the cache {self.path} is a folder; give a file's path")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"the cache's folder {self.path.parent} cannot be made: {exc.strerror}"
            ) from None
        conn = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if tables and _TABLE not in tables:
                raise CacheError(
                    f"{self.path} is a SQLite database but not an empirio cache "
                    f"(it has tables {sorted(tables)[:5]}); give another path"
                )
            conn.execute("PRAGMA journal_mode=WAL")
            # WAL with synchronous=NORMAL: a killed process loses nothing committed; only a
            # power cut may lose the last transactions, never the file's consistency.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
            if _TABLE not in tables:
                conn.execute(_SCHEMA)
            if self.max_bytes is not None:
                conn.execute(f"CREATE INDEX IF NOT EXISTS {_TABLE}_used ON {_TABLE} (used)")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _touch(self, conn: sqlite3.Connection, keys: list[str]) -> None:
        now = time.time_ns()
        with self._transaction(conn):
            conn.executemany(
                f"UPDATE {_TABLE} SET used = ? WHERE key = ?", [(now, k) for k in keys]
            )

    @staticmethod
    def _used_bytes(conn: sqlite3.Connection) -> int:
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        (page,) = conn.execute("PRAGMA page_size").fetchone()
        return int((pages - free) * page)

    def _evict(self, conn: sqlite3.Connection, bound: int) -> None:
        used = self._used_bytes(conn)
        if used <= bound:
            return
        with self._transaction(conn):
            (entries,) = conn.execute(f"SELECT count(*) FROM {_TABLE}").fetchone()
            if not entries:
                return
            per_entry = used / entries
            excess = used - bound * (1 - _EVICT_SLACK)
            drop = min(entries, max(1, int(excess / per_entry) + 1))
            conn.execute(
                f"DELETE FROM {_TABLE} WHERE id IN (SELECT id FROM {_TABLE} ORDER BY used LIMIT ?)",
                (drop,),
            )

    def _error(self, exc: sqlite3.Error) -> CacheError:
        text = str(exc).lower()
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            why = "is corrupt or not a SQLite file; move it aside or give another path"
        elif "locked" in text or "busy" in text:
            why = (
                f"stayed locked by another process for more than {self.timeout} s; "
                "try again when it is done, or give another path"
            )
        elif "readonly" in text or "read-only" in text:
            why = "is read-only (the file or its folder); give a writable path"
        elif "unable to open" in text:
            why = "cannot be opened (check the path and its permissions)"
        else:
            why = f"cannot be used: {exc}"
        return CacheError(f"the embedding cache {self.path} {why}")


#: Every store of this process, so that a forked child can renew their locks and connections.
_STORES: weakref.WeakSet[SqliteStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._after_fork()


hold_across_fork(lambda: [store._lock for store in list(_STORES)], _after_fork_in_child)
