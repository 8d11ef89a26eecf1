"""One source for every setting: the client's signature, both adapters' fields, the CLI's flags
and the README's configuration table agree with ``empirio._core.settings.SETTINGS``."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any

import pytest

from empirio import ConfigurationError, EmbeddingClient
from empirio._core.config import FROM_ENV
from empirio._core.settings import DEFAULTS, SETTINGS, ClientConfig, readme_table
from langchain_empirio import EmpirioEmbeddings
from llamaindex_empirio import EmpirioEmbedding

README = Path(__file__).resolve().parents[2] / "README.md"
LANGCHAIN_NAMES = {"show_progress": "show_progress_bar", "async_http_client": "http_async_client"}
LLAMAINDEX_NAMES = {"model": "model_name"}
#: resolved from the environment at construction: compared with the environment cleared
FROM_ENVIRONMENT = {"api_key", "base_url", "rpm", "tpm"}


def test_the_client_signature_is_the_table() -> None:
    params = {
        n: p.default
        for n, p in inspect.signature(EmbeddingClient.__init__).parameters.items()
        if n != "self"
    }
    assert list(params) == [s.name for s in SETTINGS]
    for s in SETTINGS:
        assert params[s.name] == s.default or params[s.name] is s.default, s.name


@pytest.mark.parametrize(
    ("cls", "names"),
    [(EmpirioEmbeddings, LANGCHAIN_NAMES), (EmpirioEmbedding, LLAMAINDEX_NAMES)],
    ids=["langchain", "llamaindex"],
)
def test_adapter_fields_default_to_the_table(
    cls: Any, names: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in (
        "EMPIRIOLABS_API_KEY",
        "EMPIRIOLABS_API_BASE",
        "EMPIRIOLABS_RPM",
        "EMPIRIOLABS_TPM",
    ):
        monkeypatch.delenv(var, raising=False)
    fields = cls.model_fields
    for s in SETTINGS:
        name = names.get(s.name, s.name)
        if s.name == "share_views":
            continue  # switched on by .sparse()/.dense(), not a field
        assert name in fields, f"{cls.__name__} has no field for {s.name}"
        value = fields[name].get_default(call_default_factory=True)
        if s.name in FROM_ENVIRONMENT:
            expected = s.fallback if s.default is FROM_ENV else None
            assert value == expected or (s.name == "base_url" and value is None), s.name
        else:
            assert value == s.default, s.name


def test_cli_flags_default_to_the_table() -> None:
    from empirio._cli_embed import add_embed

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_embed(sub)
    args = parser.parse_args(["embed"])
    for flag in ("dimensions", "batch_size", "max_concurrency", "overflow"):
        assert getattr(args, flag) == DEFAULTS[flag], flag
    assert args.rpm is None  # unset: the environment, else what the server advertises
    assert args.tpm is None


def test_the_readme_table_is_the_tables_output() -> None:
    assert readme_table() in README.read_text(encoding="utf-8")


def test_adapters_import_only_public_empirio_names() -> None:
    import re

    root = Path(__file__).resolve().parents[2]
    for package in ("langchain_empirio", "llamaindex_empirio"):
        for source in (root / package).glob("*.py"):
            text = source.read_text(encoding="utf-8")
            private = re.findall(r"^\s*(?:from|import) empirio\._\w+", text, re.M)
            assert not private, f"{source.name} imports {private}"


def config(**kw: Any) -> ClientConfig:
    """A configuration from the table's defaults, with no environment, overridden by ``kw``."""
    args = {s.name: s.default for s in SETTINGS if s.name not in _OBJECTS}
    return ClientConfig.build(**{**args, "api_key": "k", **kw}, environ={})


_OBJECTS = {"cache", "http_client", "async_http_client"}


def test_a_config_is_built_once_frozen_and_names_what_it_refuses() -> None:
    cfg = config()
    assert (cfg.rpm, cfg.rpm_source, cfg.tpm_source) == (50, "default", "default")
    with pytest.raises(AttributeError):
        cfg.model = "other"  # type: ignore[misc]
    for bad, words in [
        ({"dimensions": 100}, "dimensions"),
        ({"batch_size": 0}, "batch_size must be an int from 1 to 2048"),
        ({"max_concurrency": "many"}, "max_concurrency must be 'auto' or an int"),
        ({"overflow": "drop"}, "overflow must be one of 'truncate', 'chunk', 'error'"),
        ({"timeout": float("inf")}, "timeout"),
        ({"api_key": " k"}, "whitespace"),
        ({"base_url": "http://10.0.0.1/v1"}, "clear text"),
        ({"share_budget": "world"}, "share_budget"),
    ]:
        with pytest.raises(ConfigurationError, match=words):
            config(**bad)


def test_a_config_reads_only_the_environment_it_is_given() -> None:
    env = {"EMPIRIOLABS_API_KEY": "from-env", "EMPIRIOLABS_RPM": "0"}
    args = {s.name: s.default for s in SETTINGS if s.name not in _OBJECTS}
    cfg = ClientConfig.build(**args, environ=env)
    assert cfg.api_key.get_secret_value() == "from-env"
    assert (cfg.rpm, cfg.rpm_source) == (None, "set")  # 0 means unpaced, and was chosen
    assert "from-env" not in repr(cfg)


def test_options_make_the_same_config_again_and_keep_unset_limits_unset() -> None:
    cfg = config(rpm=300, dimensions=512)
    options = cfg.options()
    assert "api_key" not in options
    assert options["tpm"] is FROM_ENV
    assert options["rpm"] == 300
    assert config(**options) == cfg
