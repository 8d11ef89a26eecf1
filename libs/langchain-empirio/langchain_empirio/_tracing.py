"""LangSmith runs for embedding calls.

LangChain's ``Embeddings`` interface emits no callbacks, so LangSmith (and handlers that follow
its runs) would show a retriever with no embedding step under it. When LangSmith tracing is on
(``LANGSMITH_TRACING=true``, or inside a traced run), each ``embed_documents``/``embed_query``
(and their async twins) is a run of type ``embedding`` nested under the caller's run, with
``ls_provider``/``ls_model_name`` and the tokens the service billed (``usage_metadata``, with
the estimated cost). When tracing is off it costs one check.

Inputs are the texts (at most :data:`MAX_TEXTS`, with their count; LangSmith's
``LANGSMITH_HIDE_INPUTS`` hides them); outputs are counts and usage, never the vectors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from empirio.integration import PROVIDER, recording, usage_of

__all__ = ["MAX_TEXTS", "langsmith_run"]

#: The most texts a run's inputs show (a batch of 10,000 would upload megabytes per run).
MAX_TEXTS = 100


def _tracing() -> bool:
    try:
        from langsmith.utils import tracing_is_enabled
    except ImportError:  # langchain-core brings langsmith; be safe without it
        return False
    return bool(tracing_is_enabled())


@contextlib.contextmanager
def langsmith_run(
    name: str, model: str, texts: Sequence[str], *, kind: str, output: str = "dense"
) -> Iterator[None]:
    """The block's client calls as one LangSmith ``embedding`` run named ``name``, when
    tracing is on; nothing otherwise."""
    if not _tracing():
        yield
        return
    from langsmith.run_helpers import trace

    metadata: dict[str, Any] = {
        "ls_provider": PROVIDER,
        "ls_model_name": model,
        "ls_model_type": "embedding",
        "empirio_kind": kind,
        "empirio_output": output,
    }
    inputs = {"input": list(texts[:MAX_TEXTS]), "count": len(texts)}
    with (
        trace(name, run_type="embedding", inputs=inputs, metadata=metadata) as run,
        recording() as records,
    ):
        try:
            yield
        finally:
            usage = usage_of(records)
            spent = {
                "input_tokens": usage.input_tokens,
                "output_tokens": 0,
                "total_tokens": usage.input_tokens,
                "input_cost": usage.cost_usd,
                "total_cost": usage.cost_usd,
            }
            run.metadata["usage_metadata"] = spent
            run.metadata["empirio_requests"] = usage.requests
            run.metadata["empirio_retries"] = usage.retries
            run.metadata["empirio_rate_limited"] = usage.rate_limited
        run.end(outputs={"count": len(texts), "usage_metadata": spent})
