"""Embedding a column of a table, as the engines (Ray Data, Spark) need it: a bad row is a row
error, not a job failure; everything else comes back in row order.

Shared by :mod:`empirio.ray` and :mod:`empirio.spark`, which only convert to and from their
own batch formats. Account-wide failures (a wrong key, no credits, an unknown model, retries
exhausted) are raised: the job fails with the client's message, and with ``cache=`` everything
finished before is kept for the rerun.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from ._core.errors import ConfigurationError, InvalidInputError
from ._core.plan import Kind, Output
from ._core.result import Usage
from ._core.secret import open_sealed, seal_secrets
from ._core.types import wants_dense, wants_sparse
from .client import EmbeddingClient

__all__ = ["JobUsage", "RowResult", "embed_batch", "embed_rows", "open_options", "seal_options"]


@dataclass(frozen=True, slots=True)
class JobUsage:
    """What an engine job did and spent, summed over its workers (see the engines' ``Tally``).

    Attributes:
        rows: rows handled (embedded, taken from the cache, or failed).
        row_errors: rows that got an error instead of a vector.
        usage: the workers' requests, tokens and estimated cost together.
    """

    rows: int = 0
    row_errors: int = 0
    usage: Usage = field(default_factory=Usage)

    def __add__(self, other: JobUsage) -> JobUsage:
        return JobUsage(
            self.rows + other.rows, self.row_errors + other.row_errors, self.usage + other.usage
        )

    def __str__(self) -> str:
        errors = f" ({self.row_errors:,} with a row error)" if self.row_errors else ""
        return f"{self.rows:,} row{'' if self.rows == 1 else 's'}{errors}; {self.usage}"


@dataclass(frozen=True, slots=True)
class RowResult:
    """One batch's vectors, one row per input row.

    Attributes:
        dense: ``(n, dimensions)`` float32; rows of failed inputs are zeros (see ``errors``), or
            ``None`` for sparse-only output.
        sparse: ``{token_id: weight}`` per row (``None`` where the row failed), or ``None``.
        errors: ``None`` for an embedded row, else why it was not embedded.
    """

    dense: npt.NDArray[np.float32] | None
    sparse: list[dict[int, float] | None] | None
    errors: list[str | None]

    @property
    def ok(self) -> npt.NDArray[np.bool_]:
        """Which rows were embedded."""
        return np.array([e is None for e in self.errors], dtype=bool)


def _row_error(value: object) -> str | None:
    """Why ``value`` cannot be embedded, if it obviously cannot (checked before any send)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "null: no text to embed"
    if not isinstance(value, str):
        return f"not a string: {type(value).__name__}"
    if not value.strip():
        return "blank: the service refuses empty or whitespace-only texts"
    return None


def _reason(exc: InvalidInputError) -> str:
    """A row's share of an input error (its message names positions in a sub-list)."""
    text = str(exc)
    if "exceed" in text:
        return "over the model's input limit of 8,191 tokens (overflow='error')"
    if "surrogate" in text:
        return "not valid Unicode (a lone surrogate): cannot be sent"
    return text.split(":")[0]


def embed_rows(
    client: EmbeddingClient, values: Sequence[object], *, kind: Kind, output: Output
) -> RowResult:
    """Embed ``values`` (a column's values); a bad value is a row error, the rest embedded.

    Raises:
        EmpirioError: an account-wide failure (any error that is not about some rows' input).
    """
    n = len(values)
    errors = [_row_error(v) for v in values]
    todo = [i for i in range(n) if errors[i] is None]
    dense = np.zeros((n, client.dimensions), dtype=np.float32) if wants_dense(output) else None
    sparse: list[dict[int, float] | None] | None = [None] * n if wants_sparse(output) else None
    while todo:
        try:
            texts = cast(list[str], [values[i] for i in todo])  # checked: strings
            result = client.embed(texts, kind=kind, output=output, show_progress=False)
        except InvalidInputError as exc:
            if not exc.indices:
                raise
            bad = set(exc.indices)
            reason = _reason(exc)
            for j in bad:
                errors[todo[j]] = reason
            todo = [t for j, t in enumerate(todo) if j not in bad]
            continue
        rows = np.asarray(todo, dtype=np.intp)
        if dense is not None and result.dense is not None:
            dense[rows] = result.dense
        if sparse is not None and result.sparse is not None:
            for i, vec in zip(todo, result.sparse, strict=True):
                sparse[i] = vec
        break
    return RowResult(dense, sparse, errors)


def embed_batch(
    client: EmbeddingClient, values: Sequence[object], *, kind: Kind, output: Output
) -> tuple[RowResult, JobUsage]:
    """:func:`embed_rows`, and what it did (rows and row errors, for a job's tally; what it
    paid reaches the tally as it is paid, through the client's ``on_usage``)."""
    rows = embed_rows(client, values, kind=kind, output=output)
    failed = sum(e is not None for e in rows.errors)
    return rows, JobUsage(len(values), failed)


def seal_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Client options for shipping to workers: the key, a cache secret and Redis URLs sealed,
    so they are in no pickle's bytes (see :mod:`empirio._core.secret`)."""
    if "client" in options or "http_client" in options or "async_http_client" in options:
        raise ConfigurationError(
            "engine workers make their own clients: pass client options (api_key, base_url, "
            "rpm, cache, ...), not a client or an HTTP client"
        )
    return seal_secrets(options)


def open_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`seal_options` undone, on the worker."""
    return open_sealed(options)
