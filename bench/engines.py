"""Ingestion on local Ray (3 actors) and local Spark (4 partitions) at 600 RPM, beside the
hand-written pattern users write today (each worker its own unpaced OpenAI SDK client).

    python bench/engines.py               # about four minutes; writes bench/results/engines.md

The emulator runs in its own process with the account's limits per minute and per second
(``--strict-burst``, 100 ms latency). The bound is the requests divided by the rate plus one
latency; wall time includes the engines' start-up (actors, Python workers, imports), shown
beside it as the time a one-row warm-up run took. 429s are counted by the emulator; "lost"
counts rows without a vector. Nothing here is a test: the figures go to the README.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from _common import emulator_process, machine_line, markdown_table, synthetic_corpus

HERE = Path(__file__).resolve().parent
KEY = "bench-engines-key"
RPM = 600


class OpenAIWorker:
    """The hand-written pattern: an OpenAI SDK client per worker, no pacing, 10 per request."""

    def __init__(self, url: str) -> None:
        import openai

        self.client = openai.OpenAI(api_key=KEY, base_url=url)

    def embed(self, texts: list[str]) -> list[Any]:
        out: list[Any] = []
        for i in range(0, len(texts), 10):
            try:
                r = self.client.embeddings.create(
                    model="text-embedding-v4", input=texts[i : i + 10], dimensions=1024
                )
                out.extend(d.embedding for d in r.data)
            except Exception:  # retries exhausted: these rows are lost
                out.extend([None] * len(texts[i : i + 10]))
        return out


def by_status(url: str) -> dict[str, int]:
    root = url.removesuffix("/v1")
    return dict(httpx.get(f"{root}/_emulator/stats", timeout=10).json()["by_status"])


def ray_rows(texts: list[str], url: str) -> list[list[object]]:
    import pyarrow as pa
    import ray

    from empirio.ray import embed_column

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    ray.data.DataContext.get_current().enable_progress_bars = False
    opts = {"api_key": KEY, "base_url": url, "rpm": RPM, "tpm": RPM * 40_000}

    class Hand:
        def __init__(self) -> None:
            self.worker = OpenAIWorker(url)

        def __call__(self, batch: pa.Table) -> pa.Table:
            vectors = self.worker.embed(batch.column("text").to_pylist())
            ok = pa.array([v is not None for v in vectors])
            return batch.append_column("ok", ok)

    rows = []
    for name, run in (
        (
            "Ray: empirio.ray.embed_column, 3 actors",
            lambda ds: embed_column(ds, "text", concurrency=3, batch_size=200, **opts),
        ),
        (
            "Ray: hand-written (OpenAI SDK per actor, unpaced), 3 actors",
            lambda ds: ds.map_batches(Hand, concurrency=3, batch_size=200, batch_format="pyarrow"),
        ),
    ):
        warm = time.perf_counter()
        run(ray.data.from_items([{"text": "warm up"}])).materialize()
        startup = time.perf_counter() - warm
        before = by_status(url).get("429", 0)
        start = time.perf_counter()
        out = run(ray.data.from_items([{"text": t} for t in texts], override_num_blocks=15))
        got = out.take_all()
        wall = time.perf_counter() - start
        lost = sum(1 for r in got if r.get("embedding", r.get("ok")) in (None, False))
        n429 = by_status(url).get("429", 0) - before
        rows.append(row(name, len(texts), wall, startup, n429, lost))
        print(" | ".join(map(str, rows[-1])), flush=True)
    ray.shutdown()
    return rows


def spark_rows(texts: list[str], url: str) -> list[list[object]]:
    import pandas as pd
    from pyspark.sql import SparkSession
    from pyspark.sql.types import BooleanType, StructField, StructType

    from empirio.spark import embed_column

    os.environ.update(SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    opts = {"api_key": KEY, "base_url": url, "rpm": RPM, "tpm": RPM * 40_000}

    def hand(df: Any) -> Any:
        schema = StructType([*df.schema.fields, StructField("ok", BooleanType())])

        def run(batches: Any) -> Any:
            worker = OpenAIWorker(url)
            for b in batches:
                vectors = worker.embed(b["text"].tolist())
                yield b.assign(ok=[v is not None for v in vectors])

        return df.mapInPandas(run, schema)

    rows = []
    for name, run, column in (
        (
            "Spark: empirio.spark.embed_column, 4 partitions",
            lambda df: embed_column(df, "text", **opts),
            "embedding",
        ),
        (
            "Spark: hand-written (OpenAI SDK per task, unpaced), 4 partitions",
            hand,
            "ok",
        ),
    ):
        warm = time.perf_counter()
        run(spark.createDataFrame(pd.DataFrame({"text": ["warm up"]}))).collect()
        startup = time.perf_counter() - warm
        df = spark.createDataFrame(pd.DataFrame({"text": texts})).repartition(4).cache()
        df.count()
        before = by_status(url).get("429", 0)
        start = time.perf_counter()
        got = run(df).select(column).collect()
        wall = time.perf_counter() - start
        lost = sum(1 for r in got if r[0] in (None, False))
        n429 = by_status(url).get("429", 0) - before
        rows.append(row(name, len(texts), wall, startup, n429, lost))
        print(" | ".join(map(str, rows[-1])), flush=True)
    spark.stop()
    return rows


def row(name: str, n: int, wall: float, startup: float, n429: int, lost: int) -> list[object]:
    bound = math.ceil(n / 10) * 60.0 / RPM + 0.1
    return [name, n, f"{bound:.1f}", f"{wall:.1f}", f"{startup:.1f}", f"{bound / wall:.3f}",
            n429, lost]  # fmt: skip


def main() -> None:
    texts = synthetic_corpus(3000, seed=7, mean_words=60, spread=0.8)
    flags = ("--rpm", str(RPM), "--tpm", str(RPM * 40_000), "--strict-burst", "--latency-ms", "100")
    rows = []
    with emulator_process(*flags) as url:
        rows += ray_rows(texts, url)
    with emulator_process(*flags) as url:
        rows += spark_rows(texts, url)
    header = ["contestant", "texts", "bound s", "wall s", "warm-up s", "bound/wall"]
    table = markdown_table([*header, "429s", "lost"], rows)
    text = (
        f"Engines at {RPM} RPM ({machine_line()}): emulator with `--strict-burst --latency-ms "
        f"100`.\n\n{table}\n"
    )
    out = HERE / "results" / "engines.md"
    out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
