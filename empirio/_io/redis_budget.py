"""The account's budget in Redis: every process on every host of an account paces together.

``share_budget="redis://[:password@]host:port/db"`` (or ``rediss://``, or the same in
``EMPIRIOLABS_SHARE_BUDGET``). The rules are :mod:`empirio._core.pace`'s, the very ones the
machine's SQLite ledger applies (one home for the rules, several stores): each decision loads
the account's :class:`~empirio._core.pace.BudgetState`, applies the rule with **Redis's clock**
(``TIME``; hosts' monotonic clocks are not comparable) and stores the result in one optimistic
transaction (``WATCH``/``MULTI``/``EXEC``, retried when another process got there first), so the
check of every rule and the reservation are atomic across hosts. Tokens are reserved at the
exact pre-counted size before the send. The key is named by a hash of endpoint and key (never
either) and expires after a few minutes unused, so nothing accumulates.

Faults lose nothing:

* Unreachable at the first decision: :class:`~empirio.BudgetError` within a few seconds, naming
  the host and port (never the password).
* Lost later: one warning, and this process paces alone at its share of the account (the limits
  divided by the participants Redis last showed; each process beats a heartbeat into a sorted
  set), trying Redis again every few seconds; a restarted Redis (its state gone) is re-seeded
  from nothing.

Written by hand on redis-py's primitives: no library offers a token-aware, per-second,
jitter-tolerant admission whose rules must equal the local ledger's.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .._core.errors import BudgetError, ConfigurationError
from .._core.pace import BudgetState, Limits
from .._core.secret import redact
from .budget import LocalBudget, _Kept, _pack, _unpack

__all__ = ["RedisBudget", "checked_redis_url", "redis_display"]

logger = logging.getLogger("empirio")

_T = TypeVar("_T")
#: Seconds a budget key lives after its last use.
_TTL_S = 300
#: How often a process says it takes part, and how long a silent one still counts, in s.
_BEAT_S = 0.5
_MEMBER_S = 15.0
#: After Redis failed mid-run, how long to pace alone before trying it again, in seconds.
_RETRY_S = 3.0
#: Connect and read timeouts, in seconds: a dead Redis is found in about this long.
_SOCKET_S = 2.0
#: Optimistic retries of one decision before it is given up as contention.
_TRIES = 200


def redis_display(url: str) -> str:
    """``url`` as it may be shown: scheme, host, port and database, never a password."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or 6379
    return f"{parts.scheme}://{host}:{port}{parts.path or '/0'}"


def checked_redis_url(url: str, option: str) -> str | None:
    """Check that redis-py is installed and ``url`` names a host; return its password.

    Raises:
        ConfigurationError: one line naming ``option`` and the extra (never the password).
    """
    try:
        import redis  # noqa: F401  (the extra; checked here so a missing one fails at once)
    except ImportError:
        raise ConfigurationError(
            f"{option}=redis://... needs redis-py: pip install 'empirio[redis]'"
        ) from None
    parts = urlsplit(url)
    if parts.hostname is None:
        raise ConfigurationError(f"{option} {redis_display(url)!r} names no host")
    return parts.password


