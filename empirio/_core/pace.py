"""Pacing to the account's limits. Pure: time is passed in. (Requests in flight:
:mod:`empirio._core.concurrency`; the limits in effect: :mod:`empirio._core.limits`.)

The service enforces its limits at its own clock, per minute and per second (RPS = RPM/60,
TPS = TPM/60; a sliding window counts arrivals in ``(t - w, t]``). A request we send at ``s``
arrives at ``s + d`` with ``d`` varying by up to ``J`` seconds (network and scheduling jitter),
so two requests spaced exactly by the service's interval can land in one window. The rules
here hold the service's windows at *our* clock widened by ``J``:

* Requests: spaced ``I = max((60 + J + B) / rpm, (1 + J + B) / floor(rpm / 60))`` seconds
  apart on a schedule (GCRA) that lets a send late by up to ``B`` (:data:`LATE_S`, a sleep's
  or a busy loop's lateness) keep its slot instead of pushing every later one back, and owes
  nothing more to an idle sender. ``k + 1`` requests then span at least ``k * I - B``, so no
  window of 60 s holds more than ``rpm`` and none of 1 s more than ``floor(rpm / 60)`` (at
  least 1), even with every arrival shifted by up to ``J``.
* Tokens: the tokens sent in the last ``1 + J`` seconds plus this request's stay within
  ``tpm / 60`` (a request larger than that goes alone), and those of the last ``61 + J``
  seconds within ``tpm``.

A sender that was idle longer than a keep-alive (:data:`IDLE_S`) opens new connections, whose
set-up (TCP, TLS) delays the first requests by more than later ones: for :data:`COLD_S` after
such a start, :data:`COLD_JITTER_S` more is tolerated.

**The margin follows what is measured** (``J`` and ``B`` above are not constants):

* ``B``, how late a send may leave and keep its slot, is the 95th percentile of this process's
  own measured lateness (when a send left, against the time it was granted) over the last
  :data:`LATENESS_WINDOW` sends of the last :data:`LATENESS_AGE_S` seconds, between
  :data:`LATE_S` and :data:`MAX_LATE_S` (:class:`Lateness`). A busy CPU makes sends late, and
  the late ones arrive closer to the next: the schedule leaves room for exactly that, and gives
  it back when the sends are on time again (old samples leave the window).
* ``J``, the network's share, starts at :data:`JITTER_S`; a 429 widens it (to twice what it
  was, at least 20 ms more, at most :data:`MAX_JITTER_S`: the service saw two requests closer
  than we sent them) and the widening halves every :data:`HALF_LIFE_S` seconds with no further
  429, so a run with a few early 429s is back at full speed within seconds.

A first 429 holds every sender for one interval only, so one late packet does not stall the
account for the second its Retry-After names; a second 429 in a row means real overload
(another machine on the account, or lower limits than we were told), and every sender then
waits as long as the server asked or the backoff says.

**Reserve ahead, send on schedule.** A budget kept on a server (Redis a few ms away) answers
later than the slot it grants. :func:`reserve` therefore books a request's slot up to
``ahead`` seconds in the future (:func:`ahead_for`: twice the store's measured round trip), and
the shell sends it at that time, whatever later transactions take: the store's round trip
delays the first request only, and never bunches sends together. When tokens bind (long
texts), :func:`reserve_part` books the head of a request that the second's remaining tokens
have room for, rather than leave them unused.

:class:`BudgetState` is everything the senders of one account share; :func:`reserve` (and
:func:`admit`, :func:`reserve_part`), :func:`sent`, :func:`throttle` and :func:`succeed` are the
only ways it changes, and :func:`checked_state` says whether a stored one could be theirs.
Where it is kept (one process, a file shared by every process of the machine, Redis) is the
shell's business (:mod:`empirio._io.budget`).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

__all__ = [
    "COLD_JITTER_S",
    "COLD_S",
    "HALF_LIFE_S",
    "IDLE_S",
    "JITTER_S",
    "LATENESS_AGE_S",
    "LATENESS_WINDOW",
    "LATE_S",
    "MAX_AHEAD_S",
    "MAX_JITTER_S",
    "MAX_LATE_S",
    "MINUTE_S",
    "Budget",
    "BudgetState",
    "Grant",
    "Lateness",
    "Limits",
    "admit",
    "ahead_for",
    "checked_state",
    "reserve",
    "reserve_part",
    "sent",
    "sent_late",
    "succeed",
    "throttle",
]

#: Arrival jitter tolerated from the start, in seconds (with ``LATE_S``: 2.4 % of throughput).
JITTER_S = 0.02
#: How late a send may be and keep its place in the schedule, at least, in seconds (more when
#: this process's sends are measured later: :class:`Lateness`).
LATE_S = 0.005
#: The most lateness the schedule makes room for, in seconds: later than this is a stall (a
#: pause of the whole process), which :func:`sent` answers instead.
MAX_LATE_S = 0.25
#: Sends whose lateness is kept, and the longest a sample counts, in seconds.
LATENESS_WINDOW = 64
LATENESS_AGE_S = 10.0
#: The widening a 429 adds to the margin halves every this many seconds, in seconds.
HALF_LIFE_S = 2.0
#: The furthest ahead a slot is reserved, in seconds (see :func:`ahead_for`).
MAX_AHEAD_S = 1.0
#: Extra jitter tolerated while connections are being opened, in seconds.
COLD_JITTER_S = 0.1
#: How long a start counts as cold, in seconds.
COLD_S = 1.0
#: Idle longer than this (httpx's keep-alive expiry), in seconds, and a start is cold again.
IDLE_S = 5.0
#: The most jitter tolerated after repeated 429s, in seconds.
MAX_JITTER_S = 0.5
#: The per-minute window we keep, in seconds: the service's 60 plus one of slack.
MINUTE_S = 61.0
#: A little more than nothing, so that boundary cases fall on the safe side of a half-open window.
_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class Limits:
    """An account's limits.

    Attributes:
        rpm: requests per minute, or ``None`` for no limit.
        tpm: tokens per minute, or ``None`` for no limit.
    """

    rpm: float | None
    tpm: float | None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and 0 < value < math.inf):
                raise ValueError(f"{name} must be a positive finite number or None; got {value!r}")

    @property
    def paced(self) -> bool:
        """Whether any limit applies."""
        return self.rpm is not None or self.tpm is not None

    @property
    def per_second_requests(self) -> int:
        """Requests the service admits in any one second: ``floor(rpm / 60)``, at least 1."""
        return max(1, int(self.rpm // 60)) if self.rpm is not None else 0

    def interval(self, jitter: float, late: float = LATE_S) -> float:
        """Seconds between two requests, tolerating ``jitter`` seconds of arrival jitter and
        sends up to ``late`` seconds late."""
        if self.rpm is None:
            return 0.0
        slack = jitter + late
        return max((60.0 + slack) / self.rpm, (1.0 + slack) / self.per_second_requests) + _EPS


@dataclass(frozen=True, slots=True)
class BudgetState:
    """What every sender of one account shares. Times are ``time.monotonic()`` seconds.

    Attributes:
        next_request: the earliest time of the next request.
        paused_until: no request before this (after a 429).
        jitter: the arrival jitter tolerated right after the last 429 (:data:`JITTER_S` before
            any), in seconds; what it adds to :data:`JITTER_S` halves every
            :data:`HALF_LIFE_S` seconds from ``last_cut`` (see :meth:`margin`).
        strikes: 429s since the last success.
        last_cut: when the last 429 was taken into account; 429s for requests sent before it
            answer the same overload.
        sends: ``(time, tokens)`` of the requests of the last minute, oldest first (kept only
            when ``tpm`` applies).
        cold_until: until when the start counts as cold (see :data:`COLD_S`).
    """

    next_request: float = -math.inf
    paused_until: float = -math.inf
    jitter: float = JITTER_S
    strikes: int = 0
    last_cut: float = -math.inf
    sends: tuple[tuple[float, int], ...] = field(default=())
    cold_until: float = -math.inf

    def margin(self, now: float) -> float:
        """The arrival jitter tolerated at ``now``, in seconds: :data:`JITTER_S`, plus the
        widening of the last 429 halved for every :data:`HALF_LIFE_S` since, plus
        :data:`COLD_JITTER_S` during a cold start."""
        return self.widened(now) + (COLD_JITTER_S if now < self.cold_until else 0.0)

    def widened(self, now: float) -> float:
        """The network's share of the margin at ``now`` (no cold start), in seconds."""
        extra = self.jitter - JITTER_S
        if extra <= 0:
            return JITTER_S
        age = max(0.0, now - self.last_cut)
        return JITTER_S + extra * math.exp2(-age / HALF_LIFE_S)

    def settled(self, now: float) -> BudgetState:
        """This state with sends older than the minute window dropped, and any time further in
        the future than pacing can explain (a clock from before a reboot) forgotten."""
        horizon = now + 2 * MINUTE_S + 120.0
        if self.next_request > horizon or self.paused_until > horizon or self.last_cut > horizon:
            return BudgetState()
        cut = now - MINUTE_S - MAX_JITTER_S - COLD_JITTER_S
        sends = self.sends
        if sends and (sends[0][0] <= cut or sends[-1][0] > horizon):
            sends = tuple(s for s in sends if cut < s[0] <= horizon)
        return self if sends is self.sends else replace(self, sends=sends)


