"""Identical texts paid for once per call, pure.

A large call is planned in segments (see ``_client._pipelined_plans``), and each segment only
de-duplicates its own texts: 20,000 texts with 500 distinct sent 10,100 inputs. A call sets its
repeats aside first, sends the distinct texts, and spreads the results (and any error's
positions and partial results) back over the caller's positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .errors import EmpirioError
from .result import EmbeddingResult

__all__ = ["Distinct"]


@dataclass(frozen=True, slots=True)
class Distinct:
    """The distinct texts of a call, and where each of the caller's texts is among them.

    Attributes:
        texts: the distinct texts, in order of first appearance.
        where: for each of the caller's positions, the index of its text in :attr:`texts`;
            ``None`` when there were no repeats (nothing to spread).
        first: for each distinct text, its first position in the caller's list (``None``
            when there were no repeats).
    """

    texts: list[str]
    where: npt.NDArray[np.intp] | None
    first: tuple[int, ...] | None

    @classmethod
    def of(cls, texts: list[str]) -> Distinct:
        """Set the repeats of ``texts`` aside."""
        index: dict[str, int] = {}
        where = [index.setdefault(t, len(index)) for t in texts]
        if len(index) == len(texts):
            return cls(texts, None, None)
        first: list[int] = [0] * len(index)
        for pos in range(len(texts) - 1, -1, -1):
            first[where[pos]] = pos
        return cls(list(index), np.asarray(where, dtype=np.intp), tuple(first))

    @property
    def repeats(self) -> int:
        """Texts of the caller's that repeat an earlier one (served without a request)."""
        return 0 if self.where is None else len(self.where) - len(self.texts)

    def spread(self, result: EmbeddingResult) -> EmbeddingResult:
        """``result`` (one row per distinct text) as one row per caller's text."""
        if self.where is None:
            return result
        dense = None if result.dense is None else result.dense[self.where]
        sparse = None
        if result.sparse is not None:
            sparse = [dict(result.sparse[u]) for u in self.where.tolist()]
        return EmbeddingResult(dense, sparse, result.usage, result.offset)

    def spread_rows(self, rows: Sequence[list[float]]) -> list[list[float]]:
        """Rows of Python floats (one per distinct text) as one per caller's text; a repeat
        gets its own copy, so that changing one row never changes another."""
        if self.where is None:
            return list(rows)
        seen = bytearray(len(rows))
        out = []
        for u in self.where.tolist():
            out.append(rows[u] if not seen[u] else list(rows[u]))
            seen[u] = 1
        return out

    def spread_error(self, exc: EmpirioError) -> EmpirioError:
        """``exc`` with its positions (``inputs``, ``partial``, ``partial_indices``) moved from
        the distinct texts to the caller's: every caller's text of a finished distinct text is
        in the partial result."""
        if self.where is None:
            return exc
        members: dict[int, list[int]] = {}
        for pos, u in enumerate(self.where.tolist()):
            members.setdefault(u, []).append(pos)
        if exc.inputs:
            exc.inputs = tuple(sorted(p for u in exc.inputs for p in members.get(u, ())))
        if exc.partial is not None and exc.partial_indices:
            order = sorted(
                (p, row) for row, u in enumerate(exc.partial_indices) for p in members.get(u, ())
            )
            rows = np.asarray([row for _, row in order], dtype=np.intp)
            part = exc.partial
            dense = None if part.dense is None else part.dense[rows]
            sparse = None if part.sparse is None else [dict(part.sparse[r]) for r in rows.tolist()]
            exc.partial = EmbeddingResult(dense, sparse, part.usage)
            exc.partial_indices = tuple(p for p, _ in order)
        if hasattr(exc, "indices"):
            exc.indices = exc.inputs
        return exc
