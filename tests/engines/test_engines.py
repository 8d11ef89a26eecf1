"""Ingestion on the engines, for real: local Ray (several actors) and local Spark (``local[2]``,
several partitions), against an emulator in its own process that enforces 600 RPM per minute
and per second. Each engine starts once for this module: they take seconds to start.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from empirio import EmbeddingClient

from ..conftest import assert_few_429s, emulator_processes, stats

KEY = "sk-engines-test-key-0123456789"
TEXTS = [
    f"engine row {i} about {['rivers', 'tea', 'stars', 'bonds'][i % 4]} {i * 3}" for i in range(240)
]
BLANK, NONE = 17, 101  # rows that are row errors, not job failures


def rows() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"id": i, "text": t, "lang": "en"} for i, t in enumerate(TEXTS)]
    out[BLANK]["text"] = "   "
    out[NONE]["text"] = None
    return out


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    with emulator_processes() as start:
        yield start("--rpm", "600", "--tpm", "24000000", "--strict-burst")


def options(url: str, **kw: Any) -> dict[str, Any]:
    return {"api_key": KEY, "base_url": url, "dimensions": 64, "rpm": 600, "tpm": 24_000_000, **kw}


def reference(url: str) -> np.ndarray:
    ok = [t for i, t in enumerate(TEXTS) if i not in (BLANK, NONE)]
    dense = EmbeddingClient(**options(url, share_budget="client")).embed(ok).dense
    assert dense is not None
    return dense


def check(got: list[dict[str, Any]], ref: np.ndarray) -> None:
    got = sorted(got, key=lambda r: r["id"])
    assert [r["id"] for r in got] == list(range(len(TEXTS)))  # every row back, once
    assert all(r["lang"] == "en" for r in got)  # other columns unchanged
    k = 0
    for r in got:
        if r["id"] in (BLANK, NONE):
            assert r["embedding"] is None
            assert r["embedding_error"]
            continue
        assert r["embedding_error"] is None
        np.testing.assert_array_equal(np.asarray(r["embedding"], dtype=np.float32), ref[k])
        k += 1
    assert "blank" in got[BLANK]["embedding_error"]
    assert "null" in got[NONE]["embedding_error"]


def billed(counters: dict[str, Any]) -> int:
    """Requests the emulator answered with vectors: what the service bills (its ``requests``
    counts arrivals, 429s included)."""
    return int(counters["by_status"].get("200", 0))


def check_tally(total: Any, start: dict[str, Any], end: dict[str, Any]) -> None:
    """The job's tally is what the emulator billed: every row, both row errors, every request."""
    assert (total.rows, total.row_errors) == (len(TEXTS), 2)
    assert total.usage.requests == billed(end) - billed(start) > 0
    assert total.usage.input_tokens > 0
    assert f"{len(TEXTS)} rows (2 with a row error)" in str(total)


# ------------------------------------------------------------------------------------ Ray


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",  # loopback only, whatever the host's interfaces are
    )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


def test_ray_embed_column(ray_local: Any, api: str, tmp_path: Path) -> None:
    from empirio.ray import Tally, embed_column

    cache = tmp_path / "c.sqlite3"
    ds = ray_local.data.from_items(rows(), override_num_blocks=6)
    tally = Tally()
    start = stats(api)
    out = embed_column(
        ds, "text", concurrency=2, batch_size=40, tally=tally, **options(api, cache=str(cache))
    )
    got = out.take_all()
    before = stats(api)
    assert_few_429s(before)
    check_tally(tally.total(), start, before)
    check(got, reference(api))
    before = stats(api)
    # A rerun with the cache pays for nothing.
    again = embed_column(ds, "text", concurrency=2, batch_size=40, **options(api, cache=str(cache)))
    assert len(again.take_all()) == len(TEXTS)
    assert stats(api)["requests"] == before["requests"]


def test_ray_actors_that_would_starve_the_readers_are_refused_at_once(
    ray_local: Any, api: str
) -> None:
    """On 2 CPUs, 3 actors of half a CPU leave no whole CPU to read with: Ray would wait for
    ever; the error says what to pass instead. The default fits (2 here)."""
    from empirio import ConfigurationError
    from empirio.ray import _actors, embed_column

    ds = ray_local.data.from_items(rows()[:10])
    with pytest.raises(ConfigurationError, match=r"concurrency=3 .* 2 CPUs.*concurrency=2 or less"):
        embed_column(ds, "text", concurrency=3, **options(api))
    assert _actors(None, 0.5) == 2


