"""EmbeddingClient against the emulator over loopback sockets, sync and async."""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from empirio import (
    APIConnectionError,
    AuthenticationError,
    ConfigurationError,
    EmbeddingClient,
    InsufficientCreditsError,
    InternalServerError,
    InvalidInputError,
    NotFoundError,
    TruncationWarning,
    UnsupportedFeatureError,
    format_query,
)
from empirio._core.config import DEFAULT_QUERY_INSTRUCTION
from empirio._core.tokens import get_tokenizer
from empirio.emulator import text_key

from .conftest import stats

KEY = "sk-test-0123456789abcdefSECRET"
TEXTS = [f"document {i} about topic {i % 7}: " + "words " * (i % 13) for i in range(137)]


def client(url: str, **kw: Any) -> EmbeddingClient:
    kw.setdefault("rpm", None)
    kw.setdefault("tpm", None)
    kw.setdefault("api_key", KEY)
    return EmbeddingClient(base_url=url, **kw)


@pytest.fixture
def reference(emulator_url: str) -> np.ndarray:
    """The fault-free vectors of TEXTS."""
    with client(emulator_url) as c:
        dense = c.embed(TEXTS).dense
    assert dense is not None
    return dense


# ---------------------------------------------------------------- basics


def test_embed_returns_unit_vectors_in_order(emulator_url: str) -> None:
    with client(emulator_url, dimensions=256) as c:
        r = c.embed(["alpha", "beta", "gamma"])
        assert r.dense is not None
        assert r.dense.shape == (3, 256)
        assert r.dense.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(r.dense, axis=1), 1.0, rtol=1e-5)
        single = c.embed(["beta"]).dense
        assert single is not None
        np.testing.assert_array_equal(single[0], r.dense[1])


def test_empty_list_sends_nothing(make_emulator: Any) -> None:
    url = make_emulator()
    with client(url) as c:
        r = c.embed([])
        assert r.dense is not None
        assert r.dense.shape == (0, 1024)
    assert stats(url)["requests"] == 0


def test_usage_and_cost_follow_the_service(emulator_url: str) -> None:
    with client(emulator_url) as c:
        r = c.embed(["衣服的质量杠杠的", "我想知道迪士尼的退票政策"])
        assert r.usage.input_tokens == 14
        assert r.usage.requests == 1
        assert c.usage.input_tokens == 14
        assert r.usage.cost_usd == pytest.approx(14 * 0.07 / 1e6)
        assert c.count_tokens("衣服的质量杠杠的") == 5


def test_float_and_base64_give_the_same_vectors(emulator_url: str) -> None:
    with client(emulator_url, encoding_format="float") as f, client(emulator_url) as b:
        np.testing.assert_array_equal(f.embed(TEXTS[:12]).dense, b.embed(TEXTS[:12]).dense)


def test_identical_texts_are_sent_once(make_emulator: Any) -> None:
    url = make_emulator()
    with client(url) as c:
        r = c.embed(["same", "other", "same", "same"])
    assert r.dense is not None
    np.testing.assert_array_equal(r.dense[0], r.dense[2])
    s = stats(url)
    assert s["inputs_embedded"] == 2
    assert s["delivered"][text_key("same")] == 1


def test_requests_hold_at_most_batch_size_inputs(make_emulator: Any) -> None:
    url = make_emulator(max_batch=2048)
    with client(url, batch_size=7) as c:
        c.embed(TEXTS)
    assert stats(url)["max_inputs_per_request"] == 7


def test_concurrency_is_bounded(make_emulator: Any) -> None:
    url = make_emulator(latency_ms=40)
    with client(url, max_concurrency=3) as c:
        c.embed(TEXTS)
    assert 1 < stats(url)["max_in_flight"] <= 3


async def test_async_concurrency_is_bounded_and_results_match(
    make_emulator: Any, reference: np.ndarray
) -> None:
    url = make_emulator(latency_ms=40)
    async with client(url, max_concurrency=4) as c:
        r = await c.aembed(TEXTS)
    np.testing.assert_array_equal(r.dense, reference)
    assert 1 < stats(url)["max_in_flight"] <= 4


