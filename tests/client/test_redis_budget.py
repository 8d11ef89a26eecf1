"""One account budget across hosts, through a real ``redis-server`` on 127.0.0.1.

"Hosts" are processes with separate budget folders (so the machine's SQLite ledger cannot be
what they share), against an emulator in its own process that enforces the limits per minute
and per second. ``.ci/run`` installs Debian's redis-server when it is missing.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import os
import pickle
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from empirio import BudgetError, ConfigurationError, EmbeddingClient, EmpirioError
from empirio._core.pace import BudgetState, checked_state
from empirio._io.budget import _pack, _unpack, account_id

from ..conftest import FEW_429S, assert_few_429s, run_cli, stats
from ..netem import latency_proxy

REDIS = shutil.which("redis-server")
PASSWORD = "redis-pass-never-shown-0123456789"

if REDIS is None:  # CI installs it (.ci/run); elsewhere say how
    if os.environ.get("CI"):
        raise RuntimeError("redis-server is missing: apt-get install redis-server")
    pytest.skip("needs redis-server: apt-get install redis-server", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Redis:
    """A redis-server process on a free loopback port, which a test may kill and restart."""

    def __init__(self, password: str | None = None) -> None:
        self.port = free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [str(REDIS), "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def redis_server() -> Iterator[Redis]:
    server = Redis(PASSWORD)
    server.start()
    yield server
    server.stop()


HOST = """
    import json, sys, time
    from empirio import EmbeddingClient

    url, budget, n, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    c = EmbeddingClient(api_key="shared-account-key", base_url=url, rpm=600, tpm=24_000_000,
                        dimensions=64, share_budget=budget)
    texts = [f"{name} text {i} about topic {i % 13}" for i in range(n)]
    if sys.argv[5:] == ["ready"]:  # say when this host has used the budget once, then wait
        c.embed([f"{name} is ready"])
        print("ready", flush=True)
        sys.stdin.readline()  # for "go", so that both hosts run their 400 rows together
    t = time.monotonic()
    r = c.embed(texts)
    print(json.dumps({"rows": len(r), "seconds": time.monotonic() - t,
                      "first": r.dense[0].tolist()[:4], "u": str(c.usage)}), flush=True)
