"""The key stays secret: never in logs, reprs, errors or pickles; never sent in clear text to
another host; a user's http client is used and left open."""

from __future__ import annotations

import logging
import pickle
from typing import Any

import httpx
import numpy as np
import pytest

from empirio import (
    AuthenticationError,
    ConfigurationError,
    EmbeddingClient,
)

from .conftest import KEY, TEXTS, client

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