# ---------------------------------------------------------------- queries and sparse


def test_query_instruction_modes(emulator_url: str) -> None:
    with (
        client(emulator_url) as prompt,
        client(emulator_url, instruction_mode="api") as api,
        client(emulator_url, instruction_mode="none") as none,
    ):
        q1 = prompt.embed(["how do cats purr"], kind="query").dense
        q2 = api.embed(["how do cats purr"], kind="query").dense
        q3 = none.embed(["how do cats purr"], kind="query").dense
        doc = prompt.embed(["how do cats purr"]).dense
        manual = prompt.embed([format_query("how do cats purr", DEFAULT_QUERY_INSTRUCTION)]).dense
    np.testing.assert_array_equal(q1, q2)  # the emulator applies the same template
    np.testing.assert_array_equal(q1, manual)
    np.testing.assert_array_equal(q3, doc)
    assert not np.array_equal(q1, doc)


def test_sparse_and_both_come_from_one_request(make_emulator: Any) -> None:
    url = make_emulator()
    with client(url) as c:
        both = c.embed(["the wind blows", "a calm sea"], output="both")
        assert both.dense is not None
        assert both.sparse is not None
        tok = get_tokenizer()
        assert tok.encode(" wind")[0] in both.sparse[0]
        assert all(v > 0 for vec in both.sparse for v in vec.values())
        only = c.embed(["the wind blows"], output="sparse")
        assert only.dense is None
        assert only.sparse == both.sparse[:1]
    assert stats(url)["requests"] == 2


def test_sparse_on_an_endpoint_without_it_says_so(make_emulator: Any) -> None:
    url = make_emulator(sparse_output=False)
    with client(url) as c, pytest.raises(UnsupportedFeatureError, match="does not support sparse"):
        c.embed(["x"], output="sparse")


# ---------------------------------------------------------------- over-length policy


LONG = " ".join(f"w{i}" for i in range(4000))


def test_overflow_truncate_warns_once_with_position_and_count(emulator_url: str) -> None:
    n = get_tokenizer().count(LONG)
    with client(emulator_url) as c, pytest.warns(TruncationWarning) as record:
        r = c.embed(["short", LONG, LONG + " x"])
    assert len(record) == 1
    assert f"1 ({n:,} tokens)" in str(record[0].message)
    assert r.dense is not None
    assert r.dense.shape == (3, 1024)


