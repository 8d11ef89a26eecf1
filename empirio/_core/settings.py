"""Every client setting once: its default, choices or range, where the environment can set it,
what it means; and :class:`ClientConfig`, the settings of one client, checked once.

The client's signature, both adapters' fields, the CLI's flags and the README's configuration
table all take their defaults from :data:`SETTINGS` (``tests/core/test_settings.py`` proves they
agree, and that the README's table is :func:`readme_table`'s output). What ``0`` and ``None``
mean for a rate is :func:`~empirio._core.config.check_rate`'s, wherever the rate comes from.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from pydantic import SecretStr

from .config import (
    ACCOUNT_ENV,
    API_BASE_ENV,
    API_KEY_ENV,
    BASE_URL_ENV,
    CACHE_SECRET_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_DIMENSIONS,
    DEFAULT_MAX_BATCH,
    DEFAULT_MODEL,
    DEFAULT_QUERY_INSTRUCTION,
    DEFAULT_RPM,
    DEFAULT_TPM,
    FROM_ENV,
    RPM_ENV,
    SHARE_BUDGET_ENV,
    TPM_ENV,
    FromEnv,
    is_loopback_url,
    resolve_account,
    resolve_api_key,
    resolve_base_url,
    resolve_cache_secret,
    resolve_rate,
    resolve_share_budget,
    validate_dimensions,
)
from .errors import ConfigurationError
from .types import (
    ENCODING_FORMATS,
    INSTRUCTION_MODES,
    OVERFLOWS,
    EncodingFormat,
    InstructionMode,
    LimitSource,
    Overflow,
    ShareBudget,
)

#: The most inputs one request may carry where a server allows more than 10.
MAX_BATCH_SIZE = 2048

__all__ = [
    "DEFAULTS",
    "MAX_BATCH_SIZE",
    "SETTINGS",
    "ClientConfig",
    "Setting",
    "check_choice",
    "check_int",
    "readme_table",
]


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
        choices: the values a string setting may take (from :mod:`empirio._core.types`).
        bounds: the inclusive range of an int setting.
    """

    name: str
    default: Any
    doc: str
    env: tuple[str, ...] = ()
    fallback: Any = None
    shown: str = ""
    choices: tuple[str, ...] = ()
    bounds: tuple[int, int] | None = None


