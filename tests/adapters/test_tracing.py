"""What the frameworks' own tracing shows of our calls.

- LangChain: with ``LANGSMITH_TRACING=true`` each embedding call is a LangSmith run of type
  ``embedding``, nested under the caller's run, with the billed tokens. The LangSmith endpoint
  is a fake on 127.0.0.1 that keeps what the real client posts (in a subprocess: LangSmith's
  client and settings are per process).
- LlamaIndex: OpenInference's instrumentation (what Phoenix and Langfuse use) shows the
  embedding step with our billed tokens, and ``TokenCountingHandler`` counts what was billed
  when given our tokenizer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from openinference.instrumentation.llama_index import LlamaIndexInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llamaindex_empirio import EmpirioEmbedding

from ..conftest import QuietHTTPServer, stats

#: What the fake's ``/info`` says: batches of runs as JSON (``/runs/batch``), not multipart.
INFO = {
    "version": "0.10.0",
    "batch_ingest_config": {
        "use_multipart_endpoint": False,
        "scale_up_qsize_trigger": 1000,
        "scale_up_nthreads_limit": 1,
        "scale_down_nempty_trigger": 4,
        "size_limit": 100,
        "size_limit_bytes": 20_971_520,
    },
    "instance_flags": {},
}


class FakeLangSmith:
    """What LangSmith's client posts, kept: runs by id, with their latest fields."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.bodies: list[bytes] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # /info: no multipart, so runs come as JSON batches
                self._answer(json.dumps(INFO).encode())

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                fake.bodies.append(body)
                if self.path.endswith("/runs/batch"):
                    batch = json.loads(body)
                    for run in batch.get("post", []) + batch.get("patch", []):
                        fake.runs.setdefault(run["id"], {}).update(run)
                self._answer(b"{}")

            do_PATCH = do_POST

        self.server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def langsmith() -> Iterator[FakeLangSmith]:
    fake = FakeLangSmith()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


SCRIPT = """
    import sys
    from langchain_core.runnables import RunnableLambda
    from langchain_core.vectorstores import InMemoryVectorStore
    from langsmith.run_trees import get_cached_client
    from langchain_empirio import EmpirioEmbeddings

    e = EmpirioEmbeddings(api_key="sk-never-posted-0123", base_url=sys.argv[1], dimensions=64,
                          rpm=None, tpm=None)
    store = InMemoryVectorStore.from_texts(["cats purr", "dogs bark", "cows moo"], e)
    retriever = store.as_retriever(k=1)
    rag = RunnableLambda(lambda q: retriever.invoke(q)[0].page_content).with_config(run_name="rag")
    print(rag.invoke("which animal purrs?"))
    print(e._client.usage.input_tokens)
    get_cached_client().flush()
"""


def test_langchain_calls_are_langsmith_embedding_runs_with_billed_tokens(
    emulator_url: str, langsmith: FakeLangSmith
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGSMITH_", "LANGCHAIN_"))}
    env.update(
        LANGSMITH_TRACING="true",
        LANGSMITH_ENDPOINT=langsmith.url,
        LANGSMITH_API_KEY="ls-fake-key",
        LANGSMITH_PROJECT="empirio-test",
    )
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), emulator_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=True,
    )
    billed = int(out.stdout.split()[-1])
    runs = list(langsmith.runs.values())
    embedding = [r for r in runs if r.get("run_type") == "embedding"]
    assert len(embedding) == 2, runs  # the three documents, then the query
    rag = next(r for r in runs if r.get("name") == "rag")
    documents, query = sorted(embedding, key=lambda r: r["dotted_order"])
    assert query["parent_run_id"] == rag["id"]  # nested under the caller's run
    assert query["trace_id"] == rag["id"]
    for run in embedding:
        assert run["name"] == "EmpirioEmbeddings"
        metadata = run["extra"]["metadata"]
        assert metadata["ls_provider"] == "empiriolabs"
        assert metadata["ls_model_name"] == "text-embedding-v4"
    assert documents["inputs"]["count"] == 3
    assert documents["extra"]["metadata"]["empirio_kind"] == "document"
    assert query["extra"]["metadata"]["empirio_kind"] == "query"
    tokens = [r["outputs"]["usage_metadata"]["input_tokens"] for r in (documents, query)]
    assert all(t > 0 for t in tokens)
    assert sum(tokens) == billed
    assert query["outputs"]["usage_metadata"]["total_cost"] == pytest.approx(tokens[1] * 0.07e-6)
    assert b"sk-never-posted" not in b"".join(langsmith.bodies)


def test_langsmith_off_posts_nothing(emulator_url: str, langsmith: FakeLangSmith) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGSMITH_", "LANGCHAIN_"))}
    env.update(LANGSMITH_ENDPOINT=langsmith.url, LANGSMITH_API_KEY="ls-fake-key")
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), emulator_url],
        capture_output=True,
        env=env,
        timeout=180,
        check=True,
    )
    assert langsmith.runs == {}


@pytest.fixture
def phoenix() -> Iterator[InMemorySpanExporter]:
    """OpenInference's LlamaIndex instrumentation with its own tracer provider, as Phoenix's
    ``register()`` sets it up; uninstrumented afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = LlamaIndexInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield exporter
    finally:
        instrumentor.uninstrument()


def test_openinference_shows_billed_tokens_on_llamaindex_embedding_steps(
    make_emulator: Any, phoenix: InMemorySpanExporter
) -> None:
    url = make_emulator()
    model = EmpirioEmbedding(
        api_key="k", base_url=url, dimensions=64, rpm=None, tpm=None, embed_batch_size=4
    )
    texts = [f"document number {i} about topic {i % 3}" for i in range(10)]
    model.get_text_embedding_batch(texts)  # one job fetched whole, served in three chunks
    model.get_query_embedding("which topic?")
    spans = {s.name: dict(s.attributes or {}) for s in phoenix.get_finished_spans()}
    # Named after the class and method; the query's tokens are on its innermost step only
    # (Phoenix sums a trace's spans: the same tokens on two would count twice).
    batch = spans["EmpirioEmbedding.get_text_embedding_batch"]
    query = spans["EmpirioEmbedding._get_query_embedding"]
    assert "llm.token_count.prompt" not in spans["EmpirioEmbedding.get_query_embedding"]
    assert batch["openinference.span.kind"] == query["openinference.span.kind"] == "EMBEDDING"
    billed = stats(url)["tokens"]
    assert batch["llm.token_count.prompt"] + query["llm.token_count.prompt"] == billed
    assert batch["llm.token_count.total"] == batch["llm.token_count.prompt"] > 0
    assert query["embedding.model_name"] == "text-embedding-v4"


def test_token_counting_handler_counts_what_was_billed(make_emulator: Any) -> None:
    url = make_emulator()
    model = EmpirioEmbedding(api_key="k", base_url=url, dimensions=64, rpm=None, tpm=None)
    counter = TokenCountingHandler()
    billed_counter = TokenCountingHandler(tokenizer=model.billed_tokenizer)  # as the README says
    model.callback_manager = CallbackManager([counter, billed_counter])
    texts = ["Ein Satz auf Deutsch über Katzen.", "猫は喉を鳴らす。", "cats purr " * 20]
    model.get_text_embedding_batch(texts)
    billed = stats(url)["tokens"]
    assert billed_counter.total_embedding_token_count == billed
    assert counter.total_embedding_token_count != billed  # OpenAI's vocabulary, by default