def test_overflow_chunk_embeds_every_window(make_emulator: Any) -> None:
    url = make_emulator()
    with client(url, overflow="chunk") as c:
        r = c.embed(["short", LONG])
    windows = -(-get_tokenizer().count(LONG) // 8191)
    assert stats(url)["inputs_embedded"] == 1 + windows
    assert r.dense is not None
    np.testing.assert_allclose(np.linalg.norm(r.dense, axis=1), 1.0, rtol=1e-5)


def test_overflow_error_raises_before_any_request(make_emulator: Any) -> None:
    url = make_emulator()
    with client(url, overflow="error") as c, pytest.raises(InvalidInputError, match="position 1"):
        c.embed(["short", LONG])
    assert stats(url)["requests"] == 0


# ---------------------------------------------------------------- bad input, before money


@pytest.mark.parametrize(
    ("texts", "match"),
    [
        (["ok", "", "fine"], r"empty or whitespace.*\[1\]"),
        (["ok", "   "], r"\[1\]"),
        (["ok", None], "must be strings"),
        (["ok", b"bytes"], "must be strings"),
        ("just a string", "not a single string"),
        (["ok", "fine \ud800 text", "\udfff"], r"lone surrogates.*\[1, 2\]"),
        ({"a", "b"}, "not a set"),
        ({"a": 1}, "not a dict"),
        (None, "got NoneType"),
        (42, "got int"),
    ],
)
def test_bad_input_raises_before_any_request(make_emulator: Any, texts: Any, match: str) -> None:
    url = make_emulator()
    with client(url) as c, pytest.raises(InvalidInputError, match=match):
        c.embed(texts)
    assert stats(url)["requests"] == 0


def test_a_lone_surrogate_in_a_later_request_costs_nothing(make_emulator: Any) -> None:
    url = make_emulator()
    with client(url) as c, pytest.raises(InvalidInputError) as info:
        c.embed([*TEXTS, "\ud800"])
    assert info.value.indices == (len(TEXTS),)
    assert stats(url)["requests"] == 0


def test_generators_are_embedded_whole(emulator_url: str, reference: np.ndarray) -> None:
    with client(emulator_url) as c:
        r = c.embed(t for t in TEXTS)
    np.testing.assert_array_equal(r.dense, reference)


async def test_generators_are_embedded_whole_async(
    emulator_url: str, reference: np.ndarray
) -> None:
    async with client(emulator_url) as c:
        r = await c.aembed(iter(TEXTS))
    np.testing.assert_array_equal(r.dense, reference)


def test_a_402_mid_call_carries_what_was_paid_for(
    make_emulator: Any, reference: np.ndarray
) -> None:
    tokens = get_tokenizer()
    first_30 = sum(tokens.count(t) + 1 for t in TEXTS[:30])
    url = make_emulator(credit_tokens=first_30)
    with client(url, max_concurrency=1) as c, pytest.raises(InsufficientCreditsError) as info:
        c.embed(TEXTS)
    err = info.value
    assert err.partial_indices == tuple(range(30))
    assert err.partial is not None
    np.testing.assert_array_equal(err.partial.dense, reference[:30])
    assert err.partial.usage.requests == 3
    assert c.usage.requests == 3


async def test_a_402_mid_call_carries_what_was_paid_for_async(
    make_emulator: Any, reference: np.ndarray
) -> None:
    tokens = get_tokenizer()
    first_20 = sum(tokens.count(t) + 1 for t in TEXTS[:20])
    url = make_emulator(credit_tokens=first_20)
    async with client(url, max_concurrency=1) as c:
        with pytest.raises(InsufficientCreditsError) as info:
            await c.aembed(TEXTS)
    assert info.value.partial_indices == tuple(range(20))
    assert info.value.partial is not None
    np.testing.assert_array_equal(info.value.partial.dense, reference[:20])


def test_iter_embed_yields_what_it_finished_before_a_bad_text(
    make_emulator: Any, reference: np.ndarray
) -> None:
    url = make_emulator()
    got: list[np.ndarray] = []

    def rows() -> Iterator[str]:
        yield from TEXTS[:45]
        yield "   "  # in the fourth segment of 15

    def consume(c: EmbeddingClient) -> None:
        for part in c.iter_embed(rows(), segment_size=15):
            assert part.dense is not None
            got.append(part.dense)

    with client(url) as c, pytest.raises(InvalidInputError) as info:
        consume(c)
    assert info.value.indices == (45,)
    np.testing.assert_array_equal(np.concatenate(got), reference[:45])


async def test_bad_input_raises_before_any_request_async(make_emulator: Any) -> None:
    url = make_emulator()
    async with client(url) as c:
        with pytest.raises(InvalidInputError):
            await c.aembed(["fine"] * 50 + [""])
    assert stats(url)["requests"] == 0


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"dimensions": 100}, r"choose one of \[64, 128, 256, 512, 768, 1024, 1536, 2048\]"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 5000}, "batch_size"),
        ({"overflow": "drop"}, "overflow"),
        ({"instruction_mode": "magic"}, "instruction_mode"),
        ({"base_url": "ftp://x"}, "http"),
    ],
)
def test_bad_settings_raise_at_construction(kw: dict[str, Any], match: str) -> None:
    kw.setdefault("base_url", "http://127.0.0.1:9/v1")
    with pytest.raises(ConfigurationError, match=match):
        EmbeddingClient(api_key=KEY, **kw)


def test_kind_and_output_are_checked(emulator_url: str) -> None:
    with client(emulator_url) as c:
        with pytest.raises(ValueError, match="kind"):
            c.embed(["x"], kind="passage")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="output"):
            c.embed(["x"], output="all")  # type: ignore[arg-type]


