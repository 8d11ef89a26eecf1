"""Our embedding cache against LangChain's ``CacheBackedEmbeddings`` + ``LocalFileStore``.

Both caches hold the same vectors (random unit rows, float32, ``--dimensions`` wide) for the same
``--n`` texts. Each is measured where a user meets it:

* **write**: the vectors of every text go in, a request's worth (10) at a time, as an ingestion
  writes them. Ours: the client's own write path (keys, float32 encoding, one SQLite transaction
  per request). Theirs: ``embed_documents`` with ``batch_size=10`` over an embedder that answers
  instantly, so only the cache is timed.
* **read**: every text again, all hits, end to end. Ours: ``EmbeddingClient.embed`` (dedup, keys,
  lookup, decoding, assembly; nothing is sent). Theirs: ``CacheBackedEmbeddings.embed_documents``.
* **size**: bytes on disk, scaled to a million vectors.
* **against the floors**: ours read from SQLite and from Redis (when ``redis-server`` is
  installed) against plain ``sqlite3`` / redis-py ``MGET`` + ``np.frombuffer`` of the same
  entries, in alternating rounds (:func:`side_by_side`): a raw floor as it is usually written
  (every entry read, then all joined) and a tight one (segment by segment into one array).

Run from the repository root (needs the ``bench`` extra, for ``langchain-classic``)::

    python bench/cache.py            # 100,000 vectors of 1,024 dimensions
    python bench/cache.py --n 20000  # quicker
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from empirio import EmbeddingClient, SqliteStore
from empirio._core.cache_keys import (
    MAC_BYTES,
    NONCE_BYTES,
    CacheScope,
    cache_secret,
    encode_dense,
    endpoint_identity,
    seal,
)
from empirio._core.config import DEFAULT_BASE_URL, DEFAULT_MODEL

from _common import machine_line, markdown_table, redis_server

REQUEST = 10
#: Bytes before each entry's vector: the format byte, the nonce and the tag.
HEAD = 1 + NONCE_BYTES + MAC_BYTES


def _disk_bytes(path: Path) -> int:
    if path.is_file():
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def ours(texts: Sequence[str], vectors: np.ndarray, where: Path) -> tuple[float, float, int]:
    dims = vectors.shape[1]
    path = where / "cache.sqlite3"
    store = SqliteStore(path)
    secret = cache_secret("bench")  # the client's key below: it finds what was written here
    scope = CacheScope(endpoint_identity(DEFAULT_BASE_URL), DEFAULT_MODEL, dims, "", "", secret)
    t0 = time.perf_counter()
    for i in range(0, len(texts), REQUEST):  # what the client does as each request finishes
        part = texts[i : i + REQUEST]
        keys = scope.keys("dense", part, [""] * len(part))
        pairs = [(k, encode_dense(v)) for k, v in zip(keys, vectors[i : i + REQUEST], strict=True)]
        store.mset(seal(secret, pairs, os.urandom(NONCE_BYTES * len(pairs))))
    write = time.perf_counter() - t0
    store.close()
    all_keys = scope.keys("dense", list(texts), [""] * len(texts))
    read = side_by_side(
        "SQLite",
        lambda: _raw_sqlite_read(path, all_keys, dims),
        lambda: _tight_sqlite_read(path, all_keys, dims),
        lambda: EmbeddingClient(api_key="bench", dimensions=dims, cache=path, rpm=None, tpm=None),
        texts,
        vectors,
    )
    return write, read, _disk_bytes(path)


#: Rounds of :func:`side_by_side` (``--rounds``).
ROUNDS = [3]
#: Per store, in seconds: the medians of the two floors (``floor``, ``tight``), of a new client's
#: read (``new``) and of its second read (``again``), and the first round's new client
#: (``first``); see :func:`side_by_side`.
SIDE_BY_SIDE: dict[str, dict[str, float]] = {}


def side_by_side(
    store: str,
    floor: Callable[[], float],
    tight: Callable[[], float],
    client: Callable[[], EmbeddingClient],
    texts: Sequence[str],
    vectors: np.ndarray,
) -> float:
    """An all-hits read, ours against two floors, in alternating rounds (the machine's drift
    touches all alike); returns the median of a new client's read, in seconds.

    The floors are plain reads of the same entries by their already known keys, with no
    de-duplication, key hashing, MAC or norm checks: ``floor`` reads every entry, then joins
    them all (as it is usually written); ``tight`` fills one preallocated array segment by
    segment, with no copy it can avoid (the least any cache must do).

    Each round times the floors, then a new client's first ``embed`` of every text, then a
    second on the same client. The first round's new client is also kept apart: for the first
    store measured (SQLite) it is the process's very first read, whose result's fresh memory is
    touched for the first time, which on a VM that backs its memory lazily (numpy asks for huge
    pages for a large array) can cost as much as the read.

    The CPU time of the floors and of the new client's read goes to :data:`CPU`: on a VM the
    time to first touch fresh memory swings from run to run, and it moves the floors' speed (their
    joins are fresh memory each round) far more than ours; the work each does moves less."""
    times: dict[str, list[float]] = {"floor": [], "tight": [], "new": [], "again": []}
    cpu: dict[str, list[float]] = {"floor": [], "tight": [], "new": []}
    for _ in range(ROUNDS[0]):
        for name, fn in (("floor", floor), ("tight", tight)):
            c0 = _cpu()
            times[name].append(fn())
            cpu[name].append(_cpu() - c0)
        with client() as c:
            for name in ("new", "again"):
                c0, t0 = _cpu(), time.perf_counter()
                got = c.embed(list(texts))
                times[name].append(time.perf_counter() - t0)
                if name == "new":
                    cpu[name].append(_cpu() - c0)
                assert got.dense is not None
                assert c.usage.requests == 0
                np.testing.assert_array_equal(got.dense, vectors)
                del got
    SIDE_BY_SIDE[store] = {k: statistics.median(v) for k, v in times.items()}
    SIDE_BY_SIDE[store]["first"] = times["new"][0]
    CPU[store] = {k: statistics.median(v) for k, v in cpu.items()}
    return SIDE_BY_SIDE[store]["new"]


#: Per store, in seconds: medians of the CPU time this process spent (all its threads, user and
#: system) in the raw floor, the tight floor and a new client's read; see :func:`side_by_side`.
CPU: dict[str, dict[str, float]] = {}


def _cpu() -> float:
    """This process's CPU time so far (every thread, user and system), in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _raw_sqlite_read(path: Path, keys: Sequence[str], dims: int) -> float:
    """The floor of an all-hits read: plain ``sqlite3`` selecting the same entries by their
    (already known) keys (:func:`_selected`), and one ``np.frombuffer`` of the vector bytes
    (after each entry's seal, :data:`HEAD` bytes) in input order. No de-duplication, no key
    hashing, no seal or norm checks."""
    import sqlite3

    t0 = time.perf_counter()
    conn = sqlite3.connect(path)
    found = _selected(conn, keys)
    rows = np.frombuffer(b"".join(found[k][HEAD:] for k in keys), np.float32).reshape(-1, dims)
    took = time.perf_counter() - t0
    conn.close()
    assert len(rows) == len(keys)
    return took