def _kill_when_paid(api: str, start: int, paid: int, marker: str) -> int:
    """kill -9 the worker process whose command line holds ``marker`` once the service has
    billed ``paid`` requests since ``start``; the number billed at the kill."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        so_far = billed(stats(api)) - start
        if so_far >= paid:
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    cmdline = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
                if marker.encode() in cmdline:
                    os.kill(int(proc.name), signal.SIGKILL)
                    return so_far
        time.sleep(0.02)
    raise AssertionError(f"no worker process matching {marker!r} paid {paid} requests")


def test_ray_tally_counts_what_a_killed_actor_paid(ray_local: Any, api: str) -> None:
    """An actor killed mid-batch (after half its batch was billed) has told the tally every
    request it saw answered: only those in flight at the kill (at most max_concurrency) can
    be missing. Ray runs the batch again on a new actor."""
    import concurrent.futures

    from empirio.ray import Tally, embed_column

    texts = [{"id": i, "text": f"a killed actor's row {i}"} for i in range(240)]
    ds = ray_local.data.from_items(texts, override_num_blocks=1)
    tally = Tally()
    start = billed(stats(api))
    out = embed_column(
        ds, "text", concurrency=1, batch_size=120, tally=tally, **options(api, max_concurrency=2)
    )
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        job = pool.submit(out.take_all)
        at_kill = _kill_when_paid(api, start, 6, "Embedder")
        got = job.result(timeout=300)
    paid = billed(stats(api)) - start
    assert len(got) == 240
    counted = tally.total().usage.requests
    assert at_kill >= 6
    assert paid - 2 <= counted <= paid, (at_kill, counted, paid)


# ------------------------------------------------------------------------------------ Spark


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        if os.environ.get("CI"):
            raise RuntimeError("java is missing: apt-get install default-jre-headless")
        pytest.skip("needs Java: apt-get install default-jre-headless")
    from pyspark.sql import SparkSession

    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"  # loopback only, whatever the host resolves to
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    session = (
        # Two cores; a failed task is tried up to 4 times (local mode's default is once).
        SparkSession.builder.master("local[2,4]")
        .appName("empirio-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_spark_embed_column(spark: Any, api: str, tmp_path: Path) -> None:
    import pandas as pd

    from empirio.spark import Tally, embed_column

    cache = tmp_path / "c.sqlite3"
    df = spark.createDataFrame(pd.DataFrame(rows())).repartition(4)
    start = stats(api)
    tally = Tally(spark)
    out = embed_column(df, "text", tally=tally, **options(api, cache=str(cache)))
    got = [r.asDict() for r in out.collect()]
    after = stats(api)
    check_tally(tally.total(), start, after)
    check(got, reference(api))
    after = stats(api)
    assert_few_429s(after, start)
    assert len(embed_column(df, "text", **options(api, cache=str(cache))).collect()) == len(TEXTS)
    assert stats(api)["requests"] == after["requests"]  # the rerun sent nothing


def _spark_worker_pid() -> int | None:
    """A Python worker forked by PySpark's daemon (not the daemon itself)."""
    procs = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            procs[int(proc.name)] = (cmdline, ppid)
    for pid, (cmdline, ppid) in procs.items():
        if b"pyspark.daemon" in cmdline and b"pyspark.daemon" in procs.get(ppid, (b"", 0))[0]:
            return pid
    return None


def test_spark_tally_counts_what_a_dead_worker_paid_and_a_second_action_warns(
    spark: Any, api: str
) -> None:
    """A Python worker killed mid-task: Spark drops that task's accumulator, yet the tally has
    every payment the worker saw answered. Then the result used by a second action is paid
    again, and a PaidTwiceWarning says so on the driver."""
    import concurrent.futures

    import pandas as pd

    from empirio.spark import PaidTwiceWarning, Tally, embed_column

    df = spark.createDataFrame(
        pd.DataFrame({"id": range(240), "text": [f"a dead worker's row {i}" for i in range(240)]})
    ).repartition(2)
    tally = Tally(spark)
    start = billed(stats(api))
    out = embed_column(df, "text", tally=tally, **options(api, max_concurrency=2))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        job = pool.submit(out.count)
        deadline = time.monotonic() + 120
        while billed(stats(api)) - start < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        pid = _spark_worker_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert job.result(timeout=300) == 240
    paid = billed(stats(api)) - start
    total = tally.total()
    assert total.rows == 240  # the dead task's rows once, from its retry
    assert paid - 2 <= total.usage.requests <= paid, (total.usage.requests, paid)
    before = billed(stats(api))
    with pytest.warns(PaidTwiceWarning, match="computed again by another action"):
        assert len(out.collect()) == 240
    again = tally.total().usage.requests - total.usage.requests
    assert again == billed(stats(api)) - before > 0  # paid again, and all of it counted


SPARK_JOB = """
    import sys
    import pandas as pd
    from pyspark.sql import SparkSession
    from empirio.spark import embed_column

    url, cache = sys.argv[1], sys.argv[2]
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    texts = [f"a job killed halfway, row {i}" for i in range(600)]
    df = spark.createDataFrame(pd.DataFrame({"id": range(600), "text": texts})).repartition(4)
    out = embed_column(
        df, "text", api_key="sk-killed-0123456789", base_url=url, dimensions=64, rpm=600,
        tpm=24_000_000, cache=cache,
    )
    print(out.filter(out.embedding.isNotNull()).count(), flush=True)
"""


def test_spark_job_killed_halfway_and_rerun_pays_only_for_the_rest(
    spark: Any, tmp_path: Path
) -> None:
    """kill -9 of the whole job (driver, JVM, Python workers) halfway; the rerun with the same
    cache pays only for what the first had not finished (counted at the emulator)."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(SPARK_JOB))
    cache = str(tmp_path / "vectors.sqlite3")
    env = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "EMPIRIOLABS_BUDGET_DIR": str(tmp_path / "budget"),
    }
    with emulator_processes() as start:
        url = start("--rpm", "600", "--tpm", "24000000", "--strict-burst")
        args = [sys.executable, str(script), url, cache]
        job = subprocess.Popen(
            args,
            env=env,
            start_new_session=True,  # its own process group: the JVM and workers die with it
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 180
        while stats(url)["inputs_embedded"] < 250 and job.poll() is None:
            assert time.monotonic() < deadline, "the job never got halfway"
            time.sleep(0.05)
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=30)
        first = stats(url)["inputs_embedded"]
        assert 250 <= first < 600, first  # killed halfway
        again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
        assert again.stdout.strip().splitlines()[-1] == "600"  # every row has its vector
        total = stats(url)["inputs_embedded"]
        # The rerun paid for the rest and for what was in flight at the kill (a few requests
        # of ten per worker), not again for what the first run had finished.
        assert total <= 600 + 60, (first, total)
        assert_few_429s(stats(url))