def _or(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1]


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
    Setting(
        "batch_size",
        DEFAULT_MAX_BATCH,
        f"most inputs per request (up to {MAX_BATCH_SIZE})",
        bounds=(1, MAX_BATCH_SIZE),
    ),
    Setting(
        "max_concurrency",
        "auto",
        "most requests in flight; `auto`: the account's rate x the measured latency (8 "
        "unpaced); 1: sync calls send from the caller's thread",
        bounds=(1, 1024),
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
    Setting(
        "max_retries", 10, "retries per request (429s: at least 75 s of them)", bounds=(0, 100)
    ),
    Setting("timeout", 60.0, "seconds one attempt may take, headers and body", shown="60 s"),
    Setting(
        "overflow",
        "truncate",
        f"texts over 8,191 tokens: {_or(OVERFLOWS)}",
        choices=OVERFLOWS,
    ),
    Setting(
        "instruction_mode",
        "prompt",
        f"queries' instruction: {_or(INSTRUCTION_MODES)}",
        choices=INSTRUCTION_MODES,
    ),
    Setting(
        "query_instruction",
        DEFAULT_QUERY_INSTRUCTION,
        "the task for queries",
        shown="Qwen3's web-search task",
    ),
    Setting("user", None, "an end-user id passed through", shown="none"),
    Setting(
        "encoding_format",
        "base64",
        f"vectors on the wire: {_or(ENCODING_FORMATS)}",
        choices=ENCODING_FORMATS,
    ),
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
        "coalesce",
        True,
        "small calls arriving together (concurrent `embed_query`s) share requests of up to 10",
    ),
    Setting(
        "account",
        None,
        "a name for the account whose limits this key shares: keys naming one account pace "
        "together (default: each key is its own account)",
        (ACCOUNT_ENV,),
        shown="the key",
    ),
    Setting(
        "cache",
        None,
        "a persistent cache: a path, a redis:// URL, or a store with mget/mset",
        shown="none",
    ),
    Setting(
        "cache_secret",
        None,
        "what the cache's keys and entries are sealed with, for keys of one account sharing a "
        "cache (16+ characters; never shown)",
        (CACHE_SECRET_ENV,),
        shown="the key",
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


_BY_NAME: Mapping[str, Setting] = MappingProxyType({s.name: s for s in SETTINGS})


def check_int(
    name: str, value: object, bounds: tuple[int, int] | None = None, *, error: type[Exception]
) -> int:
    """``value`` if it is an int within ``bounds`` (default: the setting's), else ``error``."""
    lo, hi = bounds or _BY_NAME[name].bounds or (0, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise error(f"{name} must be an int from {lo} to {hi}; got {value!r}")
    return value


def check_choice(
    name: str, value: object, choices: tuple[str, ...] | None = None, *, error: type[Exception]
) -> Any:
    """``value`` if it is one of ``choices`` (default: the setting's), else ``error``."""
    choices = choices or _BY_NAME[name].choices
    if value not in choices:
        raise error(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def _plain(value: str | SecretStr | None) -> str | None:
    """A secret setting as a string, whether given as one or as a ``SecretStr``."""
    return value.get_secret_value() if isinstance(value, SecretStr) else value


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """The settings of one client, checked once by :meth:`build` and fixed from then on.

    Attributes are the :data:`SETTINGS` of the same names (``cache`` and the http clients are
    objects, kept by the client); ``rpm_source``/``tpm_source`` say where each limit came from
    (a limit nobody set follows what the server advertises, see
    :class:`~empirio._core.pace.LimitsInEffect`).
    """

    api_key: SecretStr = field(repr=False)
    base_url: str
    model: str
    dimensions: int
    batch_size: int
    max_concurrency: int | Literal["auto"]
    rpm: float | None
    tpm: float | None
    rpm_source: LimitSource
    tpm_source: LimitSource
    max_retries: int
    timeout: float
    overflow: Overflow
    instruction_mode: InstructionMode
    query_instruction: str
    user: str | None
    encoding_format: EncodingFormat
    show_progress: bool
    allow_insecure: bool
    share_views: bool
    share_budget: ShareBudget
    account: str | None = None
    coalesce: bool = True
    cache_secret: SecretStr | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls,
        *,
        api_key: str | SecretStr | None,
        base_url: str | None,
        model: str,
        dimensions: int,
        batch_size: int,
        max_concurrency: int | Literal["auto"],
        rpm: float | FromEnv | None,
        tpm: float | FromEnv | None,
        max_retries: int,
        timeout: float,
        overflow: Overflow,
        instruction_mode: InstructionMode,
        query_instruction: str,
        user: str | None,
        encoding_format: EncodingFormat,
        show_progress: bool,
        allow_insecure: bool,
        share_views: bool,
        share_budget: ShareBudget | None,
        account: str | None = None,
        coalesce: bool = True,
        cache_secret: str | SecretStr | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ClientConfig:
        """Check every setting and resolve those the environment gives (``environ``, default
        ``os.environ``).

        Raises:
            ConfigurationError: a setting is invalid or the key is missing; the message names
                the setting and what it accepts, and never shows the key.
        """
        env = os.environ if environ is None else environ
        raw_key = _plain(api_key)
        key = resolve_api_key(raw_key, env)
        if not key:
            raise ConfigurationError(
                "no API key: pass api_key=... or set EMPIRIOLABS_API_KEY "
                "(for the local emulator any non-empty key works)"
            )
        if key != key.strip():
            raise ConfigurationError(
                "the API key has leading or trailing whitespace (a newline copied from a "
                "file?); remove it"
            )
        if not (key.isascii() and key.isprintable()):
            raise ConfigurationError(
                "the API key contains characters an HTTP header cannot carry (non-ASCII or "
                "control characters); check that it was copied whole"
            )
        url = resolve_base_url(base_url, env)
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"base_url must start with http:// or https://; got {url!r}")
        if url.startswith("http://") and not is_loopback_url(url) and not allow_insecure:
            raise ConfigurationError(
                f"refusing to send the API key in clear text to {url}; use https, "
                "or pass allow_insecure=True if this network is trusted"
            )
        try:
            dimensions = validate_dimensions(dimensions)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        check_int("batch_size", batch_size, error=ConfigurationError)
        if max_concurrency != "auto":
            try:
                check_int("max_concurrency", max_concurrency, error=ConfigurationError)
            except ConfigurationError:
                raise ConfigurationError(
                    f"max_concurrency must be 'auto' or an int from 1 to 1024; "
                    f"got {max_concurrency!r}"
                ) from None
        check_int("max_retries", max_retries, error=ConfigurationError)
        # Limits nobody set (no argument, no environment variable) are provisional: the first
        # response that advertises the account's limits replaces them.
        sources: dict[str, LimitSource] = {
            name: "default" if value is FROM_ENV and not env.get(var, "").strip() else "set"
            for name, value, var in (("rpm", rpm, RPM_ENV), ("tpm", tpm, TPM_ENV))
        }
        try:  # None and 0 mean unpaced here, in the environment and on the command line
            rpm = resolve_rate(rpm, RPM_ENV, DEFAULT_RPM, env)
            tpm = resolve_rate(tpm, TPM_ENV, DEFAULT_TPM, env)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not (math.isfinite(timeout) and timeout > 0)
        ):
            raise ConfigurationError(
                f"timeout must be a finite positive number of seconds; got {timeout!r}"
            )
        for name, value in (
            ("overflow", overflow),
            ("instruction_mode", instruction_mode),
            ("encoding_format", encoding_format),
        ):
            check_choice(name, value, error=ConfigurationError)
        try:
            share = resolve_share_budget(share_budget)
            account = resolve_account(account, env)
            sealing = resolve_cache_secret(_plain(cache_secret), env)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        return cls(
            api_key=SecretStr(key),
            base_url=url,
            model=model,
            dimensions=dimensions,
            batch_size=batch_size,
            max_concurrency=max_concurrency,
            rpm=rpm,
            tpm=tpm,
            rpm_source=sources["rpm"],
            tpm_source=sources["tpm"],
            max_retries=max_retries,
            timeout=timeout,
            overflow=overflow,
            instruction_mode=instruction_mode,
            query_instruction=query_instruction,
            user=user,
            encoding_format=encoding_format,
            show_progress=show_progress,
            allow_insecure=allow_insecure,
            share_views=share_views,
            share_budget=share,
            account=account,
            coalesce=bool(coalesce),
            cache_secret=None if sealing is None else SecretStr(sealing),
        )

    def cache_material(self) -> SecretStr:
        """What the cache's secret is derived from: ``cache_secret`` if set, else the key."""
        return self.cache_secret or self.api_key

    def options(self) -> dict[str, Any]:
        """The arguments that make this configuration again (the key aside): what a copy or a
        pickle of a client is made from. A limit nobody set stays unset (``FROM_ENV``)."""
        out = {s.name: getattr(self, s.name) for s in SETTINGS if hasattr(self, s.name)}
        out.pop("api_key")
        for name in ("rpm", "tpm"):
            if getattr(self, f"{name}_source") == "default":
                out[name] = FROM_ENV
        return out
