"""What the framework adapters share: the client's option names, building a client from an
adapter's fields, and the environment-aware defaults of the rate limits."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, PrivateAttr, field_validator

from ._client import EmbeddingClient
from ._config import (
    DEFAULT_RPM,
    DEFAULT_TPM,
    FROM_ENV,
    RPM_ENV,
    TPM_ENV,
    resolve_rate,
    validate_dimensions,
)

__all__ = ["CLIENT_OPTIONS", "ClientFields", "build_client", "default_rpm", "default_tpm"]

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


class ClientFields(BaseModel):
    """Behaviour both adapters share; each declares the fields in its framework's conventions.

    Validates ``dimensions``, builds the :class:`EmbeddingClient` from the fields once the model
    is made (after validation, so that a failure never carries the key inside a pydantic error),
    and makes sibling objects that share the client.
    """

    _client: EmbeddingClient = PrivateAttr()
    #: client option -> field name, where the framework's convention differs
    _renames: ClassVar[Mapping[str, str]] = {}
    #: fields a sibling must not copy: the clients, and framework machinery
    _not_copied: ClassVar[frozenset[str]] = frozenset(
        {"client", "http_client", "async_http_client", "http_async_client"}
    )

    @field_validator("dimensions", check_fields=False)
    @classmethod
    def _check_dimensions(cls, value: int) -> int:
        return validate_dimensions(value)

    def model_post_init(self, context: Any, /) -> None:
        shared = getattr(self, "client", None)
        self._client = shared if shared is not None else build_client(self, self._renames)

    @property
    def empirio_client(self) -> EmbeddingClient:
        """The :class:`empirio.EmbeddingClient` doing the work (usage, token counts, ...)."""
        return self._client

    def _sibling_fields(self) -> dict[str, Any]:
        """Fields for the other view's object: the same settings, sharing this client."""
        self._client.enable_shared_views()
        fields = self.model_dump(exclude=set(self._not_copied))
        fields.pop("class_name", None)  # LlamaIndex's serialiser adds it
        fields["api_key"] = getattr(self, "api_key", None)
        fields["client"] = self._client
        return fields
