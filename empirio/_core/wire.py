"""What travels on the wire: pydantic models of requests, responses and error envelopes, and
the base64 codec for packed little-endian float32 vectors.

Both the client and the emulator use these, so one definition of the contract serves both.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from .types import EncodingFormat, InstructionMode, Kind, Output

__all__ = [
    "EmbeddingData",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "EncodingFormat",
    "ErrorBody",
    "ErrorEnvelope",
    "OutputType",
    "SparseItem",
    "TextType",
    "WireUsage",
    "decode_base64",
    "encode_base64",
    "request_body",
    "response_cap",
]

TextType = Literal["query", "document"]
OutputType = Literal["dense", "sparse", "dense&sparse"]


class EmbeddingRequest(BaseModel):
    """Body of ``POST /embeddings`` (OpenAI fields plus Alibaba's extension fields).

    Strict: ``input`` must be text, ``dimensions`` an int; unknown fields are kept, not rejected,
    because OpenAI-compatible clients add their own.
    """

    model_config = ConfigDict(extra="allow", strict=True)

    model: StrictStr
    input: StrictStr | list[StrictStr]
    dimensions: StrictInt | None = None
    encoding_format: EncodingFormat = "float"
    user: StrictStr | None = None
    text_type: TextType | None = None
    instruct: StrictStr | None = None
    output_type: OutputType | None = None


class SparseItem(BaseModel):
    """One weight of a sparse vector: a Qwen vocabulary id, its weight and its text."""

    index: int
    value: float
    token: str | None = None


class EmbeddingData(BaseModel):
    """One input's result; ``embedding`` is a float list or a base64 string, or absent when only
    sparse output was asked for."""

    object: str = "embedding"
    index: int
    embedding: list[float] | str | None = None
    sparse_embedding: list[SparseItem] | None = None


class WireUsage(BaseModel):
    """Tokens billed for a request."""

    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingResponse(BaseModel):
    """A successful response."""

    object: str = "list"
    model: str | None = None
    id: str | None = None
    data: list[EmbeddingData]
    usage: WireUsage = Field(default_factory=WireUsage)


class ErrorBody(BaseModel):
    """The inside of an OpenAI-style error envelope."""

    message: str = ""
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


class ErrorEnvelope(BaseModel):
    """``{"error": {...}, "request_id": ...}``."""

    error: ErrorBody
    request_id: str | None = None


def encode_base64(vector: npt.ArrayLike) -> str:
    """Pack a vector as little-endian float32 and base64-encode it (4 bytes per component)."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_base64(data: str, dimensions: int | None = None) -> npt.NDArray[np.float32]:
    """Decode a base64 ``<f4`` vector.

    Args:
        data: the base64 text.
        dimensions: if given, the number of components the vector must have.

    Raises:
        ValueError: the text is not base64, or its length does not fit ``dimensions``.
    """
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"embedding is not valid base64: {exc}") from None
    if len(raw) % 4:
        raise ValueError(f"base64 embedding has {len(raw)} bytes, not a multiple of 4")
    if dimensions is not None and len(raw) != 4 * dimensions:
        raise ValueError(f"base64 embedding has {len(raw) // 4} components, expected {dimensions}")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32, copy=False)


def request_body(
    texts: Sequence[str],
    *,
    model: str,
    dimensions: int,
    encoding_format: EncodingFormat,
    user: str | None,
    kind: Kind,
    output: Output,
    instruction_mode: InstructionMode,
    query_instruction: str,
) -> bytes:
    """The JSON body of one request (UTF-8; texts kept as they are, not ``\\u`` escaped)."""
    body: dict[str, Any] = {
        "model": model,
        "input": list(texts),
        "dimensions": dimensions,
        "encoding_format": encoding_format,
    }
    if user is not None:
        body["user"] = user
    if kind == "query" and instruction_mode == "api":
        body["text_type"] = "query"
        body["instruct"] = query_instruction
    if output != "dense":
        body["output_type"] = "dense&sparse" if output == "both" else "sparse"
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def response_cap(n_inputs: int, dimensions: int, sparse: bool) -> int:
    """The most bytes a decoded response to ``n_inputs`` inputs may hold: float-list JSON takes
    at most ~26 bytes a component, sparse output at most a few thousand weights of ~60 bytes.
    Larger is refused (a compression bomb, or not an embeddings response)."""
    per_input = 26 * dimensions + (512 * 1024 if sparse else 0) + 1024
    return 1024 * 1024 + n_inputs * per_input
