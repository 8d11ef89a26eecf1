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

A cache may be shared (a Redis, a file on a team's disk), so nothing in it is trusted:

* **Keys are keyed hashes.** They are made with a secret (:func:`cache_secret`: derived from
  the API key, or from ``cache_secret=`` for the keys of one account that share a cache), so
  whoever lacks it can neither find a text's vector nor test whether a text was ever embedded.
* **Values are sealed** (:func:`seal`): a format byte, a random nonce and a tag of
  :data:`MAC_BYTES` come before the vector; the tag is AES-256-GCM's over the key and the
  vector's bytes (authenticated, not encrypted), under a key derived from the secret. An entry
  whose tag fails (written by someone without the secret, moved under another key, damaged),
  or whose vector is not what the service sends (not finite, not of unit norm, of the wrong
  size; a sparse id out of range), is a miss: counted, never returned, and fetched and written
  again (:func:`open_dense`, :func:`open_sparse`).
* Entries of the format before (an HMAC-SHA-256 in front) are still opened, so that a cache
  written by an earlier version is not paid for again; entries of the format before that
  (unkeyed, unsealed) have other keys: they are misses.

Why AES-GCM (from ``cryptography``, pyca's): reading a cache checks one tag per entry, and
AES-GCM, on the CPU's AES and carry-less multiply instructions, checked a 4 KB entry in 2.5 us
where HMAC-SHA-256 (hashlib's, on the CPU's SHA instructions) took 5.0-6.6 us, and keyed
BLAKE2b more: the check was a third of an all-hits read. Its nonces are random (12 bytes,
drawn by the caller): AES-GCM keeps its promise up to 2**32 entries written per secret, far
beyond any cache's size (that many vectors cost thousands of dollars to embed).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt

from .config import is_loopback_url
from .decode import unit_rows
from .types import View

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "IDENTITY_HEADER",
    "MAC_BYTES",
    "NONCE_BYTES",
    "CacheScope",
    "CacheStats",
    "Checked",
    "EmbeddingStore",
    "Found",
    "View",
    "cache_secret",
    "decode_dense_rows",
    "decode_sparse",
    "encode_dense",
    "encode_sparse",
    "endpoint_identity",
    "open_checked",
    "open_dense",
    "open_found",
    "open_sparse",
    "seal",
]

#: The response header with which a local server says which vectors it serves (the emulator:
#: ``emulator-hashed-<vector seed>``); read from ``GET {base_url}/models``.
IDENTITY_HEADER = "x-empirio-vectors"
#: Bumped whenever the key material changes: old entries then miss. (A value's format is told
#: by its first byte, :data:`_SEALED`: entries of the format before are still read.)
_FORMAT = b"empirio-cache-3"
_SPARSE_ENTRY = 12  # bytes per non-zero: int32 id + float64 weight
#: Bytes of each entry's tag (AES-GCM's; the HMAC's of the format before, truncated).
MAC_BYTES = 16
_SECRET_BYTES = 32


@runtime_checkable
class EmbeddingStore(Protocol):
    """Where cached vectors live: string keys to bytes values.

    The two methods are those of LangChain's ``BaseStore[str, bytes]`` (``ByteStore``), so any
    LangChain byte store (``InMemoryByteStore``, ``RedisStore``, ``LocalFileStore``, ...) can be
    passed as it is. Both are called from several threads; ``mset`` should be durable when it
    returns (a resumed job relies on what was written).

    A store may also have ``iter_mget(keys)``, yielding the same values in consecutive parts
    (ours do): each part is then checked as it comes, while the store reads the next.
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
        misses: distinct texts looked up and not found (then fetched and written); entries
            that failed their check count here too.
        rejected: entries found but refused (their seal failed, or their vector was not one
            the service sends), and so fetched again; see the module docstring.
        entries: vectors stored (a text cached for both views counts twice), or ``None`` if
            the store cannot tell.
        size_bytes: bytes the store uses, or ``None`` if it cannot tell.
    """

    hits: int
    misses: int
    entries: int | None
    size_bytes: int | None
    rejected: int = 0

    @property
    def hit_rate(self) -> float:
        """Hits over lookups (0 before any lookup)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def encode_dense(row: npt.NDArray[np.float32]) -> bytes:
    """A dense vector as little-endian float32 bytes."""
    return np.ascontiguousarray(row, dtype="<f4").tobytes()


def decode_dense_rows(values: bytes | bytearray, dimensions: int) -> npt.NDArray[np.float32]:
    """Dense vectors of ``dimensions`` stored one after another (their values joined), as a
    writable ``(n, dimensions)`` float32 array: over ``values`` itself when it is a writable
    ``bytearray`` and the machine little-endian (no copy), else a copy."""
    rows = np.frombuffer(values, dtype="<f4").astype(np.float32, copy=False)
    if not rows.flags.writeable:
        rows = rows.copy()
    return rows.reshape(-1, dimensions)


def encode_sparse(vec: dict[int, float]) -> bytes:
    """A sparse vector as int32 ids followed by float64 weights."""
    ids = np.fromiter(vec.keys(), dtype="<i4", count=len(vec))
    weights = np.fromiter(vec.values(), dtype="<f8", count=len(vec))
    return ids.tobytes() + weights.tobytes()


def decode_sparse(value: bytes | memoryview) -> dict[int, float] | None:
    """The sparse vector in ``value``, or ``None`` if it is not one (a length that is not a
    whole number of entries, a negative id, a weight not finite, an id twice)."""
    if len(value) % _SPARSE_ENTRY:
        return None
    n = len(value) // _SPARSE_ENTRY
    ids = np.frombuffer(value, dtype="<i4", count=n)
    weights = np.frombuffer(value, dtype="<f8", count=n, offset=4 * n)
    if n and (ids.min() < 0 or not np.isfinite(weights).all()):
        return None
    vec = dict(zip(ids.tolist(), weights.tolist(), strict=True))
    return vec if len(vec) == n else None


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


def cache_secret(material: str) -> bytes:
    """The secret that keys a cache's entries, derived from ``material``: the API key, or the
    ``cache_secret`` shared by the keys of one account. One-way: the secret does not give back
    the key, and entries do not give back the secret."""
    return hashlib.blake2b(
        material.encode("utf-8", "surrogatepass"),
        digest_size=_SECRET_BYTES,
        person=b"empirio-cachesec",
    ).digest()


#: The first byte of an entry sealed as now (AES-GCM); entries of the format before (an HMAC
#: in front) are still opened (:meth:`Checked.of`), so that no vector paid for is lost.
_SEALED = b"\x02"
#: Bytes of each entry's nonce: random (:func:`seal`), as AES-GCM needs a new one per message.
NONCE_BYTES = 12
#: Bytes in front of a sealed value: the format byte, the nonce, the tag.
_HEAD = 1 + NONCE_BYTES + MAC_BYTES
#: What every HMAC of the format before starts with.
_MAC_LABEL = b"empirio-cachemac\0"


def _aead(secret: bytes) -> AESGCM:
    """The AES-256-GCM of ``secret``'s entries, under a key of its own (derived one way)."""
    # Imported here: only a call that uses a cache pays its import (about 20 ms).
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(hashlib.blake2b(secret, digest_size=32, person=b"empirio-cacheaes").digest())


def seal(
    secret: bytes, pairs: Sequence[tuple[str, bytes]], nonces: bytes
) -> list[tuple[str, bytes]]:
    """``(key, value)`` pairs as stored: each value behind its format byte, its nonce and its
    tag, AES-256-GCM's over the key and the value (authenticated, not encrypted).

    Args:
        secret: the cache's secret (:func:`cache_secret`).
        pairs: the keys and the values to seal.
        nonces: :data:`NONCE_BYTES` random bytes per pair (``os.urandom``: the shell's, the core
            draws none); random nonces keep AES-GCM's promise up to 2**32 entries per secret.
    """
    if len(nonces) != NONCE_BYTES * len(pairs):
        raise ValueError(f"seal needs {NONCE_BYTES} bytes of nonce per pair, got {len(nonces)}")
    aead = _aead(secret)
    out = []
    for i, (key, value) in enumerate(pairs):
        nonce = nonces[i * NONCE_BYTES : (i + 1) * NONCE_BYTES]
        tag = aead.encrypt(nonce, b"", key.encode() + b"\0" + value)
        out.append((key, _SEALED + nonce + tag + value))
    return out


def _legacy(secret: bytes, key: str, view: memoryview) -> memoryview | bytes:
    """The value of an entry of the format before (HMAC-SHA-256 over a label, the key and the
    value, truncated to :data:`MAC_BYTES`, in front) if its MAC holds, else ``b""``."""
    if len(view) < MAC_BYTES:
        return b""
    value = view[MAC_BYTES:]
    mac = hmac.digest(secret, _MAC_LABEL + key.encode() + b"\0" + value, "sha256")
    # compare_digest: the time taken says nothing about how much of a forged MAC matched.
    return value if hmac.compare_digest(mac[:MAC_BYTES], view[:MAC_BYTES]) else b""


@dataclass(frozen=True, slots=True)
class Checked:
    """One view's entries, each checked against its seal (:meth:`of`).

    Attributes:
        values: per key, its value (a view into the entry, not a copy) where the seal held;
            ``b""`` where it did not, or where there was no entry.
        present: how many entries there were (held or not): those not held are rejections.
    """

    values: list[memoryview | bytes]
    present: int

    @staticmethod
    def of(secret: bytes, keys: Sequence[str], entries: Sequence[bytes | None]) -> Checked:
        """Check each of ``entries`` (``None``: there was none) against its key's seal: the
        tag covers the key, so that an entry moved under another key fails too."""
        from cryptography.exceptions import InvalidTag  # imported late, as in _aead

        decrypt = _aead(secret).decrypt
        out: list[memoryview | bytes] = []
        present = 0
        for key, entry in zip(keys, entries, strict=True):
            if entry is None:
                out.append(b"")
                continue
            present += 1
            view = memoryview(entry)
            if entry[:1] == _SEALED and len(entry) >= _HEAD:
                value = view[_HEAD:]
                try:
                    # The nonce and the tag as slices of the entry (28 bytes copied): pyca takes
                    # bytes faster than views, a sixth of each check (0.5 of 3 us).
                    decrypt(
                        entry[1 : 1 + NONCE_BYTES],
                        entry[1 + NONCE_BYTES : _HEAD],
                        key.encode() + b"\0" + value,
                    )
                    out.append(value)
                    continue
                except InvalidTag:
                    pass  # a forgery, or an entry of the format before starting with this byte
            out.append(_legacy(secret, key, view))
        return Checked(out, present)

    @staticmethod
    def joined(parts: Sequence[Checked]) -> Checked:
        """Consecutive parts of one view's entries (checked as they were read) as one (none:
        no entries)."""
        if len(parts) == 1:
            return parts[0]
        return Checked([v for p in parts for v in p.values], sum(p.present for p in parts))


def open_dense(
    secret: bytes, keys: Sequence[str], entries: Sequence[bytes | None], dimensions: int
) -> tuple[list[int], npt.NDArray[np.float32], int]:
    """The dense vectors found, checked.

    Returns:
        ``(hits, rows, rejected)``: the positions whose entry holds, their vectors as one
        ``(len(hits), dimensions)`` array, and how many entries were found but refused (seal,
        size, non-finite or non-unit vector); those and the missing ones are misses.
    """
    return _dense(Checked.of(secret, keys, entries), dimensions)


def _dense(checked: Checked, dimensions: int) -> tuple[list[int], npt.NDArray[np.float32], int]:
    values = checked.values
    width = 4 * dimensions
    sized = [i for i, v in enumerate(values) if len(v) == width]
    # Joined into a bytearray: the rows are then read in place, with one copy, not two.
    rows = decode_dense_rows(bytearray().join(values[i] for i in sized), dimensions)
    good = unit_rows(rows)  # the same test as the service's answers get
    hits = [sized[i] for i in np.flatnonzero(good).tolist()]
    return hits, rows[good] if not good.all() else rows, checked.present - len(hits)


def open_sparse(
    secret: bytes, keys: Sequence[str], entries: Sequence[bytes | None]
) -> tuple[list[dict[int, float] | None], int]:
    """The sparse vectors found, checked: ``(vectors, rejected)``, ``None`` for each miss (an
    entry refused by its seal, its layout, a negative id or a weight not finite is one)."""
    return _sparse(Checked.of(secret, keys, entries))


def _sparse(checked: Checked) -> tuple[list[dict[int, float] | None], int]:
    out = [decode_sparse(value) if value else None for value in checked.values]
    return out, checked.present - sum(vec is not None for vec in out)


@dataclass(frozen=True, slots=True)
class Found:
    """What a lookup found and trusts: the positions of the texts found in every view asked
    for (ascending), their vectors in that order, and how many entries were refused."""

    hits: tuple[int, ...]
    dense: npt.NDArray[np.float32] | None
    sparse: tuple[dict[int, float], ...] | None
    rejected: int


def open_found(
    secret: bytes,
    keys: Mapping[str, Sequence[str]],
    entries: Mapping[str, Sequence[bytes | None]],
    dimensions: int,
) -> Found:
    """The entries a store gave for each view (``"dense"``, ``"sparse"``, or both), checked:
    a text is found only where every view's entry holds."""
    return open_checked({v: Checked.of(secret, keys[v], entries[v]) for v in keys}, dimensions)


def open_checked(checked: Mapping[str, Checked], dimensions: int) -> Found:
    """What :func:`open_found` finds, from entries already checked against their seals (a
    store read in parts has each part checked while it reads the next)."""
    n = len(next(iter(checked.values())).values) if checked else 0
    ok = np.ones(n, bool)
    rejected = 0
    dense = dense_at = None
    if "dense" in checked:
        dense_hits, dense, bad = _dense(checked["dense"], dimensions)
        dense_at = np.asarray(dense_hits, np.intp)
        ok[:] = False
        ok[dense_at] = True
        rejected += bad
    sparse_found: list[dict[int, float] | None] = []
    if "sparse" in checked:
        sparse_found, bad = _sparse(checked["sparse"])
        ok &= np.fromiter((v is not None for v in sparse_found), bool, count=n)
        rejected += bad
    hits = np.flatnonzero(ok)
    if dense is not None and dense_at is not None and len(dense) != len(hits):
        dense = dense[np.isin(dense_at, hits)]  # a text whose sparse entry missed
    sparse = None
    if "sparse" in checked:
        sparse = tuple(cast(dict[int, float], sparse_found[u]) for u in hits.tolist())
    return Found(tuple(hits.tolist()), dense, sparse, rejected)


@dataclass(frozen=True, slots=True)
class CacheScope:
    """Everything of a call that its vectors depend on, except each text (see the module
    docstring), and the secret its keys are made with."""

    endpoint: str
    model: str
    dimensions: int
    text_type: str
    instruct: str
    secret: bytes = field(repr=False)

    def keys(self, view: View, texts: Sequence[str], tags: Sequence[str]) -> list[str]:
        """The key of each text's ``view``; ``tags[i]`` is the over-length policy that shaped
        text ``i`` (empty for a text within the limit)."""
        base = hashlib.blake2b(digest_size=16, key=self.secret, person=b"empirio-vector")
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