"""


def hosts(tmp_path: Path, url: str, budget: str, n: int, k: int = 3) -> list[str]:
    """Run ``k`` "hosts" at once, each with its own budget folder; return their outputs."""
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(HOST), encoding="utf-8")
    procs = []
    for i in range(k):
        env = {**os.environ, "EMPIRIOLABS_BUDGET_DIR": str(tmp_path / f"host{i}")}
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), url, budget, str(n), f"host{i}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert PASSWORD not in out + err
        outs.append(out + err)
    return outs


def test_three_hosts_share_one_budget_and_see_no_429(
    tmp_path: Path, emulator_process: Any, redis_server: Redis
) -> None:
    url = emulator_process("--rpm", "600", "--tpm", "24000000", "--strict-burst")
    hosts(tmp_path, url, redis_server.url, 300)
    s = stats(url)
    assert_few_429s(s)
    assert s["by_status"]["200"] == 90
    # The control: the same three hosts, each with only its own machine's budget, overrun the
    # account, so the bound above tells sharing from not sharing.
    control = emulator_process("--rpm", "600", "--tpm", "24000000", "--strict-burst")
    hosts(tmp_path, control, "machine", 300)
    assert stats(control)["by_status"].get("429", 0) > 2 * FEW_429S


def test_redis_killed_mid_run_and_restarted_loses_nothing(
    tmp_path: Path, emulator_process: Any, redis_server: Redis
) -> None:
    url = emulator_process("--rpm", "600", "--tpm", "24000000", "--strict-burst")
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(HOST), encoding="utf-8")
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), url, redis_server.url, "400", f"host{i}", "ready"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "EMPIRIOLABS_BUDGET_DIR": str(tmp_path / f"host{i}")},
        )
        for i in range(2)
    ]
    # Both hosts have used Redis (a host that never reached it fails at once, by design),
    # however long a loaded machine takes to start them; then both start at once, and Redis
    # dies when the service has answered a quarter of their 80 requests, not after a fixed
    # time (a host that started seconds earlier could have finished before it died).
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready", p.stderr
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()  # communicate() closes it
    deadline = time.monotonic() + 120
    while stats(url)["by_status"].get("200", 0) < 2 + 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    redis_server.stop()  # state and all
    time.sleep(2.0)
    redis_server.start()
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert '"rows": 400' in out
        assert "unreachable" in err  # one warning, naming the host, never the password
        assert "127.0.0.1" in err
        assert PASSWORD not in out + err
    s = stats(url)
    assert s["inputs_embedded"] == 802  # 400 each, and each one's first text
    # Only a handful while each paced alone: two seconds at up to twice the rate, 0-6 when the
    # machine is quiet and 8 seen once while Ray's workers were still winding down.
    assert s["by_status"].get("429", 0) <= 10, s


def test_an_unreachable_redis_is_a_clear_error_at_once(
    emulator_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    budget = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    c = EmbeddingClient(api_key="k", base_url=emulator_url, rpm=600, share_budget=budget)
    start = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(BudgetError) as info:
        c.embed(["text"])
    assert time.monotonic() - start < 10
    text = str(info.value)
    assert "127.0.0.1" in text
    assert PASSWORD not in text + repr(info.value) + caplog.text
    assert stats(emulator_url)["requests"] >= 0  # nothing to assert about others' requests


def test_the_password_never_shows(emulator_url: str, redis_server: Redis) -> None:
    from langchain_core.load import dumps

    from langchain_empirio import EmpirioEmbeddings
    from llamaindex_empirio import EmpirioEmbedding

    c = EmbeddingClient(api_key="k", base_url=emulator_url, rpm=600, share_budget=redis_server.url)
    assert c.embed(["works with a password"]).dense is not None
    assert PASSWORD not in repr(c)
    blob = pickle.dumps(c)
    assert PASSWORD.encode() not in blob
    assert pickle.loads(blob).embed(["again"]).dense is not None
    lc = EmpirioEmbeddings(api_key="k", base_url=emulator_url, share_budget=redis_server.url)
    li = EmpirioEmbedding(api_key="k", base_url=emulator_url, share_budget=redis_server.url)
    for obj in (lc, li):
        assert PASSWORD not in repr(obj)
        assert PASSWORD.encode() not in pickle.dumps(obj)
    assert PASSWORD not in dumps(lc)
    assert PASSWORD not in li.to_json()


def test_the_share_budget_setting(monkeypatch: pytest.MonkeyPatch, emulator_url: str) -> None:
    with pytest.raises(ConfigurationError, match="share_budget must be") as info:
        EmbeddingClient(api_key="k", base_url=emulator_url, share_budget=f"http://:{PASSWORD}@x/")
    assert PASSWORD not in str(info.value)
    monkeypatch.setenv("EMPIRIOLABS_SHARE_BUDGET", "process")
    assert EmbeddingClient(api_key="k", base_url=emulator_url).share_budget == "process"
    monkeypatch.delenv("EMPIRIOLABS_SHARE_BUDGET")
    assert EmbeddingClient(api_key="k", base_url=emulator_url).share_budget == "machine"


def test_a_missing_extra_is_one_line(tmp_path: Path, emulator_url: str) -> None:
    script = tmp_path / "no_redis.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            sys.modules["redis"] = None  # as if empirio[redis] were not installed
            from empirio import EmbeddingClient, ConfigurationError
            try:
                EmbeddingClient(api_key="k", base_url=sys.argv[1], rpm=600,
                                share_budget="redis://127.0.0.1:1/0")
            except ConfigurationError as exc:
                print("error:", exc)
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script), emulator_url], capture_output=True, text=True, timeout=60
    )
    assert "pip install 'empirio[redis]'" in out.stdout, out.stdout + out.stderr


# ---------------------------------------------------------------------- a Redis far away


def test_a_redis_20_ms_away_paces_on_schedule_not_in_bursts(
    emulator_process: Any, redis_server: Redis
) -> None:
    """A budget store slower than the pacing interval (two round trips of 20 ms against 50 ms
    at 1,200 RPM): each request is booked ahead and leaves at its own slot. Before, the sends
    granted during a chain of slow transactions left together: 40 within 20 ms, 192 429s."""
    url = emulator_process("--rpm", "1200", "--tpm", "100000000", "--latency-ms", "300")
    with latency_proxy(f"127.0.0.1:{redis_server.port}", 20) as far:
        budget = f"redis://:{PASSWORD}@{far}/0"
        c = EmbeddingClient(
            api_key="far", base_url=url, rpm=1200, tpm=100_000_000, share_budget=budget
        )
        rows = c.embed([f"far away text {i}" for i in range(1200)])
    assert len(rows) == 1200
    s = stats(url)
    assert s["max_per_second"] <= 20, s  # RPM / 60, counted where the service counts
    assert_few_429s(s)


@pytest.mark.parametrize(
    "value",
    [
        _pack(BudgetState(next_request=math.nan)),  # pacing off for good, before
        _pack(BudgetState(jitter=100.0)),  # one request a minute for hours, before
        b"\xde\xad" * 32,  # 64 bytes of garbage
    ],
    ids=["nan", "huge-margin", "garbage"],
)
def test_a_bad_value_in_the_redis_budget_is_replaced_with_one_warning(
    value: bytes,
    emulator_process: Any,
    redis_server: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import redis

    url = emulator_process("--rpm", "600", "--tpm", "100000000")
    key = f"empirio:budget:{account_id(url, 'tampered')}"
    store = redis.Redis.from_url(redis_server.url)
    store.set(key, value)
    c = EmbeddingClient(
        api_key="tampered", base_url=url, rpm=600, tpm=100_000_000, share_budget=redis_server.url
    )
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="empirio"):
        c.embed([f"tampered text {i}" for i in range(300)])
    elapsed = time.monotonic() - start
    warned = [r.getMessage() for r in caplog.records if "not valid" in r.getMessage()]
    assert len(warned) == 1, caplog.text
    assert key in warned[0]
    assert PASSWORD not in caplog.text
    assert_few_429s(stats(url))  # paced, not unpaced
    assert elapsed < 30  # 30 requests at 10 a second: not held for minutes
    state = _unpack(store.get(key))  # what is there now is a state the rules wrote
    assert checked_state(state) == state


# ---------------------------------------------------------------------- one account, many keys


def test_two_keys_naming_one_account_pace_as_one(
    emulator_process: Any, redis_server: Redis, tmp_path: Path
) -> None:
    """Limits belong to the account: keys that name it share one budget (in Redis here, on
    the machine as well); keys that do not are each their own account (the control)."""

    def run(url: str, account: str | None) -> None:
        clients = [
            EmbeddingClient(
                api_key=f"key-{k}",
                base_url=url,
                rpm=600,
                tpm=100_000_000,
                share_budget=redis_server.url,
                account=account,
            )
            for k in range(3)
        ]
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            done = pool.map(
                lambda c: len(c[1].embed([f"{c[0]} {i}" for i in range(300)])), enumerate(clients)
            )
            assert list(done) == [300, 300, 300]

    shared = emulator_process("--rpm", "600", "--tpm", "100000000")
    run(shared, "acme-prod")
    assert_few_429s(stats(shared))
    control = emulator_process("--rpm", "600", "--tpm", "100000000")
    run(control, None)
    assert stats(control)["by_status"].get("429", 0) > 2 * FEW_429S
    assert account_id(shared, "key-0", "acme-prod") == account_id(shared, "key-1", "acme-prod")
    assert "acme-prod" not in account_id(shared, "key-0", "acme-prod")


def test_the_account_setting(monkeypatch: pytest.MonkeyPatch, emulator_url: str) -> None:
    monkeypatch.setenv("EMPIRIOLABS_ACCOUNT", "team-a")
    assert EmbeddingClient(api_key="k", base_url=emulator_url).account == "team-a"
    assert EmbeddingClient(api_key="k", base_url=emulator_url, account="b").account == "b"
    monkeypatch.delenv("EMPIRIOLABS_ACCOUNT")
    assert EmbeddingClient(api_key="k", base_url=emulator_url).account is None
    with pytest.raises(ConfigurationError, match="account must be"):
        EmbeddingClient(api_key="k", base_url=emulator_url, account="  ")


# ---------------------------------------------------------------------- the cache in Redis


def test_a_redis_cache_is_shared_by_hosts_and_keeps_its_password(
    emulator_url: str, redis_server: Redis, tmp_path: Path
) -> None:
    from langchain_empirio import EmpirioEmbeddings
    from llamaindex_empirio import EmpirioEmbedding

    texts = [f"cached in redis {i}" for i in range(30)]
    first = EmbeddingClient(api_key="k", base_url=emulator_url, cache=redis_server.url)
    expected = first.embed(texts).dense
    assert PASSWORD not in repr(first) + repr(first.cache)
    blob = pickle.dumps(first)
    assert PASSWORD.encode() not in blob
    before = stats(emulator_url)["inputs_embedded"]
    # another "host": a process of its own with its own budget folder, through the pickle
    script = tmp_path / "host.py"
    script.write_text(
        "import pickle, sys\n"
        "c = pickle.loads(sys.stdin.buffer.read())\n"
        "r = c.embed(sys.argv[1:])\n"
        "sys.stdout.buffer.write(r.dense.tobytes())\n"
    )
    env = {**os.environ, "EMPIRIOLABS_BUDGET_DIR": str(tmp_path / "budget")}
    out = subprocess.run(
        [sys.executable, str(script), *texts], input=blob, capture_output=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == expected.tobytes()
    assert stats(emulator_url)["inputs_embedded"] == before  # every vector came from Redis
    for obj in (
        EmpirioEmbeddings(api_key="k", base_url=emulator_url, cache=redis_server.url),
        EmpirioEmbedding(api_key="k", base_url=emulator_url, cache=redis_server.url),
    ):
        assert PASSWORD not in repr(obj)
        assert PASSWORD.encode() not in pickle.dumps(obj)


def test_a_poisoned_redis_cache_is_never_served(emulator_url: str, redis_server: Redis) -> None:
    """Anyone who can write the Redis but lacks the secret: every vector overwritten with NaN,
    zeros, norm 32,000 or another text's vector is refused, re-fetched and healed; another key
    finds nothing to read and no key to test."""
    import numpy as np
    import redis

    from empirio import CacheWarning

    texts = [f"poisoned in redis {i}" for i in range(20)]
    first = EmbeddingClient(api_key="k-owner", base_url=emulator_url, cache=redis_server.url)
    expected = first.embed(texts).dense
    raw = redis.Redis.from_url(redis_server.url)
    keys = sorted(raw.keys("empirio:cache:*"))
    assert len(keys) == 20
    values = raw.mget(keys)
    dims = expected.shape[1]
    forged = [
        np.full(dims, np.nan, "<f4").tobytes(),
        np.zeros(dims, "<f4").tobytes(),
        np.full(dims, 1000.0, "<f4").tobytes(),
    ]
    raw.mset({k: forged[i % 3] if i % 2 else values[(i + 1) % 20] for i, k in enumerate(keys)})
    c = EmbeddingClient(api_key="k-owner", base_url=emulator_url, cache=redis_server.url)
    with pytest.warns(CacheWarning, match="20 entries"):
        got = c.embed(texts).dense
    np.testing.assert_array_equal(got, expected)
    assert c.cache is not None
    assert (c.cache.stats().hits, c.cache.stats().rejected) == (0, 20)
    healed = EmbeddingClient(api_key="k-owner", base_url=emulator_url, cache=redis_server.url)
    np.testing.assert_array_equal(healed.embed(texts).dense, expected)
    assert healed.usage.requests == 0
    outsider = EmbeddingClient(api_key="k-other", base_url=emulator_url, cache=redis_server.url)
    outsider.embed(texts[:3])
    assert outsider.cache is not None
    assert (outsider.cache.stats().hits, outsider.cache.stats().rejected) == (0, 0)


def test_a_redis_cache_read_keeps_the_next_mget_queued_while_reading_one() -> None:
    """The read-ahead's order of events, on a connection that records them (redis-py's
    connection, not our transport): two MGETs out before the first answer is read, one more sent
    after each answer, the health check only on the first send (a PING among answers due would
    read one of them as its PONG), and the answers joined in order."""
    from empirio._io.redis_store import PREFIX, _read_ahead

    events: list[tuple[str, Any]] = []

    class Recording:
        def send_packed_command(self, command: list[bytes], check_health: bool = True) -> None:
            (packed,) = command  # one MGET of one key, as RESP
            assert packed.startswith(b"*2\r\n$4\r\nMGET\r\n$15\r\n" + PREFIX.encode())
            events.append(
                ("send", (packed.split(b"\r\n")[-2][len(PREFIX) :].decode(), check_health))
            )

        def read_response(self) -> list[bytes]:
            sent = [e[1][0] for e in events if e[0] == "send"]
            answer = sent[sum(e[0] == "read" for e in events)]
            events.append(("read", answer))
            return [answer.encode()]

    got = list(_read_ahead(Recording(), [["a"], ["b"], ["c"], ["d"]]))
    assert got == [[b"a"], [b"b"], [b"c"], [b"d"]]
    assert [(e[0], e[1][0] if e[0] == "send" else e[1]) for e in events] == [
        ("send", "a"), ("send", "b"),
        ("read", "a"), ("send", "c"),
        ("read", "b"), ("send", "d"),
        ("read", "c"), ("read", "d"),
    ]  # fmt: skip
    assert [e[1][1] for e in events if e[0] == "send"] == [True, False, False, False]


@pytest.mark.parametrize(
    "keys",
    [
        ["0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"],  # the cache's
        ["a", "bcd", "x\r\n$3\r\n"],  # of several lengths, one with RESP's own characters
        ["é", "e"],  # one character each, not one byte each
        ["naïve", "naive"],
    ],
)
def test_the_cache_packs_its_mget_as_redis_py_does(keys: list[str]) -> None:
    """The cache packs its own ``MGET`` (redis-py's packer costs 40 times more): the bytes are
    those redis-py sends for the same keys, whatever their lengths and characters."""
    import redis

    from empirio._io.redis_store import PREFIX, _mget

    packer = redis.connection.Connection()._command_packer
    assert _mget(keys) == b"".join(packer.pack("MGET", *[PREFIX + k for k in keys]))


@pytest.mark.parametrize("rtt_ms", [0, 20])
def test_a_redis_cache_read_of_many_chunks_keeps_order_and_gaps(
    redis_server: Redis, rtt_ms: int
) -> None:
    """1,234 keys, every third never written, read back directly and through a link 20 ms away:
    each value in its key's place and ``None`` in each gap, in one MGET per 128 keys."""
    import redis

    from empirio._io.redis_store import RedisStore

    keys = [f"read-ahead-{rtt_ms}-{i}" for i in range(1234)]
    written = {k: f"value {i}".encode() * (i % 7 + 1) for i, k in enumerate(keys) if i % 3}
    RedisStore(redis_server.url).mset(list(written.items()))
    raw = redis.Redis.from_url(redis_server.url)
    raw.config_resetstat()
    with latency_proxy(f"127.0.0.1:{redis_server.port}", rtt_ms) as far:
        store = RedisStore(f"redis://:{PASSWORD}@{far}/0" if rtt_ms else redis_server.url)
        assert store.mget(keys) == [written.get(k) for k in keys]
        assert store.mget(keys[::-1][:7]) == [written.get(k) for k in keys[::-1][:7]]
        store.close()
    assert raw.info("commandstats")["cmdstat_mget"]["calls"] == 10 + 1
    raw.close()


@contextlib.contextmanager
def cutting_proxy(port: int, cut_after: int, connections_cut: int) -> Iterator[str]:
    """A TCP proxy on loopback in front of ``port`` that closes each of its first
    ``connections_cut`` connections once ``cut_after`` bytes of answers have passed (a
    connection dropped mid-read); later ones pass whole. Yields its ``host:port``."""
    listener = socket.create_server(("127.0.0.1", 0))
    cut = [0]

    def pipe(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        passed = 0
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if limit is not None and passed + len(data) > limit:
                    dst.sendall(data[: limit - passed])
                    break
                dst.sendall(data)
                passed += len(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                upstream = socket.create_connection(("127.0.0.1", port))
                limit = cut_after if cut[0] < connections_cut else None
                cut[0] += 1
                threading.Thread(target=pipe, args=(client, upstream, None), daemon=True).start()
                threading.Thread(target=pipe, args=(upstream, client, limit), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


@pytest.mark.parametrize("connections_cut", [1, 99])
def test_a_redis_cache_read_cut_off_goes_on_once_from_where_it_stopped(
    redis_server: Redis, connections_cut: int
) -> None:
    """A connection dropped mid-read (after 800 KB of 2.5 MB of answers: in the second part):
    the read goes on once, on a new connection, from the first part not answered, and every
    value comes back once, in its place; dropped again, it is a CacheError naming host and
    port, never the password."""
    from empirio import CacheError
    from empirio._io.redis_store import RedisStore

    keys = [f"cut-off-{connections_cut}-{i}" for i in range(600)]
    written = {k: bytes([i % 251]) * 4112 for i, k in enumerate(keys)}
    RedisStore(redis_server.url).mset(list(written.items()))
    with cutting_proxy(redis_server.port, 800_000, connections_cut) as near:
        store = RedisStore(f"redis://:{PASSWORD}@{near}/0")
        if connections_cut == 1:
            assert store.mget(keys) == [written[k] for k in keys]
            assert store.mget(keys[:3]) == [written[k] for k in keys[:3]]  # the pool is sound
        else:
            with pytest.raises(CacheError, match=r"127\.0\.0\.1:\d+") as info:
                store.mget(keys)
            assert PASSWORD not in str(info.value)
        store.close()


def test_a_redis_cache_that_is_away_is_a_cache_error_before_anything_is_sent(
    emulator_url: str,
) -> None:
    from empirio import CacheError

    cache = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    c = EmbeddingClient(api_key="k", base_url=emulator_url, cache=cache)
    before = stats(emulator_url)["requests"]
    with pytest.raises(CacheError, match=r"127\.0\.0\.1:\d+") as info:
        c.embed(["never sent"])
    assert PASSWORD not in str(info.value) + repr(info.value)
    assert stats(emulator_url)["requests"] == before


# ---------------------------------------------------------------------- passwords of any shape

ODD = "p/a?s#s@w:o%rd-never-shown"


@pytest.mark.parametrize("option", ["share_budget", "cache"])
def test_a_password_with_url_characters_works_and_never_shows(
    option: str, emulator_url: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """An unescaped password holding ``/ ? # @ : %`` is read whole (it connects) and masked in
    every message, dump and traceback; before, urlsplit cut it and a raw ValueError or a
    mis-parsed host printed pieces of it."""
    from langchain_core.load import dumps

    from langchain_empirio import EmpirioEmbeddings
    from llamaindex_empirio import EmpirioEmbedding

    server = Redis(ODD)
    server.start()
    try:
        url = f"redis://:{ODD}@127.0.0.1:{server.port}/0"
        with caplog.at_level(logging.DEBUG):
            c = EmbeddingClient(api_key="k", base_url=emulator_url, rpm=600, **{option: url})
            assert c.embed(["a password of any shape"]).dense is not None  # it connected
            lc = EmpirioEmbeddings(api_key="k", base_url=emulator_url, **{option: url})
            li = EmpirioEmbedding(api_key="k", base_url=emulator_url, **{option: url})
            shown = [repr(c), str(lc), repr(lc), lc.model_dump_json(), str(lc.model_dump())]
            shown += [dumps(lc), repr(li), li.to_json(), str(li.model_dump())]
            server.stop()  # now every failure message is about a URL with that password
            with pytest.raises(EmpirioError) as info:
                EmbeddingClient(
                    api_key="k2", base_url=emulator_url, rpm=600, **{option: url}
                ).embed(["after the server is gone"])
            shown += [str(info.value), repr(info.value), caplog.text]
        for piece in (ODD, "p/a?s", "s@w:o", quote_plus(ODD)):
            assert not any(piece in text for text in shown), piece
        flag = f"--{option.replace('_', '-')}"
        cli = run_cli("embed", "--emulator", flag, url, stdin="text\n")
        assert ODD not in cli.stdout + cli.stderr
        assert "p/a?s" not in cli.stdout + cli.stderr
    finally:
        server.stop()


@pytest.mark.parametrize(
    "url",
    [f"redis://:{ODD}@127.0.0.1:notaport/0", f"redis://:{ODD}@/0", f"rediss://:{ODD}@[::1/0"],
)
def test_an_unreadable_redis_url_is_a_one_line_error_without_the_password(
    url: str, emulator_url: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        EmbeddingClient(api_key="k", base_url=emulator_url, share_budget=url)
    assert "p/a?s" not in str(info.value)
    assert ODD not in str(info.value)
