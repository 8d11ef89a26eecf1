"""Reading responses, pure: bytes in, vectors or a typed error out. No I/O, no httpx."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from .errors import (
    APIResponseValidationError,
    APIStatusError,
    UnsupportedFeatureError,
    status_error,
)
from .retry import parse_retry_after
from .secret import redact
from .wire import EmbeddingResponse, ErrorEnvelope, decode_base64

__all__ = [
    "LIMIT_HEADERS",
    "NORM_TOLERANCE",
    "Decoded",
    "advertised_limits",
    "batch_limit_from",
    "decode_error",
    "decode_success",
    "unit_rows",
]

#: How far a dense row's L2 norm may be from 1 (the service returns unit vectors; float32
#: rounding and base64 transport move it by about 1e-7). A row outside is not a vector.
NORM_TOLERANCE = 0.01
#: Sparse ids are vocabulary ids, stored as int32 in the cache.
_MAX_SPARSE_ID = 2**31 - 1

# "...batch size is invalid, it should not be larger than 10..." (seen upstream), and kin.
_BATCH_LIMIT_RE = re.compile(
    r"(?:batch size|inputs?|input\.contents|array).*?(?:not be larger than|at most|"
    r"maximum(?: of)?|exceed(?:s|ed)?|no more than|up to|<=)\s*(\d+)",
    re.IGNORECASE | re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class Decoded:
    """A successful response, checked against the request that caused it.

    Attributes:
        dense: ``(n, dimensions)`` float32 rows in input order, or ``None``.
        sparse: ``{token_id: weight}`` per input in input order, or ``None``.
        tokens: billed tokens (``usage.total_tokens``).
    """

    dense: npt.NDArray[np.float32] | None
    sparse: list[dict[int, float]] | None
    tokens: int


def decode_success(
    body: bytes, *, n_inputs: int, dimensions: int, dense: bool, sparse: bool
) -> Decoded:
    """Parse and check a 2xx body.

    Checks that there is one item per input with indices ``0..n-1`` (any order; sorted here),
    that dense vectors (float lists or base64 ``<f4``) have ``dimensions`` components, and that
    sparse data is present when asked for.

    Raises:
        APIResponseValidationError: the body breaks the contract.
        UnsupportedFeatureError: sparse output was asked for but the endpoint sent none.
    """
    try:
        resp = EmbeddingResponse.model_validate_json(body)
    except ValidationError as exc:
        raise APIResponseValidationError(
            f"the response is not a valid embeddings response: {exc.errors()[0]['msg']}"
        ) from None
    items = sorted(resp.data, key=lambda d: d.index)
    if [d.index for d in items] != list(range(n_inputs)):
        raise APIResponseValidationError(
            f"the response has {len(items)} embeddings with indices "
            f"{[d.index for d in items][:12]}, expected indices 0..{n_inputs - 1}"
        )
    out_dense = None
    if dense:
        out_dense = np.empty((n_inputs, dimensions), dtype=np.float32)
        for row, item in enumerate(items):
            emb = item.embedding
            if emb is None:
                raise APIResponseValidationError(f"embedding {row} has no dense vector")
            if isinstance(emb, str):
                try:
                    out_dense[row] = decode_base64(emb, dimensions)
                except ValueError as exc:
                    raise APIResponseValidationError(f"embedding {row}: {exc}") from None
            else:
                if len(emb) != dimensions:
                    raise APIResponseValidationError(
                        f"embedding {row} has {len(emb)} components, expected {dimensions}"
                    )
                out_dense[row] = emb
        _check_rows(out_dense)
    out_sparse = None
    if sparse:
        if any(item.sparse_embedding is None for item in items):
            raise UnsupportedFeatureError(
                "the endpoint returned no sparse vectors (output_type='dense&sparse' was "
                "ignored): this endpoint does not support sparse output"
            )
        out_sparse = []
        for row, item in enumerate(items):
            vec: dict[int, float] = {}
            for s in item.sparse_embedding or ():
                if not (0 <= s.index <= _MAX_SPARSE_ID and math.isfinite(s.value)):
                    raise APIResponseValidationError(
                        f"sparse embedding {row} has token id {s.index} with weight {s.value}: "
                        f"ids must be from 0 to {_MAX_SPARSE_ID}, weights finite"
                    )
                vec[s.index] = vec.get(s.index, 0.0) + s.value
            out_sparse.append(vec)
    return Decoded(out_dense, out_sparse, resp.usage.total_tokens)


def unit_rows(rows: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """Which rows are unit vectors: L2 norm within :data:`NORM_TOLERANCE` of 1. A row with a NaN
    or infinite component has a NaN or infinite square sum, and fails too; so does all zeros.
    The squares are summed in float32 (``einsum``: no float64 copy of the matrix, 100x faster
    than ``linalg.norm``); their error, ~1e-6 at 2,048 dimensions, is far inside the margin."""
    with np.errstate(over="ignore", invalid="ignore"):
        squares = np.einsum("ij,ij->i", rows, rows)
    lo, hi = (1.0 - NORM_TOLERANCE) ** 2, (1.0 + NORM_TOLERANCE) ** 2
    good: npt.NDArray[np.bool_] = (squares >= lo) & (squares <= hi)
    return good


def _check_rows(rows: npt.NDArray[np.float32]) -> None:
    """Refuse rows that are not unit vectors: NaN or infinite components, all zeros, or a norm
    far from 1. Such a row would be returned, cached and searched as if it meant something."""
    bad = np.flatnonzero(~unit_rows(rows))
    if bad.size:
        row = int(bad[0])
        ok = bool(np.isfinite(rows[row]).all())
        norm = float(np.linalg.norm(rows[row].astype(np.float64)))
        what = f"L2 norm {norm:.6g}" if ok else "non-finite components"
        raise APIResponseValidationError(
            f"embedding {row} is not a unit vector ({what}; {bad.size} of {len(rows)} rows "
            "bad): the server's answer was not trusted, nor cached"
        )


def decode_error(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    now_epoch: float,
    secrets: tuple[str, ...] = (),
) -> APIStatusError:
    """The typed error for a non-2xx response; tolerant of bodies that are not JSON. Every
    ``secrets`` (the key) that the server echoed is masked out of what it says."""
    message, code, request_id = "", None, headers.get("x-request-id")
    try:
        env = ErrorEnvelope.model_validate_json(body)
        message = env.error.message
        code = None if env.error.code is None else str(env.error.code)
        request_id = env.request_id or request_id
    except ValidationError:
        message = body[:300].decode("utf-8", errors="replace").strip()
    return status_error(
        status,
        redact(message, *secrets) or f"HTTP {status} with no message",
        code=None if code is None else redact(code, *secrets),
        request_id=None if request_id is None else redact(request_id, *secrets),
        retry_after=parse_retry_after(headers, now_epoch),
    )


#: The headers in which a server advertises the account's limits, per minute, by setting.
LIMIT_HEADERS = (("rpm", "x-ratelimit-limit-requests"), ("tpm", "x-ratelimit-limit-tokens"))


def advertised_limits(headers: Mapping[str, str]) -> dict[str, float | None]:
    """The limits ``headers`` advertise, by setting (``rpm``, ``tpm``): a number per minute, or
    ``None`` for ``unlimited``. A header that is absent or unreadable is left out."""
    found: dict[str, float | None] = {}
    for name, header in LIMIT_HEADERS:
        raw = (headers.get(header) or "").strip().lower()
        if raw in ("unlimited", "none"):
            found[name] = None
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        if math.isfinite(value) and value >= 1:
            found[name] = value
    return found


def batch_limit_from(error: APIStatusError) -> int | None:
    """The per-request input limit a 400 names ("should not be larger than 10"), if any."""
    if error.status_code != 400:
        return None
    m = _BATCH_LIMIT_RE.search(error.message)
    if m is None:
        return None
    n = int(m.group(1))
    return n if n >= 1 else None
