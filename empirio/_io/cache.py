"""The embedding cache a client reads and writes: a store (:class:`EmbeddingStore`) and this
client's hit and miss counts; opening one from the ``cache=`` setting. Keys and bytes:
:mod:`empirio._core.cache_keys`."""

from __future__ import annotations

import os
import threading
import warnings

from .._core.cache_keys import CacheStats, EmbeddingStore
from .._core.config import is_redis_url
from .._core.errors import CacheWarning, ConfigurationError
from .callers import caller_level
from .redis_store import RedisStore
from .sqlite_store import SqliteStore

__all__ = ["EmbeddingCache", "open_cache"]


class EmbeddingCache:
    """A store plus this client's hit and miss counts.

    Args:
        store: where the vectors live.
    """

    def __init__(self, store: EmbeddingStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._rejected = 0

    def count(self, hits: int, misses: int, rejected: int = 0) -> None:
        """Add a lookup's counts; the first entries refused are warned of, once per cache."""
        with self._lock:
            self._hits += hits
            self._misses += misses
            first = rejected and not self._rejected
            self._rejected += rejected
        if first:
            warnings.warn(
                f"{rejected} entries of the embedding cache {self.store!r} failed their check "
                "(written with another key or cache_secret, damaged, or tampered with): they "
                "were not used, and their texts are embedded and written again. "
                "cache.stats().rejected counts them; this is said once per cache",
                CacheWarning,
                stacklevel=caller_level(),
            )

    def after_fork(self) -> None:
        """A forked child's counters: a new lock (the parent's may have been held)."""
        self._lock = threading.Lock()

    def stats(self) -> CacheStats:
        """Hits and misses of this client, and the store's size where it can tell."""
        entries = size = None
        measure = getattr(self.store, "size", None)
        if callable(measure):
            entries, size = measure()
        with self._lock:
            return CacheStats(self._hits, self._misses, entries, size, self._rejected)

    def __repr__(self) -> str:
        return f"EmbeddingCache(store={self.store!r})"


def open_cache(
    cache: str | os.PathLike[str] | EmbeddingStore | None,
) -> tuple[EmbeddingCache | None, SqliteStore | RedisStore | None]:
    """The client's cache, and the store the client opened itself (and so closes), if any:
    a ``redis://`` URL is a :class:`~empirio._io.redis_store.RedisStore`, another string or path
    a :class:`~empirio._io.sqlite_store.SqliteStore` file."""
    if cache is None:
        return None, None
    if is_redis_url(cache):
        redis_store = RedisStore(str(cache))
        return EmbeddingCache(redis_store), redis_store
    if isinstance(cache, str | os.PathLike):
        store = SqliteStore(cache)
        return EmbeddingCache(store), store
    if isinstance(cache, EmbeddingCache):
        return cache, None
    if not isinstance(cache, EmbeddingStore):
        raise ConfigurationError(
            f"cache must be a file path, a redis:// URL or a store with mget/mset (an "
            f"EmbeddingStore); got {type(cache).__name__}"
        )
    return EmbeddingCache(cache), None
