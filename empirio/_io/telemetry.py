"""Each call of a client as one OpenTelemetry span and a few metrics, when ``opentelemetry-api``
is installed (``empirio[otel]``); a :class:`~empirio._core.observe.CallRecord` either way.

The span covers the whole call, all its requests and retries; its attributes and events come
from the record the core fills (:mod:`empirio._core.observe`, where every name is kept). With
the API alone (no SDK configured) the tracer is a no-op: a call then costs a few microseconds
more, and nothing is computed for a span that does not record. Without the API, nothing is
imported and only the record is kept (the adapters read it: :func:`recording`).

Metrics, per call: the conventions' ``gen_ai.client.operation.duration`` (seconds) and
``gen_ai.client.token.usage`` (billed input tokens), and counters of our own:
``empirio.client.rate_limited`` (429 answers), ``empirio.client.retries``,
``empirio.client.cache_hits`` (texts served from the cache) and ``empirio.client.pace.wait``
(seconds held by the account's pace).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx

from .._core.flow import CallOptions
from .._core.observe import (
    CAPTURE_CONTENT_ENV,
    SEMCONV_ENV,
    CallRecord,
    captures_content,
    error_type,
    latest_semconv,
    metric_attributes,
    request_attributes,
    result_attributes,
    span_name,
    text_attributes,
)
from .._core.result import Usage
from .._core.settings import ClientConfig

__all__ = ["Telemetry", "add_usage_to_framework_span", "recording", "usage_of"]

#: The conventions' advice for the buckets of their two histograms.
_TOKEN_BUCKETS = [4.0**i for i in range(14)]  # 1 .. 67,108,864
_DURATION_BUCKETS = [0.01 * 2**i for i in range(14)]  # 0.01 .. 81.92 s

#: Lists that collect the records of the calls made in this context (see :func:`recording`).
_SINK: contextvars.ContextVar[list[CallRecord] | None] = contextvars.ContextVar(
    "empirio_records", default=None
)


@contextlib.contextmanager
def recording() -> Iterator[list[CallRecord]]:
    """Collect the records of the client calls made inside the block, in this thread or task
    (the adapters read the usage of one framework call this way: LangSmith runs, LlamaIndex
    spans). A coalesced call is recorded by the caller whose call carried it."""
    records: list[CallRecord] = []
    token = _SINK.set(records)
    try:
        yield records
    finally:
        _SINK.reset(token)


def usage_of(records: list[CallRecord]) -> Usage:
    """What the calls of ``records`` (from :func:`recording`) spent together."""
    total = Usage()
    for record in records:
        total = total + record.usage
    return total


def add_usage_to_framework_span(usage: Usage) -> None:
    """Add billed tokens and cost to the current span when a framework's instrumentation made
    it for an embedding step (OpenInference's LlamaIndex instrumentation makes one per
    ``get_text_embedding_batch``/``get_query_embedding``, named after the method, such as
    ``BaseEmbedding.get_query_embedding``, and records no tokens for embeddings): Phoenix and
    Langfuse then show them on that step too. Added to what the span already counts, as a step
    may make several calls. Nothing without ``opentelemetry-api``, or when the current span
    does not record or its name does not say it embeds."""
    otel = _otel()
    if otel is None:
        return
    span = otel.trace.get_current_span()
    name = getattr(span, "name", "")  # the SDK's spans have one; a no-op span does not record
    if not usage.input_tokens or not span.is_recording() or "embedding" not in name.lower():
        return
    had: Mapping[str, Any] = getattr(span, "attributes", None) or {}
    tokens = int(had.get("llm.token_count.prompt", 0)) + usage.input_tokens
    span.set_attributes(
        {
            "llm.token_count.prompt": tokens,
            "llm.token_count.total": tokens,
            "empirio.cost_usd": float(had.get("empirio.cost_usd", 0.0)) + usage.cost_usd,
        }
    )


class _OTel:
    """The tracer and instruments, made once per process (the global providers they come from
    may be configured later: the API's proxies follow them)."""

    def __init__(self) -> None:
        from opentelemetry import metrics, trace

        from .. import __version__

        self.trace = trace
        self.kind = trace.SpanKind.CLIENT
        self.tracer = trace.get_tracer("empirio", __version__)
        meter = metrics.get_meter("empirio", __version__)
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Measures number of input and output tokens used",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self.rate_limited = meter.create_counter(
            "empirio.client.rate_limited", unit="{response}", description="429 answers received"
        )
        self.retries = meter.create_counter(
            "empirio.client.retries", unit="{retry}", description="Requests sent again"
        )
        self.cache_hits = meter.create_counter(
            "empirio.client.cache_hits", unit="{input}", description="Texts served from the cache"
        )
        self.pace_wait = meter.create_counter(
            "empirio.client.pace.wait",
            unit="s",
            description="Time requests were held back by the account's pace",
        )


