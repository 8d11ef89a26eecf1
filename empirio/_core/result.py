"""What a call returns: vectors and usage."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .config import PRICE_PER_MILLION_TOKENS_USD

__all__ = ["EmbeddingResult", "Usage", "UsageMeter"]

#: Rows converted to Python floats per call into numpy (about a millisecond each).
_ROWS_PER_SLICE = 16


@dataclass(frozen=True, slots=True)
class Usage:
    """Requests and tokens, and what they cost.

    Attributes:
        requests: requests that succeeded (each is billed).
        input_tokens: tokens billed, as the service reported them.
        retries: attempts that were repeated (5xx, 429, lost connections).
        rate_limited: 429 answers received.
        failed_requests: attempts that ended in an error or with no response (not billed).
        abandoned_requests: requests given up while in flight (the call was interrupted,
            cancelled or stopped early): the service may have billed them.
        abandoned_tokens: the tokens of those requests, by our exact count.
    """

    requests: int = 0
    input_tokens: int = 0
    retries: int = 0
    rate_limited: int = 0
    failed_requests: int = 0
    abandoned_requests: int = 0
    abandoned_tokens: int = 0

    @property
    def cost_usd(self) -> float:
        """Estimated cost in US dollars at $0.07 per million input tokens."""
        return self.input_tokens * PRICE_PER_MILLION_TOKENS_USD / 1_000_000

    # Field by field: dataclasses.astuple deep-copies every field, and this runs twice per
    # request (it was 8 % of a client's CPU).
    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.requests + other.requests,
            self.input_tokens + other.input_tokens,
            self.retries + other.retries,
            self.rate_limited + other.rate_limited,
            self.failed_requests + other.failed_requests,
            self.abandoned_requests + other.abandoned_requests,
            self.abandoned_tokens + other.abandoned_tokens,
        )

    def __sub__(self, other: Usage) -> Usage:
        """What was spent since ``other`` (an earlier snapshot of the same meter)."""
        return Usage(
            self.requests - other.requests,
            self.input_tokens - other.input_tokens,
            self.retries - other.retries,
            self.rate_limited - other.rate_limited,
            self.failed_requests - other.failed_requests,
            self.abandoned_requests - other.abandoned_requests,
            self.abandoned_tokens - other.abandoned_tokens,
        )

    def __str__(self) -> str:
        abandoned = (
            f"; {self.abandoned_requests} abandoned in flight, possibly billed "
            f"({self.abandoned_tokens:,} tokens)"
            if self.abandoned_requests
            else ""
        )
        return (
            f"{self.requests} request{'' if self.requests == 1 else 's'}, "
            f"{self.input_tokens:,} tokens, "
            f"${self.cost_usd:.6f} (retries {self.retries}, 429s {self.rate_limited}{abandoned})"
        )


class UsageMeter:
    """A running :class:`Usage`. Added to under the client's lock (by the call drivers); read
    at any time (a reference to a frozen value)."""

    def __init__(self) -> None:
        self.usage = Usage()

    def add(self, delta: Usage) -> None:
        self.usage = self.usage + delta


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    """Vectors for a run of texts, in the caller's order.

    Attributes:
        dense: float32 array of shape ``(n, dimensions)``, unit rows; ``None`` for sparse-only.
        sparse: one ``{token_id: weight}`` per text; ``None`` unless sparse output was asked for.
        usage: what producing these cost.
        offset: position of the first text in the caller's input (non-zero in ``iter_embed``).
    """

    dense: npt.NDArray[np.float32] | None
    sparse: list[dict[int, float]] | None
    usage: Usage
    offset: int = 0

    def dense_rows(self) -> list[list[float]]:
        """The dense vectors as lists of Python floats, what LangChain and LlamaIndex return.

        Raises:
            ValueError: the result holds no dense vectors (sparse output only).
        """
        if self.dense is None:
            raise ValueError("this result holds no dense vectors (output='sparse')")
        # In slices, giving the GIL away after each: one ndarray.tolist() holds it throughout
        # (about 50 ms per 1,000 rows of 1,024), and a thread that keeps it runs on until the
        # 5 ms switch interval. Either holds back the paced sends of a call still under way
        # (measured: 1-2 429s per 8,000 texts at 3,000 RPM on 2 cores; none with this).
        rows: list[list[float]] = []
        for i in range(0, len(self.dense), _ROWS_PER_SLICE):
            rows.extend(self.dense[i : i + _ROWS_PER_SLICE].tolist())
            time.sleep(0)
        return rows

    def __len__(self) -> int:
        if self.dense is not None:
            return int(self.dense.shape[0])
        return len(self.sparse or ())