def _selected(conn: Any, keys: Sequence[str]) -> dict[str, bytes]:
    """The entries of ``keys`` by plain ``sqlite3``, 500 keys per ``IN (...)`` query."""
    found: dict[str, bytes] = {}
    for i in range(0, len(keys), 500):
        part = list(keys[i : i + 500])
        marks = ",".join("?" * len(part))
        found.update(
            conn.execute(f"SELECT key, value FROM empirio_vectors WHERE key IN ({marks})", part)
        )
    return found


#: Texts per segment of the tight floors: our client's own segment.
SEGMENT = 1000


def _tight_sqlite_read(path: Path, keys: Sequence[str], dims: int) -> float:
    """The tight floor: plain ``sqlite3`` (its default settings), 500 keys per query, each
    segment of :data:`SEGMENT` keys joined (views past the MAC, one copy) into its rows of one
    preallocated array."""
    import sqlite3

    t0 = time.perf_counter()
    conn = sqlite3.connect(path)
    out = np.empty((len(keys), dims), np.float32)
    for a in range(0, len(keys), SEGMENT):
        segment = keys[a : a + SEGMENT]
        found = _selected(conn, segment)
        joined = b"".join(memoryview(found[k])[HEAD:] for k in segment)
        out[a : a + len(segment)] = np.frombuffer(joined, np.float32).reshape(-1, dims)
    took = time.perf_counter() - t0
    conn.close()
    return took


