"""The persistent embedding cache: keys, hits that never send, misses written as requests finish,
sharing between the core and both adapters, stores, bounds and bad files."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from empirio import (
    CacheError,
    CacheWarning,
    ConfigurationError,
    EmbeddingClient,
    EmbeddingStore,
    InsufficientCreditsError,
    NotFoundError,
    SqliteStore,
    get_tokenizer,
)
from empirio._core.cache_keys import MAC_BYTES, NONCE_BYTES

from ..conftest import stats

HEAD = 1 + NONCE_BYTES + MAC_BYTES  # what comes before an entry's vector

KEY = "sk-cache-test-key-0123456789"
TEXTS = [f"cached passage {i} about topic {i % 7}" for i in range(40)]


def client(url: str, cache: Any, **kw: Any) -> EmbeddingClient:
    kw.setdefault("rpm", None)
    kw.setdefault("tpm", None)
    kw.setdefault("api_key", KEY)
    return EmbeddingClient(base_url=url, cache=cache, **kw)


@pytest.fixture
def url(make_emulator: Any) -> str:
    return str(make_emulator())


def requests(url: str) -> int:
    return int(stats(url)["requests"])


# What changes a vector misses; what only changes how it is fetched hits.
CHANGES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    ("same settings", {}, {}, True),
    ("timeout", {"timeout": 7.0}, {}, True),
    ("rpm", {"rpm": 1000}, {}, True),
    ("max_concurrency", {"max_concurrency": 2}, {}, True),
    ("batch_size", {"batch_size": 3}, {}, True),
    ("encoding_format", {"encoding_format": "float"}, {}, True),
    ("another key", {"api_key": "sk-another-key-0123456789"}, {}, False),
    ("dimensions", {"dimensions": 512}, {}, False),
    ("kind", {}, {"kind": "query"}, False),
    ("output", {}, {"output": "sparse"}, False),
    ("output both", {}, {"output": "both"}, False),
]


@pytest.mark.parametrize(("name", "settings", "call", "hit"), CHANGES, ids=[c[0] for c in CHANGES])
def test_what_is_part_of_the_key(
    url: str, tmp_path: Path, name: str, settings: dict[str, Any], call: dict[str, Any], hit: bool
) -> None:
    path = tmp_path / "cache.sqlite3"
    first = client(url, path).embed(TEXTS)
    before = requests(url)
    again = client(url, path, **settings).embed(TEXTS, **call)
    sent = requests(url) - before
    if hit:
        assert sent == 0, name
        np.testing.assert_array_equal(again.dense, first.dense)
    else:
        assert sent == 4, name  # 40 texts, 10 a request


SHARED = "team-cache-secret-0123456789"


def test_keys_sharing_a_cache_secret_share_entries_and_others_see_none(
    url: str, tmp_path: Path
) -> None:
    path = tmp_path / "cache.sqlite3"
    first = client(url, path, cache_secret=SHARED).embed(TEXTS)
    before = requests(url)
    other_key = client(url, path, api_key="sk-another-key-0123456789", cache_secret=SHARED)
    np.testing.assert_array_equal(other_key.embed(TEXTS).dense, first.dense)
    assert requests(url) == before
    # Without the secret (the key alone, or another secret) nothing is found, and nothing is
    # refused either: the keys themselves differ, so membership cannot be tested.
    for outsider in (client(url, path), client(url, path, cache_secret="x" * 16)):
        outsider.embed(TEXTS[:10])
        assert outsider.cache is not None
        assert (outsider.cache.stats().hits, outsider.cache.stats().rejected) == (0, 0)
    with pytest.raises(
        ConfigurationError, match=r"at least 16 characters.*got a str of 5 characters"
    ):
        client(url, path, cache_secret="short")


def _entries(path: Path) -> list[tuple[int, bytes]]:
    with sqlite3.connect(path) as db:
        return list(db.execute("SELECT id, value FROM empirio_vectors ORDER BY id"))


def _overwrite(path: Path, values: dict[int, bytes]) -> None:
    with sqlite3.connect(path) as db:
        db.executemany(
            "UPDATE empirio_vectors SET value = ? WHERE id = ?", [(v, i) for i, v in values.items()]
        )


def test_a_poisoned_cache_is_never_served_and_heals(url: str, tmp_path: Path) -> None:
    """Whoever can write the cache but lacks the secret: NaN, zero, huge and swapped vectors,
    and entries in the old unsealed layout, are refused, warned of once and fetched again."""
    path = tmp_path / "cache.sqlite3"
    fresh = client(url, path).embed(TEXTS).dense
    rows = _entries(path)
    dims = 1024
    bad = {
        rows[0][0]: np.full(dims, np.nan, "<f4").tobytes(),
        rows[1][0]: np.zeros(dims, "<f4").tobytes(),
        rows[2][0]: np.full(dims, 1000.0, "<f4").tobytes(),  # norm 32,000
        rows[3][0]: rows[4][1],  # a sealed entry moved under another key
        rows[5][0]: rows[5][1][HEAD:],  # the vector without its seal (the layout before)
        rows[6][0]: rows[6][1][:-1] + bytes([rows[6][1][-1] ^ 1]),  # one bit flipped
    }
    _overwrite(path, bad)
    c = client(url, path)
    before = requests(url)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = c.embed(TEXTS).dense
        c.embed(TEXTS)  # said once
    said = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert len(said) == 1
    assert said[0].startswith("6 entries of the embedding cache")
    np.testing.assert_array_equal(got, fresh)
    assert requests(url) - before >= 1
    assert c.cache is not None
    assert c.cache.stats().rejected == 6
    before = requests(url)
    np.testing.assert_array_equal(client(url, path).embed(TEXTS).dense, fresh)  # healed
    assert requests(url) == before


def test_a_changed_model_misses(url: str, tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    client(url, path).embed(TEXTS)
    with pytest.raises(NotFoundError):  # it was sent: the emulator knows no such model
        client(url, path, model="text-embedding-v3").embed(TEXTS)


def test_query_instructions_are_part_of_the_key_only_where_sent(url: str, tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    for mode in ("prompt", "api"):
        client(url, path, instruction_mode=mode).embed(TEXTS[:10], kind="query")
        before = requests(url)
        other = client(url, path, instruction_mode=mode, query_instruction="Find code")
        other.embed(TEXTS[:10], kind="query")
        assert requests(url) - before == 1, mode  # another instruction: another vector
        other.embed(TEXTS[:10])  # documents carry no instruction: cached above? no: sent once
        before = requests(url)
        client(url, path, instruction_mode=mode, query_instruction="Find it").embed(TEXTS[:10])
        assert requests(url) == before, mode  # the documents' key ignores the instruction


def test_hits_and_misses_mix_in_order_and_each_miss_is_written(url: str, tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    plain = client(url, None).embed(TEXTS).dense
    c = client(url, path)
    c.embed(TEXTS[::2])  # every other text cached
    before = requests(url)
    got = c.embed(TEXTS)
    assert requests(url) - before == 2  # the 20 others, 10 a request
    np.testing.assert_array_equal(got.dense, plain)
    assert c.cache is not None
    s = c.cache.stats()
    assert (s.hits, s.misses, s.entries) == (20, 40, 40)
    assert s.size_bytes is not None
    assert s.size_bytes > 40 * 1024 * 4


def test_sparse_and_both_views_are_cached_exactly(url: str, tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    fresh = client(url, path).embed(TEXTS, output="both")
    before = requests(url)
    for output in ("both", "dense", "sparse"):
        again = client(url, path).embed(TEXTS, output=output)  # type: ignore[arg-type]
        if again.dense is not None:
            np.testing.assert_array_equal(again.dense, fresh.dense)
        if again.sparse is not None:
            assert again.sparse == fresh.sparse  # float64 weights, bit for bit
    assert requests(url) == before


def test_long_texts_are_keyed_by_the_overflow_policy_that_shaped_them(
    url: str, tmp_path: Path
) -> None:
    path = tmp_path / "c.sqlite3"
    long = "alpha beta gamma delta " * 3000  # about 12,000 tokens
    texts = ["short one", long]
    from empirio import TruncationWarning

    with pytest.warns(TruncationWarning):
        truncated = client(url, path, overflow="truncate").embed(texts)
    before = requests(url)
    chunked = client(url, path, overflow="chunk").embed(texts)
    assert requests(url) - before == 1  # the short text hit; the long one's windows were sent
    assert not np.array_equal(truncated.dense[1], chunked.dense[1])
    before = requests(url)
    again = client(url, path, overflow="chunk").embed(texts)
    assert requests(url) == before
    np.testing.assert_array_equal(again.dense, chunked.dense)


def test_a_fully_cached_call_touches_neither_network_nor_pacer(
    make_emulator: Any, tmp_path: Path
) -> None:
    path = tmp_path / "c.sqlite3"
    client(make_emulator(), path).embed(TEXTS)
    # Another emulator with the same vectors, on another port (a fresh run), paced to one
    # request a minute: a send would be counted there, or wait for a minute.
    again = make_emulator()
    paced = client(again, path, rpm=1, max_retries=0)
    assert paced.embed(TEXTS).dense.shape == (40, 1024)  # type: ignore[union-attr]
    parts = list(paced.iter_embed(TEXTS, segment_size=7))
    assert [p.offset for p in parts] == list(range(0, 40, 7))
    assert paced.usage.requests == 0
    assert requests(again) == 0


def test_servers_that_serve_other_vectors_never_share_entries(
    make_emulator: Any, tmp_path: Path
) -> None:
    path = tmp_path / "c.sqlite3"
    first = make_emulator(vector_seed=1)
    other = make_emulator(vector_seed=2)
    a = client(first, path).embed(TEXTS[:5]).dense
    b = client(other, path).embed(TEXTS[:5]).dense
    assert requests(other) == 1  # not served the first emulator's vectors
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(client(other, path).embed(TEXTS[:5]).dense, b)
    # A local server that does not say what it serves (a proxy to the real service, say) is
    # known by its port: it is never served an emulator's entries.
    from empirio._core.cache_keys import endpoint_identity

    assert endpoint_identity("http://127.0.0.1:8001/v1") != endpoint_identity(
        "http://127.0.0.1:8002/v1"
    )
    assert endpoint_identity("http://127.0.0.1:8001/v1", "emulator-hashed-1") == (
        endpoint_identity("http://localhost:9999/v1", "emulator-hashed-1")
    )


async def test_async_calls_share_the_cache(url: str, tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    c = client(url, path)
    first = await c.aembed(TEXTS)
    before = requests(url)
    again = await client(url, path).aembed(TEXTS)
    parts = [p async for p in client(url, path).aiter_embed(TEXTS, segment_size=9)]
    assert requests(url) == before
    np.testing.assert_array_equal(again.dense, first.dense)
    np.testing.assert_array_equal(np.concatenate([p.dense for p in parts]), first.dense)  # type: ignore[misc]
    await c.aclose()


def test_a_402_mid_call_keeps_what_was_paid_for_in_the_cache(
    make_emulator: Any, tmp_path: Path
) -> None:
    path = tmp_path / "c.sqlite3"
    plain = client(make_emulator(), None).embed(TEXTS).dense
    tokens = get_tokenizer()
    first_20 = sum(tokens.count(t) + 1 for t in TEXTS[:20])
    poor = make_emulator(credit_tokens=first_20)  # two requests' worth
    with pytest.raises(InsufficientCreditsError) as info:
        client(poor, path, max_concurrency=1).embed(TEXTS)
    done = info.value.partial_indices
    assert done == tuple(range(20))
    assert info.value.partial is not None
    np.testing.assert_array_equal(info.value.partial.dense, plain[list(done)])  # type: ignore[index]
    rich = make_emulator()
    got = client(rich, path).embed(TEXTS)
    assert requests(rich) == 4 - len(done) // 10  # only what was not paid for
    np.testing.assert_array_equal(got.dense, plain)


def test_the_core_and_both_adapters_share_one_file(url: str, tmp_path: Path) -> None:
    from langchain_empirio import EmpirioEmbeddings
    from llamaindex_empirio import EmpirioEmbedding

    path = str(tmp_path / "shared.sqlite3")
    core = client(url, path).embed(TEXTS).dense
    before = requests(url)
    lc = EmpirioEmbeddings(api_key=KEY, base_url=url, rpm=None, tpm=None, cache=path)
    li = EmpirioEmbedding(api_key=KEY, base_url=url, rpm=None, tpm=None, cache=path)
    np.testing.assert_array_equal(np.array(lc.embed_documents(TEXTS), dtype=np.float32), core)
    got = li.get_text_embedding_batch(TEXTS)
    np.testing.assert_array_equal(np.array(got, dtype=np.float32), core)
    assert requests(url) == before
    # A query through one adapter is a hit for the other.
    q = lc.embed_query("where is the cat?")
    before = requests(url)
    assert li.get_query_embedding("where is the cat?") == q
    assert requests(url) == before


def test_any_mget_mset_store_plugs_in(url: str) -> None:
    class DictStore:
        def __init__(self) -> None:
            self.data: dict[str, bytes] = {}

        def mget(self, keys: Any) -> list[bytes | None]:
            return [self.data.get(k) for k in keys]

        def mset(self, pairs: Any) -> None:
            self.data.update(pairs)

    store = DictStore()
    assert isinstance(store, EmbeddingStore)
    first = client(url, store).embed(TEXTS)
    assert len(store.data) == 40
    before = requests(url)
    np.testing.assert_array_equal(client(url, store).embed(TEXTS).dense, first.dense)
    assert requests(url) == before


def test_a_store_that_gives_back_str_is_a_clear_error_before_anything_is_sent(url: str) -> None:
    """A store whose ``mget`` answers ``str`` (a Redis client with ``decode_responses=True``)
    is named, with the type it gave, before a request is paid for; not a ``TypeError`` from
    deep inside."""

    class Decoding:
        def __init__(self) -> None:
            self.data: dict[str, str] = {}

        def mget(self, keys: Any) -> list[str | None]:
            return [self.data.get(k) for k in keys]

        def mset(self, pairs: Any) -> None:
            self.data.update((k, v.decode("latin-1")) for k, v in pairs)

        def __repr__(self) -> str:
            return "Decoding()"

    store = Decoding()
    client(url, store).embed(TEXTS[:3])  # written: nothing was read back yet
    before = requests(url)
    with pytest.raises(CacheError, match=r"store Decoding\(\) gave back a str where bytes"):
        client(url, store).embed(TEXTS[:5])
    assert requests(url) == before


def test_a_langchain_byte_store_plugs_in(url: str) -> None:
    from langchain_core.stores import InMemoryByteStore

    store = InMemoryByteStore()
    client(url, store).embed(TEXTS)
    before = requests(url)
    client(url, store).embed(TEXTS)
    assert requests(url) == before


def test_a_bad_cache_argument_is_a_configuration_error() -> None:
    from empirio import ConfigurationError

    with pytest.raises(ConfigurationError, match="mget/mset"):
        EmbeddingClient(api_key=KEY, cache=42)  # type: ignore[arg-type]


def test_the_size_bound_evicts_the_least_recently_used(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "b.sqlite3", max_bytes=2_000_000)
    value = bytes(4096)
    for i in range(0, 2000, 50):
        store.mset([(f"k{j}", value) for j in range(i, i + 50)])
        store.mget(["k0"])  # k0 is used again and again: it stays
    entries, size = store.size()
    assert size <= 2_000_000 * 1.05
    assert entries < 2000
    assert store.mget(["k0", "k1999", "k60"]) == [value, value, None]


def test_the_sqlite_cache_reads_through_a_map_that_follows_the_file(tmp_path: Path) -> None:
    """Reads go through a memory map (two system calls and copies fewer per vector). An open
    store still reads every value after another process grows the file past what was mapped,
    and after it deletes half and VACUUMs the file shorter (SQLite re-checks the size at each
    read; a read past the end of a map would be SIGBUS, not an error)."""
    path = tmp_path / "mapped.sqlite3"
    store = SqliteStore(path)
    with store._using() as conn:
        assert conn.execute("PRAGMA mmap_size").fetchone()[0] > 0
    store.mset([("k0", b"first")])
    assert store.mget(["k0"]) == [b"first"]
    writer = textwrap.dedent(
        f"""
        import sqlite3, sys
        from empirio import SqliteStore
        s = SqliteStore({str(path)!r})
        if sys.argv[1] == "grow":
            s.mset([(f"k{{i}}", bytes([i % 251]) * 4112) for i in range(1, 3001)])
        else:
            c = sqlite3.connect({str(path)!r})
            c.execute("DELETE FROM empirio_vectors WHERE id % 2 = 0")
            c.commit()
            c.execute("VACUUM")
            c.close()
        """
    )
    keys = [f"k{i}" for i in range(3001)]
    subprocess.run([sys.executable, "-c", writer, "grow"], check=True, timeout=120)
    grown = path.stat().st_size
    assert store.mget(keys) == [b"first"] + [bytes([i % 251]) * 4112 for i in range(1, 3001)]
    subprocess.run([sys.executable, "-c", writer, "shrink"], check=True, timeout=120)
    assert path.stat().st_size < grown * 0.7
    got = store.mget(keys)
    assert sum(v is not None for v in got) == 1501
    assert all(v is None or v == (b"first" if i == 0 else bytes([i % 251]) * 4112)
               for i, v in enumerate(got))  # fmt: skip
    store.close()


def test_a_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.sqlite3"
    bad.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(CacheError, match="corrupt"):
        EmbeddingClient(api_key=KEY, cache=bad)


def test_another_sqlite_file_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "app.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(CacheError, match="not an empirio cache"):
        SqliteStore(other)


def test_a_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="folder"):
        SqliteStore(tmp_path)


def test_a_locked_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "locked.sqlite3"
    first = SqliteStore(path)
    first.mset([("a", b"1")])
    first.close()
    holder = sqlite3.connect(path, isolation_level=None)  # another process's long write
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO empirio_vectors (key, value, used) VALUES ('x', x'00', 0)")
    try:
        with pytest.raises(CacheError, match="locked"):
            SqliteStore(path, timeout=0.2).mset([("b", b"2")])
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.mark.skipif(not hasattr(os, "setuid"), reason="needs POSIX users")
def test_a_read_only_file_is_a_clear_error() -> None:
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="empirio-ro-"))
    base.chmod(0o755)  # reachable by the unprivileged user below
    path = base / "ro" / "cache.sqlite3"
    SqliteStore(path).mset([("a", b"1")])
    path.chmod(0o444)
    path.parent.chmod(0o555)
    # As a user that may not write there (root may write anywhere, so drop to nobody).
    code = textwrap.dedent(
        f"""
        import os, sys
        from empirio import CacheError, SqliteStore
        if os.getuid() == 0:
            os.setgid(65534); os.setuid(65534)
        try:
            SqliteStore({str(path)!r}).mset([("b", b"2")])
        except CacheError as exc:
            print(exc)
            sys.exit(3)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    path.parent.chmod(0o755)
    assert out.returncode == 3, out.stderr
    assert "read-only" in out.stdout or "cannot be opened" in out.stdout


def test_stores_survive_pickle_and_fork(tmp_path: Path) -> None:
    import pickle

    store = SqliteStore(tmp_path / "p.sqlite3")
    store.mset([("a", b"1")])
    copy = pickle.loads(pickle.dumps(store))
    assert copy.mget(["a"]) == [b"1"]
    pid = os.fork()
    if pid == 0:  # the child writes through the parent's object
        try:
            store.mset([("b", b"2")])
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert store.mget(["a", "b"]) == [b"1", b"2"]


def test_generators_through_both_adapters(url: str) -> None:
    from langchain_empirio import EmpirioEmbeddings
    from llamaindex_empirio import EmpirioEmbedding

    texts = [f"generated {i}" for i in range(23)]
    lc = EmpirioEmbeddings(api_key=KEY, base_url=url, rpm=None, tpm=None)
    li = EmpirioEmbedding(api_key=KEY, base_url=url, rpm=None, tpm=None)
    expected = lc.embed_documents(texts)
    assert lc.embed_documents(t for t in texts) == expected  # type: ignore[arg-type]
    assert li.get_text_embedding_batch(t for t in texts) == expected  # type: ignore[arg-type]
