"""What one call did, for tracing: a record its drivers fill, and the attributes it becomes.

A :class:`CallRecord` is made for each call of the client (``embed``, ``aembed``,
``embed_as_lists``, ``iter_embed``, ...) and filled, under the session's lock, by what the
core already decides: the usage of every finished attempt, each retry and its reason, each
time the account's pace held a request back, the texts served from the cache. The shell side
(:mod:`empirio._io.telemetry`) turns it into one OpenTelemetry span and a few metrics; the
adapters read its usage for LangSmith and LlamaIndex. Everything here is pure: names, values,
and the rules of the conventions followed.

Conventions (both evolve; the names are kept here, in one place):

- OpenTelemetry GenAI (``semantic-conventions-genai``): span ``embeddings {model}`` of kind
  CLIENT, ``gen_ai.operation.name="embeddings"``, ``gen_ai.request.model``,
  ``gen_ai.embeddings.dimension.count``, ``gen_ai.request.encoding_formats``,
  ``gen_ai.usage.input_tokens`` (billed), ``server.address``/``server.port``, ``error.type``.
  The provider is ``gen_ai.system`` in the conventions up to v1.36 and ``gen_ai.provider.name``
  since: both are emitted, so that backends reading either find it, unless
  ``OTEL_SEMCONV_STABILITY_OPT_IN`` lists ``gen_ai_latest_experimental``, which asks for the
  latest conventions alone (the switch the conventions define for the transition). Our value
  is :data:`PROVIDER` (the service is no provider of the conventions' list).
- OpenInference (Arize Phoenix, Langfuse): ``openinference.span.kind="EMBEDDING"``,
  ``embedding.model_name``, ``llm.token_count.prompt``/``total``.
- Our own, under ``empirio.``: inputs, cache hits, requests, retries, 429s, failed requests,
  seconds held by the account's pace, estimated cost.

Texts are recorded only when ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` is true (the
GenAI instrumentations' switch); vectors and the key never.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import APIStatusError
from .plan import SegmentPlan
from .result import Usage

__all__ = [
    "CAPTURE_CONTENT_ENV",
    "MAX_EVENTS",
    "MAX_TEXTS",
    "OPERATION",
    "PACE_EVENT_S",
    "PROVIDER",
    "SEMCONV_ENV",
    "CallRecord",
    "Event",
    "captures_content",
    "error_type",
    "latest_semconv",
    "metric_attributes",
    "request_attributes",
    "result_attributes",
    "span_name",
    "text_attributes",
]

#: ``gen_ai.operation.name`` of every call.
OPERATION = "embeddings"
#: ``gen_ai.provider.name`` (``gen_ai.system`` before v1.37): the service sold through
#: EmpirioLabs' OpenAI-compatible endpoint, whatever ``base_url`` is (its host is
#: ``server.address``).
PROVIDER = "empiriolabs"
#: The conventions' opt-in variable, and the value that selects their latest names.
SEMCONV_ENV = "OTEL_SEMCONV_STABILITY_OPT_IN"
_LATEST = "gen_ai_latest_experimental"
#: Record the texts of a call on its span (off unless set to ``true``).
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
#: A time held back by the account's pace of at least this long (seconds) is a span event;
#: shorter ones are only summed in ``empirio.pace.wait_s`` (a paced ingestion holds every
#: request a little).
PACE_EVENT_S = 0.25
#: The most events one span keeps (retries and long pace waits); more are counted in
#: ``empirio.events.dropped``. A day-long ``iter_embed`` would otherwise grow without bound.
MAX_EVENTS = 64
#: The most texts recorded on a span when content is captured.
MAX_TEXTS = 100


@dataclass(frozen=True, slots=True)
class Event:
    """One thing worth a span event.

    Attributes:
        name: ``"empirio.retry"`` or ``"empirio.pace.wait"``.
        at: when, on the shell's monotonic clock (seconds).
        attributes: the event's attributes.
    """

    name: str
    at: float
    attributes: Mapping[str, str | int | float]


class CallRecord:
    """What one call did (see the module docstring). Filled under the session's lock by the
    call's drivers (a call with shared views runs two); read when the call ends.

    Attributes:
        inputs: the caller's texts (``None`` for a stream of unknown length: ``handed_out``).
        cache_hits: the caller's texts served from the persistent cache, without a request.
        usage: what the call's attempts cost and how they went (as ``EmbeddingResult.usage``).
        paced_s: seconds during which the call had a request ready that the account's pace
            held back (overlapping holds counted once).
        events: retries and long pace waits, oldest first, at most :data:`MAX_EVENTS`.
        dropped_events: events not kept beyond that.
    """

    __slots__ = (
        "_paced_to",
        "cache_hits",
        "dropped_events",
        "events",
        "handed_out",
        "inputs",
        "paced_s",
        "usage",
    )

    def __init__(self, inputs: int | None = None) -> None:
        self.inputs = inputs
        #: rows a stream has handed out so far (its ``inputs`` when its length is unknown)
        self.handed_out = 0
        self.cache_hits = 0
        self.usage = Usage()
        self.paced_s = 0.0
        self._paced_to = -float("inf")
        self.events: list[Event] = []
        self.dropped_events = 0

    def planned(self, plan: SegmentPlan) -> SegmentPlan:
        """Count the texts of a call planned in one piece whose every text was cached: it is
        served without a driver, which counts the cache hits of every other plan."""
        if not plan.pieces:
            self.cache_hits += len(plan.inverse)
        return plan

    def account(self, delta: Usage) -> None:
        """Add an attempt's usage."""
        self.usage = self.usage + delta

    def held(self, now: float, until: float) -> None:
        """The account's pace holds the call's next request from ``now`` until ``until``."""
        start = max(now, self._paced_to)
        if until <= start:
            return
        self.paced_s += until - start
        self._paced_to = until
        if until - now >= PACE_EVENT_S:
            self._event("empirio.pace.wait", now, {"empirio.pace.wait_s": round(until - now, 3)})

    def retried(self, now: float, outcome: BaseException, delay: float, attempt: int) -> None:
        """A request failed with ``outcome`` and is sent again in ``delay`` seconds, as its
        ``attempt``-th attempt."""
        attributes: dict[str, str | int | float] = {
            "error.type": error_type(outcome),
            "empirio.retry.attempt": attempt,
            "empirio.retry.delay_s": round(delay, 3),
        }
        if isinstance(outcome, APIStatusError):
            attributes["http.response.status_code"] = outcome.status_code
        self._event("empirio.retry", now, attributes)

    def _event(self, name: str, at: float, attributes: Mapping[str, str | int | float]) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append(Event(name, at, attributes))
        else:
            self.dropped_events += 1


