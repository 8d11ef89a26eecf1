"""The persistent embedding cache's pure part: what a vector's key is made of, how it is stored
as bytes, and the store's interface. The store is pluggable (:class:`EmbeddingStore`); SQLite is
the embedded default (:mod:`empirio._io.sqlite_store`); the counting cache over a store is
:mod:`empirio._io.cache`.

The key is exactly what changes a vector and nothing else:

* the endpoint's identity: the host and path of a remote server; for a server on this
  machine, what it says it serves (the emulator's :data:`IDENTITY_HEADER`, so that emulators
  with the same vectors share entries whatever port they start on), else its port (a local
  proxy to the real service must never be served an emulator's vectors),
* the model and the dimensions,
* the task fields actually sent (``text_type``/``instruct`` with ``instruction_mode="api"``),
* the view stored (``dense`` or ``sparse``; a call for ``both`` reads and writes both),
* the text as sent (with the query prompt, where the client adds it), and, for a text over the
  input limit only, the over-length policy that shaped its vector (``truncate`` or ``chunk``).

``timeout``, ``rpm``, ``max_concurrency``, ``batch_size``, ``encoding_format`` and the key are
not part of it: they change how a vector is fetched, not the vector.

Values are compact: a dense vector is its float32 bytes (little-endian); a sparse vector is its
int32 token ids followed by its float64 weights (kept exact, so that a cached run returns
bit-for-bit what a fresh one did).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt

from .config import is_loopback_url
from .types import View

__all__ = [
    "IDENTITY_HEADER",
    "CacheScope",
    "CacheStats",
    "EmbeddingStore",
    "View",
    "decode_dense_rows",
    "decode_sparse",
    "encode_dense",
    "encode_sparse",
    "endpoint_identity",
]

#: The response header with which a local server says which vectors it serves (the emulator:
#: ``emulator-hashed-<vector seed>``); read from ``GET {base_url}/models``.
IDENTITY_HEADER = "x-empirio-vectors"
#: Bumped whenever the key material or the value format changes: old entries then miss.
_FORMAT = b"empirio-cache-1"
_SPARSE_ENTRY = 12  # bytes per non-zero: int32 id + float64 weight


@runtime_checkable
class EmbeddingStore(Protocol):
    """Where cached vectors live: string keys to bytes values.

    The two methods are those of LangChain's ``BaseStore[str, bytes]`` (``ByteStore``), so any
    LangChain byte store (``InMemoryByteStore``, ``RedisStore``, ``LocalFileStore``, ...) can be
    passed as it is. Both are called from several threads; ``mset`` should be durable when it
    returns (a resumed job relies on what was written).
    """

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """The value of each key, or ``None`` where there is none."""
        ...

    def mset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        """Store each pair, replacing any value the key had."""
        ...


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What a cache has done for one client, and how big it is.

    Attributes:
        hits: distinct texts served from the cache.
        misses: distinct texts looked up and not found (then fetched and written).
        entries: vectors stored (a text cached for both views counts twice), or ``None`` if
            the store cannot tell.
        size_bytes: bytes the store uses, or ``None`` if it cannot tell.
    """

    hits: int
    misses: int
    entries: int | None
    size_bytes: int | None

    @property
    def hit_rate(self) -> float:
        """Hits over lookups (0 before any lookup)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def encode_dense(row: npt.NDArray[np.float32]) -> bytes:
    """A dense vector as little-endian float32 bytes."""
    return np.ascontiguousarray(row, dtype="<f4").tobytes()


def decode_dense_rows(values: bytes, dimensions: int) -> npt.NDArray[np.float32]:
    """Dense vectors of ``dimensions`` stored one after another (their values joined), as a
    writable ``(n, dimensions)`` float32 array."""
    return np.frombuffer(values, dtype="<f4").astype(np.float32).reshape(-1, dimensions)


def encode_sparse(vec: dict[int, float]) -> bytes:
    """A sparse vector as int32 ids followed by float64 weights."""
    ids = np.fromiter(vec.keys(), dtype="<i4", count=len(vec))
    weights = np.fromiter(vec.values(), dtype="<f8", count=len(vec))
    return ids.tobytes() + weights.tobytes()


def decode_sparse(value: bytes) -> dict[int, float] | None:
    """The sparse vector in ``value``, or ``None`` if it is not one."""
    if len(value) % _SPARSE_ENTRY:
        return None
    n = len(value) // _SPARSE_ENTRY
    ids = np.frombuffer(value, dtype="<i4", count=n).tolist()
    weights = np.frombuffer(value, dtype="<f8", count=n, offset=4 * n).tolist()
    return dict(zip(ids, weights, strict=True))


def endpoint_identity(base_url: str, declared: str | None = None) -> str:
    """The endpoint as far as vectors go.

    Args:
        base_url: the endpoint.
        declared: for a server on this machine, the :data:`IDENTITY_HEADER` it sent, if any.

    Returns:
        host and path for a remote server; ``declared`` (and the path) for a local server that
        said what it serves; else the local port and path.
    """
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    if is_loopback_url(base_url):
        if declared:
            return f"local:{declared}{path}"
        return f"local:{parts.port or ''}{path}"
    return f"{(parts.hostname or '').lower()}{path}"


@dataclass(frozen=True, slots=True)
class CacheScope:
    """Everything of a call that its vectors depend on, except each text (see the module
    docstring)."""

    endpoint: str
    model: str
    dimensions: int
    text_type: str
    instruct: str

    def keys(self, view: View, texts: Sequence[str], tags: Sequence[str]) -> list[str]:
        """The key of each text's ``view``; ``tags[i]`` is the over-length policy that shaped
        text ``i`` (empty for a text within the limit)."""
        base = hashlib.blake2b(digest_size=16, person=b"empirio-vector")
        base.update(_FORMAT)
        for part in (self.endpoint, self.model, str(self.dimensions), self.text_type):
            base.update(b"\0" + part.encode())
        base.update(b"\0" + self.instruct.encode("utf-8", "surrogatepass"))
        base.update(b"\0" + view.encode() + b"\0")
        out = []
        for text, tag in zip(texts, tags, strict=True):
            h = base.copy()
            h.update(tag.encode() + b"\0")
            h.update(text.encode("utf-8", "surrogatepass"))
            out.append(h.hexdigest())
        return out