def redis_read(texts: Sequence[str], vectors: np.ndarray) -> None:
    """An all-hits read from a Redis cache, ours (``EmbeddingClient.embed``) against its floor
    (redis-py ``MGET`` of the same keys, 1,000 per call, and one ``np.frombuffer``), into
    :data:`SIDE_BY_SIDE` (see :func:`side_by_side`); nothing without redis-server."""
    if shutil.which("redis-server") is None:
        return
    import redis

    from empirio._io.redis_store import PREFIX, RedisStore

    dims = vectors.shape[1]
    secret = cache_secret("bench")
    scope = CacheScope(endpoint_identity(DEFAULT_BASE_URL), DEFAULT_MODEL, dims, "", "", secret)
    keys = scope.keys("dense", list(texts), [""] * len(texts))
    with redis_server() as url:
        store = RedisStore(url)
        for i in range(0, len(texts), 1000):
            part = zip(keys[i : i + 1000], vectors[i : i + 1000], strict=True)
            pairs = [(k, encode_dense(v)) for k, v in part]
            store.mset(seal(secret, pairs, os.urandom(NONCE_BYTES * len(pairs))))
        store.close()
        raw = redis.Redis.from_url(url)
        raw.ping()

        def floor() -> float:
            t0 = time.perf_counter()
            values: list[bytes] = []
            for i in range(0, len(keys), SEGMENT):
                values.extend(raw.mget([PREFIX + k for k in keys[i : i + SEGMENT]]))
            rows = np.frombuffer(b"".join(v[HEAD:] for v in values), np.float32).reshape(-1, dims)
            took = time.perf_counter() - t0
            assert len(rows) == len(keys)
            return took

        def tight() -> float:
            t0 = time.perf_counter()
            out = np.empty((len(keys), dims), np.float32)
            for a in range(0, len(keys), SEGMENT):
                values = raw.mget([PREFIX + k for k in keys[a : a + SEGMENT]])
                joined = b"".join(memoryview(v)[HEAD:] for v in values)
                out[a : a + len(values)] = np.frombuffer(joined, np.float32).reshape(-1, dims)
            return time.perf_counter() - t0

        side_by_side(
            "Redis",
            floor,
            tight,
            lambda: EmbeddingClient(
                api_key="bench", dimensions=dims, cache=url, rpm=None, tpm=None
            ),
            texts,
            vectors,
        )
        raw.close()


