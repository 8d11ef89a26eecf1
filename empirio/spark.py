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

What the job did and spent, summed over every task, is kept by a :class:`Tally`::

    tally = Tally(spark)
    embed_column(df, "text", tally=tally).write.parquet("vectors/")
    print(tally.total())   # 3,000 rows (2 with a row error); 300 requests, 98,765 tokens, ...

Rows count once, from the tasks that delivered them; payments count as they are made, also in
a task whose worker died (see :mod:`empirio._ledger`). The embedded DataFrame is computed by
every action that uses it: used twice (``count()`` then ``write``), it is paid for twice, and a
:class:`~empirio._ledger.PaidTwiceWarning` says so on the driver. ``.persist()`` it before, or
pass ``cache=`` (the second computation then reads what the first paid for).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from ._core.plan import Kind, Output
from ._core.types import wants_dense, wants_sparse
from ._ledger import Ledger, PaidTwiceWarning, ledger
from ._rows import JobUsage, seal_options

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["JobUsage", "PaidTwiceWarning", "Tally", "embed_column"]


class _Sum:
    """Spark's ``AccumulatorParam`` for :class:`JobUsage` (duck-typed: pyspark is an extra)."""

    def zero(self, value: JobUsage) -> JobUsage:
        return JobUsage()

    def addInPlace(self, value1: JobUsage, value2: JobUsage) -> JobUsage:
        return value1 + value2


class Tally:
    """What a job's tasks did and spent, summed: rows, row errors, requests, tokens, cost.

    Rows and row errors are a Spark accumulator: each task adds its batches' rows, and Spark
    counts those of the tasks that succeed, so a row counts once however often its task ran.
    Payments are told to the driver as each request finishes (:mod:`empirio._ledger`), so a
    task whose worker died, or that Spark ran again, counts what it paid too. After an action
    (``write``, ``collect``, ``count``) :meth:`total` counts it all. Pass it to
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
        self._id = uuid.uuid4().hex
        self._ledger = _driver_ledger(session)

    def total(self) -> JobUsage:
        """Rows of the tasks that have ended, and everything paid so far."""
        rows: JobUsage = self._sum.value
        return JobUsage(rows.rows, rows.row_errors, self._ledger.paid(self._id))


def _ledger_pass(session: SparkSession) -> Any:
    """Where the workers tell their payments, or ``None`` where the driver has no
    ``SparkContext`` to read its address from (Spark Connect): nothing is told, and a second
    computation is not warned of."""
    try:
        return _driver_ledger(session).pass_()
    except Exception:  # Spark Connect raises its own error types for sparkContext
        return None


def _driver_ledger(session: SparkSession) -> Ledger:
    """The driver's ledger, listening where the executors reach the driver."""
    conf = session.sparkContext.getConf()
    host = conf.get("spark.driver.host") or "127.0.0.1"
    return ledger(host, conf.get("spark.driver.bindAddress") or host)


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
        # Payments go to the driver's ledger as they are made, under this call's id: it
        # counts them for the tally, and sees this DataFrame computed by a second action.
        _ledger_pass(df.sparkSession),
        "" if tally is None else tally._id,
        uuid.uuid4().hex,
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
    where: Any,
    tally_id: str,
    call_id: str,
) -> Iterator[pd.DataFrame]:
    """One partition, on a worker: one client, each Arrow batch embedded as it comes; each
    payment told to the driver as it is made."""
    from pyspark import TaskContext

    from ._ledger import Reporter
    from ._rows import embed_batch, open_options
    from .client import EmbeddingClient

    task = TaskContext.get()
    partition, stage = (task.partitionId(), task.stageId()) if task is not None else (-1, -1)
    reporter = Reporter(where, tally_id, call_id, partition, stage) if where else None
    with EmbeddingClient(**open_options(options)) as client:
        stop = client.on_usage(reporter) if reporter is not None else (lambda: None)
        try:
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
        finally:
            stop()
            if reporter is not None:
                reporter.close()
