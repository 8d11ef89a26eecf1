"""One playground run: the settings a page sends in, everything it shows out.

The request is validated by pydantic at the edge; embedding goes through
:class:`~empirio.EmbeddingClient` like any user's code, with an ``httpx.Client`` whose hooks keep
the last request and response for the page to show (never their headers: the key is in them).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from typing import Any, Literal

import httpx
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from .._core.config import (
    ALLOWED_DIMENSIONS,
    DEFAULT_DIMENSIONS,
    DEFAULT_MODEL,
    DEFAULT_QUERY_INSTRUCTION,
    DEFAULT_RPM,
    DEFAULT_TPM,
    PRICE_PER_MILLION_TOKENS_USD,
    format_query,
)
from .._core.errors import APIStatusError, EmpirioError, InvalidInputError, agree
from .._core.secret import redact
from .._core.tokens import SAFE_INPUT_TOKENS, get_tokenizer
from .._core.types import EncodingFormat, Output, Overflow
from ..client import EmbeddingClient

__all__ = ["RunSettings", "run"]

#: Most documents and queries one run takes: a playground, not an ingestion.
MAX_DOCUMENTS = 500
MAX_QUERIES = 20
#: Sparse tokens shown per text.
TOP_TOKENS = 8


class RunSettings(BaseModel):
    """What the page sends: the texts and every parameter of the API."""

    model_config = ConfigDict(extra="forbid")

    documents: list[str] = Field(min_length=1, max_length=MAX_DOCUMENTS)
    queries: list[str] = Field(default_factory=list, max_length=MAX_QUERIES)
    model: str = DEFAULT_MODEL
    dimensions: int = DEFAULT_DIMENSIONS
    encoding_format: EncodingFormat = "base64"
    user: str | None = None
    instruction: bool = True
    instruction_mode: Literal["prompt", "api"] = "prompt"
    query_instruction: str = DEFAULT_QUERY_INSTRUCTION
    output: Output = "dense"
    overflow: Overflow = "truncate"


class _Recorder:
    """The last request body and response of an ``httpx.Client``, for display."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.request: bytes = b""
        self.status = 0
        self.response: bytes = b""

    def on_request(self, request: httpx.Request) -> None:
        with self.lock:
            self.request = request.content

    def on_response(self, response: httpx.Response) -> None:
        response.read()
        with self.lock:
            self.status, self.response = response.status_code, response.content


def run(settings: RunSettings, *, api_key: SecretStr, base_url: str, paced: bool) -> dict[str, Any]:
    """Embed the page's texts and compute everything it shows.

    Returns a JSON-ready dict; on a service or input error it still holds the token counts,
    and ``error`` says what went wrong in words (never with the key).
    """
    tok = get_tokenizer()
    docs = [t for t in (d.strip() for d in settings.documents) if t]
    queries = [t for t in (q.strip() for q in settings.queries) if t]
    mode = settings.instruction_mode if settings.instruction else "none"
    sent_queries = [
        format_query(q, settings.query_instruction) if mode == "prompt" else q for q in queries
    ]
    out: dict[str, Any] = {
        "tokens": _token_table(docs, queries, sent_queries, settings, tok.count_batch),
        "code": snippets(settings, docs, queries, emulator=not paced),
    }
    recorder = _Recorder()
    http = httpx.Client(
        timeout=60.0,
        trust_env=False,
        event_hooks={"request": [recorder.on_request], "response": [recorder.on_response]},
    )
    limits: dict[str, Any] = {} if paced else {"rpm": None, "tpm": None}

    def make(dimensions: int, **extra: Any) -> EmbeddingClient:
        return EmbeddingClient(
            api_key=api_key,
            base_url=base_url,
            model=settings.model,
            dimensions=dimensions,
            encoding_format=settings.encoding_format,
            user=settings.user or None,
            instruction_mode=mode,
            query_instruction=settings.query_instruction,
            overflow=settings.overflow,
            max_retries=2,
            **limits,
            **extra,
        )

    try:
        with make(settings.dimensions, http_client=http) as client:
            noun = "document"
            try:
                d = client.embed(docs, kind="document", output=settings.output)
                noun = "query"
                q = client.embed(queries, kind="query", output=settings.output) if queries else None
                out.update(_results(docs, queries, d, q, settings, make))
            except EmpirioError as exc:
                out["error"] = _describe(exc, noun)
            finally:
                out["usage"] = _usage(client, docs + sent_queries, tok.count_batch)
                out["raw"] = _raw(recorder, base_url, api_key.get_secret_value())
    except EmpirioError as exc:  # bad settings, found when the client was made
        out["error"] = _describe(exc)
    finally:
        http.close()
    return out


