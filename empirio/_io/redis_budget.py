"""The account's budget in Redis: every process on every host of an account paces together.

``share_budget="redis://[:password@]host:port/db"`` (or ``rediss://``, or the same in
``EMPIRIOLABS_SHARE_BUDGET``). The rules are :mod:`empirio._core.pace`'s, the very ones the
machine's SQLite ledger applies (one home for the rules, several stores): each decision reads
the account's :class:`~empirio._core.pace.BudgetState` and **Redis's clock** (``GET`` and
``TIME`` in one round trip; hosts' monotonic clocks are not comparable), applies the rule here,
and stores the result with a compare-and-set script (one round trip: the state is written only
if it is still the one read, else the decision is made again), so the check of every rule and
the reservation are atomic across hosts in two round trips, where ``WATCH``/``MULTI``/``EXEC``
took four. A Redis 20 ms away then costs 40 ms a decision; slots are booked that far ahead
(:func:`~empirio._core.pace.reserve`) and each request leaves at its own time. Tokens are
reserved at the exact pre-counted size before the send. The key is named by a hash of endpoint
and key, or of the ``account=`` name (never either) and expires after a few minutes unused, so
nothing accumulates. What is read is checked before it is used: a value that is not a state the
rules could have written (a NaN, garbage, another version's) is replaced by a fresh state, with
one warning naming the key.

Faults lose nothing:

* Unreachable at the first decision: :class:`~empirio.BudgetError` within a few seconds, naming
  the host and port (never the password).
* Lost later, or so contended that a decision is pre-empted :data:`_TRIES` times in a row:
  one warning, and this process paces alone at its share of the account (the limits divided by
  the participants Redis last showed; each process beats a heartbeat into a sorted set), trying
  Redis again every few seconds; a restarted Redis (its state gone) is re-seeded from nothing.

Written by hand on redis-py's primitives: no library offers a token-aware, per-second,
jitter-tolerant admission whose rules must equal the local ledger's.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .._core.config import RedisURL, parse_redis_url
from .._core.errors import BudgetError, ConfigurationError
from .._core.pace import BudgetState, Grant, Limits
from .._core.secret import redact
from .budget import LocalBudget, _Kept, _pack, _unpack

__all__ = ["RedisBudget", "checked_redis_url"]

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
#: Optimistic tries of one decision before it is given up as contention (and this process
#: paces alone at its share for a while, as when Redis is lost).
_TRIES = 12
#: Write the state only if it is still the one read (ARGV[1], empty for none), and beat this
#: process's heartbeat into the members' set. Returns {written, members or -1}, and when not
#: written the state another process wrote meanwhile and Redis's clock, so that the decision
#: is made again without another read. A generic compare-and-set: every rule stays in
#: empirio._core.pace. (TIME comes last: no write may follow it in a script on Redis < 7.)
_CAS = """
local ok = 1
local cur = false
if ARGV[2] ~= '' then
  cur = redis.call('GET', KEYS[1])
  if (cur or '') ~= ARGV[1] then
    ok = 0
  else
    redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  end
end
local n = -1
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[5]) - tonumber(ARGV[6]))
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  n = redis.call('ZCARD', KEYS[2])
end
if ok == 1 then
  return {1, n}
