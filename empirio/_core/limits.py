"""The limits a client paces to, and how far a server's advertised limits are believed. Pure.

A server may advertise its account's limits (``x-ratelimit-limit-requests``/``-tokens``, read
by :func:`~empirio._core.decode.advertised_limits`); limits nobody set follow them, read on
every answer, but a server is not taken at its word: tighter at once, looser only when repeated
and a step at a time, never above a ceiling (:meth:`LimitsInEffect.adopt`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .types import LimitSource

__all__ = ["ADOPT_AFTER", "RAMP", "RPM_CEILING", "TPM_CEILING", "LimitSource", "LimitsInEffect"]

#: A looser limit advertised by a server is adopted once this many answers in a row say so...
ADOPT_AFTER = 3
#: ... and then at most this many times the limit in effect, a step at a time: a server that
#: says more than it takes is found out by a few 429s at one step, not by a storm.
RAMP = 10.0
#: The most an advertised limit is believed, per minute: requests, tokens (a number above is
#: taken as this; "unlimited" needs :data:`ADOPT_AFTER` answers in a row).
RPM_CEILING = 60_000.0
TPM_CEILING = 1e10


@dataclass(frozen=True, slots=True)
class LimitsInEffect:
    """The limits a client paces to now, and where each came from (see :data:`LimitSource`).

    ``str()`` says it in a sentence, e.g. ``50 requests and 2,000,000 tokens a minute (the
    defaults, until the server advertises its own)``.
    """

    rpm: float | None
    tpm: float | None
    rpm_source: LimitSource
    tpm_source: LimitSource
    #: Answers in a row that advertised a looser limit than the one in effect, and the tightest
    #: of them (``math.inf``: unlimited), per limit.
    rpm_looser: tuple[int, float] = (0, math.inf)
    tpm_looser: tuple[int, float] = (0, math.inf)

    @property
    def listening(self) -> bool:
        """Whether a server's advertised limits may still change these (a limit set as an
        argument or in the environment never does)."""
        return self.rpm_source != "set" or self.tpm_source != "set"

    def adopt(self, advertised: Mapping[str, float | None]) -> LimitsInEffect:
        """These limits once a server has advertised ``advertised`` in one answer (``rpm``/``tpm``
        per minute, ``None`` for unlimited; see :func:`~empirio._core.decode.advertised_limits`).

        A limit given as an argument or in the environment (``"set"``) never changes. One nobody
        set follows the server, read on every answer, but is not taken at its word: a
        **tighter** limit is adopted at once (pacing below the account costs time, overrunning
        it costs 429s); a **looser** one only once :data:`ADOPT_AFTER` answers in a row say so
        (the tightest of them), and then at most :data:`RAMP` times the limit in effect, so
        that a server's word is approached a step at a time, each step earned by as many
        answers again; never above :data:`RPM_CEILING`/:data:`TPM_CEILING`, past which only
        "unlimited" (if said) is the next step. What is not advertised stays as it is.
        """
        rpm, rpm_source, rpm_looser = _revise(
            self.rpm, self.rpm_source, self.rpm_looser, advertised, "rpm", RPM_CEILING
        )
        tpm, tpm_source, tpm_looser = _revise(
            self.tpm, self.tpm_source, self.tpm_looser, advertised, "tpm", TPM_CEILING
        )
        return LimitsInEffect(rpm, tpm, rpm_source, tpm_source, rpm_looser, tpm_looser)

    def __str__(self) -> str:
        def rate(value: float | None, unit: str) -> str:
            return f"no {unit} limit" if value is None else f"{value:,.0f} {unit}s"

        sources = {self.rpm_source, self.tpm_source}
        why = {
            "set": "as set",
            "default": "the defaults, until the server advertises its own",
            "server": "as the server advertises",
        }
        said = "; ".join(
            f"{name} {why[src]}"
            for name, src in (("rpm", self.rpm_source), ("tpm", self.tpm_source))
        )
        return (
            f"{rate(self.rpm, 'request')} and {rate(self.tpm, 'token')} a minute "
            f"({why[next(iter(sources))] if len(sources) == 1 else said})"
        )


def _revise(
    value: float | None,
    source: LimitSource,
    looser: tuple[int, float],
    advertised: Mapping[str, float | None],
    name: str,
    ceiling: float,
) -> tuple[float | None, LimitSource, tuple[int, float]]:
    """One limit of :meth:`LimitsInEffect.adopt`: ``(value, source, looser streak)``."""
    if source == "set" or name not in advertised:
        return value, source, looser
    said = advertised[name]
    said_f = math.inf if said is None else min(float(said), ceiling)
    now_f = math.inf if value is None else value
    if not (said_f > 0):  # nothing sensible (a 0, a NaN): ignored
        return value, source, looser
    if said_f <= now_f:  # tighter (or the same): at once
        return (None if said_f == math.inf else said_f), "server", (0, math.inf)
    count, least = looser
    count, least = count + 1, min(least, said_f)
    if count < ADOPT_AFTER:
        return value, source, (count, least)
    step = min(least, now_f * RAMP)
    if step >= ceiling:
        step = least if least == math.inf or now_f >= ceiling else ceiling
    return (None if step == math.inf else step), "server", (0, math.inf)