def _results(
    docs: list[str],
    queries: list[str],
    d: Any,
    q: Any,
    settings: RunSettings,
    make: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if d.dense is not None:
        texts = docs + queries
        matrix = d.dense if q is None else np.concatenate([d.dense, q.dense])
        out["heatmap"] = {"labels": texts, "scores": _round(matrix @ matrix.T)}
    if q is not None:
        scores = _scores(d, q)
        out["rankings"] = [
            {
                "query": query,
                "ranked": [
                    {"doc": int(i), "text": docs[i], "score": round(float(row[i]), 4)}
                    for i in np.argsort(-row, kind="stable")
                ],
            }
            for query, row in zip(queries, scores, strict=True)
        ]
        if d.dense is not None:
            out["by_dimension"] = _by_dimension(docs, queries, settings, make, d, q)
    if d.sparse is not None:
        tok = get_tokenizer()
        sparse = d.sparse + (q.sparse if q is not None else [])
        out["sparse"] = [
            {
                "text": text,
                "top": [
                    {"token": tok.token_text(k), "id": k, "weight": round(v, 4)}
                    for k, v in sorted(vec.items(), key=lambda kv: -kv[1])[:TOP_TOKENS]
                ],
            }
            for text, vec in zip(docs + queries, sparse, strict=True)
        ]
    return out


def _scores(d: Any, q: Any) -> npt.NDArray[np.float64]:
    """Query x document scores: cosine of the dense vectors, else the sparse dot product."""
    if d.dense is not None:
        return np.asarray(q.dense @ d.dense.T, dtype=np.float64)
    out = np.zeros((len(q.sparse), len(d.sparse)))
    for i, qv in enumerate(q.sparse):
        for j, dv in enumerate(d.sparse):
            out[i, j] = sum(w * dv.get(k, 0.0) for k, w in qv.items())
    return out


def _by_dimension(
    docs: list[str],
    queries: list[str],
    settings: RunSettings,
    make: Any,
    d: Any,
    q: Any,
) -> list[dict[str, Any]]:
    """Each query's top documents at every dimension, from the 2,048-d vectors' prefixes
    (text-embedding-v4's smaller outputs are Matryoshka prefixes, re-normalised)."""
    if settings.dimensions == 2048:
        full_d, full_q = d.dense, q.dense
    else:
        with make(2048) as full:
            full_d = full.embed(docs).dense
            full_q = full.embed(queries, kind="query").dense
    out = []
    for dims in ALLOWED_DIMENSIONS:
        dv = _prefix(full_d, dims)
        qv = _prefix(full_q, dims)
        order = np.argsort(-(qv @ dv.T), axis=1, kind="stable")[:, : min(5, len(docs))]
        out.append({"dimensions": dims, "top": order.tolist()})
    return out


def _prefix(m: npt.NDArray[np.float32], dims: int) -> npt.NDArray[np.float32]:
    part = m[:, :dims].astype(np.float32)
    norms = np.linalg.norm(part, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.asarray(part / norms, dtype=np.float32)


def _round(m: npt.NDArray[Any]) -> list[list[float]]:
    return [[round(float(x), 3) for x in row] for row in m]


def _token_table(
    docs: list[str],
    queries: list[str],
    sent_queries: list[str],
    settings: RunSettings,
    count: Any,
) -> list[dict[str, Any]]:
    rows = []
    kinds = ["document"] * len(docs) + ["query"] * len(queries)
    for kind, text, n in zip(kinds, docs + queries, count(docs + sent_queries), strict=True):
        over = n > SAFE_INPUT_TOKENS
        what = ""
        if over:
            what = {
                "truncate": f"cut to {SAFE_INPUT_TOKENS:,} tokens",
                "chunk": f"embedded in {math.ceil(n / SAFE_INPUT_TOKENS)} windows, then averaged",
                "error": "refused before sending",
            }[settings.overflow]
        rows.append({"kind": kind, "text": text, "tokens": n, "over": over, "overflow": what})
    return rows


def _usage(client: EmbeddingClient, sent: list[str], count: Any) -> dict[str, Any]:
    u = client.usage
    per_text = (sum(count(sent)) + len(sent)) / max(1, len(sent))  # billed: +1 per input
    million = 1_000_000
    tokens = per_text * million
    minutes = max(million / 10 / DEFAULT_RPM, tokens / DEFAULT_TPM)
    return {
        "requests": u.requests,
        "tokens": u.input_tokens,
        "cost_usd": u.cost_usd,
        "retries": u.retries,
        "per_million_texts": {
            "tokens": round(tokens),
            "cost_usd": round(tokens * PRICE_PER_MILLION_TOKENS_USD / million, 2),
            "hours_at_account_limits": round(minutes / 60, 1),
            "limits": f"{DEFAULT_RPM} requests and {DEFAULT_TPM:,} tokens a minute, 10 a request",
        },
    }


def _raw(recorder: _Recorder, base_url: str, key: str) -> dict[str, Any]:
    """The last call for the page, with the key masked wherever the server echoed it."""
    with recorder.lock:
        request, status, response = recorder.request, recorder.status, recorder.response
    if not request:
        return {}
    body = request.decode("utf-8", "replace")
    shown = _shorten(redact(response.decode("utf-8", "replace"), key).encode())
    curl = (
        f"curl {base_url}/embeddings \\\n"
        '  -H "Authorization: Bearer $EMPIRIOLABS_API_KEY" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f"  -d '{body.replace(chr(39), chr(39) + chr(92) + chr(39) + chr(39))}'"
    )
    return {"request": body, "status": status, "response": shown, "curl": curl}


def _shorten(response: bytes) -> str:
    """The response as indented JSON, long vectors abbreviated."""
    try:
        doc = json.loads(response)
    except ValueError:
        return response[:4000].decode("utf-8", "replace")

    def cut(value: Any) -> Any:
        if isinstance(value, str) and len(value) > 80:
            return value[:60] + f"... ({len(value)} characters)"
        if (
            isinstance(value, list)
            and len(value) > 8
            and all(isinstance(v, int | float) for v in value)
        ):
            return [*value[:6], f"... ({len(value)} numbers)"]
        if isinstance(value, list):
            return [cut(v) for v in value[:50]]
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        return value

    return json.dumps(cut(doc), indent=2, ensure_ascii=False)


def _describe(exc: EmpirioError, noun: str = "text") -> dict[str, Any]:
    """An error for the page. Input errors name texts as the page's tables do: ``noun`` and a
    number from 1, not the library's positions from 0."""
    # Messages are masked where they are made (see empirio._core.secret.redact).
    status = exc.status_code if isinstance(exc, APIStatusError) else None
    message = str(exc)
    if isinstance(exc, InvalidInputError) and exc.indices and ": position" in message:
        numbers = ", ".join(str(i + 1) for i in exc.indices[:10])
        more = ", ..." if len(exc.indices) > 10 else ""
        nouns = agree(len(exc.indices), noun, "queries" if noun == "query" else None)
        message = f"{message.split(': position')[0]}: {nouns} {numbers}{more}"
    return {"type": type(exc).__name__, "message": message, "status": status}


#: Texts of the page's own written into its code; more are left as a comment.
_SNIPPET_TEXTS = 3


def _texts_literal(texts: Sequence[str], fallback: str) -> str:
    """A Python list of the first few ``texts`` (``fallback`` if none), one per line."""
    shown = [t if len(t) <= 200 else t[:200] + "..." for t in texts[:_SNIPPET_TEXTS]] or [fallback]
    lines = "".join(f"    {t!r},\n" for t in shown)
    if len(texts) > _SNIPPET_TEXTS:
        lines += f"    # ... and {len(texts) - _SNIPPET_TEXTS} more from the page\n"
    return "[\n" + lines + "]"


def snippets(
    s: RunSettings,
    docs: Sequence[str] = (),
    queries: Sequence[str] = (),
    *,
    emulator: bool = False,
) -> dict[str, str]:
    """Code that reproduces this run (its texts and settings) with the core, LangChain and
    LlamaIndex. On the emulator, the code starts one the same way (``start_if_no_key``)."""
    opts: list[tuple[str, Any]] = [("dimensions", s.dimensions)]
    if s.model != DEFAULT_MODEL:
        opts.append(("model", s.model))
    if s.encoding_format != "base64":
        opts.append(("encoding_format", s.encoding_format))
    if s.user:
        opts.append(("user", s.user))
    mode = s.instruction_mode if s.instruction else "none"
    if mode != "prompt":
        opts.append(("instruction_mode", mode))
    if s.instruction and s.query_instruction != DEFAULT_QUERY_INSTRUCTION:
        opts.append(("query_instruction", s.query_instruction))
    if s.overflow != "truncate":
        opts.append(("overflow", s.overflow))
    args = ", ".join(f"{k}={v!r}" for k, v in opts)
    li_args = args.replace("model=", "model_name=")
    out_arg = "" if s.output == "dense" else f', output="{s.output}"'
    first_query = queries[0] if queries else "a question"
    head = (
        "# This page ran on the local emulator: so does this code while EMPIRIOLABS_API_KEY is\n"
        "# unset (pip install 'empirio[server]'); set the key for the real service.\n"
        "from empirio.emulator import start_if_no_key\n\n"
        "start_if_no_key()\n"
        if emulator
        else "# The key is read from EMPIRIOLABS_API_KEY.\n"
    )
    texts = f"docs = {_texts_literal(docs, 'first document')}\n"
    questions = f"queries = {_texts_literal(queries, 'a question')}\n"
    core = (
        f"{head}from empirio import EmbeddingClient\n\n"
        f"{texts}{questions}\n"
        f"client = EmbeddingClient({args})\n"
        f"d = client.embed(docs{out_arg})\n"
        f'q = client.embed(queries, kind="query"{out_arg})\n'
    )
    if s.output != "sparse":
        core += "print((q.dense @ d.dense.T).round(3))  # one row per query\n"
    langchain = (
        f"{head}from langchain_empirio import EmpirioEmbeddings\n\n"
        f"{texts}\n"
        f"embeddings = EmpirioEmbeddings({args})\n"
        "vectors = embeddings.embed_documents(docs)\n"
        f"query = embeddings.embed_query({first_query!r})\n"
    )
    llamaindex = (
        f"{head}from llama_index.core import Settings\n"
        "from llamaindex_empirio import EmpirioEmbedding\n\n"
        f"{texts}\n"
        f"Settings.embed_model = EmpirioEmbedding({li_args})\n"
        "vectors = Settings.embed_model.get_text_embedding_batch(docs)\n"
        f"query = Settings.embed_model.get_query_embedding({first_query!r})\n"
    )
    if s.output != "dense":
        langchain += "sparse = embeddings.sparse()  # EmpirioSparseEmbeddings, same requests\n"
        llamaindex += "sparse = Settings.embed_model.sparse()  # same requests\n"
    return {"core": core, "langchain": langchain, "llamaindex": llamaindex}
