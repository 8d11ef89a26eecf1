"""The call record and the attributes it becomes: pure, with a fake clock."""

from __future__ import annotations

import numpy as np

from empirio._core.errors import APIConnectionError, RateLimitError
from empirio._core.observe import (
    MAX_EVENTS,
    MAX_TEXTS,
    PACE_EVENT_S,
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
from empirio._core.plan import SegmentPlan
from empirio._core.result import Usage


def test_overlapping_holds_of_the_pace_are_counted_once() -> None:
    r = CallRecord()
    r.held(10.0, 10.5)  # a request held half a second
    r.held(10.2, 10.5)  # asked again meanwhile: the same hold
    r.held(10.4, 11.0)  # the next slot, booked ahead: only its new part counts
    r.held(12.0, 12.1)  # later, a short one
    assert abs(r.paced_s - 1.1) < 1e-9
    # Holds of PACE_EVENT_S or more are events; shorter ones only add up.
    waits = [e for e in r.events if e.name == "empirio.pace.wait"]
    assert [e.at for e in waits] == [10.0, 10.4]
    assert PACE_EVENT_S <= 0.5


def test_retries_are_events_with_their_reason_and_the_events_are_bounded() -> None:
    r = CallRecord()
    r.retried(1.0, RateLimitError("slow down"), 2.5, 2)
    r.retried(2.0, APIConnectionError("reset"), 0.5, 3)
    first, second = r.events
    assert first.attributes == {
        "error.type": "429",
        "empirio.retry.attempt": 2,
        "empirio.retry.delay_s": 2.5,
        "http.response.status_code": 429,
    }
    assert second.attributes["error.type"] == "APIConnectionError"
    assert "http.response.status_code" not in second.attributes
    for i in range(2 * MAX_EVENTS):
        r.retried(3.0 + i, RateLimitError("again"), 1.0, 2)
    assert len(r.events) == MAX_EVENTS
    assert r.dropped_events == MAX_EVENTS + 2
    assert result_attributes(r, None)["empirio.events.dropped"] == MAX_EVENTS + 2


def test_a_plan_served_from_the_cache_counts_its_texts() -> None:
    r = CallRecord()
    fully_cached = SegmentPlan(0, 0, np.array([0, 1, 1, 2]), (), 3, (), ())
    assert r.planned(fully_cached) is fully_cached
    assert r.cache_hits == 4


def test_attributes_follow_both_generations_of_the_conventions() -> None:
    old = request_attributes(
        model="m",
        dimensions=512,
        encoding_format="float",
        server=("api.example", 443),
        kind="query",
        output="dense",
        latest=False,
    )
    assert old["gen_ai.system"] == old["gen_ai.provider.name"] == "empiriolabs"
    assert old["gen_ai.request.encoding_formats"] == ("float",)
    assert old["openinference.span.kind"] == "EMBEDDING"
    new = metric_attributes("m", ("h", None), RateLimitError("x"), latest=True)
    assert new["gen_ai.provider.name"] == "empiriolabs"
    assert "gen_ai.system" not in new
    assert "server.port" not in new
    assert new["error.type"] == "429"
    assert span_name("text-embedding-v4") == "embeddings text-embedding-v4"
    assert latest_semconv("http,gen_ai_latest_experimental")
    assert not latest_semconv(None)
    assert not latest_semconv("gen_ai")
    assert captures_content("True")
    assert not captures_content(None)
    assert not captures_content("0")


def test_result_attributes_carry_billed_tokens_and_what_the_call_went_through() -> None:
    r = CallRecord(inputs=20)
    r.account(Usage(requests=2, input_tokens=1000))
    r.account(Usage(retries=1, rate_limited=1, failed_requests=1))
    r.cache_hits = 5
    a = result_attributes(r, ValueError("bad"))
    assert a["gen_ai.usage.input_tokens"] == a["llm.token_count.prompt"] == 1000
    assert (a["empirio.requests"], a["empirio.retries"], a["empirio.rate_limited"]) == (2, 1, 1)
    assert a["empirio.inputs"] == 20
    assert a["empirio.cache_hits"] == 5
    assert a["empirio.cost_usd"] == 1000 * 0.07 / 1e6
    assert a["error.type"] == "ValueError" == error_type(ValueError())
    stream = CallRecord()
    stream.handed_out = 7
    assert result_attributes(stream, None)["empirio.inputs"] == 7


def test_texts_are_bounded_when_recorded() -> None:
    texts = [f"t{i}" for i in range(MAX_TEXTS + 5)]
    a = text_attributes(texts)
    assert len(a) == MAX_TEXTS
    assert a["embedding.embeddings.0.embedding.text"] == "t0"