_loaded: _OTel | None = None
_absent = False


def _otel() -> _OTel | None:
    """The process's tracer and instruments, or ``None`` without ``opentelemetry-api``."""
    global _loaded, _absent
    if _loaded is None and not _absent:
        try:
            _loaded = _OTel()
        except ImportError:
            _absent = True
    return _loaded


class Telemetry:
    """A client's calls as spans and metrics (see the module docstring).

    Args:
        config: the client's settings (model, dimensions, endpoint).
    """

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        url = httpx.URL(config.base_url)
        self.server = (url.host, url.port or (443 if url.scheme == "https" else 80))

    @contextlib.contextmanager
    def call(
        self, texts: object, options: CallOptions, *, current: bool = True
    ) -> Iterator[CallRecord]:
        """One call: its record, inside its span. ``current``: the span is the current one
        inside the block (for HTTP instrumentation's spans and the caller's own); a stream's
        is not, as a generator's block would leave it current between its items."""
        record = CallRecord(len(texts) if isinstance(texts, Sequence) else None)
        sink = _SINK.get()
        if sink is not None:
            sink.append(record)
        otel = _otel()
        if otel is None:
            yield record
            return
        latest = latest_semconv(os.environ.get(SEMCONV_ENV))
        config = self.config
        span = otel.tracer.start_span(
            span_name(config.model),
            kind=otel.kind,
            attributes=request_attributes(
                model=config.model,
                dimensions=config.dimensions,
                encoding_format=config.encoding_format,
                server=self.server,
                kind=options.kind,
                output=options.output,
                latest=latest,
            ),
        )
        content = captures_content(os.environ.get(CAPTURE_CONTENT_ENV))
        if content and isinstance(texts, Sequence) and span.is_recording():
            span.set_attributes(text_attributes(texts))
        start, wall = time.monotonic(), time.time_ns()
        error: BaseException | None = None
        try:
            if current:
                with otel.trace.use_span(
                    span, end_on_exit=False, record_exception=False, set_status_on_exception=False
                ):
                    yield record
            else:
                yield record
        except GeneratorExit:  # a stream its caller stopped early: not a failure
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._end(otel, span, record, error, (start, wall), latest)

    def _end(
        self,
        otel: _OTel,
        span: Any,
        record: CallRecord,
        error: BaseException | None,
        started: tuple[float, int],
        latest: bool,
    ) -> None:
        start, wall = started
        if span.is_recording():
            for event in record.events:
                at = wall + int((event.at - start) * 1e9)
                span.add_event(event.name, dict(event.attributes), timestamp=at)
            span.set_attributes(result_attributes(record, error))
            if error is not None:
                span.set_status(otel.trace.Status(otel.trace.StatusCode.ERROR, error_type(error)))
        span.end()
        attributes = metric_attributes(self.config.model, self.server, error, latest=latest)
        otel.duration.record(time.monotonic() - start, attributes)
        usage = record.usage
        if usage.input_tokens:
            otel.tokens.record(usage.input_tokens, {**attributes, "gen_ai.token.type": "input"})
        if usage.rate_limited:
            otel.rate_limited.add(usage.rate_limited, attributes)
        if usage.retries:
            otel.retries.add(usage.retries, attributes)
        if record.cache_hits:
            otel.cache_hits.add(record.cache_hits, attributes)
        if record.paced_s:
            otel.pace_wait.add(record.paced_s, attributes)