def _time(send: tuple[float, int]) -> float:
    return send[0]


def _token_wait(limits: Limits, state: BudgetState, now: float, tokens: int) -> float:
    """The earliest time at or after ``now`` at which ``tokens`` more fit the token windows."""
    if limits.tpm is None:
        return now
    t = now
    per_second = limits.tpm / 60.0
    j = state.margin(now)
    for span, cap in ((1.0 + j, per_second), (MINUTE_S + j, limits.tpm)):
        inside = state.sends[bisect.bisect_right(state.sends, now - span, key=_time) :]
        total = sum(n for _, n in inside)
        if not inside or total + tokens <= cap:
            continue
        if tokens > cap:  # goes alone: wait until the window is empty
            t = max(t, inside[-1][0] + span + _EPS)
            continue
        excess = total + tokens - cap
        for sent, n in inside:
            excess -= n
            if excess <= 0:
                t = max(t, sent + span + _EPS)
                break
    return t


def reserve(
    limits: Limits,
    state: BudgetState,
    now: float,
    tokens: int,
    *,
    ahead: float = 0.0,
    late: float = LATE_S,
) -> tuple[float, bool, BudgetState]:
    """Book a request of ``tokens``: at the earliest time ``t >= now`` that every rule allows,
    if ``t`` is no more than ``ahead`` seconds away.

    Args:
        ahead: how far ahead a slot may be booked, in seconds (0: only now).
        late: how late this process's sends are measured to leave (:meth:`Lateness.late`),
            in seconds: a send that late keeps its slot, and the interval leaves room for it.

    Returns:
        ``(t - now, True, state with the send recorded at t)`` when booked, else
        ``(seconds until a slot could be booked, False, state)``.
    """
    if not limits.paced:
        wait = state.paused_until - now
        return (wait, False, state) if wait > 0 else (0.0, True, state)
    state = state.settled(now)
    if now - state.next_request > IDLE_S:
        state = replace(state, cold_until=now + COLD_S)
    t = max(now, state.paused_until, state.next_request)
    if limits.tpm is not None:
        t = _token_wait(limits, state, t, tokens)
    if t > now + ahead + _EPS:
        return t - now - ahead, False, state
    sends = (*state.sends, (t, tokens)) if limits.tpm is not None else ()
    nxt = max(state.next_request, t - late) + limits.interval(state.margin(t), late)
    return t - now, True, replace(state, next_request=nxt, sends=sends)