def theirs(texts: Sequence[str], vectors: np.ndarray, where: Path) -> tuple[float, float, int]:
    from langchain_classic.embeddings import CacheBackedEmbeddings
    from langchain_classic.storage import LocalFileStore
    from langchain_core.embeddings import Embeddings

    row = {t: i for i, t in enumerate(texts)}

    class Instant(Embeddings):
        def embed_documents(self, batch: list[str]) -> list[list[float]]:
            return [vectors[row[t]].tolist() for t in batch]

        def embed_query(self, text: str) -> list[float]:
            return self.embed_documents([text])[0]

    folder = where / "files"
    cached = CacheBackedEmbeddings.from_bytes_store(
        Instant(),
        LocalFileStore(folder),
        namespace=DEFAULT_MODEL,
        batch_size=REQUEST,
        key_encoder="sha256",
    )
    t0 = time.perf_counter()
    cached.embed_documents(list(texts))
    write = time.perf_counter() - t0
    reader = CacheBackedEmbeddings.from_bytes_store(
        Instant(), LocalFileStore(folder), namespace=DEFAULT_MODEL, key_encoder="sha256"
    )
    t0 = time.perf_counter()
    got = reader.embed_documents(list(texts))
    read = time.perf_counter() - t0
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32), vectors, rtol=0, atol=1e-7)
    return write, read, _disk_bytes(folder)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="vectors (default 100,000)")
    parser.add_argument("--dimensions", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3, help="rounds against the floor")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp folder)")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    ROUNDS[0] = args.rounds
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.n, args.dimensions)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = [f"document {i}: some passage text of a corpus being ingested" for i in range(args.n)]
    base = Path(args.dir or tempfile.mkdtemp(prefix="empirio-cache-bench-"))
    rows = []
    results = {}
    for name, fn in (
        ("empirio SqliteStore", ours),
        ("CacheBackedEmbeddings + LocalFileStore", theirs),
    ):
        where = base / name.split()[0]
        where.mkdir(parents=True, exist_ok=True)
        try:
            write, read, size = fn(texts, vectors, where)
        finally:
            shutil.rmtree(where, ignore_errors=True)
        results[name] = (write, read, size)
        print(f"{name}: write {write:.1f} s, read {read:.1f} s, {size / 1e6:.0f} MB", flush=True)
    redis_read(texts, vectors)
    floors = []
    for store, t in SIDE_BY_SIDE.items():

        def vs(seconds: float, t: dict[str, float] = t) -> str:
            return (
                f"{args.n / seconds:,.0f} ({t['floor'] / seconds:.2f} / {t['tight'] / seconds:.2f})"
            )

        floors.append(
            [
                store,
                f"{args.n / t['floor']:,.0f}",
                f"{args.n / t['tight']:,.0f}",
                vs(t["new"]),
                vs(t["again"]),
                vs(t["first"]),
            ]
        )
    floor_table = markdown_table(
        [
            "all-hits read, vectors/s (of the raw / the tight floor)",
            "raw floor",
            "tight floor",
            "ours, a new client",
            "ours, its second read",
            "ours, first round (SQLite: the process's first read)",
        ],
        floors,
    )
    cpu_table = markdown_table(
        [
            "CPU time of this process, us per vector",
            "raw floor",
            "tight floor",
            "ours, a new client",
            "ours / raw floor",
        ],
        [
            [
                store,
                *(f"{c[k] / args.n * 1e6:.1f}" for k in ("floor", "tight", "new")),
                f"{c['new'] / c['floor']:.2f}",
            ]
            for store, c in CPU.items()
        ],
    )
    mine = results["empirio SqliteStore"]
    for name, (write, read, size) in results.items():
        rows.append(
            [
                name,
                f"{args.n / write:,.0f}",
                f"{args.n / read:,.0f}",
                f"{size / args.n * 1e6 / 1e9:.2f}",
                f"{write / mine[0]:.1f}x / {read / mine[1]:.1f}x / {size / mine[2]:.1f}x",
            ]
        )
    table = markdown_table(
        [
            "cache",
            "write (vectors/s)",
            "read, all hits (vectors/s)",
            "GB on disk per million",
            "time and size vs ours (write / read / disk)",
        ],
        rows,
    )
    text = (
        f"{args.n:,} vectors of {args.dimensions} dimensions, written 10 at a time; "
        f"{machine_line()}\n\n{table}\n\nAgainst the floors, medians of {args.rounds} "
        f"alternating rounds:\n\n{floor_table}\n\nThe CPU time each took (every thread of "
        f"this process, user and system; redis-server's own is not counted), medians of the "
        f"same rounds:\n\n{cpu_table}\n"
    )
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    if args.dir is None:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("EMPIRIOLABS_BUDGET_DIR", tempfile.mkdtemp(prefix="empirio-budget-"))
    raise SystemExit(main())
