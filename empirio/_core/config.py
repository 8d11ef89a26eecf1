"""Constants of the service and resolution of settings from arguments and the environment."""

from __future__ import annotations

import enum
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from .types import BUDGET_SCOPES, ShareBudget

__all__ = [
    "ACCOUNT_ENV",
    "ALLOWED_DIMENSIONS",
    "API_BASE_ENV",
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "CACHE_SECRET_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_DIMENSIONS",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MODEL",
    "DEFAULT_QUERY_INSTRUCTION",
    "DEFAULT_RPM",
    "DEFAULT_TPM",
    "FROM_ENV",
    "MIN_CACHE_SECRET",
    "PRICE_PER_MILLION_TOKENS_USD",
    "RPM_ENV",
    "SHARE_BUDGET_ENV",
    "TPM_ENV",
    "FromEnv",
    "RedisURL",
    "check_rate",
    "format_query",
    "host_port",
    "is_loopback_url",
    "is_redis_url",
    "package_version",
    "parse_redis_url",
    "resolve_account",
    "resolve_api_key",
    "resolve_base_url",
    "resolve_cache_secret",
    "resolve_rate",
    "resolve_share_budget",
    "validate_dimensions",
]

DEFAULT_MODEL = "text-embedding-v4"
DEFAULT_BASE_URL = "https://api.empiriolabs.ai/v1"
API_KEY_ENV = "EMPIRIOLABS_API_KEY"
#: The name the vendor's own LangChain package reads; ``BASE_URL_ENV`` is accepted too.
API_BASE_ENV = "EMPIRIOLABS_API_BASE"
BASE_URL_ENV = "EMPIRIOLABS_BASE_URL"
#: Account limits for accounts with other limits than the default; "none" turns pacing off.
RPM_ENV = "EMPIRIOLABS_RPM"
TPM_ENV = "EMPIRIOLABS_TPM"
#: Sets ``share_budget`` for every client that is not given one (Ray actors, Spark executors
#: and gunicorn workers inherit it).
SHARE_BUDGET_ENV = "EMPIRIOLABS_SHARE_BUDGET"
#: Names the account whose limits a key shares (``account=``): keys naming one account pace as
#: one, on the machine and on Redis.
ACCOUNT_ENV = "EMPIRIOLABS_ACCOUNT"
#: Sets ``cache_secret``: the secret the keys of one account share to share a cache.
CACHE_SECRET_ENV = "EMPIRIOLABS_CACHE_SECRET"

ALLOWED_DIMENSIONS: tuple[int, ...] = (64, 128, 256, 512, 768, 1024, 1536, 2048)
DEFAULT_DIMENSIONS = 1024
#: Inputs per request that Alibaba and EmpirioLabs document.
DEFAULT_MAX_BATCH = 10
#: EmpirioLabs' default account limits (shared by all keys of an account).
DEFAULT_RPM = 50
DEFAULT_TPM = 2_000_000
PRICE_PER_MILLION_TOKENS_USD = 0.07

#: Qwen3-Embedding's default task for queries.
DEFAULT_QUERY_INSTRUCTION = (
    "Given a web search query, retrieve relevant passages that answer the query"
)


def package_version() -> str:
    """This distribution's version, from its metadata (``pyproject.toml`` is its one home)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("empirio")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def format_query(text: str, instruction: str) -> str:
    """Qwen3-Embedding's query prompt: ``Instruct: {task}\\nQuery:{text}``, no space after ``:``."""
    return f"Instruct: {instruction}\nQuery:{text}"


def validate_dimensions(dimensions: int) -> int:
    """Return ``dimensions`` if the model offers it, else raise ``ValueError`` listing them."""
    if isinstance(dimensions, bool) or not isinstance(dimensions, int):
        raise ValueError(
            f"dimensions must be an int, one of {list(ALLOWED_DIMENSIONS)}; got {dimensions!r}"
        )
    if dimensions not in ALLOWED_DIMENSIONS:
        raise ValueError(
            f"dimensions={dimensions} is not offered by text-embedding-v4; "
            f"choose one of {list(ALLOWED_DIMENSIONS)}"
        )
    return dimensions


