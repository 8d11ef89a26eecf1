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


CACHE_SECRET = "cache-secret-of-the-team-0123456789"


def test_the_cache_secret_never_shows_and_travels_sealed(emulator_url: str, tmp_path: Any) -> None:
    """repr, str, dumps, pickles and validation errors of the client and both adapters hold no
    cache secret; a pickled client or adapter still reads the cache it sealed."""
    from langchain_core.load import dumps

    from langchain_empirio import EmpirioEmbeddings
    from llamaindex_empirio import EmpirioEmbedding

    path = tmp_path / "c.sqlite3"
    options: dict[str, Any] = {
        "api_key": KEY,
        "base_url": emulator_url,
        "cache": str(path),
        "cache_secret": CACHE_SECRET,
        "rpm": None,
        "tpm": None,
    }
    c = EmbeddingClient(**options)
    expected = c.embed(TEXTS[:5]).dense
    lc = EmpirioEmbeddings(**options)
    li = EmpirioEmbedding(**options)
    shown = [repr(c), str(c), repr(lc), str(lc), repr(li), str(li)]
    shown += [lc.model_dump_json(), str(lc.model_dump()), dumps(lc), li.to_json()]
    shown += [str(li.model_dump())]
    for text in shown:
        assert CACHE_SECRET not in text
    for obj in (c, lc, li):
        blob = pickle.dumps(obj)
        assert CACHE_SECRET.encode() not in blob
        assert KEY.encode() not in blob
    again = pickle.loads(pickle.dumps(c))
    np.testing.assert_array_equal(again.embed(TEXTS[:5]).dense, expected)
    assert again.usage.requests == 0  # found: the copy has the secret
    lc_again = pickle.loads(pickle.dumps(lc))
    assert lc_again.embed_documents(TEXTS[:5])[0] == expected[0].tolist()
    assert lc_again.empirio_client.usage.requests == 0
    for bad in (EmpirioEmbeddings, EmpirioEmbedding):
        with pytest.raises(Exception) as caught:  # noqa: PT011 - each framework its own type
            bad(**{**options, "cache_secret": CACHE_SECRET[:8], "batch_size": 0})
        assert CACHE_SECRET[:8] not in str(caught.value)