def latest_semconv(opt_in: str | None) -> bool:
    """Whether ``OTEL_SEMCONV_STABILITY_OPT_IN`` (a comma-separated list) asks for the latest
    experimental GenAI conventions."""
    return _LATEST in {part.strip() for part in (opt_in or "").split(",")}


def captures_content(value: str | None) -> bool:
    """Whether ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` asks for texts."""
    return (value or "").strip().lower() in ("true", "1", "yes")


def span_name(model: str) -> str:
    """``{gen_ai.operation.name} {gen_ai.request.model}``, as the conventions name spans."""
    return f"{OPERATION} {model}"


def _base(
    model: str, server: tuple[str, int | None], *, latest: bool
) -> dict[str, str | int | float | Sequence[str]]:
    host, port = server
    attributes: dict[str, str | int | float | Sequence[str]] = {
        "gen_ai.operation.name": OPERATION,
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.request.model": model,
        "server.address": host,
    }
    if not latest:  # the name of v1.36 and before, for backends that read only that
        attributes["gen_ai.system"] = PROVIDER
    if port is not None:
        attributes["server.port"] = port
    return attributes


def request_attributes(
    *,
    model: str,
    dimensions: int,
    encoding_format: str,
    server: tuple[str, int | None],
    kind: str,
    output: str,
    latest: bool,
) -> dict[str, str | int | float | Sequence[str]]:
    """The attributes known when a call starts (for samplers), GenAI and OpenInference."""
    attributes = _base(model, server, latest=latest)
    attributes.update(
        {
            "gen_ai.embeddings.dimension.count": dimensions,
            "gen_ai.request.encoding_formats": (encoding_format,),
            "openinference.span.kind": "EMBEDDING",
            "embedding.model_name": model,
            "empirio.kind": kind,
            "empirio.output": output,
        }
    )
    return attributes


def result_attributes(
    record: CallRecord, error: BaseException | None
) -> dict[str, str | int | float]:
    """The attributes known when a call ends: billed tokens (GenAI and OpenInference), and what
    the call went through (``empirio.*``)."""
    usage = record.usage
    attributes: dict[str, str | int | float] = {
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "llm.token_count.prompt": usage.input_tokens,
        "llm.token_count.total": usage.input_tokens,
        "empirio.cache_hits": record.cache_hits,
        "empirio.requests": usage.requests,
        "empirio.retries": usage.retries,
        "empirio.rate_limited": usage.rate_limited,
        "empirio.failed_requests": usage.failed_requests,
        "empirio.pace.wait_s": round(record.paced_s, 3),
        "empirio.cost_usd": usage.cost_usd,
    }
    attributes["empirio.inputs"] = record.handed_out if record.inputs is None else record.inputs
    if usage.abandoned_requests:
        attributes["empirio.abandoned_requests"] = usage.abandoned_requests
    if record.dropped_events:
        attributes["empirio.events.dropped"] = record.dropped_events
    if error is not None:
        attributes["error.type"] = error_type(error)
    return attributes


def text_attributes(texts: Sequence[str]) -> dict[str, str]:
    """OpenInference's ``embedding.embeddings.N.embedding.text`` for the first
    :data:`MAX_TEXTS` texts (only when content capture is on)."""
    return {
        f"embedding.embeddings.{i}.embedding.text": text for i, text in enumerate(texts[:MAX_TEXTS])
    }


def metric_attributes(
    model: str, server: tuple[str, int | None], error: BaseException | None, *, latest: bool
) -> dict[str, str | int | float | Sequence[str]]:
    """The attributes of the conventions' metrics for one call."""
    attributes = _base(model, server, latest=latest)
    if error is not None:
        attributes["error.type"] = error_type(error)
    return attributes


def error_type(error: BaseException) -> str:
    """A low-cardinality name for a failure: the HTTP status of a service's answer (as the
    conventions suggest for an error code), else the exception's class name."""
    if isinstance(error, APIStatusError):
        return str(error.status_code)
    return type(error).__name__