end
local t = redis.call('TIME')
return {0, n, cur or '', t[1], t[2]}
"""


class _Contended(Exception):
    """Other processes changed the budget key between every read and write of a decision."""


def checked_redis_url(url: str, option: str) -> RedisURL:
    """Check that redis-py is installed and ``url`` can be read; return it, read.

    Raises:
        ConfigurationError: one line naming ``option`` and the extra (never the password).
    """
    try:
        import redis  # noqa: F401  (the extra; checked here so a missing one fails at once)
    except ImportError:
        raise ConfigurationError(
            f"{option}=redis://... needs redis-py: pip install 'empirio[redis]'"
        ) from None
    try:
        return parse_redis_url(url, option)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


class RedisBudget(_Kept):
    """An account's pacing state in Redis (see the module docstring).

    Args:
        url: ``redis://[:password@]host:port/db`` or ``rediss://...``.
        account: the account's name (a hash of endpoint and key, see ``account_id``).

    Raises:
        ConfigurationError: redis-py is not installed, or the URL cannot be read.
    """

    def __init__(self, url: str, account: str) -> None:
        super().__init__()
        read = checked_redis_url(url, "share_budget")
        self._password = read.secrets
        self._url = read.connect_url()
        self.display = read.display
        self._key = f"empirio:budget:{account}"
        self._members = f"empirio:members:{account}"
        self._me = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._client: Any = None
        self._cas: Any = None
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

    def reserve(self, limits: Limits, tokens: int, pieces: Sequence[int] = ()) -> Grant:
        return self._either(
            lambda: super(RedisBudget, self).reserve(limits, tokens, pieces),
            lambda local: local.reserve(self._share(limits), tokens, pieces),
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
        self, now: float | None, fn: Callable[[BudgetState, float], tuple[_T, BudgetState]]
    ) -> tuple[_T, float]:
        client = self._connection()
        where = f"{self.display} (key {self._key})"
        start = time.monotonic()
        with client.pipeline(transaction=False) as pipe:
            pipe.get(self._key)
            pipe.time()
            blob, (seconds, micros) = pipe.execute()
        # Redis read its clock about halfway through the round trip.
        local = (start + time.monotonic()) / 2 if now is None else now
        at = seconds + micros / 1e6
        for _ in range(_TRIES):
            state = (
                self._checked(functools.partial(_unpack, blob), where) if blob else BudgetState()
            )
            out, new = fn(state, at)
            beat = at - self._last_beat >= _BEAT_S
            if new is state and not beat:
                return out, local
            start = time.monotonic()
            reply = self._cas(
                keys=[self._key, self._members],
                args=[
                    blob or b"",
                    b"" if new is state else _pack(new),
                    _TTL_S,
                    self._me if beat else "",
                    repr(at),
                    repr(_MEMBER_S),
                ],
            )
            end = time.monotonic()
            if beat:
                self._last_beat = at
                self._participants = max(1, int(reply[1]))
            if reply[0]:
                return out, local
            # Another process wrote first: decide again on what it wrote, at Redis's time now,
            # after a pause of up to one round trip, so that processes woken together by one
            # free slot do not collide again in step.
            blob, at = reply[2] or None, int(reply[3]) + int(reply[4]) / 1e6
            local = (start + end) / 2 if now is None else now + (end - start)
            time.sleep(random.uniform(0.0, end - start))
        raise _Contended(f"the budget key was changed by other processes {_TRIES} times in a row")

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
                except (redis.RedisError, OSError, _Contended) as exc:
                    reason = redact(str(exc), *self._password)
                    contended = isinstance(exc, _Contended)
                    if not contended:
                        self._client = None
                    if not self._reached and not contended:
                        raise BudgetError(
                            f"the shared rate-limit budget at {self.display} cannot be reached "
                            f"({reason}); start Redis there, or set share_budget to 'machine'"
                        ) from None
                    if fallback is None:
                        logger.warning(
                            "the shared rate-limit budget at %s is %s (%s): pacing this "
                            "process alone at 1/%d of the account until it is back",
                            self.display,
                            "too contended" if contended else "unreachable",
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
            # EVALSHA, loading the script again if Redis lost it (a restart).
            self._cas = self._client.register_script(_CAS)
        return self._client

    def _after_fork(self) -> None:
        # The parent's connection is not the child's: it makes its own on first use.
        self._after_fork_measures()
        self._lock = threading.Lock()
        self._client = None
        self._me = uuid.uuid4().hex


_LIVE: weakref.WeakSet[RedisBudget] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for budget in list(_LIVE):
        budget._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
