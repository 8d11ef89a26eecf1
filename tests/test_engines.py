"""Ingestion on the engines, for real: local Ray (several actors) and local Spark (``local[2]``,
several partitions), against an emulator in its own process that enforces 600 RPM per minute
and per second. Each engine starts once for this module: they take seconds to start.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from empirio import EmbeddingClient

from .conftest import emulator_processes, stats

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
    from empirio.ray import embed_column

    cache = tmp_path / "c.sqlite3"
    ds = ray_local.data.from_items(rows(), override_num_blocks=6)
    out = embed_column(ds, "text", concurrency=2, batch_size=40, **options(api, cache=str(cache)))
    check(out.take_all(), reference(api))
    before = stats(api)
    assert before["by_status"].get("429", 0) == 0
    # A rerun with the cache pays for nothing.
    again = embed_column(ds, "text", concurrency=2, batch_size=40, **options(api, cache=str(cache)))
    assert len(again.take_all()) == len(TEXTS)
    assert stats(api)["requests"] == before["requests"]


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
        SparkSession.builder.master("local[2]")
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

    from empirio.spark import embed_column

    cache = tmp_path / "c.sqlite3"
    df = spark.createDataFrame(pd.DataFrame(rows())).repartition(4)
    start = stats(api)
    out = embed_column(df, "text", **options(api, cache=str(cache)))
    got = [r.asDict() for r in out.collect()]
    check(got, reference(api))
    after = stats(api)
    assert after["by_status"].get("429", 0) == start["by_status"].get("429", 0)
    assert len(embed_column(df, "text", **options(api, cache=str(cache))).collect()) == len(TEXTS)
    assert stats(api)["requests"] == after["requests"]  # the rerun sent nothing
