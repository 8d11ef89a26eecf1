"""The embedding cache in Redis: one cache for every process on every host.

``cache="redis://[:password@]host:port/db"`` (or ``rediss://``): the vectors a Ray actor, a
Spark task, a web replica or a CI runner paid for are found by all the others, and a killed or
retried job's rerun pays only for what was not finished. Keys are the cache's own (keyed hashes
of the endpoint, model, dimensions, options and text: see :mod:`empirio._core.cache_keys`),
under ``empirio:cache:``; values are the same sealed bytes the SQLite cache keeps. Entries do
not expire: a cache is kept on purpose. Bound Redis's memory with its own ``maxmemory`` and an
``allkeys-lru`` policy (a dense vector of 1,024 dimensions takes about 4.2 KB).

A Redis that cannot be reached is a :class:`~empirio.CacheError` naming host and port (never the
password) when vectors are looked up; a failed write warns and the call goes on (its vectors are
returned). Pickles carry the URL sealed (see :mod:`empirio._core.secret`); each process, and each
child after a fork, opens its own connections (redis-py's pool does so by process id).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from .._core.errors import CacheError
from .._core.secret import SealedKey, redact
from .redis_budget import checked_redis_url

__all__ = ["RedisStore"]

#: The prefix of every cache key in Redis.
PREFIX = "empirio:cache:"
#: Connect and read timeouts, in seconds.
_SOCKET_S = 5.0
#: Keys per ``MGET`` (a part of :meth:`RedisStore.iter_mget`), and ``MGET``s sent ahead of the
#: answer being read: with one more always queued, Redis looks up the next keys while this
#: process parses and checks the last answer.
_CHUNK = 128
_AHEAD = 2


class RedisStore:
    """A byte store (``mget``/``mset``) in Redis for ``cache=``; see the module docstring.

    Args:
        url: ``redis://[:password@]host:port/db`` or ``rediss://...``.

    Raises:
        ConfigurationError: redis-py is not installed, or the URL names no host.
    """

    def __init__(self, url: str) -> None:
        read = checked_redis_url(url, "cache")
        self._password = read.secrets
        self._url = SealedKey(url)
        self._connect = SealedKey(read.connect_url())
        self.display = read.display
        self._client: Any = None

    def __repr__(self) -> str:
        return f"RedisStore({self.display!r})"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _restore, (self._url,)

    def _redis(self) -> Any:
        # No lock: two threads racing here make two pools and one is dropped, which is harmless,
        # while a lock held by another thread at a fork would hang the child.
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(
                self._connect.reveal(),
                socket_timeout=_SOCKET_S,
                socket_connect_timeout=_SOCKET_S,
                health_check_interval=30,
            )
        return self._client

    def _error(self, exc: Exception, doing: str) -> CacheError:
        why = redact(f"{type(exc).__name__}: {exc}", *self._password)
        return CacheError(f"the embedding cache in Redis at {self.display} failed {doing}: {why}")

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys`` (``None`` where there is none), in order."""
        return [value for part in self.iter_mget(keys) for value in part]

    def iter_mget(self, keys: Sequence[str]) -> Iterator[list[bytes | None]]:
        """The values of ``keys`` (``None`` where there is none), in order, in consecutive parts
        of up to :data:`_CHUNK` keys.

        One ``MGET`` a part on one connection, :data:`_AHEAD` sent before their answers are
        read, so that Redis looks up the next while this process parses and checks one: an
        all-hits read of 50,000 vectors took 2.9 us a vector against 4.8 for one ``MGET`` per
        1,000 keys waited on in turn, and 4.6 for redis-py's pipeline (which sends them all at
        once, so that Redis answers none before it has looked up every key). redis-py has no
        bounded pipeline, hence these lines over its connection. A connection that fails with
        answers due is closed, never handed back; a read cut off (a connection dropped, a
        timeout) goes on once more, on a new connection, from the first part not answered
        (written here: redis-py's ``Retry`` re-runs one call whole, and parts already handed
        out must not be read again)."""
        import redis

        parts = [keys[i : i + _CHUNK] for i in range(0, len(keys), _CHUNK)]
        done = 0
        cut_off = False
        while done < len(parts):
            try:
                pool = self._redis().connection_pool
                conn = pool.get_connection()
            except redis.RedisError as exc:
                raise self._error(exc, "to read") from None
            try:
                for values in _read_ahead(conn, parts[done:]):
                    if len(values) != len(parts[done]):
                        raise CacheError(
                            f"the embedding cache in Redis at {self.display} answered the "
                            "wrong count"
                        )
                    done += 1
                    yield [v if isinstance(v, bytes) else None for v in values]
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                conn.disconnect()
                if cut_off:
                    raise self._error(exc, "to read") from None
                cut_off = True
            except redis.RedisError as exc:
                conn.disconnect()
                raise self._error(exc, "to read") from None
            except BaseException:
                conn.disconnect()  # answers may still be due on it (closed early, Ctrl-C)
                raise
            finally:
                pool.release(conn)

    def mset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        """Store each pair (one round trip)."""
        if not key_value_pairs:
            return
        import redis

        try:
            self._redis().mset({PREFIX + k: v for k, v in key_value_pairs})
        except redis.RedisError as exc:
            raise self._error(exc, "to write") from None

    def close(self) -> None:
        """Close this process's connections."""
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _read_ahead(conn: Any, parts: Sequence[Sequence[str]]) -> Iterator[list[Any]]:
    """The answers to ``MGET`` of each of ``parts``, in order; :data:`_AHEAD` are sent ahead of
    the one read, and the next is sent before an answer is handed out. Only the first send
    checks the connection's health: a health check's ``PING`` with answers due would read one
    of them as its ``PONG``."""
    for i, part in enumerate(parts[:_AHEAD]):
        conn.send_packed_command([_mget(part)], check_health=i == 0)
    for i in range(len(parts)):
        values = conn.read_response()
        if i + _AHEAD < len(parts):
            conn.send_packed_command([_mget(parts[i + _AHEAD])], check_health=False)
        yield values


def _mget(keys: Sequence[str]) -> bytes:
    """``MGET`` of the cache's ``keys`` (under :data:`PREFIX`), as sent (RESP: an array of bulk
    strings, each its byte length and its bytes).

    Written here rather than packed by redis-py, whose packer encodes each argument in Python:
    1.7 us a key against 0.04 for keys of one length (ours are: the cache's keys are hex
    digests), and 0.5 for any others; in an all-hits read of 4 KB vectors that was a tenth of
    all the client's work."""
    size = len(PREFIX) + len(keys[0])
    body = f"\r\n${size}\r\n{PREFIX}".join(keys)
    if body.isascii() and all(len(k) + len(PREFIX) == size for k in keys):
        # ASCII: a character is a byte, so every key's length is ``size``, in bytes too.
        return b"*%d\r\n$4\r\nMGET\r\n$%d\r\n%s%s\r\n" % (
            len(keys) + 1,
            size,
            PREFIX.encode(),
            body.encode(),
        )
    encoded = [(PREFIX + k).encode() for k in keys]
    return b"*%d\r\n$4\r\nMGET\r\n" % (len(keys) + 1) + b"".join(
        b"$%d\r\n%s\r\n" % (len(e), e) for e in encoded
    )


def _restore(url: SealedKey) -> RedisStore:
    return RedisStore(url.reveal())