def test_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMPIRIOLABS_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="EMPIRIOLABS_API_KEY"):
        EmbeddingClient(base_url="http://127.0.0.1:9/v1")


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMPIRIOLABS_API_KEY", KEY)
    monkeypatch.setenv("EMPIRIOLABS_BASE_URL", "http://127.0.0.1:1/v1")
    monkeypatch.delenv("EMPIRIOLABS_RPM", raising=False)
    monkeypatch.delenv("EMPIRIOLABS_TPM", raising=False)
    default = EmbeddingClient()
    assert default.base_url == "http://127.0.0.1:1/v1"
    assert (default.rpm, default.tpm) == (50, 2_000_000)
    monkeypatch.setenv("EMPIRIOLABS_RPM", "500")
    monkeypatch.setenv("EMPIRIOLABS_TPM", "none")
    assert (EmbeddingClient().rpm, EmbeddingClient().tpm) == (500.0, None)
    assert EmbeddingClient(rpm=7).rpm == 7  # an argument beats the environment
    monkeypatch.setenv("EMPIRIOLABS_RPM", "lots")
    with pytest.raises(ConfigurationError, match="EMPIRIOLABS_RPM"):
        EmbeddingClient()
    monkeypatch.delenv("EMPIRIOLABS_RPM")
    monkeypatch.setenv("EMPIRIOLABS_API_BASE", "http://127.0.0.1:2/v1/")
    c = EmbeddingClient()
    assert c.base_url == "http://127.0.0.1:2/v1"
    assert c.api_key.get_secret_value() == KEY


# ---------------------------------------------------------------- service errors


def test_auth_error_is_raised_without_retries(make_emulator: Any) -> None:
    url = make_emulator(api_key="the-right-key")
    with client(url) as c, pytest.raises(AuthenticationError) as info:
        c.embed(["x"])
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    assert info.value.request_id
    assert stats(url)["requests"] == 1


def test_unknown_model(emulator_url: str) -> None:
    with client(emulator_url, model="text-embedding-v9") as c, pytest.raises(NotFoundError):
        c.embed(["x"])


def test_a_fatal_error_names_the_inputs_of_its_request(make_emulator: Any) -> None:
    url = make_emulator()
    with client(url, model="nope") as c, pytest.raises(NotFoundError) as info:
        c.embed(TEXTS[:25])
    # The requests still in flight when the error came were waited for, not left running.
    assert not [t for t in threading.enumerate() if t.name.startswith("empirio_")]  # pool workers
    assert info.value.inputs
    assert set(info.value.inputs) <= set(range(25))
    assert "inputs=[" in str(info.value)


def test_retries_give_up_with_the_last_error(make_emulator: Any) -> None:
    url = make_emulator(fail_rate=1.0)
    with client(url, max_retries=2) as c, pytest.raises(InternalServerError) as info:
        c.embed(["x"])
    assert info.value.status_code in (500, 502, 503)
    assert stats(url)["requests"] == 3
    assert c.usage.retries == 2
    assert c.usage.failed_requests == 3


def test_connection_refused_is_an_api_connection_error() -> None:
    with client("http://127.0.0.1:9/v1", max_retries=1) as c, pytest.raises(APIConnectionError):
        c.embed(["x"])


def test_batch_limit_discovery_splits_and_remembers(
    make_emulator: Any, reference: np.ndarray
) -> None:
    url = make_emulator(max_batch=4)
    with client(url, batch_size=10) as c:
        r = c.embed(TEXTS)
        assert c.effective_batch_size == 4
        np.testing.assert_array_equal(r.dense, reference)
        first = stats(url)["by_status"]
        c.embed(TEXTS[:40])
    after = stats(url)["by_status"]
    assert after.get("400", 0) == first.get("400", 0)  # the limit was remembered
    assert stats(url)["max_inputs_per_request"] == 4
    assert c.usage.retries == 0


# ---------------------------------------------------------------- faults: nothing lost