def resolve_api_key(api_key: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The explicit key, else ``EMPIRIOLABS_API_KEY``, else ``None``."""
    env = os.environ if environ is None else environ
    return api_key if api_key else (env.get(API_KEY_ENV) or None)


def resolve_base_url(base_url: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The explicit URL, else ``EMPIRIOLABS_API_BASE``, else ``EMPIRIOLABS_BASE_URL``, else the
    EmpirioLabs endpoint; without a trailing slash."""
    env = os.environ if environ is None else environ
    url = base_url or env.get(API_BASE_ENV) or env.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    return url.rstrip("/")


def host_port(url: str) -> str:
    """``host:port`` of ``url``, with the scheme's default port where none is given."""
    parts = urlsplit(url)
    return f"{parts.hostname or ''}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def is_loopback_url(url: str) -> bool:
    """True when ``url``'s host is this machine (localhost, 127.0.0.0/8 or ::1)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FromEnv(enum.Enum):
    """Marks a setting whose default comes from the environment."""

    TOKEN = "from the environment"

    def __repr__(self) -> str:
        return "FROM_ENV"


FROM_ENV = FromEnv.TOKEN


#: Text that means "no limit" in an environment variable or a flag, as ``None`` and ``0`` do.
_UNPACED_WORDS = ("none", "off", "unlimited")


def check_rate(name: str, rate: object) -> float | None:
    """A rate limit per minute, read the same way wherever it comes from (an argument, an
    environment variable, a CLI flag): ``None`` or ``0`` means no limit (unpaced); anything else
    must be a finite number of at least 1.

    Raises:
        ValueError: naming ``name`` and what it accepts.
    """
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise ValueError(
            f"{name} must be a number per minute, or None or 0 for no limit; "
            f"got {type(rate).__name__}"
        )
    if rate == 0:
        return None
    if not (math.isfinite(rate) and rate >= 1):
        raise ValueError(
            f"{name} must be a finite number of at least 1 per minute, or None or 0 for no "
            f"limit; got {rate!r}"
        )
    return rate


def resolve_rate(
    value: float | FromEnv | None,
    env_name: str,
    default: float,
    environ: Mapping[str, str] | None = None,
) -> float | None:
    """An explicit rate (see :func:`check_rate`), else the variable ``env_name`` (a number, with
    ``0``, ``none``, ``off`` or ``unlimited`` for no limit), else ``default``.

    Raises:
        ValueError: the rate or the variable is not a valid rate.
    """
    if value is not FROM_ENV:
        return check_rate(env_name.removeprefix("EMPIRIOLABS_").lower(), value)
    env = os.environ if environ is None else environ
    raw = env.get(env_name, "").strip().lower()
    if not raw:
        return default
    if raw in _UNPACED_WORDS:
        return None
    try:
        rate = float(raw)
    except ValueError:
        raise ValueError(f"{env_name}={raw!r} is not a number or 'none'") from None
    return check_rate(env_name, rate)


@dataclass(frozen=True, slots=True)
class RedisURL:
    """A ``redis://`` or ``rediss://`` URL, read so that its password is never shown, whether
    it is percent-escaped or not (``/``, ``?``, ``#`` and ``@`` in it included).

    The host part is what follows the last ``@``; the user part before it is
    ``[user][:password]``, percent-escapes decoded (as redis-py decodes them).
    """

    scheme: str
    username: str
    password: str | None = field(repr=False)
    password_as_given: str | None = field(repr=False)
    host: str
    port: int
    rest: str  # "/db" and any "?query"

    @property
    def display(self) -> str:
        """What may be shown: scheme, host, port and database, never a password."""
        return f"{self.scheme}://{self.host}:{self.port}{self.rest.split('?', 1)[0] or '/0'}"

    def connect_url(self) -> str:
        """The URL for redis-py, the user part escaped so that it reads it back whole."""
        user = quote(self.username, safe="")
        if self.password is not None:
            user += ":" + quote(self.password, safe="")
        return f"{self.scheme}://{user + '@' if user else ''}{self.host}:{self.port}{self.rest}"

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every form of the password to mask in text (decoded, as given)."""
        return tuple(p for p in (self.password, self.password_as_given) if p)


def parse_redis_url(url: str, option: str) -> RedisURL:
    """``url`` read as a :class:`RedisURL`.

    Raises:
        ValueError: the URL cannot be read; the message names ``option`` and shows the URL
            without anything before its last ``@``.
    """
    scheme, _, rest = url.partition("://")
    at = rest.rfind("@")
    user_part, host_part = (rest[:at], rest[at + 1 :]) if at >= 0 else ("", rest)
    shown = f"{scheme}://{host_part}"
    m = re.fullmatch(r"(\[[^\]]*\]|[^:/?#\[\]]*)(?::([^/?#]*))?([^#]*)(#.*)?", host_part)
    if m is None or not m.group(1):
        raise ValueError(f"{option} {shown!r} names no host")
    host, port_text, tail = m.group(1), m.group(2), m.group(3)
    if port_text and not port_text.isdigit():
        raise ValueError(f"{option} {shown!r} has a port that is not a number")
    port = int(port_text) if port_text else 6379
    if not 0 < port < 65536:
        raise ValueError(f"{option} {shown!r} has a port out of range")
    name, sep, given = user_part.partition(":")
    password = unquote(given) if sep else None
    return RedisURL(
        scheme.lower(), unquote(name), password, given if sep else None, host, port, tail
    )


def is_redis_url(value: object) -> bool:
    """Whether ``value`` names a Redis budget (``redis://`` or ``rediss://``)."""
    return isinstance(value, str) and value.lower().startswith(("redis://", "rediss://"))


#: A cache secret shorter than this is refused: it would be guessed (it guards every entry).
MIN_CACHE_SECRET = 16


def resolve_cache_secret(value: object, env: Mapping[str, str] | None = None) -> str | None:
    """``cache_secret`` as given, or from ``EMPIRIOLABS_CACHE_SECRET``; ``None`` (the cache is
    keyed by the API key) when neither says. ``ValueError`` (never showing the value) for
    anything but a string of at least :data:`MIN_CACHE_SECRET` characters."""
    if value is None:
        value = (os.environ if env is None else env).get(CACHE_SECRET_ENV, "") or None
        if value is None:
            return None
    if not isinstance(value, str) or len(value) < MIN_CACHE_SECRET:
        raise ValueError(
            f"cache_secret must be a string of at least {MIN_CACHE_SECRET} characters, shared "
            f"only by the keys that share the cache (for example `python -c 'import secrets; "
            f"print(secrets.token_urlsafe(32))'`); got a {type(value).__name__}"
            + (f" of {len(value)} characters" if isinstance(value, str) else "")
        )
    return value


def resolve_account(value: object, env: Mapping[str, str] | None = None) -> str | None:
    """``account`` as given, or from ``EMPIRIOLABS_ACCOUNT``; ``None`` (each key its own
    account) when neither says. ``ValueError`` for anything but a non-blank string."""
    if value is None:
        value = (os.environ if env is None else env).get(ACCOUNT_ENV, "").strip() or None
        if value is None:
            return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"account must be a non-empty name shared by the keys of one account; got {value!r}"
        )
    return value.strip()


def resolve_share_budget(value: object) -> ShareBudget:
    """``share_budget`` as given, or from ``EMPIRIOLABS_SHARE_BUDGET`` when not given
    (``None``), else ``"machine"``.

    Raises:
        ValueError: neither a scope nor a ``redis://``/``rediss://`` URL (the message never
            shows a password).
    """
    if value is None:
        value = os.environ.get(SHARE_BUDGET_ENV, "").strip() or "machine"
    if isinstance(value, str) and (value in BUDGET_SCOPES or is_redis_url(value)):
        return value
    shown = "a URL of another scheme" if isinstance(value, str) and "://" in value else repr(value)
    scopes = ", ".join(map(repr, BUDGET_SCOPES))
    raise ValueError(
        f"share_budget must be {scopes} or a redis://[:password@]host:port/db URL; got {shown}"
    )
