"""What the service's errors and faults do to a call: no retries where none can help, the
last error when retries run out, batch limits learnt, and nothing lost or reordered in storms."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from empirio import (
    APIConnectionError,
    AuthenticationError,
    EmbeddingClient,
    InternalServerError,
    NotFoundError,
)
from empirio.emulator import text_key

from ..conftest import stats
from .conftest import TEXTS, client

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
