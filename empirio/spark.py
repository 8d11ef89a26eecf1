"""Ingestion on Apache Spark: a text column in, a vector column and an error column out.

    from empirio.spark import embed_column

    df = spark.read.parquet("chunks/")
    out = embed_column(df, "text", dimensions=512, cache="/shared/vectors.sqlite3")
    out.write.parquet("vectors/")

Runs through ``DataFrame.mapInPandas`` (Arrow batches): each Python worker holds one
:class:`~empirio.EmbeddingClient`, packs texts ten to a request and paces to the account with
every other worker: through the machine's budget on one machine, through Redis on a cluster
(``share_budget="redis://..."``, or ``EMPIRIOLABS_SHARE_BUDGET`` set on the executors). Vectors
are ``array<float>``, null where the row failed; errors are ``string``; every other column is
unchanged. A blank, null, non-string or (with ``overflow="error"``) over-long row is a row error;
an account-wide failure fails the job with the client's message, and with ``cache=`` a rerun
pays only for what was not finished.

The workers' Python must have empirio installed (``pip install 'empirio[spark]'``); with a
virtual environment, point ``PYSPARK_PYTHON`` (and ``PYSPARK_DRIVER_PYTHON``) at its
interpreter. A worker without it fails with one line saying so.

What the job did and spent, summed over every task, is kept by a :class:`Tally` (a Spark
accumulator)::

    tally = Tally(spark)
    embed_column(df, "text", tally=tally).write.parquet("vectors/")
    print(tally.total())   # 3,000 rows (2 with a row error); 300 requests, 98,765 tokens, ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._core.plan import Kind, Output
from ._core.types import wants_dense, wants_sparse
from ._rows import JobUsage, seal_options

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["JobUsage", "Tally", "embed_column"]


class _Sum:
    """Spark's ``AccumulatorParam`` for :class:`JobUsage` (duck-typed: pyspark is an extra)."""

    def zero(self, value: JobUsage) -> JobUsage:
        return JobUsage()

    def addInPlace(self, value1: JobUsage, value2: JobUsage) -> JobUsage:
        return value1 + value2


class Tally:
    """What a job's tasks did and spent, summed: rows, row errors, requests, tokens, cost.

    A Spark accumulator: each task adds its batches' share, and Spark sums them on the driver
    when the task ends, so after an action (``write``, ``collect``, ``count``) :meth:`total`
    counts it. A task Spark runs again (a lost executor, speculation) counts again, which is
    right for usage: with ``cache=`` it paid only for what it had not finished. Pass it to
    :func:`embed_column` as ``tally=``.

    Args:
        spark: the session; default the active one.
    """

    def __init__(self, spark: SparkSession | None = None) -> None:
        from pyspark.sql import SparkSession

        session = spark or SparkSession.getActiveSession()
        if session is None:
            raise RuntimeError("Tally() needs a SparkSession: start one, or pass it")
        self._sum: Any = session.sparkContext.accumulator(JobUsage(), _Sum())  # type: ignore[arg-type]

    def total(self) -> JobUsage:
        """Everything reported by the tasks that have ended."""
        total: JobUsage = self._sum.value
        return total


def embed_column(
    df: DataFrame,
    column: str = "text",
    *,
    output_column: str = "embedding",
    error_column: str = "embedding_error",
    kind: Kind = "document",
    output: Output = "dense",
    tally: Tally | None = None,
    **client_options: Any,
) -> DataFrame:
    """``df`` with ``output_column`` (``array<float>``) and ``error_column`` (``string``)
    added, and ``{output_column}_sparse`` (``map<int,float>``) for sparse output.

    Args:
        df: the DataFrame.
        column: the text column.
        output_column: the vector column added.
        error_column: the error column added.
        kind: ``"document"`` or ``"query"``.
        output: ``"dense"``, ``"sparse"`` or ``"both"``.
        tally: a :class:`Tally` that sums what every task did and spent.
        **client_options: :class:`~empirio.EmbeddingClient` options; the key and a Redis URL
            travel sealed (never in the pickles' bytes).
    """
    from pyspark.sql.types import (
        ArrayType,
        FloatType,
        IntegerType,
        MapType,
        StringType,
        StructField,
        StructType,
    )

    if column not in df.columns:
        raise KeyError(f"no column {column!r} to embed; the DataFrame has {df.columns}")
    fields = list(df.schema.fields)
    if wants_dense(output):
        fields.append(StructField(output_column, ArrayType(FloatType()), True))
    if wants_sparse(output):
        fields.append(
            StructField(f"{output_column}_sparse", MapType(IntegerType(), FloatType()), True)
        )
    fields.append(StructField(error_column, StringType(), True))
    settings = (
        column,
        output_column,
        error_column,
        kind,
        output,
        None if tally is None else tally._sum,
        seal_options(client_options),
    )

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        # Pickled by value (it is nested), so that a worker without empirio gets this message
        # rather than an unpickling error: it names nothing of empirio until it runs.
        import importlib

        try:
            module = importlib.import_module("empirio.spark")
        except ImportError:
            import sys

            raise RuntimeError(
                f"empirio is not installed for this Spark worker's Python ({sys.executable}): "
                "pip install 'empirio[spark]' there, or point PYSPARK_PYTHON at a Python that "
                "has it"
            ) from None
        yield from module._partition(batches, *settings)

    return df.mapInPandas(run, StructType(fields))


def _partition(
    batches: Iterator[pd.DataFrame],
    column: str,
    output_column: str,
    error_column: str,
    kind: Kind,
    output: Output,
    tally: Any,
    options: dict[str, Any],
) -> Iterator[pd.DataFrame]:
    """One partition, on a worker: one client, each Arrow batch embedded as it comes."""
    from ._rows import embed_batch, open_options
    from .client import EmbeddingClient

    with EmbeddingClient(**open_options(options)) as client:
        for batch in batches:
            rows, spent = embed_batch(client, batch[column].tolist(), kind=kind, output=output)
            if tally is not None:
                tally.add(spent)
            out = batch.copy()
            ok = rows.ok
            if rows.dense is not None:
                dense = rows.dense
                out[output_column] = [dense[i] if ok[i] else None for i in range(len(batch))]
            if rows.sparse is not None:
                out[f"{output_column}_sparse"] = rows.sparse
            out[error_column] = rows.errors
            yield out
