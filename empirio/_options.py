"""What the framework adapters share: the client's option names, building a client from an
adapter's fields, and the environment-aware defaults of the rate limits."""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from ._client import EmbeddingClient
from ._config import DEFAULT_RPM, DEFAULT_TPM, FROM_ENV, RPM_ENV, TPM_ENV, resolve_rate

__all__ = ["CLIENT_OPTIONS", "build_client", "default_rpm", "default_tpm"]

#: Every keyword :class:`EmbeddingClient` takes; adapters expose each as a field.
CLIENT_OPTIONS: tuple[str, ...] = tuple(
    name for name in inspect.signature(EmbeddingClient.__init__).parameters if name != "self"
)


def default_rpm() -> float | None:
    """``EMPIRIOLABS_RPM`` if set (``none`` = unpaced), else 50."""
    return resolve_rate(FROM_ENV, RPM_ENV, DEFAULT_RPM)


def default_tpm() -> float | None:
    """``EMPIRIOLABS_TPM`` if set (``none`` = unpaced), else 2,000,000."""
    return resolve_rate(FROM_ENV, TPM_ENV, DEFAULT_TPM)


def build_client(fields: object, renames: Mapping[str, str] | None = None) -> EmbeddingClient:
    """An :class:`EmbeddingClient` from an adapter's fields.

    Each client option is read from the attribute of the same name, or of the name ``renames``
    gives it (``{"model": "model_name"}``); options the adapter lacks keep their defaults.
    """
    renames = renames or {}
    kwargs = {}
    for name in CLIENT_OPTIONS:
        attr = renames.get(name, name)
        if hasattr(fields, attr):
            kwargs[name] = getattr(fields, attr)
    return EmbeddingClient(**kwargs)
