"""Run one contestant against an emulator and print a JSON line: used by ``bench/run.py``.

Each contestant runs in its own process, so a hang, a crash or a memory peak is its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from _common import synthetic_corpus

KEY = "bench-key"
#: Our paths, in the order every table shows them.
OURS = [
    "empirio core (sync)",
    "empirio core (async)",
    "langchain-empirio EmpirioEmbeddings (sync)",
    "langchain-empirio EmpirioEmbeddings (async)",
    "llamaindex-empirio EmpirioEmbedding (sync)",
    "llamaindex-empirio EmpirioEmbedding (async)",
]


def corpus(n: int, seed: int) -> list[str]:
    return synthetic_corpus(n, seed=seed, mean_words=200, spread=1.0)


def _vendor(url: str, **kw: Any) -> Any:
    # langchain-empiriolabs 0.1.3 fails to construct with api_key=/base_url= (see the note);
    # it works when configured through its environment variables, as its README shows.
    os.environ["EMPIRIOLABS_API_KEY"] = KEY
    os.environ["EMPIRIOLABS_API_BASE"] = url
    from langchain_empiriolabs import EmpirioLabsEmbeddings

    return EmpirioLabsEmbeddings(**kw)


def make(
    name: str, url: str, rpm: float | None, tpm: float | None, dims: int
) -> Callable[[list[str]], Any]:
    """The contestant's embed-many-texts function (sync, or a coroutine function)."""
    paced = {"rpm": rpm, "tpm": tpm}
    if name == "empirio core (sync)":
        from empirio import EmbeddingClient

        c = EmbeddingClient(api_key=KEY, base_url=url, dimensions=dims, **paced)
        return lambda t: c.embed(t).dense
    if name == "empirio core (async)":
        from empirio import EmbeddingClient

        ac = EmbeddingClient(api_key=KEY, base_url=url, dimensions=dims, **paced)

        async def run_core(t: list[str]) -> Any:
            return (await ac.aembed(t)).dense

        return run_core
    if name.startswith("langchain-empirio EmpirioEmbeddings"):
        from langchain_empirio import EmpirioEmbeddings

        e = EmpirioEmbeddings(api_key=KEY, base_url=url, dimensions=dims, **paced)
        return e.aembed_documents if "async" in name else e.embed_documents
    if name.startswith("llamaindex-empirio EmpirioEmbedding"):
        from llamaindex_empirio import EmpirioEmbedding

        li = EmpirioEmbedding(api_key=KEY, base_url=url, dimensions=dims, **paced)
        return li.aget_text_embedding_batch if "async" in name else li.get_text_embedding_batch
    if name == "langchain-empiriolabs (defaults)":
        return _vendor(url).embed_documents
    if name == "langchain-empiriolabs (chunk_size=10)":
        return _vendor(url, chunk_size=10).embed_documents
    if name.startswith("langchain-openai OpenAIEmbeddings (chunk_size=10"):
        from langchain_openai import OpenAIEmbeddings

        oe = OpenAIEmbeddings(
            model="text-embedding-v4",
            api_key=KEY,
            base_url=url,
            chunk_size=10,
            dimensions=dims,
            check_embedding_ctx_length=False,
            tiktoken_enabled=False,
        )
        return oe.aembed_documents if "async" in name else oe.embed_documents
    if name.startswith("llama-index-embeddings-openai-like"):
        from llama_index.embeddings.openai_like import OpenAILikeEmbedding

        ol = OpenAILikeEmbedding(
            model_name="text-embedding-v4",
            api_key=KEY,
            api_base=url,
            embed_batch_size=10,
            dimensions=dims,
        )
        return ol.aget_text_embedding_batch if "async" in name else ol.get_text_embedding_batch
    raise SystemExit(f"unknown contestant {name!r}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--url", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rpm", type=float, default=0)
    ap.add_argument("--tpm", type=float, default=0)
    ap.add_argument("--dims", type=int, default=1024)
    args = ap.parse_args()
    texts = corpus(args.n, args.seed)
    out: dict[str, Any] = {"name": args.name}
    try:
        fn = make(args.name, args.url, args.rpm or None, args.tpm or None, args.dims)
        start = time.perf_counter()
        result = asyncio.run(fn(texts)) if asyncio.iscoroutinefunction(fn) else fn(texts)
        out["seconds"] = time.perf_counter() - start
        out["vectors"] = len(result)
        out["ok"] = len(result) == len(texts) and all(len(v) == args.dims for v in result)
    except BaseException as exc:
        out["seconds"] = time.perf_counter() - start if "start" in locals() else 0.0
        out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        out["trace"] = traceback.format_exc(limit=2)[-400:]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = usage.ru_utime + usage.ru_stime
    out["max_rss_mb"] = usage.ru_maxrss / 1024
    print(json.dumps(out), flush=True)
    sys.stdout.flush()
    os._exit(0)  # do not wait for stray non-daemon threads of a failed contestant


if __name__ == "__main__":
    main()
