"""One source for every setting: the client's signature, both adapters' fields, the CLI's flags
and the README's configuration table agree with ``empirio._core.settings.SETTINGS``."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any

import pytest

from empirio import EmbeddingClient
from empirio._core.config import FROM_ENV
from empirio._core.settings import DEFAULTS, SETTINGS, readme_table
from langchain_empirio import EmpirioEmbeddings
from llamaindex_empirio import EmpirioEmbedding

README = Path(__file__).resolve().parents[1] / "README.md"
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
    from empirio import cli

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli._add_embed(sub)
    args = parser.parse_args(["embed"])
    for flag in ("dimensions", "batch_size", "max_concurrency", "overflow"):
        assert getattr(args, flag) == DEFAULTS[flag], flag
    assert args.rpm is None  # unset: the environment, else what the server advertises
    assert args.tpm is None


def test_the_readme_table_is_the_tables_output() -> None:
    assert readme_table() in README.read_text(encoding="utf-8")


def test_adapters_import_only_public_empirio_names() -> None:
    import re

    root = Path(__file__).resolve().parents[1]
    for package in ("langchain_empirio", "llamaindex_empirio"):
        for source in (root / package).glob("*.py"):
            text = source.read_text(encoding="utf-8")
            private = re.findall(r"^\s*(?:from|import) empirio\._\w+", text, re.M)
            assert not private, f"{source.name} imports {private}"
