"""Ingestion on Ray Data: a text column in, a vector column and an error column out.

    import ray
    from empirio.ray import embed_column

    ds = ray.data.read_parquet("chunks/")
    ds = embed_column(ds, "text", dimensions=512, cache="/shared/vectors.sqlite3")
    ds.write_parquet("vectors/")

Each actor (a :class:`Embedder` in ``Dataset.map_batches``) holds one
:class:`~empirio.EmbeddingClient`, packs a batch's texts ten to a request and paces to the
account together with every other actor: through the machine's budget on one machine, through
Redis on a cluster (``share_budget="redis://..."`` or ``EMPIRIOLABS_SHARE_BUDGET``). A blank,
null, non-string or (with ``overflow="error"``) over-long row gets a null vector and a readable
error; the rest of the batch is embedded. An account-wide failure (401, 402, 404, retries
exhausted) fails the job with the client's message; with ``cache=`` a rerun, or a retried task,
pays only for what was not finished. Install with ``pip install 'empirio[ray]'``.

What the job did and spent, summed over every actor, is kept by a :class:`Tally`::

    tally = Tally()
    embed_column(ds, "text", tally=tally).write_parquet("vectors/")
    print(tally.total())   # 3,000 rows (2 with a row error); 300 requests, 98,765 tokens, ...

Rows count when an actor hands its batch on; payments count as each request finishes, so an
actor that dies mid-batch has told what it paid (only requests in flight at the kill, which
nobody saw answered, can be missing).
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any

from ._core.config import SHARE_BUDGET_ENV, is_redis_url
from ._core.errors import ConfigurationError
from ._core.plan import Kind, Output
from ._core.result import Usage
from ._rows import JobUsage, embed_batch, open_options, seal_options
from .client import EmbeddingClient

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

__all__ = ["Embedder", "JobUsage", "Tally", "embed_column"]


class _Sum:
    """The actor behind :class:`Tally`."""

    def __init__(self) -> None:
        self.total = JobUsage()

    def add(self, part: JobUsage) -> None:
        self.total += part

    def get(self) -> JobUsage:
        return self.total


class Tally:
    """What a job's actors did and spent, summed: rows, row errors, requests, tokens, cost.

    A small Ray actor (no CPU reserved). Each :class:`Embedder` tells it every payment as the
    request finishes (without waiting for the answer), and its rows after every batch, before
    the batch is handed on (waiting: an actor's calls from one caller run in order, so the
    payments before are in too). Once the dataset is written or taken, :meth:`total` counts
    all of it, also what actors that died had paid. Pass it to :func:`embed_column` (or
    :class:`Embedder`) as ``tally=``. Needs ``ray.init()`` (or Ray's automatic start) first.
    """

    def __init__(self) -> None:
        import ray

        self._actor: Any = ray.remote(num_cpus=0)(_Sum).remote()

    def add(self, part: JobUsage) -> None:
        """Add one batch's share, and wait until it is in (called by the actors)."""
        import ray

        ray.get(self._actor.add.remote(part))

    def paid(self, delta: Usage) -> None:
        """Add a payment, without waiting (a usage listener of the actors' clients)."""
        self._actor.add.remote(JobUsage(usage=delta))

    def total(self) -> JobUsage:
        """Everything reported so far."""
        import ray

        total: JobUsage = ray.get(self._actor.get.remote())
        return total


class Embedder:
    """A callable class for ``Dataset.map_batches(Embedder, batch_format="pyarrow", ...)``.

    Args:
        column: the text column.
        output_column: the vector column added: ``fixed_size_list<float32>[dimensions]``, null
            where the row failed.
        error_column: the error column added: a string where the row failed, else null.
        kind: ``"document"`` or ``"query"``.
        output: ``"dense"``, ``"sparse"`` (a ``map<int32, float32>`` column named
            ``{output_column}_sparse``) or ``"both"``.
        tally: a :class:`Tally` to report each batch's rows and usage to.
        **client_options: :class:`~empirio.EmbeddingClient` options (``api_key``, ``base_url``,
            ``dimensions``, ``rpm``, ``cache``, ``share_budget``, ...); unset ones come from
            the worker's environment.
    """

    def __init__(
        self,
        column: str = "text",
        *,
        output_column: str = "embedding",
        error_column: str = "embedding_error",
        kind: Kind = "document",
        output: Output = "dense",
        tally: Tally | None = None,
        **client_options: Any,
    ) -> None:
        self.column = column
        self.tally = tally
        self.output_column = output_column
        self.error_column = error_column
        self.kind: Kind = kind
        self.output: Output = output
        self.client = EmbeddingClient(**open_options(client_options))
        if tally is not None:
            self.client.on_usage(tally.paid)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        if self.column not in batch.column_names:
            raise KeyError(
                f"no column {self.column!r} to embed; the dataset has {batch.column_names}"
            )
        rows, spent = embed_batch(
            self.client, batch.column(self.column).to_pylist(), kind=self.kind, output=self.output
        )
        if self.tally is not None:
            self.tally.add(spent)
        failed = pa.array(~rows.ok)
        if rows.dense is not None:
            values = pa.array(rows.dense.reshape(-1), type=pa.float32())
            vectors = pa.FixedSizeListArray.from_arrays(values, self.client.dimensions, mask=failed)
            batch = batch.append_column(self.output_column, vectors)
        if rows.sparse is not None:
            sparse = pa.array(
                [None if v is None else list(v.items()) for v in rows.sparse],
                type=pa.map_(pa.int32(), pa.float32()),
            )
            batch = batch.append_column(f"{self.output_column}_sparse", sparse)
        return batch.append_column(self.error_column, pa.array(rows.errors, type=pa.string()))


def embed_column(
    ds: ray.data.Dataset,
    column: str = "text",
    *,
    output_column: str = "embedding",
    error_column: str = "embedding_error",
    kind: Kind = "document",
    output: Output = "dense",
    concurrency: int | None = None,
    batch_size: int = 500,
    num_cpus: float = 0.5,
    tally: Tally | None = None,
    **client_options: Any,
) -> ray.data.Dataset:
    """``ds`` with ``output_column`` (vectors) and ``error_column`` (row errors) added; every
    other column passes through unchanged.

    Args:
        ds: the dataset.
        column: the text column.
        output_column, error_column, kind, output: see :class:`Embedder`.
        concurrency: actors (each one client; they pace together through the shared budget).
            Default: as many as fit beside one CPU left for the tasks that read the data, at
            most 4 (2 on a 2-CPU machine). More than fit is a ``ConfigurationError`` at once:
            Ray would otherwise wait for ever for a CPU to read with.
        batch_size: rows per batch handed to an actor (sent ten to a request, concurrently).
        num_cpus: CPUs each actor reserves. Less than one: an actor mostly waits on the
            network, and actors holding every CPU would leave none for the tasks that read
            the data (a deadlock on a small machine).
        tally: a :class:`Tally` that sums what every actor did and spent.
        **client_options: :class:`~empirio.EmbeddingClient` options; the key and a Redis URL
            travel sealed (never in the pickles' bytes).

    Returns:
        A lazy dataset; Ray's own progress bars show its progress.
    """
    import ray

    concurrency = _actors(concurrency, num_cpus)
    budget = client_options.get("share_budget")
    if ray.is_initialized() and not is_redis_url(budget) and not _env_redis():
        nodes = [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
        if len(nodes) > 1:
            warnings.warn(
                f"this Ray cluster has {len(nodes)} nodes but the rate-limit budget is only "
                "each machine's: its actors will overrun the account together. Pass "
                "share_budget='redis://...' (or set EMPIRIOLABS_SHARE_BUDGET on every node)",
                stacklevel=2,
            )
    return ds.map_batches(
        Embedder,
        fn_constructor_args=(column,),
        fn_constructor_kwargs={
            "output_column": output_column,
            "error_column": error_column,
            "kind": kind,
            "output": output,
            "tally": tally,
            **seal_options(client_options),
        },
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus,
        zero_copy_batch=True,
    )


#: The most actors the default gives: each is a client pacing with the others, so more rarely
#: help (requests in flight within each follow the account's rate and the latency).
_DEFAULT_ACTORS = 4


def _actors(concurrency: int | None, num_cpus: float) -> int:
    """How many actors to start: ``concurrency`` if the cluster can run them and still read
    the data, else a :class:`~empirio.ConfigurationError` saying what to change."""
    import ray

    cpus = 0.0
    if ray.is_initialized():
        cpus = float(ray.cluster_resources().get("CPU", 0))  # type: ignore[no-untyped-call]
    if (
        isinstance(concurrency, bool)
        or not isinstance(concurrency, int | None)
        or (concurrency is not None and concurrency < 1)
    ):
        raise ConfigurationError(f"concurrency must be a positive int; got {concurrency!r}")
    if not cpus or num_cpus <= 0:  # not known yet (Ray starts on first use), or free actors
        return concurrency or 2
    spare = cpus - 1  # one CPU for the read tasks, which need a whole one each
    fits = int(max(0.0, spare) // num_cpus)
    if concurrency is None and fits:
        return min(_DEFAULT_ACTORS, fits)
    wanted = concurrency or 1
    if wanted > fits:
        raise ConfigurationError(
            f"concurrency={wanted} actors of num_cpus={num_cpus:g} would take "
            f"{wanted * num_cpus:g} of this cluster's {cpus:g} CPUs and leave less than one for "
            "the tasks that read the data: the job would wait for ever. Pass "
            + (f"concurrency={fits} or less, or " if fits else "")
            + "a smaller num_cpus (actors mostly wait on the network; num_cpus=0 is allowed)"
        )
    return wanted


def _env_redis() -> bool:
    return is_redis_url(os.environ.get(SHARE_BUDGET_ENV, ""))