class RedisBudget(_Kept):
    """An account's pacing state in Redis (see the module docstring).

    Args:
        url: ``redis://[:password@]host:port/db`` or ``rediss://...``.
        account: the account's name (a hash of endpoint and key, see ``account_id``).

    Raises:
        ConfigurationError: redis-py is not installed, or the URL cannot be read.
    """

    def __init__(self, url: str, account: str) -> None:
        self._password = checked_redis_url(url, "share_budget")
        self._url = url
        self.display = redis_display(url)
        self._key = f"empirio:budget:{account}"
        self._members = f"empirio:members:{account}"
        self._me = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._client: Any = None
        self._reached = False
        self._fallback: LocalBudget | None = None  # while Redis is away
        self._retry_at = -math.inf
        self._participants = 1
        self._last_beat = -math.inf
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"RedisBudget({self.display!r})"

    def __reduce__(self) -> Any:
        raise TypeError("a RedisBudget is not pickled; the client makes its own")

    # ------------------------------------------------------------------ the Budget protocol

    def acquire(self, limits: Limits, now: float, tokens: int) -> float:
        if now < self._floor:
            return self._floor - now
        return self._either(
            lambda: super(RedisBudget, self).acquire(limits, now, tokens),
            lambda local: local.acquire(self._share(limits), now, tokens),
        )

    def sent(self, limits: Limits, admitted_at: float, now: float) -> None:
        self._either(
            lambda: super(RedisBudget, self).sent(limits, admitted_at, now),
            lambda local: local.sent(self._share(limits), admitted_at, now),
        )

    def throttled(self, limits: Limits, now: float, sent_at: float, delay: float) -> None:
        self._either(
            lambda: super(RedisBudget, self).throttled(limits, now, sent_at, delay),
            lambda local: local.throttled(self._share(limits), now, sent_at, delay),
        )

    def succeeded(self) -> None:
        self._either(
            lambda: super(RedisBudget, self).succeeded(),
            lambda local: local.succeeded(),
        )

    # ------------------------------------------------------------------ the store

    def _transact(
        self, now: float, fn: Callable[[BudgetState, float], tuple[_T, BudgetState]]
    ) -> _T:
        import redis

        client = self._connection()
        for _ in range(_TRIES):
            with client.pipeline() as pipe:
                try:
                    pipe.watch(self._key)
                    blob = pipe.get(self._key)
                    seconds, micros = pipe.time()
                    at = seconds + micros / 1e6
                    try:
                        state = _unpack(blob) if blob else BudgetState()
                    except Exception:  # unreadable (another version's?): an empty state
                        state = BudgetState()
                    out, new = fn(state, at)
                    pipe.multi()
                    if new is not state:
                        pipe.set(self._key, _pack(new), ex=_TTL_S)
                    if at - self._last_beat >= _BEAT_S:
                        self._last_beat = at
                        pipe.zadd(self._members, {self._me: at})
                        pipe.zremrangebyscore(self._members, "-inf", at - _MEMBER_S)
                        pipe.zcard(self._members)
                        pipe.expire(self._members, _TTL_S)
                        replies = pipe.execute()
                        self._participants = max(1, int(replies[-2]))
                    elif new is not state:
                        pipe.execute()
                    else:
                        pipe.reset()
                    return out
                except redis.WatchError:
                    continue
        raise redis.RedisError("too much contention on the budget key")

    # ------------------------------------------------------------------ faults

    def _share(self, limits: Limits) -> Limits:
        """This process's share of the account while Redis is away."""
        n = self._participants
        return Limits(
            None if limits.rpm is None else limits.rpm / n,
            None if limits.tpm is None else limits.tpm / n,
        )

    def _either(self, shared: Callable[[], _T], alone: Callable[[LocalBudget], _T]) -> _T:
        import redis

        with self._lock:
            fallback = self._fallback
            if fallback is None or time.monotonic() >= self._retry_at:
                try:
                    out = shared()
                except (redis.RedisError, OSError) as exc:
                    reason = redact(str(exc), self._password)
                    self._client = None
                    if not self._reached:
                        raise BudgetError(
                            f"the shared rate-limit budget at {self.display} cannot be reached "
                            f"({reason}); start Redis there, or set share_budget to 'machine'"
                        ) from None
                    if fallback is None:
                        logger.warning(
                            "the shared rate-limit budget at %s is unreachable (%s): pacing "
                            "this process alone at 1/%d of the account until it is back",
                            self.display,
                            reason,
                            self._participants,
                        )
                        fallback = self._fallback = LocalBudget()
                    self._retry_at = time.monotonic() + _RETRY_S
                    self._floor = -math.inf
                else:
                    self._reached = True
                    if fallback is not None:
                        logger.warning("the shared rate-limit budget at %s is back", self.display)
                        self._fallback = None
                    return out
        return alone(fallback)

    def _connection(self) -> Any:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(
                self._url,
                socket_connect_timeout=_SOCKET_S,
                socket_timeout=_SOCKET_S,
                retry_on_timeout=False,
            )
        return self._client

    def _after_fork(self) -> None:
        # The parent's connection is not the child's: it makes its own on first use.
        self._lock = threading.Lock()
        self._client = None
        self._me = uuid.uuid4().hex
        self._floor = -math.inf


_LIVE: weakref.WeakSet[RedisBudget] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for budget in list(_LIVE):
        budget._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