def reserve_part(
    limits: Limits,
    state: BudgetState,
    now: float,
    pieces: Sequence[int],
    *,
    ahead: float = 0.0,
    late: float = LATE_S,
) -> tuple[float, int, BudgetState]:
    """Book the leading pieces of a request that the token windows leave room for, when the
    whole request must wait for tokens while a request could go (tokens bind): a second's
    remainder carries the head of the next request instead of going unused.

    Args:
        pieces: the billed tokens of each input of the request, in order.

    Returns:
        ``(seconds until its slot, number of leading pieces booked, state)``; with 0 pieces
        booked (the state unchanged), the seconds until a head could be booked (``inf``: the
        request has a single input, or tokens are not paced).
    """
    if limits.tpm is None or len(pieces) < 2:
        return math.inf, 0, state
    state = state.settled(now)
    t = max(now, state.paused_until, state.next_request)
    t = _token_wait(limits, state, t, pieces[0])  # when the first fits, at a request's slot
    if t > now + ahead + _EPS:
        return t - now - ahead, 0, state
    k, total = 0, 0
    for n in pieces[:-1]:
        if _token_wait(limits, state, t, total + n) > t:
            break
        k, total = k + 1, total + n
    wait, booked, new = reserve(limits, state, t, total, late=late)
    if not booked or k == 0:  # pragma: no cover - the windows were just checked at t
        return math.inf, 0, state
    return t - now + wait, k, new


