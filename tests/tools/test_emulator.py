"""The emulator over real loopback sockets: every row of the contract's error table, the usage
rule, both encodings, sparse output, determinism, relatedness and Matryoshka prefixes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from typing import Any

import httpx
import numpy as np
import pytest

from empirio._core.config import ALLOWED_DIMENSIONS, DEFAULT_QUERY_INSTRUCTION, format_query
from empirio._core.tokens import get_tokenizer
from empirio._core.wire import decode_base64
from empirio.emulator import text_key

from ..conftest import stats

MODEL = "text-embedding-v4"
AUTH = {"Authorization": "Bearer test-key"}


def post(url: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{url}/embeddings", json=body, headers=AUTH if headers is None else headers, timeout=30
    )


def dense(url: str, texts: list[str], dims: int = 1024, **extra: Any) -> np.ndarray:
    r = post(url, {"model": MODEL, "input": texts, "dimensions": dims, **extra})
    assert r.status_code == 200, r.text
    data = sorted(r.json()["data"], key=lambda d: d["index"])
    return np.array([d["embedding"] for d in data], dtype=np.float32)


def assert_error(r: httpx.Response, status: int, code: str, message_part: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code
    assert message_part in body["error"]["message"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["request_id"] == r.headers["x-request-id"]


# ---------------------------------------------------------------- success shape and usage


def test_success_shape_and_usage_rule(emulator_url: str) -> None:
    texts = ["衣服的质量杠杠的", "我想知道迪士尼的退票政策", "Hello world"]
    r = post(emulator_url, {"model": MODEL, "input": texts})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert body["model"] == MODEL
    assert body["id"]
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 1024 for d in body["data"])
    # 6 and 8 were seen from the live service; "Hello world" is 2 tokens + 1.
    assert body["usage"] == {"prompt_tokens": 6 + 8 + 3, "total_tokens": 17}


def test_a_single_string_input(emulator_url: str) -> None:
    r = post(emulator_url, {"model": MODEL, "input": "衣服的质量杠杠的"})
    assert r.status_code == 200
    assert len(r.json()["data"]) == 1
    assert r.json()["usage"]["prompt_tokens"] == 6


def test_vectors_are_unit_length(emulator_url: str) -> None:
    for dims in ALLOWED_DIMENSIONS:
        v = dense(emulator_url, ["some text", "другой текст"], dims)
        assert v.shape == (2, dims)
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)


def test_base64_equals_float(emulator_url: str) -> None:
    texts = ["alpha beta", "gamma delta"]
    f = dense(emulator_url, texts, 512)
    r = post(
        emulator_url,
        {"model": MODEL, "input": texts, "dimensions": 512, "encoding_format": "base64"},
    )
    b = np.array([decode_base64(d["embedding"], 512) for d in r.json()["data"]])
    np.testing.assert_array_equal(b, f)  # float32 printed shortest-round-trip: exact


def test_same_text_same_vector_across_requests_and_batches(emulator_url: str) -> None:
    a = dense(emulator_url, ["stable text"])[0]
    b = dense(emulator_url, ["other", "stable text", "more"])[1]
    np.testing.assert_array_equal(a, b)


def test_vector_seed_changes_vectors_and_fault_seed_does_not(make_emulator: Any) -> None:
    one = dense(make_emulator(vector_seed=1), ["same text"])[0]
    two = dense(make_emulator(vector_seed=2), ["same text"])[0]
    again = dense(make_emulator(vector_seed=1, seed=99), ["same text"])[0]
    np.testing.assert_array_equal(one, again)
    assert float(one @ two) < 0.5


@pytest.mark.parametrize(
    ("anchor", "related", "unrelated"),
    [
        (
            "The cat sat on the mat.",
            "A cat is sitting on a mat.",
            "Interest rates rose sharply in the bond market.",
        ),
        ("我想知道迪士尼的退票政策", "迪士尼乐园的退票政策是什么", "今天的天气非常好，适合去爬山"),
        (
            "Le chat dort sur le canapé.",
            "Un chat dort sur le canapé du salon.",
            "La banque centrale a relevé ses taux.",
        ),
        (
            "Wie setze ich mein Passwort zurück?",
            "Passwort zurücksetzen: so geht es",
            "Die besten Pizzerien in Neapel",
        ),
    ],
)
def test_related_texts_are_closer_than_unrelated(
    emulator_url: str, anchor: str, related: str, unrelated: str
) -> None:
    for dims in (2048, 1024, 256):
        v = dense(emulator_url, [anchor, related, unrelated], dims)
        assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_lower_dimensions_are_renormalised_prefixes(emulator_url: str) -> None:
    full = dense(emulator_url, ["matryoshka nesting dolls"], 2048)[0]
    for dims in ALLOWED_DIMENSIONS:
        v = dense(emulator_url, ["matryoshka nesting dolls"], dims)[0]
        prefix = full[:dims] / np.linalg.norm(full[:dims])
        np.testing.assert_allclose(v, prefix, atol=2e-6)


def test_default_dimensions_is_1024(emulator_url: str) -> None:
    r = post(emulator_url, {"model": MODEL, "input": "x y z"})
    assert len(r.json()["data"][0]["embedding"]) == 1024


def test_query_text_type_with_instruct_equals_the_client_side_prompt(emulator_url: str) -> None:
    task = "Given a question, retrieve passages that answer it"
    api = dense(emulator_url, ["how do cats purr"], text_type="query", instruct=task)[0]
    prompt = dense(emulator_url, [format_query("how do cats purr", task)])[0]
    np.testing.assert_array_equal(api, prompt)
    default = dense(emulator_url, ["how do cats purr"], text_type="query")[0]
    np.testing.assert_array_equal(
        default,
        dense(emulator_url, [format_query("how do cats purr", DEFAULT_QUERY_INSTRUCTION)])[0],
    )
    plain = dense(emulator_url, ["how do cats purr"])[0]
    assert 0.5 < float(api @ plain) < 0.9999  # the task moves the vector, a little


def test_instruct_is_ignored_for_documents(emulator_url: str) -> None:
    a = dense(emulator_url, ["a document"], instruct="Some task")[0]
    b = dense(emulator_url, ["a document"])[0]
    np.testing.assert_array_equal(a, b)


def test_query_usage_counts_the_prompt(emulator_url: str) -> None:
    r = post(emulator_url, {"model": MODEL, "input": ["q"], "text_type": "query"})
    expected = get_tokenizer().billed(format_query("q", DEFAULT_QUERY_INSTRUCTION))
    assert r.json()["usage"]["prompt_tokens"] == expected


# ---------------------------------------------------------------- sparse output


def test_sparse_output_is_keyed_by_qwen_token_ids(emulator_url: str) -> None:
    r = post(
        emulator_url,
        {"model": MODEL, "input": ["the wind, the wind blows"], "output_type": "dense&sparse"},
    )
    item = r.json()["data"][0]
    assert len(item["embedding"]) == 1024
    sparse = item["sparse_embedding"]
    indices = [s["index"] for s in sparse]
    assert len(indices) == len(set(indices))
    assert all(s["value"] > 0 for s in sparse)
    tok = get_tokenizer()
    by_token = {s["token"]: s for s in sparse}
    assert by_token["wind"]["index"] == tok.encode(" wind")[0]
    assert by_token["wind"]["value"] > by_token["blows"]["value"] * 0.5  # counted twice
    assert "," not in by_token  # punctuation carries no weight


def test_sparse_only_omits_dense(emulator_url: str) -> None:
    r = post(emulator_url, {"model": MODEL, "input": ["sparse please"], "output_type": "sparse"})
    item = r.json()["data"][0]
    assert "embedding" not in item
    assert item["sparse_embedding"]


def test_dense_output_has_no_sparse(emulator_url: str) -> None:
    r = post(emulator_url, {"model": MODEL, "input": ["dense only"], "output_type": "dense"})
    assert "sparse_embedding" not in r.json()["data"][0]


# ---------------------------------------------------------------- the error table


def test_401_missing_key(emulator_url: str) -> None:
    assert_error(
        post(emulator_url, {"model": MODEL, "input": "x"}, headers={}),
        401,
        "missing_api_key",
        "API key",
    )
    assert_error(
        post(emulator_url, {"model": MODEL, "input": "x"}, headers={"Authorization": "Basic abc"}),
        401,
        "missing_api_key",
        "API key",
    )


def test_401_wrong_key_does_not_echo_it(make_emulator: Any) -> None:
    url = make_emulator(api_key="right-key")
    r = post(url, {"model": MODEL, "input": "x"}, headers={"Authorization": "Bearer wrong-key"})
    assert_error(r, 401, "invalid_api_key", "Incorrect API key provided.")
    assert "wrong-key" not in r.text
    ok = post(url, {"model": MODEL, "input": "x"}, headers={"Authorization": "Bearer right-key"})
    assert ok.status_code == 200


def test_402_when_credits_run_out(make_emulator: Any) -> None:
    url = make_emulator(credit_tokens=10)
    assert post(url, {"model": MODEL, "input": "衣服的质量杠杠的"}).status_code == 200  # 6
    assert_error(
        post(url, {"model": MODEL, "input": "衣服的质量杠杠的"}),
        402,
        "insufficient_credits",
        "credits",
    )


def test_400_more_than_max_batch(emulator_url: str, make_emulator: Any) -> None:
    assert post(emulator_url, {"model": MODEL, "input": ["a"] * 10}).status_code == 200
    assert_error(
        post(emulator_url, {"model": MODEL, "input": ["a"] * 11}),
        400,
        "InvalidParameter",
        "<400> InternalError.Algo.InvalidParameter: Value error, batch size is invalid, "
        "it should not be larger than 10.: input.contents",
    )
    url = make_emulator(max_batch=4)
    assert_error(
        post(url, {"model": MODEL, "input": ["a"] * 5}),
        400,
        "InvalidParameter",
        "should not be larger than 4.",
    )


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_400_empty_or_whitespace_input_fails_the_whole_request(emulator_url: str, bad: str) -> None:
    assert_error(
        post(emulator_url, {"model": MODEL, "input": ["fine", bad]}),
        400,
        "InvalidParameter",
        "Range of input length should be [1, 8192]",
    )


def test_400_empty_input_list(emulator_url: str) -> None:
    assert_error(
        post(emulator_url, {"model": MODEL, "input": []}),
        400,
        "InvalidParameter",
        "Range of input length",
    )


def test_400_over_length_input_and_the_exact_boundary(emulator_url: str) -> None:
    tok = get_tokenizer()
    fits = " a" * 8191  # 8191 tokens + the end token = 8192
    assert tok.count(fits) == 8191
    ok = post(emulator_url, {"model": MODEL, "input": fits})
    assert ok.status_code == 200
    assert ok.json()["usage"]["prompt_tokens"] == 8192
    assert_error(
        post(emulator_url, {"model": MODEL, "input": fits + " a"}),
        400,
        "InvalidParameter",
        "Range of input length should be [1, 8192]",
    )


def test_400_bad_dimensions_lists_the_allowed(emulator_url: str) -> None:
    assert_error(
        post(emulator_url, {"model": MODEL, "input": "x", "dimensions": 100}),
        400,
        "InvalidParameter",
        "dimension 100 is invalid, its value should be in [64, 128, 256, 512, 768, 1024, "
        "1536, 2048]",
    )


def test_400_malformed_json(emulator_url: str) -> None:
    r = httpx.post(f"{emulator_url}/embeddings", content=b"{not json", headers=AUTH)
    assert_error(r, 400, "invalid_json", "parse the JSON")
    r = httpx.post(f"{emulator_url}/embeddings", content=b"[1, 2]", headers=AUTH)
    assert_error(r, 400, "invalid_json", "JSON object")


@pytest.mark.parametrize(
    "body",
    [
        {"model": MODEL, "input": 42},
        {"model": MODEL, "input": [1, 2, 3]},
        {"model": MODEL, "input": ["ok", None]},
        {"model": MODEL, "input": "x", "dimensions": "1024"},
        {"model": MODEL, "input": "x", "encoding_format": "binary"},
        {"model": MODEL, "input": "x", "output_type": "dense+sparse"},
        {"model": MODEL, "input": "x", "text_type": "passage"},
        {"input": "x"},
    ],
)
def test_400_wrong_types(emulator_url: str, body: dict[str, Any]) -> None:
    assert_error(post(emulator_url, body), 400, "InvalidParameter", "Value error")


def test_404_unknown_model(emulator_url: str) -> None:
    assert_error(
        post(emulator_url, {"model": "text-embedding-v9", "input": "x"}),
        404,
        "model_not_found",
        "text-embedding-v9",
    )


def test_404_unknown_path(emulator_url: str) -> None:
    r = httpx.get(f"{emulator_url}/nothing-here")
    assert_error(r, 404, "not_found", "Unknown endpoint")


def test_413_oversized_body(make_emulator: Any) -> None:
    url = make_emulator(max_body_bytes=1000)
    assert_error(
        post(url, {"model": MODEL, "input": "x" * 2000}), 413, "request_too_large", "too large"
    )


def test_models_lists_the_model(emulator_url: str) -> None:
    r = httpx.get(f"{emulator_url}/models")
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == [MODEL]


# ---------------------------------------------------------------- rate limits


@pytest.mark.parametrize("retry_after", [True, False])
def test_429_over_rpm_with_and_without_retry_after(make_emulator: Any, retry_after: bool) -> None:
    url = make_emulator(rpm=2, retry_after=retry_after, strict_burst=False)
    assert [post(url, {"model": MODEL, "input": "x"}).status_code for _ in range(2)] == [200, 200]
    r = post(url, {"model": MODEL, "input": "x"})
    assert_error(r, 429, "rate_limit_exceeded", "requests per minute")
    if retry_after:
        assert 1 <= int(r.headers["retry-after"]) <= 60
    else:
        assert "retry-after" not in r.headers


def test_429_over_tpm(make_emulator: Any) -> None:
    url = make_emulator(tpm=20, strict_burst=False)
    assert post(url, {"model": MODEL, "input": "衣服的质量杠杠的"}).status_code == 200  # 6
    assert post(url, {"model": MODEL, "input": "衣服的质量杠杠的"}).status_code == 200  # 12
    r = post(url, {"model": MODEL, "input": "我想知道迪士尼的退票政策"})  # 12 + 8 = 20: fits
    assert r.status_code == 200
    assert_error(
        post(url, {"model": MODEL, "input": "x"}), 429, "rate_limit_exceeded", "tokens per minute"
    )


def test_limits_use_a_sliding_window(make_emulator: Any) -> None:
    url = make_emulator(rpm=1, window_s=0.3, strict_burst=False)
    assert post(url, {"model": MODEL, "input": "x"}).status_code == 200
    assert post(url, {"model": MODEL, "input": "x"}).status_code == 429
    time.sleep(0.35)
    assert post(url, {"model": MODEL, "input": "x"}).status_code == 200


def test_strict_burst_refuses_a_second_request_within_one_second(make_emulator: Any) -> None:
    url = make_emulator(rpm=60)  # the per-second rules are on by default
    assert post(url, {"model": MODEL, "input": "x"}).status_code == 200
    assert_error(
        post(url, {"model": MODEL, "input": "x"}), 429, "rate_limit_exceeded", "requests per second"
    )
    relaxed = make_emulator(rpm=60, strict_burst=False)
    assert [post(relaxed, {"model": MODEL, "input": "x"}).status_code for _ in range(5)] == [
        200
    ] * 5


def test_tokens_per_second_are_limited_too(make_emulator: Any) -> None:
    url = make_emulator(tpm=600)  # 10 tokens a second
    assert post(url, {"model": MODEL, "input": "衣服的质量杠杠的"}).status_code == 200  # 6
    assert_error(
        post(url, {"model": MODEL, "input": "衣服的质量杠杠的"}),
        429,
        "rate_limit_exceeded",
        "tokens per second",
    )


def test_a_storm_refuses_everything_for_its_length(make_emulator: Any) -> None:
    url = make_emulator(storm_s=0.5, retry_after=False)
    r = post(url, {"model": MODEL, "input": "x"})
    assert_error(r, 429, "rate_limit_exceeded", "too many requests")
    assert "retry-after" not in r.headers
    time.sleep(0.6)
    assert post(url, {"model": MODEL, "input": "x"}).status_code == 200


# ---------------------------------------------------------------- fault knobs


def test_fail_rate_one_gives_only_5xx_with_the_contracts_codes(make_emulator: Any) -> None:
    url = make_emulator(fail_rate=1.0)
    seen = set()
    for _ in range(30):
        r = post(url, {"model": MODEL, "input": "x"})
        assert r.status_code in (500, 502, 503)
        seen.add((r.status_code, r.json()["error"]["code"]))
    assert seen == {(500, "internal_error"), (502, "upstream_error"), (503, "model_unavailable")}


def test_fault_draws_are_seeded_and_roughly_at_the_rate(make_emulator: Any) -> None:
    def statuses(url: str) -> list[int]:
        return [post(url, {"model": MODEL, "input": "x"}).status_code for _ in range(60)]

    a = statuses(make_emulator(fail_rate=0.3, seed=7))
    b = statuses(make_emulator(fail_rate=0.3, seed=7))
    assert a == b
    assert 5 <= sum(s >= 500 for s in a) <= 35


def test_drop_rate_closes_connections_without_a_response(make_emulator: Any) -> None:
    url = make_emulator(drop_rate=1.0)
    # Closed before or while the request is read: the client sees a disconnect or a reset.
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        post(url, {"model": MODEL, "input": "x"})
    assert stats(url)["dropped"] == 1
    half = make_emulator(drop_rate=0.5, seed=3)
    outcomes = []
    for _ in range(30):
        try:
            outcomes.append(post(half, {"model": MODEL, "input": "x"}).status_code)
        except (httpx.RemoteProtocolError, httpx.ReadError):
            outcomes.append(0)
    assert 0 in outcomes
    assert 200 in outcomes


def test_latency_is_added(make_emulator: Any) -> None:
    url = make_emulator(latency_ms=150)
    start = time.perf_counter()
    assert post(url, {"model": MODEL, "input": "x"}).status_code == 200
    assert time.perf_counter() - start >= 0.15  # a lower bound: noise only adds time


def test_stats_count_what_was_delivered(make_emulator: Any) -> None:
    url = make_emulator()
    post(url, {"model": MODEL, "input": ["one", "two"]})
    post(url, {"model": MODEL, "input": ["one"]})
    post(url, {"model": MODEL, "input": ["", "x"]})
    s = stats(url)
    assert s["requests"] == 3
    assert s["by_status"] == {"200": 2, "400": 1}
    assert s["delivered"] == {text_key("one"): 2, text_key("two"): 1}
    httpx.post(url.removesuffix("/v1") + "/_emulator/reset")
    assert stats(url)["requests"] == 0


# ---------------------------------------------------------------- other clients


def test_the_openai_sdk_works_unchanged(emulator_url: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(api_key="test-key", base_url=emulator_url, max_retries=0)
    # The SDK asks for base64 and decodes it itself.
    resp = client.embeddings.create(model=MODEL, input=["hello", "world"], dimensions=256)
    assert [len(d.embedding) for d in resp.data] == [256, 256]
    assert resp.usage.prompt_tokens == get_tokenizer().billed("hello") + 2
    expected = dense(emulator_url, ["hello"], 256)[0]
    np.testing.assert_allclose(resp.data[0].embedding, expected, rtol=1e-6)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input=["a"] * 11)


def test_the_seed_curl_command_works(emulator_url: str) -> None:
    curl = shutil.which("curl")
    body = '{"model": "text-embedding-v4", "input": "The quick brown fox"}'
    if curl is None:
        pytest.skip("curl is not installed on this machine")
    out = subprocess.run(
        [
            curl,
            "-sS",
            f"{emulator_url}/embeddings",
            "-H",
            "Authorization: Bearer test-key",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ],
        capture_output=True,
        check=True,
        timeout=30,
    )
    data = json.loads(out.stdout)
    assert len(data["data"][0]["embedding"]) == 1024


def test_cli_serve_prints_its_url_and_serves() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "empirio", "serve", "--port", "0", "--max-batch", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            assert url.endswith("/v1")
            assert post(url, {"model": MODEL, "input": ["a", "b", "c"]}).status_code == 200
            assert post(url, {"model": MODEL, "input": ["a"] * 4}).status_code == 400
        finally:
            proc.terminate()
            assert proc.wait(timeout=15) == 0


def test_cli_serve_rejects_bad_rates() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "empirio", "serve", "--fail-rate", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "fail-rate must be within [0, 1]" in out.stderr


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"text-embedding-v4","input":["\\ud800"]}',
        b'{"model":"text-embedding-v4","input":["a"],"dimensions":' + b"9" * 5000 + b"}",
        b'{"model":"text-embedding-v4","input":' + b"[" * 100000 + b"]" * 100000 + b"}",
    ],
    ids=["lone surrogate", "5000 digits", "deep nesting"],
)
def test_every_bad_request_gets_a_json_error_and_costs_nothing(
    make_emulator: Any, body: bytes
) -> None:
    import httpx

    url = make_emulator(credit_tokens=1000)
    r = httpx.post(
        f"{url}/embeddings",
        content=body,
        headers={"Authorization": "Bearer k", "Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert stats(url)["tokens"] == 0
