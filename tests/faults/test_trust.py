"""Trust, round 3: what a lying or hostile server, a fork beside a busy cache and a large call
with duplicates could do before, each against a real server on 127.0.0.1.

The lying servers are tiny stdlib HTTP servers written here (the emulator tells the truth), so
each test can answer exactly as the fault it reproduces.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from empirio import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    AuthenticationError,
    EmbeddingClient,
)
from empirio._core.wire import encode_base64

from ..conftest import QuietHTTPServer, assert_few_429s, stats

KEY = "sk-trust-test-key-0123456789abcdef"

#: (status, headers, body) for one request, given its parsed JSON body and its number (from 1).
Answer = Callable[[dict[str, Any], int], tuple[int, dict[str, str], bytes]]


class _Server:
    def __init__(self, answer: Answer, *, trickle: bool | str = False) -> None:
        self.answer = answer
        self.trickle = trickle
        self.count = 0
        self.lock = threading.Lock()


@pytest.fixture
def lying_server() -> Iterator[Callable[..., tuple[str, _Server]]]:
    """Start stdlib HTTP servers that answer as told; all are stopped at the end."""
    servers: list[QuietHTTPServer] = []

    def start(answer: Answer, *, trickle: bool | str = False) -> tuple[str, _Server]:
        """``trickle``: the body a byte a second (``True``), or the headers (``"headers"``)."""
        state = _Server(answer, trickle=trickle)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # /models: says nothing about what it serves
                self._reply(200, {}, b'{"object":"list","data":[]}')

            def do_POST(self) -> None:
                size = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(size) or b"{}")
                with state.lock:
                    state.count += 1
                    n = state.count
                status, headers, payload = state.answer(body, n)
                self._reply(status, headers, payload)

            def _reply(self, status: int, headers: dict[str, str], payload: bytes) -> None:
                if state.trickle == "headers":  # a status line, then a header that never ends
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nx-slow: ")
                    for _ in range(600):
                        self.wfile.write(b"a")
                        self.wfile.flush()
                        time.sleep(1.0)
                    return
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if state.trickle is True:
                    for i in range(len(payload)):
                        self.wfile.write(payload[i : i + 1])
                        self.wfile.flush()
                        time.sleep(1.0)
                else:
                    self.wfile.write(payload)

        server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1", state

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def vectors(body: dict[str, Any], rows: Callable[[int], np.ndarray]) -> bytes:
    """A success body whose row ``i`` is ``rows(i)``, in the encoding asked for."""
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = []
    for i in range(len(texts)):
        row = rows(i)
        emb: Any = encode_base64(row) if body.get("encoding_format") == "base64" else row.tolist()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    usage = {"prompt_tokens": 3 * len(texts), "total_tokens": 3 * len(texts)}
    return json.dumps({"object": "list", "data": data, "usage": usage}).encode()


def unit(dimensions: int) -> np.ndarray:
    v = np.ones(dimensions, dtype=np.float32)
    return v / np.linalg.norm(v)


def client(url: str, **kw: Any) -> EmbeddingClient:
    kw.setdefault("rpm", None)
    kw.setdefault("tpm", None)
    return EmbeddingClient(api_key=KEY, base_url=url, dimensions=64, **kw)


BAD_ROWS: dict[str, Callable[[int], np.ndarray]] = {
    "nan": lambda d: np.full(d, np.nan, dtype=np.float32),
    "inf": lambda d: np.full(d, np.inf, dtype=np.float32),
    "zero": lambda d: np.zeros(d, dtype=np.float32),
    "huge": lambda d: unit(d) * np.float32(1e6),
}


@pytest.mark.parametrize("bad", sorted(BAD_ROWS))
@pytest.mark.parametrize("encoding", ["base64", "float"])
def test_rows_that_are_not_vectors_are_refused_and_never_cached(
    lying_server: Any, tmp_path: Path, bad: str, encoding: str
) -> None:
    fixed = threading.Event()

    def answer(body: dict[str, Any], n: int) -> tuple[int, dict[str, str], bytes]:
        make = (lambda i: unit(64)) if fixed.is_set() else (lambda i: BAD_ROWS[bad](64))
        # JSON has no NaN or Infinity; Python's json writes them anyway, as some servers do.
        return 200, {}, vectors(body, make)

    url, state = lying_server(answer)
    path = tmp_path / "c.sqlite3"
    c = client(url, cache=path, encoding_format=encoding)
    with pytest.raises(APIResponseValidationError):
        c.embed(["one text", "another"])
    assert state.count == 2  # tried once more, never more
    fixed.set()
    got = client(url, cache=path, encoding_format=encoding).embed(["one text", "another"]).dense
    assert got is not None
    assert np.isfinite(got).all()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    assert state.count == 3  # the fixed server was asked: nothing bad had been cached


def test_out_of_range_sparse_ids_are_refused_before_they_reach_the_cache(
    lying_server: Any, tmp_path: Path
) -> None:
    def answer(body: dict[str, Any], n: int) -> tuple[int, dict[str, str], bytes]:
        payload = json.loads(vectors(body, lambda i: unit(64)))
        for item in payload["data"]:
            item["sparse_embedding"] = [{"index": 2**40, "value": 0.5, "token": "x"}]
        return 200, {}, json.dumps(payload).encode()

    url, _ = lying_server(answer)
    c = client(url, cache=tmp_path / "c.sqlite3")
    with pytest.raises(APIResponseValidationError, match="token id"):
        c.embed(["sparse text"], output="both")


def test_duplicates_are_paid_for_once_per_call(emulator_url: str) -> None:
    c = client(emulator_url)
    distinct = [f"distinct text number {i}" for i in range(500)]
    texts = [distinct[(i * 7) % 500] for i in range(5000)]
    before = stats(emulator_url)["inputs_embedded"]
    seen: list[int] = []
    result = c.embed(texts, on_progress=seen.append)
    assert stats(emulator_url)["inputs_embedded"] - before == 500
    assert sum(seen) == 5000
    dense = result.dense
    assert dense is not None
    assert dense.shape == (5000, 64)
    ref = c.embed(distinct).dense
    assert ref is not None
    np.testing.assert_array_equal(dense, ref[[(i * 7) % 500 for i in range(5000)]])
    rows = c.embed_as_lists(texts)
    assert rows[0] == rows[500]
    assert rows[0] is not rows[500]


@pytest.mark.parametrize("flight", ["auto", 1], ids=["io-thread", "caller-thread"])
@pytest.mark.parametrize("trickle", [True, "headers"], ids=["body", "headers"])
def test_timeout_bounds_a_trickling_response(
    lying_server: Any, flight: int | str, trickle: bool | str
) -> None:
    """A server that sends its answer a byte a second (each read well within httpx's read
    timeout) is cut off at ``timeout``, whichever path sends, whichever part it trickles."""
    url, _ = lying_server(
        lambda body, n: (200, {}, vectors(body, lambda i: unit(64))), trickle=trickle
    )
    c = client(url, timeout=3, max_retries=0, max_concurrency=flight)
    start = time.monotonic()
    with pytest.raises(APITimeoutError):
        c.embed(["slow"])
    assert time.monotonic() - start < 30  # the trickle alone would take minutes


@pytest.mark.parametrize("flight", ["auto", 1], ids=["io-thread", "caller-thread"])
def test_timeout_bounds_trickling_headers_through_a_users_own_client(
    lying_server: Any, flight: int | str
) -> None:
    """The same with the user's own ``httpx.Client`` (its per-read timeout far longer than the
    trickle's pace): the headers are cut off at ``timeout`` too, and the user's client still
    works for their own requests afterwards, under its own timeouts alone."""
    url, state = lying_server(
        lambda body, n: (200, {}, vectors(body, lambda i: unit(64))), trickle="headers"
    )
    with httpx.Client(timeout=60) as own:
        c = client(url, timeout=3, max_retries=0, max_concurrency=flight, http_client=own)
        start = time.monotonic()
        with pytest.raises(APITimeoutError):
            c.embed(["slow"])
        assert time.monotonic() - start < 30  # the trickle alone would take minutes
        state.trickle = False
        r = own.post(f"{url}/embeddings", json={"input": ["mine"], "dimensions": 64})
        assert r.status_code == 200


def test_retry_after_zero_is_no_request_loop(lying_server: Any) -> None:
    start = time.monotonic()

    def answer(body: dict[str, Any], n: int) -> tuple[int, dict[str, str], bytes]:
        if time.monotonic() - start < 20:
            err = {"error": {"message": "slow down", "code": "rate_limit_exceeded"}}
            return 429, {"retry-after": "0"}, json.dumps(err).encode()
        return 200, {}, vectors(body, lambda i: unit(64))

    url, state = lying_server(answer)
    assert client(url).embed(["one text"]).dense is not None
    assert state.count <= 60, state.count  # 33,242 in 75 s before


def test_a_key_echoed_by_a_gateway_never_reaches_the_error(lying_server: Any) -> None:
    def answer(body: dict[str, Any], n: int) -> tuple[int, dict[str, str], bytes]:
        err = {"error": {"message": f"Incorrect API key provided: Bearer {KEY}", "code": KEY}}
        return 401, {"x-request-id": KEY}, json.dumps(err).encode()

    url, _ = lying_server(answer)
    with pytest.raises(AuthenticationError) as info:
        client(url).embed(["text"])
    shown = f"{info.value} {info.value!r} {info.value.message} {info.value.args}"
    assert KEY not in shown
    assert "**********" in shown


@pytest.mark.parametrize("flight", ["auto", 1], ids=["io-thread", "caller-thread"])
def test_a_compression_bomb_is_refused(lying_server: Any, flight: int | str) -> None:
    bomb = gzip.compress(b" " * (300 * 1024 * 1024), compresslevel=9)

    def answer(body: dict[str, Any], n: int) -> tuple[int, dict[str, str], bytes]:
        return 200, {"content-encoding": "gzip"}, bomb

    url, _ = lying_server(answer)
    with pytest.raises(APIResponseValidationError, match="larger than"):
        client(url, max_concurrency=flight).embed(["text"])


def test_forks_beside_threads_busy_in_the_cache_all_finish(
    emulator_url: str, tmp_path: Path
) -> None:
    script = tmp_path / "fork.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, threading
            from empirio import EmbeddingClient

            url, path = sys.argv[1], sys.argv[2]
            c = EmbeddingClient(api_key="k", base_url=url, rpm=None, tpm=None, dimensions=64,
                                cache=path)
            c.embed(["warm up"])  # first-use imports done: a fork mid-import is Python's hazard
            stop = threading.Event()

            def busy(w):
                i = 0
                while not stop.is_set():
                    c.embed([f"busy {w} {i % 50} {j}" for j in range(20)])
                    i += 1

            threads = [threading.Thread(target=busy, args=(w,)) for w in range(3)]
            for t in threads:
                t.start()
            pids = []
            for k in range(8):
                pid = os.fork()
                if pid == 0:
                    c.embed([f"child {k} text {j}" for j in range(30)])
                    os._exit(0)
                pids.append(pid)
            codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
            # And a fork pool (gunicorn's and multiprocessing's way), threads still busy.
            import multiprocessing

            def work(k):
                return len(c.embed([f"pool {k} text {j}" for j in range(30)]))

            with multiprocessing.get_context("fork").Pool(2) as pool:
                sizes = pool.map(work, range(4))
            stop.set()
            for t in threads:
                t.join()
            print("codes", codes, "pool", sizes, flush=True)
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script), emulator_url, str(tmp_path / "c.sqlite3")],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert "codes [0, 0, 0, 0, 0, 0, 0, 0] pool [30, 30, 30, 30]" in result.stdout, (
        result.stdout + result.stderr
    )


@pytest.mark.parametrize(
    "bad",
    [{"batch_size": 0}, {"rpm": -1}, {"base_url": "http://example.com/v1"}, {"dimensions": 100}],
)
def test_adapters_validation_errors_carry_no_key(bad: dict[str, Any]) -> None:
    import pydantic

    from langchain_empirio import EmpirioEmbeddings
    from llamaindex_empirio import EmpirioEmbedding

    for cls in (EmpirioEmbeddings, EmpirioEmbedding):
        with pytest.raises(pydantic.ValidationError) as info:
            cls(api_key=KEY, **bad)
        err = info.value
        shown = f"{err} {err!r} {err.errors()} {err.json()}"
        assert KEY not in shown
        assert err.errors()  # still says what was wrong


# ---------------------------------------------------------------- the lower items


def test_a_text_that_nfc_makes_longer_is_counted_after_nfc(
    emulator_url: str, tmp_path: Path
) -> None:
    import warnings

    from empirio import TruncationWarning, get_tokenizer
    from empirio._core.plan import over_limit

    text = "\U0001d160" * 2100  # 8,400 bytes as given; three code points each after NFC
    tokens = get_tokenizer()
    assert tokens.count(text) > 8191
    assert over_limit(tokens, text, 8191)
    path = tmp_path / "c.sqlite3"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cut = client(emulator_url, cache=path, overflow="truncate").embed([text]).dense
    assert any(issubclass(w.category, TruncationWarning) for w in seen)
    before = stats(emulator_url)["requests"]
    whole = client(emulator_url, cache=path, overflow="chunk").embed([text]).dense
    assert stats(emulator_url)["requests"] > before  # its own entry, not truncate's
    assert cut is not None
    assert whole is not None
    assert not np.array_equal(cut, whole)


def test_settings_of_a_client_cannot_be_changed_quietly(emulator_url: str) -> None:
    c = client(emulator_url)
    for name, value in (("base_url", "http://127.0.0.1:1/v1"), ("rpm", 10), ("dimensions", 128)):
        with pytest.raises(AttributeError, match="fixed when the client is made"):
            setattr(c, name, value)
    assert c.dimensions == 64


def test_localhost_and_127_0_0_1_are_one_account() -> None:
    from empirio._io.budget import account_id

    same = {
        account_id(url, KEY)
        for url in ("http://127.0.0.1:8000/v1", "http://localhost:8000/v1/", "http://[::1]:8000/v1")
    }
    assert len(same) == 1
    assert account_id("http://127.0.0.1:8001/v1", KEY) not in same
    assert account_id("https://API.example.com/v1", KEY) == account_id(
        "https://api.example.com:443/v1", KEY
    )


def test_a_ledger_locked_for_a_while_is_used_again_when_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from empirio._core.pace import Limits
    from empirio._io import budget as _budget

    path = tmp_path / "ledger.sqlite3"
    budget = _budget.SqliteBudget(path, busy_timeout=0.2)
    limits = Limits(600, None)
    assert budget.acquire(limits, 100.0, 10) == 0.0  # the file is made and used
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds it
    budget._floor = -float("inf")
    budget.acquire(limits, 200.0, 10)
    assert budget._fallback is not None  # paced alone meanwhile
    holder.execute("COMMIT")
    holder.close()
    monkeypatch.setattr(_budget, "RETRY_FILE_S", 0.0)
    budget._retry_at = 0.0
    budget._floor = -float("inf")
    budget.acquire(limits, 300.0, 10)
    assert budget._fallback is None  # back on the shared file


def test_parked_views_are_bounded_in_bytes() -> None:
    from empirio._core.views import ViewCache

    views = ViewCache(max_bytes=1_000_000)
    rows = np.ones((1000, 2048), dtype=np.float32)
    views.park("document", [f"t{i}" for i in range(1000)], rows, None)
    assert views.nbytes <= 1_000_000
    assert 0 < len(views) < 1000
    assert views.take("dense", "document", ["t999"])[0] is not None  # the newest are kept


def test_an_echoing_gateway_puts_no_key_in_the_playground_or_the_cli(lying_server: Any) -> None:
    from pydantic import SecretStr

    from empirio.playground import RunSettings, run

    def answer(body: dict[str, Any], n: int) -> tuple[int, dict[str, str], bytes]:
        err = {"error": {"message": f"bad key {KEY}", "param": KEY}, "echo": f"Bearer {KEY}"}
        return 401, {}, json.dumps(err).encode()

    url, _ = lying_server(answer)
    settings = RunSettings.model_validate({"documents": ["a document"], "queries": ["a query"]})
    page = json.dumps(run(settings, api_key=SecretStr(KEY), base_url=url, paced=False))
    assert "AuthenticationError" in page
    assert KEY not in page
    cli = subprocess.run(
        [sys.executable, "-m", "empirio", "embed", "--base-url", url, "--format", "jsonl"],
        input="one line\n",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "EMPIRIOLABS_API_KEY": KEY},
    )
    assert cli.returncode == 1
    assert "bad key" in cli.stderr
    assert KEY not in cli.stderr + cli.stdout


def test_a_large_account_keeps_rate_times_latency_in_flight(make_emulator: Any) -> None:
    """At 1,200 RPM and 1 s latency, 20 requests a second need about 20 in flight; the old fixed
    8 held the account to 0.41 of its rate. Counted at the emulator, not timed."""
    url = make_emulator(rpm=1200, tpm=100_000_000, latency_ms=1000)
    c = EmbeddingClient(api_key=KEY, base_url=url, rpm=1200, tpm=100_000_000, dimensions=64)
    c.embed([f"in flight text {i}" for i in range(600)])
    s = stats(url)
    assert s["max_in_flight"] >= 15, s
    assert_few_429s(s)


def test_every_error_pickles_and_unpickles_with_its_attributes() -> None:
    import empirio
    from empirio import EmbeddingResult, Usage
    from empirio._core.errors import status_error

    partial = EmbeddingResult(np.ones((1, 4), dtype=np.float32), None, Usage(requests=1))
    errors = [
        status_error(401, "bad key", code="invalid_api_key", request_id="r1", inputs=(0, 1)),
        status_error(402, "no credits", code="insufficient_credits"),
        status_error(429, "slow", retry_after=2.0),
        status_error(503, "down"),
        empirio.InvalidInputError("blank", (3,)),
        empirio.APITimeoutError("late", inputs=(2,)),
        empirio.ConfigurationError("bad"),
        empirio.BudgetError("redis away"),
    ]
    errors[1].partial, errors[1].partial_indices = partial, (5,)
    for err in errors:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err)
        assert str(back) == str(err)
        for name in ("status_code", "code", "request_id", "retry_after", "inputs", "indices"):
            assert getattr(back, name, None) == getattr(err, name, None)
        assert back.partial_indices == err.partial_indices
    back = pickle.loads(pickle.dumps(errors[1]))
    assert back.partial is not None
    np.testing.assert_array_equal(back.partial.dense, partial.dense)


def _fail_with_401(url: str) -> None:
    EmbeddingClient(api_key="wrong-key-0123456789", base_url=url, rpm=None, tpm=None).embed(["x"])


def test_a_401_in_a_spawn_pool_arrives_as_itself(make_emulator: Any) -> None:
    import concurrent.futures
    import multiprocessing

    url = make_emulator(api_key="the-right-key-0123456789")
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        future = pool.submit(_fail_with_401, url)
        with pytest.raises(AuthenticationError) as info:
            future.result(timeout=120)
    assert info.value.status_code == 401


def test_a_wrong_kind_is_an_empirio_error(emulator_url: str) -> None:
    from empirio import EmpirioError

    with pytest.raises(EmpirioError, match="kind must be one of"):
        client(emulator_url).embed(["x"], kind="queries")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="output must be one of"):
        client(emulator_url).embed(["x"], output="dense&sparse")  # type: ignore[arg-type]


def test_a_refused_connection_says_so_at_once() -> None:
    port = _free_port()
    start = time.monotonic()
    with pytest.raises(APIConnectionError, match="nothing is listening") as info:
        EmbeddingClient(api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1").embed(["hello"])
    assert time.monotonic() - start < 5  # 48 s of silent retries before
    assert "empirio serve" in str(info.value)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
