"""A framework's batch job: one progress bar over the whole job, and its vectors fetched in one
pipelined call where the framework would embed it chunk after chunk.

LlamaIndex's batch methods embed one ``embed_batch_size`` chunk after another, each waiting for
its slowest request (a latency lost per chunk; its sync path never overlaps them), with a bar
per chunk. An adapter wraps its batch hook in :func:`batch_job` (:func:`abatch_job` when async):
the job's texts are embedded first, as one call into the client, and the chunks the framework
then asks for are served from it by :func:`served`, so that the framework's callbacks and events
still fire. Calls made inside a job pass :func:`call_options`, which advances the job's bar.

The job lives in context variables, so that concurrent jobs (threads, tasks) never mix.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

from ._core.result import Usage
from ._io.progress import Progress
from ._io.telemetry import recording, usage_of

__all__ = [
    "abatch_job",
    "batch_job",
    "call_options",
    "claim_job_usage",
    "served",
    "worth_prefetching",
]

#: The vectors of the job under way in this context, by text.
_VECTORS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "empirio_job_vectors", default=None
)
#: What fetching the job under way spent (one ``Usage``, in a list emptied when an adapter
#: claims it for the framework's span).
_USAGE: contextvars.ContextVar[list[Usage] | None] = contextvars.ContextVar(
    "empirio_job_usage", default=None
)
#: The progress callback of the job under way in this context, if it shows a bar.
_BAR: contextvars.ContextVar[Callable[[int], None] | None] = contextvars.ContextVar(
    "empirio_job_bar", default=None
)


@contextlib.contextmanager
def batch_job(
    texts: list[str], *, show_progress: bool, fetch: Callable[[list[str]], Sequence[Any]] | None
) -> Iterator[None]:
    """Run a framework's batch hook as one job (see the module docstring).

    Args:
        texts: the job's texts, checked.
        show_progress: one bar over the job's texts (a job inside a job shows none of its own).
        fetch: the vectors of ``texts``, in order, from one call into the client (which passes
            :func:`call_options`); ``None`` leaves them to the framework's chunks.
    """
    with _bar(len(texts), show_progress):
        with recording() as records:
            vectors = None if fetch is None else dict(zip(texts, fetch(texts), strict=True))
        token, spent = _VECTORS.set(vectors), _USAGE.set([usage_of(records)])
        try:
            yield
        finally:
            _VECTORS.reset(token)
            _USAGE.reset(spent)


@contextlib.asynccontextmanager
async def abatch_job(
    texts: list[str],
    *,
    show_progress: bool,
    fetch: Callable[[list[str]], Awaitable[Sequence[Any]]] | None,
) -> AsyncIterator[None]:
    """:func:`batch_job`, with an async ``fetch`` (a line-for-line mirror)."""
    with _bar(len(texts), show_progress):
        with recording() as records:
            vectors = None if fetch is None else dict(zip(texts, await fetch(texts), strict=True))
        token, spent = _VECTORS.set(vectors), _USAGE.set([usage_of(records)])
        try:
            yield
        finally:
            _VECTORS.reset(token)
            _USAGE.reset(spent)


def served(texts: list[str]) -> list[Any] | None:
    """The vectors of ``texts`` if the job under way fetched them all, else ``None``."""
    vectors = _VECTORS.get()
    if vectors is None or any(t not in vectors for t in texts):
        return None
    return [vectors[t] for t in texts]


def claim_job_usage() -> Usage:
    """What fetching the job under way spent, once (then nothing): for the first chunk the
    framework is served from it, so that its span carries the job's billed tokens."""
    spent = _USAGE.get()
    return spent.pop() if spent else Usage()


def call_options() -> dict[str, Any]:
    """Keywords for each call into the client inside a job: never a bar of its own (the job has
    one), and the job's bar advanced as each request finishes."""
    return {"show_progress": False, "on_progress": _BAR.get()}


def worth_prefetching(texts: Sequence[str], chunk_size: int, framework_cache: object) -> bool:
    """Whether to fetch a job whole: not when the framework keeps a cache of its own (it skips
    the texts it has, and fetching them all would pay for those again), nor when the job is one
    chunk anyway."""
    return framework_cache is None and len(texts) > chunk_size


@contextlib.contextmanager
def _bar(total: int, show: bool) -> Iterator[None]:
    if not show or _BAR.get() is not None:
        yield
        return
    with Progress.of(total, True, None) as bar:
        token = _BAR.set(bar.update)
        try:
            yield
        finally:
            _BAR.reset(token)