def _check_delivered_once(url: str, texts: list[str]) -> None:
    delivered = stats(url)["delivered"]
    for t in set(texts):
        assert delivered.get(text_key(t)) == 1, "a finished batch was sent again"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_faults_lose_and_reorder_nothing(
    make_emulator: Any, reference: np.ndarray, mode: str
) -> None:
    url = make_emulator(fail_rate=0.3, drop_rate=0.1, seed=11)
    with client(url, max_retries=30, max_concurrency=6) as c:
        if mode == "sync":
            r = c.embed(TEXTS)
        else:

            async def go() -> Any:
                try:
                    return await c.aembed(TEXTS)
                finally:
                    await c.aclose()

            r = asyncio.run(go())
    np.testing.assert_array_equal(r.dense, reference)
    assert c.usage.retries > 0
    assert c.usage.requests == -(-len(TEXTS) // 10)
    _check_delivered_once(url, TEXTS)


@pytest.mark.parametrize("retry_after", [True, False])
def test_429_storms_lose_nothing(
    make_emulator: Any, reference: np.ndarray, retry_after: bool
) -> None:
    # A 1 s window makes a 60 s storm pass in a second; rpm 4 against 14 requests.
    url = make_emulator(rpm=4, window_s=1.0, retry_after=retry_after, strict_burst=False)
    with client(url, max_retries=50, max_concurrency=8) as c:
        r = c.embed(TEXTS)
    np.testing.assert_array_equal(r.dense, reference)
    assert c.usage.rate_limited > 0
    assert r.usage.rate_limited == c.usage.rate_limited
    _check_delivered_once(url, TEXTS)


def test_client_pacing_avoids_429s(make_emulator: Any) -> None:
    # The emulator refuses more than 10 requests in any second; the client paces to the same.
    url = make_emulator(rpm=600, tpm=200_000)
    with client(url, rpm=600, tpm=200_000, batch_size=5) as c:
        c.embed(TEXTS[:100])
    assert c.usage.requests == 20
    assert c.usage.rate_limited == 0


# ---------------------------------------------------------------- streaming


def test_iter_embed_streams_a_generator_in_order(make_emulator: Any, reference: np.ndarray) -> None:
    url = make_emulator()

    def gen() -> Iterator[str]:
        yield from TEXTS

    with client(url) as c:
        parts = list(c.iter_embed(gen(), segment_size=30))
    assert [p.offset for p in parts] == [0, 30, 60, 90, 120]
    np.testing.assert_array_equal(np.vstack([p.dense for p in parts]), reference)


async def test_aiter_embed_streams_in_order(emulator_url: str, reference: np.ndarray) -> None:
    async with client(emulator_url) as c:
        parts = [p async for p in c.aiter_embed(TEXTS, segment_size=50)]
    assert [p.offset for p in parts] == [0, 50, 100]
    np.testing.assert_array_equal(np.vstack([p.dense for p in parts]), reference)


def test_iter_embed_reports_a_bad_text_in_a_list_before_sending(make_emulator: Any) -> None:
    url = make_emulator()
    with client(url) as c, pytest.raises(InvalidInputError, match=r"\[120\]"):
        list(c.iter_embed([*TEXTS[:120], " "], segment_size=10))
    assert stats(url)["requests"] == 0


def test_stopping_early_leaves_the_client_usable(emulator_url: str) -> None:
    with client(emulator_url, max_concurrency=4) as c:
        for part in c.iter_embed(TEXTS, segment_size=20):
            assert part.offset == 0
            break
        assert c.embed(["again"]).dense is not None


def test_progress_bar_counts_inputs(emulator_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with client(emulator_url, show_progress=True) as c:
        c.embed(TEXTS)
    err = capsys.readouterr().err
    assert f"{len(TEXTS)}/{len(TEXTS)}" in err


# ---------------------------------------------------------------- the key stays secret


def test_the_key_never_shows(make_emulator: Any, caplog: pytest.LogCaptureFixture) -> None:
    url = make_emulator(fail_rate=0.5, seed=1, api_key=KEY)
    caplog.set_level(logging.DEBUG)
    with client(url, max_retries=20) as c:
        shown = [repr(c), str(c), repr(c.api_key)]
        c.embed(TEXTS[:50])
    assert c.usage.retries > 0  # the failing attempts were logged
    strict = make_emulator(api_key=KEY)  # no faults: the 401 must come from the key check
    with (
        client(strict, api_key="sk-wrong-key-0123456789", max_retries=0) as bad,
        pytest.raises(AuthenticationError) as info,
    ):
        bad.embed(["x"])
    shown += [str(info.value), repr(info.value), caplog.text]
    for text in shown:
        assert KEY not in text
        assert "sk-wrong-key" not in text


def test_no_key_over_plain_http_to_other_hosts() -> None:
    with pytest.raises(ConfigurationError, match="clear text") as info:
        EmbeddingClient(api_key=KEY, base_url="http://api.example.com/v1")
    assert KEY not in str(info.value)
    # Construction does no I/O, so these make no connection.
    EmbeddingClient(api_key=KEY, base_url="http://api.example.com/v1", allow_insecure=True)
    EmbeddingClient(api_key=KEY, base_url="http://localhost:8000/v1")
    EmbeddingClient(api_key=KEY, base_url="http://[::1]:8000/v1")
    EmbeddingClient(api_key=KEY, base_url="https://api.example.com/v1")


def test_a_user_http_client_is_used_and_left_open(emulator_url: str) -> None:
    seen = []
    with httpx.Client(event_hooks={"request": [seen.append]}) as http:
        c = client(emulator_url, http_client=http)
        c.embed(["x"])
        c.close()
        assert not http.is_closed
    assert len(seen) == 1


def test_pickles_and_deep_copies_are_working_clients_without_the_key_in_their_bytes(
    emulator_url: str,
) -> None:
    import copy

    with client(emulator_url, dimensions=256) as c:
        expected = c.embed(TEXTS[:5]).dense
        blob = pickle.dumps(c)
        assert c.api_key.get_secret_value().encode() not in blob
        for other in (pickle.loads(blob), copy.deepcopy(c)):
            assert other.dimensions == 256
            assert other.usage.requests == 0  # a new client: its own usage and connections
            np.testing.assert_array_equal(other.embed(TEXTS[:5]).dense, expected)
            other.close()


async def test_many_concurrent_calls_share_the_concurrency_limit(make_emulator: Any) -> None:
    url = make_emulator(latency_ms=30)
    async with client(url, max_concurrency=3) as c:
        parts = await asyncio.gather(*(c.aembed(TEXTS[i : i + 10]) for i in range(0, 130, 10)))
    assert [len(p) for p in parts] == [10] * 13
    assert 1 < stats(url)["max_in_flight"] <= 3


def test_threads_share_the_concurrency_limit(make_emulator: Any) -> None:
    import concurrent.futures

    url = make_emulator(latency_ms=30)
    with client(url, max_concurrency=2) as c, concurrent.futures.ThreadPoolExecutor(6) as pool:
        parts = list(pool.map(lambda i: c.embed(TEXTS[i : i + 20]), range(0, 120, 20)))
    assert [len(p) for p in parts] == [20] * 6
    assert stats(url)["max_in_flight"] <= 2


def test_dense_rows_are_python_floats_and_refused_for_sparse_only(emulator_url: str) -> None:
    with client(emulator_url, dimensions=64) as c:
        rows = c.embed(["a", "b"]).dense_rows()
        assert len(rows) == 2
        assert all(type(x) is float for x in rows[1])
        with pytest.raises(ValueError, match="no dense vectors"):
            c.embed(["a"], output="sparse").dense_rows()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rpm": 0.5}, "at least 1 per minute"),
        ({"tpm": float("inf")}, "finite number"),
        ({"timeout": float("inf")}, "finite positive"),
        ({"rpm": "50"}, "must be a number"),
        ({"timeout": "5"}, "finite positive"),
        ({"api_key": "sk-key-with-newline-0123456789\n"}, "whitespace"),
        ({"api_key": "sk-key-caf\u00e9-0123456789"}, "non-ASCII"),
    ],
)
def test_bad_settings_and_keys_are_configuration_errors_without_the_key(
    settings: dict[str, Any], message: str
) -> None:
    from empirio import ConfigurationError

    kw: dict[str, Any] = {"api_key": "sk-a-fine-key-0123456789", **settings}
    with pytest.raises(ConfigurationError, match=message) as info:
        EmbeddingClient(**kw)
    assert str(kw["api_key"]).strip() not in str(info.value)


