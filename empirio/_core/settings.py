"""Every client setting once: its default, where the environment can set it, what it means.

The client's signature, both adapters' fields, the CLI's flags and the README's configuration
table all take their defaults from :data:`SETTINGS` (``tests/test_settings.py`` proves they
agree, and that the README's table is :func:`readme_table`'s output).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .._io.budget import SHARE_BUDGET_ENV
from .config import (
    API_BASE_ENV,
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_DIMENSIONS,
    DEFAULT_MAX_BATCH,
    DEFAULT_MODEL,
    DEFAULT_QUERY_INSTRUCTION,
    DEFAULT_RPM,
    DEFAULT_TPM,
    FROM_ENV,
    RPM_ENV,
    TPM_ENV,
)

__all__ = ["DEFAULTS", "SETTINGS", "Setting", "readme_table"]


@dataclass(frozen=True, slots=True)
class Setting:
    """One client setting.

    Attributes:
        name: the keyword of :class:`~empirio.EmbeddingClient`.
        default: its default (``FROM_ENV``: read from ``env``, else ``fallback``).
        doc: what it is, with units.
        env: the environment variables that set it, in order of precedence.
        fallback: the value when ``env`` is unset, for ``FROM_ENV`` defaults.
        shown: how the README shows the default.
    """

    name: str
    default: Any
    doc: str
    env: tuple[str, ...] = ()
    fallback: Any = None
    shown: str = ""


SETTINGS: tuple[Setting, ...] = (
    Setting("api_key", None, "the key; never shown", (API_KEY_ENV,), shown="required"),
    Setting(
        "base_url",
        None,
        "any OpenAI-compatible endpoint",
        (API_BASE_ENV, BASE_URL_ENV),
        DEFAULT_BASE_URL,
        f"`{DEFAULT_BASE_URL}`",
    ),
    Setting("model", DEFAULT_MODEL, "the model id", shown=f"`{DEFAULT_MODEL}`"),
    Setting("dimensions", DEFAULT_DIMENSIONS, "64, 128, 256, 512, 768, 1024, 1536 or 2048"),
    Setting("batch_size", DEFAULT_MAX_BATCH, "most inputs per request (up to 2048)"),
    Setting(
        "max_concurrency",
        "auto",
        "most requests in flight; `auto`: the account's rate x the measured latency (8 unpaced)",
    ),
    Setting(
        "rpm",
        FROM_ENV,
        "the account's requests a minute (`None` or 0: unpaced; unset: what the server "
        "advertises; `.limits` says which)",
        (RPM_ENV,),
        DEFAULT_RPM,
        "50",
    ),
    Setting(
        "tpm",
        FROM_ENV,
        "the account's tokens a minute (`None` or 0: unpaced; unset: what the server "
        "advertises; `.limits` says which)",
        (TPM_ENV,),
        DEFAULT_TPM,
        "2,000,000",
    ),
    Setting("max_retries", 10, "retries per request (429s: at least 75 s of them)"),
    Setting("timeout", 60.0, "seconds one attempt may take, headers and body", shown="60 s"),
    Setting("overflow", "truncate", "texts over 8,191 tokens: truncate, chunk or error"),
    Setting("instruction_mode", "prompt", "queries' instruction: prompt, api or none"),
    Setting(
        "query_instruction",
        DEFAULT_QUERY_INSTRUCTION,
        "the task for queries",
        shown="Qwen3's web-search task",
    ),
    Setting("user", None, "an end-user id passed through", shown="none"),
    Setting("encoding_format", "base64", "vectors on the wire: base64 or float"),
    Setting("show_progress", False, "a tqdm bar per call"),
    Setting("allow_insecure", False, "allow the key over plain http to a non-loopback host"),
    Setting("http_client", None, "an httpx.Client to use", shown="own"),
    Setting("async_http_client", None, "an httpx.AsyncClient to use", shown="own"),
    Setting(
        "share_views",
        False,
        "dense and sparse calls share requests (on for `.sparse()`/`.dense()` siblings)",
    ),
    Setting(
        "share_budget",
        None,
        "who shares the rate budget: machine, process, client, or every host through "
        "`redis://[:password@]host:port/db` (`EMPIRIOLABS_BUDGET_DIR`: where the machine's is "
        "kept)",
        (SHARE_BUDGET_ENV,),
        "machine",
        '`"machine"`',
    ),
    Setting(
        "cache",
        None,
        "a persistent cache: a path, a redis:// URL, or a store with mget/mset",
        shown="none",
    ),
)

#: Each setting's default by name (``FROM_ENV`` where the environment decides).
DEFAULTS: Mapping[str, Any] = MappingProxyType({s.name: s.default for s in SETTINGS})


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def readme_table() -> str:
    """The README's configuration table, in Markdown."""
    lines = [
        "| argument | environment variable | default | what it is |",
        "|---|---|---|---|",
    ]
    for s in SETTINGS:
        env = ", then ".join(f"`{e}`" for e in s.env)
        shown = s.shown or _show(s.default)
        lines.append(f"| `{s.name}` | {env} | {shown} | {s.doc} |")
    return "\n".join(lines) + "\n"
