"""Small concurrent calls sent together, pure: which calls may share requests, and how the one
merged answer (or failure) is shared back, each caller getting its own rows and its own error.

A RAG service answering many users at once makes many one-text query calls within a few
milliseconds; sent apart at an account of 50 requests a minute, 50 of them take a minute, where
5 requests of 10 take six seconds. The client gathers calls that arrive while a merged call is
open (:data:`WINDOW_S`, or until the budget's next free slot, at most :data:`MAX_HOLD_S`:
holding a call no longer than the account would anyway), keyed by what changes the request
(:func:`key`: queries and documents, and each output, never share one), and sends them as one
call (:mod:`empirio._io.coalesce` does the waiting).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import EmpirioError, InvalidInputError
from .result import EmbeddingResult, Usage
from .types import Kind, Output

__all__ = [
    "MAX_HOLD_S",
    "MAX_TEXTS",
    "WINDOW_S",
    "Place",
    "hold_for",
    "joinable",
    "key",
    "share",
    "share_error",
]

#: How long an open merged call waits for others to join, at least, in seconds.
WINDOW_S = 0.003
#: The longest a merged call is held open while the account's next slot is further away, in s.
MAX_HOLD_S = 1.0
#: The most texts one merged call gathers (ten requests of ten).
MAX_TEXTS = 100


@dataclass(frozen=True, slots=True)
class Place:
    """One caller's texts in a merged call: ``count`` of them from ``start``."""

    start: int
    count: int

    @property
    def stop(self) -> int:
        return self.start + self.count


def key(kind: Kind, output: Output) -> tuple[Kind, Output]:
    """What calls must share to share requests: the instruction (queries and documents differ)
    and the views asked for."""
    return kind, output


def joinable(n_texts: int, batch_size: int, *, progress: bool, as_lists: bool) -> bool:
    """Whether a call of ``n_texts`` may be merged with others: fewer texts than one request
    holds (a full request gains nothing), and no progress of its own to report."""
    return 0 < n_texts < batch_size and not progress and not as_lists


def hold_for(next_slot_in: float) -> float:
    """How long to keep a merged call open, in seconds: :data:`WINDOW_S`, or until the
    account's next slot (``next_slot_in`` seconds away) if that is later, at most
    :data:`MAX_HOLD_S`: its request could not leave sooner anyway."""
    return max(WINDOW_S, min(next_slot_in, MAX_HOLD_S))


def share(result: EmbeddingResult, places: Sequence[Place]) -> list[EmbeddingResult]:
    """Each caller's rows of a merged ``result``. The merged call's usage is reported once, by
    the first caller's result (the client's ``usage`` counts everything exactly)."""
    out = []
    for k, place in enumerate(places):
        dense = None if result.dense is None else result.dense[place.start : place.stop]
        sparse = None if result.sparse is None else result.sparse[place.start : place.stop]
        out.append(EmbeddingResult(dense, sparse, result.usage if k == 0 else Usage()))
    return out


def share_error(
    error: EmpirioError, places: Sequence[Place]
) -> list[EmbeddingResult | EmpirioError | None]:
    """Each caller's outcome of a merged call that failed with ``error``: its rows if every one
    of its texts finished (``error.partial``), else its own copy of the error whose ``partial``,
    ``partial_indices`` and ``inputs`` speak of its own texts. ``None`` for a caller that
    must run alone: an input refused before anything was sent (``InvalidInputError``, such as
    an over-length text with ``overflow="error"``) belongs to one caller, not to all."""
    if isinstance(error, InvalidInputError):
        return [None] * len(places)
    row_of = {index: row for row, index in enumerate(error.partial_indices)}
    partial = error.partial
    out: list[EmbeddingResult | EmpirioError | None] = []
    for place in places:
        mine = [(i - place.start, row_of[i]) for i in range(place.start, place.stop) if i in row_of]
        rows = [row for _, row in mine]
        taken = _rows(partial, rows) if partial is not None and rows else None
        if taken is not None and len(mine) == place.count:
            out.append(taken)
            continue
        own = copy.copy(error)
        own.partial = taken
        own.partial_indices = tuple(i for i, _ in mine)
        own.inputs = tuple(i - place.start for i in error.inputs if place.start <= i < place.stop)
        out.append(own)
    return out


def _rows(result: EmbeddingResult, rows: list[int]) -> EmbeddingResult:
    index = np.asarray(rows, dtype=np.intp)
    dense = None if result.dense is None else result.dense[index]
    sparse = None if result.sparse is None else [result.sparse[r] for r in rows]
    return EmbeddingResult(dense, sparse, Usage())
