"""Each call of the client is one OpenTelemetry span, with the GenAI conventions' attributes,
OpenInference's, and our own; and the conventions' metrics. The SDK's in-memory exporter and
reader stand for a backend; the calls go to the emulator over loopback, with its 429 storm and
its per-second limits making the retries and the pacing waits happen by mechanism.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from empirio import AuthenticationError, EmbeddingClient

from ..conftest import stats

KEY = "sk-telemetry-never-shown-0123456789"

_EXPORTER = InMemorySpanExporter()
# Deltas: each collection holds what was measured since the last (the fixture collects first).
_READER = InMemoryMetricReader(
    preferred_temporality={
        Counter: AggregationTemporality.DELTA,
        Histogram: AggregationTemporality.DELTA,
    }
)


@pytest.fixture(scope="module", autouse=True)
def sdk() -> None:
    """The SDK, configured once per process (OpenTelemetry's global providers can be set once)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[_READER]))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    _EXPORTER.clear()
    _READER.collect()  # what earlier tests measured
    return _EXPORTER


def ours(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith("embeddings ")]


def metric_points() -> dict[str, list[Any]]:
    points: dict[str, list[Any]] = {}
    data = _READER.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            if scope.scope.name != "empirio":
                continue
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def client(url: str, **options: Any) -> EmbeddingClient:
    options.setdefault("share_budget", "client")
    return EmbeddingClient(api_key=KEY, base_url=url, dimensions=64, **options)


def test_a_call_with_429s_retries_and_pacing_is_one_span_with_billed_tokens(
    make_emulator: Any, spans: InMemorySpanExporter
) -> None:
    url = make_emulator(rpm=120, storm_s=2.0)
    c = client(url, rpm=120, max_retries=8)
    c.count_tokens("warm the tokenizer up")  # so that the storm is still on at the first send
    httpx.post(url.removesuffix("/v1") + "/_emulator/reset")  # the storm starts now
    result = c.embed([f"text {i} about a topic" for i in range(40)])
    usage = result.usage
    (span,) = ours(spans)
    a = dict(span.attributes or {})
    assert span.name == "embeddings text-embedding-v4"
    assert span.kind == trace.SpanKind.CLIENT
    assert a["gen_ai.operation.name"] == "embeddings"
    # Both names of the provider: nobody opted in to the latest conventions alone.
    assert a["gen_ai.provider.name"] == a["gen_ai.system"] == "empiriolabs"
    assert a["gen_ai.request.model"] == "text-embedding-v4"
    assert a["gen_ai.embeddings.dimension.count"] == 64
    assert tuple(a["gen_ai.request.encoding_formats"]) == ("base64",)  # type: ignore[arg-type]
    assert a["server.address"] == "127.0.0.1"
    assert a["server.port"] == httpx.URL(url).port
    # Billed tokens: what the service reported, which the emulator counted as it answered.
    billed = stats(url)["tokens"]
    assert a["gen_ai.usage.input_tokens"] == usage.input_tokens == billed > 0
    assert a["llm.token_count.prompt"] == a["llm.token_count.total"] == billed
    assert a["openinference.span.kind"] == "EMBEDDING"
    assert a["embedding.model_name"] == "text-embedding-v4"
    assert a["empirio.inputs"] == 40
    assert a["empirio.requests"] == usage.requests == 4
    assert a["empirio.rate_limited"] == usage.rate_limited > 0  # the storm
    assert a["empirio.retries"] == usage.retries > 0
    assert a["empirio.cost_usd"] == pytest.approx(usage.cost_usd)
    assert a["empirio.pace.wait_s"] > 0  # 4 requests at 2 a second
    assert "error.type" not in a
    retries = [e for e in span.events if e.name == "empirio.retry"]
    assert len(retries) == usage.retries
    assert {dict(e.attributes or {})["http.response.status_code"] for e in retries} == {429}
    assert all(span.start_time <= e.timestamp <= span.end_time for e in span.events)  # type: ignore[operator]
    assert any(e.name == "empirio.pace.wait" for e in span.events)

    points = metric_points()
    (tokens,) = points["gen_ai.client.token.usage"]
    assert tokens.sum == billed
    assert tokens.count == 1
    assert dict(tokens.attributes)["gen_ai.token.type"] == "input"
    (duration,) = points["gen_ai.client.operation.duration"]
    assert duration.count == 1
    assert duration.sum > 0
    assert sum(p.value for p in points["empirio.client.rate_limited"]) == usage.rate_limited
    assert sum(p.value for p in points["empirio.client.retries"]) == usage.retries


def test_nothing_secret_or_private_is_recorded_unless_content_is_asked_for(
    emulator_url: str, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = ["a private sentence about salaries", "another private one"]
    c = client(emulator_url, rpm=None, tpm=None)
    result = c.embed(texts)
    (span,) = ours(spans)
    recorded = json.dumps(
        [dict(span.attributes or {})] + [dict(e.attributes or {}) for e in span.events],
        default=str,
    )
    assert KEY not in recorded
    assert not any(t in recorded for t in texts)
    assert result.dense is not None
    assert f"{float(result.dense[0][0]):.6f}"[:8] not in recorded  # no vector either
    # The GenAI instrumentations' switch records the texts (OpenInference's attribute).
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    spans.clear()
    c.embed(texts)
    (span,) = ours(spans)
    a = dict(span.attributes or {})
    assert a["embedding.embeddings.0.embedding.text"] == texts[0]
    assert KEY not in json.dumps(a)


def test_the_latest_conventions_are_chosen_by_the_opt_in_variable(
    emulator_url: str, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http, gen_ai_latest_experimental")
    client(emulator_url, rpm=None, tpm=None).embed(["one"])
    (span,) = ours(spans)
    a = dict(span.attributes or {})
    assert a["gen_ai.provider.name"] == "empiriolabs"
    assert "gen_ai.system" not in a
    (duration,) = metric_points()["gen_ai.client.operation.duration"]
    assert dict(duration.attributes)["gen_ai.provider.name"] == "empiriolabs"


def test_a_failed_call_says_why_and_cached_texts_are_counted(
    make_emulator: Any, spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    url = make_emulator(api_key="the-right-key")
    with pytest.raises(AuthenticationError):
        client(url).embed(["hello"])
    (span,) = ours(spans)
    assert dict(span.attributes or {})["error.type"] == "401"
    assert span.status.status_code == trace.StatusCode.ERROR
    (duration,) = metric_points()["gen_ai.client.operation.duration"]
    assert dict(duration.attributes)["error.type"] == "401"

    spans.clear()
    ok = make_emulator()
    cached = client(ok, rpm=None, tpm=None, cache=tmp_path / "cache.sqlite")
    cached.embed(["a", "b", "c"])
    cached.embed(["a", "b", "c", "c"])
    first, second = (dict(s.attributes or {}) for s in ours(spans))
    assert (first["empirio.cache_hits"], first["empirio.requests"]) == (0, 1)
    assert (second["empirio.cache_hits"], second["empirio.requests"]) == (4, 0)
    assert second["gen_ai.usage.input_tokens"] == 0


async def test_async_calls_and_streams_are_spans_under_the_callers_own(
    emulator_url: str, spans: InMemorySpanExporter
) -> None:
    c = client(emulator_url, rpm=None, tpm=None)
    tracer = trace.get_tracer("the-application")
    with tracer.start_as_current_span("retrieve") as parent:
        await c.aembed(["a question"], kind="query")
        rows = sum(len(r) for r in c.iter_embed(f"text {i}" for i in range(25)))
    assert rows == 25
    call, stream = ours(spans)
    assert call.parent is not None
    assert call.parent.span_id == parent.get_span_context().span_id
    assert dict(call.attributes or {})["empirio.kind"] == "query"
    assert dict(stream.attributes or {})["empirio.inputs"] == 25  # a generator: counted
    assert stream.parent is not None
    assert stream.parent.span_id == parent.get_span_context().span_id


def test_without_opentelemetry_the_package_imports_and_works(emulator_url: str) -> None:
    script = textwrap.dedent(
        """
        import sys

        class NoOTel:  # as if opentelemetry-api were not installed
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ModuleNotFoundError(f"No module named {name!r}")
                return None

        sys.meta_path.insert(0, NoOTel())
        from empirio import EmbeddingClient

        c = EmbeddingClient(api_key="k", base_url=sys.argv[1], dimensions=64, rpm=None, tpm=None)
        print(len(c.embed(["one", "two"])), c.usage.requests)
        print(any(m.startswith("opentelemetry") for m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, emulator_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.split() == ["2", "1", "False"], out.stderr


async def test_http_instrumentation_spans_are_children_of_the_call(
    emulator_url: str, spans: InMemorySpanExporter
) -> None:
    """``opentelemetry-instrumentation-httpx`` makes a span per request: under the call's span,
    in the sync shell (requests on its private loop's thread) as in the async one."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    instrumentor = HTTPXClientInstrumentor()
    instrumentor.instrument()
    try:
        c = client(emulator_url, rpm=None, tpm=None, batch_size=2)  # made after: instrumented
        c.embed(["a", "b", "c"])
        await c.aembed(["d", "e", "f"])
        await c.aclose()
        c.close()
    finally:
        instrumentor.uninstrument()
    finished = spans.get_finished_spans()
    calls = {s.context.span_id: s for s in ours(spans)}
    posts = [s for s in finished if s.name == "POST"]
    assert len(calls) == 2
    assert len(posts) == 4  # two requests per call
    assert all(p.parent is not None and p.parent.span_id in calls for p in posts)