def test_a_host_that_does_not_resolve_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from empirio import APIConnectionError

    def no_such_host(*args: object, **kwargs: object) -> object:
        # The resolver's answer for an unknown name, without asking one (tests stay offline).
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    c = EmbeddingClient(
        api_key="sk-a-fine-key-0123456789", base_url="https://no-such-host.invalid/v1", rpm=None
    )
    with pytest.raises(APIConnectionError, match="cannot resolve"):
        c.embed(["x"])
    assert c.usage.retries == 0


def test_unset_limits_adopt_what_a_local_server_advertises(
    make_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EMPIRIOLABS_RPM", raising=False)
    monkeypatch.delenv("EMPIRIOLABS_TPM", raising=False)
    free = make_emulator()
    with EmbeddingClient(api_key="k", base_url=free) as c:
        assert (c.rpm, c.tpm) == (50, 2_000_000)  # the real account's, until told otherwise
        c.embed(TEXTS[:200])  # 20 requests: four minutes at 50 a minute
        assert (c.rpm, c.tpm) == (None, None)
    limited = make_emulator(rpm=600, tpm=900_000)
    with EmbeddingClient(api_key="k", base_url=limited) as c:
        c.embed(TEXTS[:10])
        assert (c.rpm, c.tpm) == (600, 900_000)
    with EmbeddingClient(api_key="k", base_url=free, rpm=50) as c:  # chosen: kept
        c.embed(TEXTS[:10])
        assert c.rpm == 50
    monkeypatch.setenv("EMPIRIOLABS_RPM", "100")
    with EmbeddingClient(api_key="k", base_url=free) as c:  # from the environment: kept
        c.embed(TEXTS[:10])
        assert (c.rpm, c.tpm) == (100, None)


def test_limits_say_where_they_came_from(
    make_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_empirio import EmpirioEmbeddings

    monkeypatch.delenv("EMPIRIOLABS_RPM", raising=False)
    monkeypatch.delenv("EMPIRIOLABS_TPM", raising=False)
    limited = make_emulator(rpm=600, tpm=900_000)
    with EmbeddingClient(api_key="k", base_url=limited) as c:
        assert (c.limits.rpm, c.limits.rpm_source) == (50, "default")
        assert "until the server advertises its own" in str(c.limits)
        c.embed(TEXTS[:10])
        assert c.limits.rpm == 600
        assert (c.limits.rpm_source, c.limits.tpm_source) == ("server", "server")
        assert (
            str(c.limits) == "600 requests and 900,000 tokens a minute (as the server advertises)"
        )
    with EmbeddingClient(api_key="k", base_url=limited, rpm=100) as c:
        c.embed(TEXTS[:10])
        assert (c.limits.rpm, c.limits.rpm_source, c.limits.tpm_source) == (100, "set", "server")
    lc = EmpirioEmbeddings(api_key="k", base_url=limited)
    lc.embed_documents(TEXTS[:3])
    assert lc.rpm == 50  # the field: what was set, or the default
    assert (lc.limits.rpm, lc.limits.rpm_source) == (600, "server")  # what paces, and why
    lc.empirio_client.close()


def test_zero_and_none_mean_unpaced_as_argument_variable_and_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from empirio.cli import _rate
    from empirio.emulator import EmulatorConfig

    url = "http://127.0.0.1:9/v1"
    for value in (0, 0.0, None):
        c = EmbeddingClient(api_key=KEY, base_url=url, rpm=value, tpm=value)
        assert (c.rpm, c.tpm, c.limits.rpm_source) == (None, None, "set")
    for raw in ("0", "none", "off", "unlimited"):
        monkeypatch.setenv("EMPIRIOLABS_RPM", raw)
        assert EmbeddingClient(api_key=KEY, base_url=url).rpm is None
    assert _rate(0.0, "--rpm") is None
    assert EmulatorConfig(rpm=0, tpm=0).rpm is None
    for bad in (0.5, -1):
        with pytest.raises(ConfigurationError, match="None or 0 for no limit"):
            EmbeddingClient(api_key=KEY, base_url=url, rpm=bad)
    monkeypatch.setenv("EMPIRIOLABS_RPM", "0.5")
    with pytest.raises(ConfigurationError, match="EMPIRIOLABS_RPM must be a finite number"):
        EmbeddingClient(api_key=KEY, base_url=url)


@pytest.mark.parametrize("use_async", [False, True])
async def test_shared_views_report_progress_for_every_text(
    emulator_url: str, use_async: bool
) -> None:
    texts = [f"shared view progress {i}" for i in range(25)]
    seen: list[int] = []
    async with client(emulator_url, share_views=True) as c:
        for output in ("dense", "sparse"):  # fetched, then served from the parked view
            if use_async:
                await c.aembed(texts + texts[:5], output=output, on_progress=seen.append)
            else:
                c.embed(texts + texts[:5], output=output, on_progress=seen.append)
            assert sum(seen) == 30, (output, seen)
            seen.clear()


def test_truncation_warnings_point_at_the_callers_line(emulator_url: str) -> None:
    from empirio import TruncationWarning

    long = "word " * 9000
    with client(emulator_url) as c:
        with pytest.warns(TruncationWarning) as caught:
            c.embed(["short", long])
        assert caught[0].filename == __file__
        with pytest.warns(TruncationWarning) as caught:
            list(c.iter_embed(["short", long], segment_size=1))
        assert caught[0].filename == __file__


MANY = [f"pipelined text {i} on subject {i % 17}" for i in range(2500)]


@pytest.mark.parametrize("use_async", [False, True])
async def test_large_calls_are_planned_in_segments_and_come_back_whole_and_in_order(
    make_emulator: Any, use_async: bool
) -> None:
    url = make_emulator()
    with client(url) as c:
        reference = np.concatenate(
            [c.embed(MANY[i : i + 500]).dense for i in range(0, 2500, 500)]  # type: ignore[misc]
        )
        got = await c.aembed(MANY) if use_async else c.embed(MANY)
        if use_async:
            await c.aclose()
    np.testing.assert_array_equal(got.dense, reference)
    assert got.usage.requests == 250


@pytest.mark.parametrize("use_async", [False, True])
async def test_a_402_in_a_later_segment_keeps_every_earlier_text(
    make_emulator: Any, use_async: bool
) -> None:
    tokens = get_tokenizer()
    first = sum(tokens.count(t) + 1 for t in MANY[:1500])
    plain = make_emulator()
    with client(plain) as c:
        reference = c.embed(MANY[:500]).dense
    url = make_emulator(credit_tokens=first)

    async def embed(c: EmbeddingClient) -> object:
        return await c.aembed(MANY) if use_async else c.embed(MANY)

    with client(url, max_concurrency=1) as c, pytest.raises(InsufficientCreditsError) as info:
        await embed(c)
    err = info.value
    assert err.partial_indices == tuple(range(1500))
    assert err.partial is not None
    np.testing.assert_array_equal(err.partial.dense[:500], reference)  # type: ignore[index]


async def test_embed_as_lists_is_embed_then_dense_rows(make_emulator: Any) -> None:
    url = make_emulator()
    with client(url) as c:
        expected = c.embed(MANY).dense_rows()
        assert c.embed_as_lists(MANY) == expected
        assert await c.aembed_as_lists(MANY) == expected
        assert c.embed_as_lists(MANY[:5]) == expected[:5]  # small calls: one plan, same result
        await c.aclose()
