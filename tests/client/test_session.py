"""A client's session without a network: answers checked before they are trusted, limits a
server advertises, an endpoint without sparse output, shared views."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest

from empirio import (
    APIResponseValidationError,
    AuthenticationError,
    UnsupportedFeatureError,
)
from empirio._core.driver import Call
from empirio._core.result import EmbeddingResult, Usage
from empirio._core.settings import SETTINGS, ClientConfig
from empirio._io.session import Session

KEY = "sk-session-test-key-0123"
DENSE, SPARSE = Call("document", "dense"), Call("document", "sparse")


def session(**kw: Any) -> Session:
    args = {
        s.name: s.default
        for s in SETTINGS
        if s.name not in {"cache", "http_client", "async_http_client"}
    }
    args.update(api_key=KEY, base_url="http://127.0.0.1:9/v1", dimensions=64, share_budget="client")
    return Session(ClientConfig.build(**{**args, **kw}, environ={}), None)


def body(n: int, dims: int = 64, sparse: bool = False) -> bytes:
    data = []
    for i in range(n):
        item: dict[str, Any] = {"object": "embedding", "index": i, "embedding": [0.125] * dims}
        if sparse:
            item["sparse_embedding"] = [{"index": 5, "value": 0.5}]
        data.append(item)
    usage = {"prompt_tokens": 3 * n, "total_tokens": 3 * n}
    return json.dumps({"object": "list", "data": data, "model": "m", "usage": usage}).encode()


def test_a_good_answer_is_decoded_and_a_short_one_refused() -> None:
    s = session()
    good = s.read(200, body(2), httpx.Headers(), 2, DENSE)
    assert not isinstance(good, Exception)
    assert good.dense is not None
    assert good.dense.shape == (2, 64)
    assert good.tokens == 6
    short = s.read(200, body(1), httpx.Headers(), 2, DENSE)
    assert isinstance(short, APIResponseValidationError)
    wrong = s.read(200, body(2, dims=32), httpx.Headers(), 2, DENSE)
    assert isinstance(wrong, APIResponseValidationError)


def test_an_error_that_echoes_the_key_never_shows_it() -> None:
    s = session()
    echoed = json.dumps({"error": {"message": f"bad key {KEY}", "code": "invalid_api_key"}})
    error = s.read(401, echoed.encode(), httpx.Headers(), 1, DENSE)
    assert isinstance(error, AuthenticationError)
    assert error.status_code == 401
    assert KEY not in str(error)
    assert KEY not in repr(error.__dict__)


def test_an_endpoint_without_sparse_output_turns_sparse_calls_away_from_then_on() -> None:
    s = session(share_views=True)
    assert s.views is not None
    missing = s.read(200, body(1), httpx.Headers(), 1, SPARSE)
    assert isinstance(missing, UnsupportedFeatureError)
    assert s.no_sparse
    assert s.views is None
    with pytest.raises(UnsupportedFeatureError, match="sparse"):
        s.check_call("document", "sparse")
    assert s.check_call("document", "dense") == DENSE
    s.enable_shared_views()
    assert s.views is None


def test_limits_nobody_set_follow_the_server_and_set_ones_do_not() -> None:
    s = session()
    headers = httpx.Headers(
        {"x-ratelimit-limit-requests": "1200", "x-ratelimit-limit-tokens": "unlimited"}
    )
    s.read(200, body(1), headers, 1, DENSE)
    assert (s.rpm, s.tpm) == (50, 2_000_000)  # looser: not from one answer
    for _ in range(11):  # ... but from many, a step at a time
        s.read(200, body(1), headers, 1, DENSE)
    limits = s.limits_in_effect()
    assert (limits.rpm, limits.tpm) == (1200, None)
    assert (limits.rpm_source, limits.tpm_source) == ("server", "server")
    fixed = session(rpm=60)
    for _ in range(3):
        fixed.read(200, body(1), headers, 1, DENSE)
    assert fixed.limits_in_effect().rpm == 60
    assert fixed.limits_in_effect().rpm_source == "set"


def test_shared_views_park_the_other_view_until_it_is_asked_for() -> None:
    s = session(share_views=True)
    assert s.take_parked(["a"], DENSE) == ([None], ["a"])
    fetched = EmbeddingResult(np.ones((1, 64), np.float32), [{5: 0.5}], Usage(requests=1))
    s.park_other(DENSE, ["a"], fetched)
    parked, missing = s.take_parked(["a", "b"], SPARSE) or ([], [])
    assert parked == [{5: 0.5}, None]
    assert missing == ["b"]
    assert s.take_parked(["a"], Call("document", "both")) is None