def admit(
    limits: Limits, state: BudgetState, now: float, tokens: int, late: float = LATE_S
) -> tuple[float, BudgetState]:
    """Whether a request of ``tokens`` may go at ``now`` (:func:`reserve` with nothing ahead).

    Returns:
        ``(0.0, state with the send recorded)`` if it may go, else ``(seconds to wait, state)``.
    """
    wait, booked, new = reserve(limits, state, now, tokens, late=late)
    return (0.0, new) if booked else (wait, new)


def sent(
    limits: Limits, state: BudgetState, admitted_at: float, now: float, late: float = LATE_S
) -> BudgetState:
    """Take the moment a request actually left into account.

    A send held up between its slot and the wire (a garbage-collection pause, a busy I/O
    thread) by more than the lateness the schedule already leaves room for would arrive closer
    to the next request than it was paced: the next then goes no sooner than one interval
    after this one really left.

    Args:
        admitted_at: the time its slot was granted for.
        now: when it left.
        late: the lateness the schedule leaves room for (see :func:`reserve`), in seconds.
    """
    if limits.rpm is None or now - admitted_at <= max(late, state.margin(now) / 2):
        return state
    nxt = now + limits.interval(state.margin(now), late)
    return state if nxt <= state.next_request else replace(state, next_request=nxt)


def sent_late(limits: Limits, admitted_at: float, now: float, late: float = LATE_S) -> bool:
    """Whether a send that left at ``now`` may be late enough for :func:`sent` to change the
    schedule (the smallest margin is :data:`JITTER_S`); most leave on time, and a budget then
    spares its store the transaction."""
    return limits.rpm is not None and now - admitted_at > max(late, JITTER_S / 2)


def throttle(
    limits: Limits, state: BudgetState, now: float, sent_at: float, delay: float
) -> BudgetState:
    """Take a 429 into account: widen the jitter margin and hold every sender.

    Args:
        sent_at: when the refused request was sent; refusals of requests sent before the last
            429 was taken into account answer the same overload and change nothing.
        delay: how long the server asked to wait (or the backoff), in seconds.
    """
    if sent_at < state.last_cut:
        return state
    # Strikes end with the success of the process that took them; one that never succeeded
    # again (it ended) leaves them standing, so a minute without a 429 ends them as well.
    strikes = (state.strikes if now - state.last_cut < MINUTE_S else 0) + 1
    was = state.widened(now)
    jitter = min(MAX_JITTER_S, max(2 * was, was + 0.02))
    # A first refusal is most likely one late packet: skip one interval. Another means overload.
    pause = min(delay, limits.interval(jitter)) if strikes == 1 and limits.paced else delay
    return replace(
        state,
        strikes=strikes,
        jitter=jitter,
        last_cut=now,
        paused_until=max(state.paused_until, now + pause),
    )


def succeed(state: BudgetState) -> BudgetState:
    """Take a success into account: the strikes end (the margin comes back down with time,
    see :meth:`BudgetState.margin`)."""
    return state if state.strikes == 0 else replace(state, strikes=0)


def checked_state(state: BudgetState) -> BudgetState:
    """``state`` if every value in it is one the rules could have written, else ValueError.

    A budget read from a file or a server is not trusted: a NaN would turn pacing off (every
    comparison with it is false), a huge margin would hold the account for hours, and sends out
    of order would break the token windows.
    """
    times = (state.next_request, state.paused_until, state.last_cut, state.cold_until)
    if any(math.isnan(t) or t == math.inf for t in times):
        raise ValueError("a time that is not a number")
    if not (math.isfinite(state.jitter) and JITTER_S <= state.jitter <= MAX_JITTER_S + _EPS):
        raise ValueError(f"a jitter margin out of range: {state.jitter!r}")
    if not 0 <= state.strikes <= 1_000_000:
        raise ValueError(f"a strike count out of range: {state.strikes!r}")
    previous = -math.inf
    for t, n in state.sends:
        if not math.isfinite(t) or t < previous or not 0 <= n <= 1 << 40:
            raise ValueError("sends that are not finite times in order with token counts")
        previous = t
    return state


