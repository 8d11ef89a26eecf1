"""Bad input and bad settings are refused before any money is spent, with an error that names
the input and the limit; settings and limits say where they came from."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from empirio import (
    ConfigurationError,
    EmbeddingClient,
    InsufficientCreditsError,
    InvalidInputError,
)
from empirio._core.tokens import get_tokenizer

from ..conftest import stats
from .conftest import KEY, TEXTS, client

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
        assert (c.rpm, c.tpm) == (50, 900_000)  # tighter at once; looser once repeated
        c.embed(TEXTS[10:70])  # 500 (ten times 50) after three answers, 600 after three more
        assert (c.rpm, c.tpm) == (600, 900_000)
    with EmbeddingClient(api_key="k", base_url=free, rpm=50) as c:  # chosen: kept
        c.embed(TEXTS[:10])
        assert c.rpm == 50
    monkeypatch.setenv("EMPIRIOLABS_RPM", "100")
    with EmbeddingClient(api_key="k", base_url=free) as c:  # from the environment: kept
        c.embed(TEXTS[:10])
        assert (c.rpm, c.tpm) == (100, 2_000_000)  # "unlimited" once is not believed...
        c.embed(TEXTS[10:200])
        assert (c.rpm, c.tpm) == (100, None)  # ... many answers in a row are, stepwise


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
        c.embed(TEXTS[:70])  # a looser limit is believed once three answers say it, stepwise
        assert c.limits.rpm == 600
        assert (c.limits.rpm_source, c.limits.tpm_source) == ("server", "server")
        assert (
            str(c.limits) == "600 requests and 900,000 tokens a minute (as the server advertises)"
        )
    with EmbeddingClient(api_key="k", base_url=limited, rpm=100) as c:
        c.embed(TEXTS[:10])
        assert (c.limits.rpm, c.limits.rpm_source, c.limits.tpm_source) == (100, "set", "server")
    lc = EmpirioEmbeddings(api_key="k", base_url=limited)
    lc.embed_documents(TEXTS[:70])
    assert lc.rpm == 50  # the field: what was set, or the default
    assert (lc.limits.rpm, lc.limits.rpm_source) == (600, "server")  # what paces, and why
    lc.empirio_client.close()


def test_zero_and_none_mean_unpaced_as_argument_variable_and_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from empirio._cli_embed import _rate
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
