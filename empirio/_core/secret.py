"""The key inside pickles and copies, and out of other people's text.

A pickled client must carry its key to work in another process, but the key must never appear
in the pickle's bytes or text (where logs, caches and ``pickletools`` would show it). A
:class:`SealedKey` keeps it XOR-masked with a random pad of its own length: not encryption (the
pad travels with it, so treat pickles as secrets), but nothing that reads the bytes sees the key.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

__all__ = [
    "MASK",
    "SECRET_OPTIONS",
    "URL_OPTIONS",
    "SealedKey",
    "masked_url",
    "open_sealed",
    "redact",
    "seal_secrets",
]

#: Client options whose value may be a URL with a password in it: a Redis budget, a Redis cache.
URL_OPTIONS = ("share_budget", "cache")

#: What a secret is replaced with wherever it would be shown.
MASK = "**********"
#: Shorter secrets are not searched for: replacing every "k" in a message hides nothing real
#: (keys are long) and makes the message unreadable.
_MIN_SECRET = 4


def redact(text: str, *secrets_: str | None) -> str:
    """``text`` with every occurrence of each secret (as is, and percent-encoded, as gateways
    that echo a request line show it) replaced by :data:`MASK`. Applied to whatever a server
    sends back before it enters an error, a log, the CLI or the playground's page."""
    for secret in secrets_:
        if not secret or len(secret) < _MIN_SECRET:
            continue
        for form in {secret, quote(secret, safe="")}:
            text = text.replace(form, MASK)
    return text


def masked_url(value: object) -> object:
    """``value`` as a dump may show it: a ``redis://`` URL with its password masked (escaped or
    not), anything else as it is."""
    from .config import is_redis_url, parse_redis_url

    if not is_redis_url(value):
        return value
    assert isinstance(value, str)
    try:
        read = parse_redis_url(value, "url")
    except ValueError:
        return f"{value.partition('://')[0]}://{MASK}"
    user = read.username + (f":{MASK}" if read.password is not None else "")
    return f"{read.scheme}://{user + '@' if user else ''}{read.host}:{read.port}{read.rest}"


class SealedKey:
    """An API key masked for pickling; :meth:`reveal` gives it back."""

    __slots__ = ("_masked", "_pad")

    def __init__(self, key: str) -> None:
        raw = key.encode("utf-8", "surrogatepass")
        self._pad = secrets.token_bytes(len(raw))
        self._masked = bytes(a ^ b for a, b in zip(raw, self._pad, strict=True))

    def reveal(self) -> str:
        """The key."""
        raw = bytes(a ^ b for a, b in zip(self._masked, self._pad, strict=True))
        return raw.decode("utf-8", "surrogatepass")

    def __getstate__(self) -> tuple[bytes, bytes]:
        return self._masked, self._pad

    def __setstate__(self, state: tuple[bytes, bytes]) -> None:
        self._masked, self._pad = state

    def __repr__(self) -> str:
        return "SealedKey('**********')"


class _SealedSecretStr(SealedKey):
    """A ``SecretStr`` sealed: opened as a ``SecretStr`` again."""

    __slots__ = ()


#: Client options that are secrets whatever their type (a string is sealed like a SecretStr).
SECRET_OPTIONS = ("api_key", "cache_secret")


def seal_secrets(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` for a pickle: every secret sealed (:data:`SECRET_OPTIONS`, any
    ``SecretStr``, and each URL option (:data:`URL_OPTIONS`) holding a URL)."""
    from pydantic import SecretStr

    out: dict[str, Any] = {}
    for name, value in options.items():
        if isinstance(value, SecretStr):
            value = _SealedSecretStr(value.get_secret_value())
        elif isinstance(value, str) and (
            name in SECRET_OPTIONS or (name in URL_OPTIONS and "://" in value)
        ):
            value = SealedKey(value)
        out[name] = value
    return out


def open_sealed(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with every sealed value revealed (a sealed ``SecretStr`` as one)."""
    from pydantic import SecretStr

    return {
        name: SecretStr(value.reveal())
        if isinstance(value, _SealedSecretStr)
        else value.reveal()
        if isinstance(value, SealedKey)
        else value
        for name, value in options.items()
    }