@dataclass(frozen=True, slots=True)
class Grant:
    """A budget's answer to a blocking ask (:meth:`Budget.reserve`), in the caller's clock.

    Attributes:
        at: when the decision was made (monotonic seconds).
        send_at: when the request is to be sent (booked), or ``None`` (not booked).
        retry_at: when not booked, when to ask again.
        part: when only the leading inputs of the request were booked (the token windows had
            room for them, not for all: :func:`reserve_part`), how many; 0 for all.
    """

    at: float
    send_at: float | None
    retry_at: float = 0.0
    part: int = 0


def ahead_for(round_trip: float) -> float:
    """How far ahead to reserve slots with a budget store whose transactions take
    ``round_trip`` seconds (a high percentile): twice that, so that the next slot is booked
    before the one in hand is due, capped at :data:`MAX_AHEAD_S`; 0 for a store in memory."""
    return 0.0 if round_trip <= 0 else min(MAX_AHEAD_S, 2.0 * round_trip + 0.002)


@dataclass(slots=True)
class Lateness:
    """How late this process's sends leave, measured: the shells note each send's lateness
    (the time it left less the time its slot was granted for) and the budget asks
    :meth:`late` (see the module docstring). Not thread-safe: its owner guards it."""

    _samples: list[tuple[float, float]] = field(default_factory=list)  # (when, lateness)
    _high: float = LATE_S

    def observe(self, now: float, lateness: float) -> None:
        """Note a send that left ``lateness`` seconds after its slot, at ``now``."""
        self._samples.append((now, max(0.0, lateness)))
        if len(self._samples) > LATENESS_WINDOW:
            del self._samples[0]
        self._update(now)

    def late(self, now: float) -> float:
        """The lateness the schedule leaves room for at ``now``, in seconds: the 95th
        percentile of the samples of the last :data:`LATENESS_AGE_S` seconds, between
        :data:`LATE_S` and :data:`MAX_LATE_S`."""
        if self._samples and self._samples[0][0] < now - LATENESS_AGE_S:
            self._update(now)
        return self._high

    def _update(self, now: float) -> None:
        cut = now - LATENESS_AGE_S
        while self._samples and self._samples[0][0] < cut:
            del self._samples[0]
        if not self._samples:
            self._high = LATE_S
            return
        ordered = sorted(x for _, x in self._samples)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        self._high = min(MAX_LATE_S, max(LATE_S, p95))


class Budget(Protocol):
    """The pacing state of one account, wherever it is kept (memory, a SQLite file, Redis:
    :mod:`empirio._io.budget`), through which the rules above are applied. Times are monotonic
    seconds of the caller's clock.

    Attributes:
        blocking: whether its transactions wait on a file or a server. The engine then asks it
            nothing itself (:attr:`~empirio._core.engine.Step.ask`,
            :attr:`~empirio._core.engine.Completion.budget_note`): the session asks it outside
            its lock, and the async shell off the event loop, where a file locked for seconds or
            a slow Redis would stall every other task.
    """

    blocking: bool

    def acquire(self, limits: Limits, now: float, tokens: int) -> float:
        """Record a send of ``tokens`` at ``now`` and return 0, or return the seconds to wait
        (a budget in memory, asked by the engine itself)."""

    def acquire_part(self, limits: Limits, now: float, pieces: Sequence[int]) -> tuple[int, float]:
        """When :meth:`acquire` said wait: record a send at ``now`` of the leading inputs
        (``pieces``: their tokens) that fit the token windows now, and return how many, or
        0 and the seconds until some could go (see :func:`reserve_part`)."""

    def reserve(self, limits: Limits, tokens: int, pieces: Sequence[int] = ()) -> Grant:
        """Book a slot for a send of ``tokens``, now or a little ahead, or for its leading
        ``pieces`` if only they fit (a blocking budget, asked outside every lock; it reads the
        clock itself, in the store's transaction)."""

    def free_at(self) -> float:
        """No request goes before this, as far as this process knows (monotonic seconds)."""

    def note_sent(self, limits: Limits, admitted_at: float, now: float) -> bool:
        """Measure a send that left at ``now`` for a slot at ``admitted_at`` (in memory, at
        once) and say whether it was late enough that :meth:`sent` should be told."""

    def sent(self, limits: Limits, admitted_at: float, now: float) -> None:
        """Note that a request admitted at ``admitted_at`` actually left at ``now``."""

    def throttled(self, limits: Limits, now: float, sent_at: float, delay: float) -> None:
        """Note a 429 for a request sent at ``sent_at``; ``delay`` is the server's wait."""

    def succeeded(self) -> None:
        """Note a success."""
