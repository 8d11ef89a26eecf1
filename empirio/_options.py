"""What the framework adapters share: the client's option names, building a client from an
adapter's fields, and the environment-aware defaults of the rate limits."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic_core import InitErrorDetails

from ._core.config import (
    DEFAULT_RPM,
    DEFAULT_TPM,
    FROM_ENV,
    RPM_ENV,
    TPM_ENV,
    resolve_rate,
    validate_dimensions,
)
from ._core.limits import LimitsInEffect
from ._core.secret import MASK, SECRET_OPTIONS, URL_OPTIONS, open_sealed, seal_secrets
from .client import EmbeddingClient

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
    given = getattr(fields, "model_fields_set", None)
    kwargs = {}
    for name in CLIENT_OPTIONS:
        attr = renames.get(name, name)
        if not hasattr(fields, attr):
            continue
        if name in ("rpm", "tpm") and given is not None and attr not in given:
            continue  # not chosen: the client's default (environment, or what the server says)
        kwargs[name] = getattr(fields, attr)
    return EmbeddingClient(**kwargs)


class ClientFields(BaseModel):
    """Behaviour both adapters share; each declares the fields in its framework's conventions.

    The :class:`EmbeddingClient` is made from the fields (after validation, so that a failure
    never carries the key inside a pydantic error) and made again whenever they change, by
    assignment or ``model_copy(update=...)``: an object always behaves as its fields say.
    A ``client`` passed in is shared until another field changes. Copies (``copy``,
    ``deepcopy``) and pickles carry the fields, with the key sealed (never in the pickle's
    bytes); each makes its own client on first use. Sibling objects share the client.
    """

    _built: EmbeddingClient | None = PrivateAttr(default=None)
    # The (client field, options) the client was made or adopted from.
    _built_from: tuple[Any, tuple[Any, ...]] | None = PrivateAttr(default=None)
    #: client option -> field name, where the framework's convention differs
    _renames: ClassVar[Mapping[str, str]] = {}
    #: fields a sibling must not copy: the clients, and framework machinery
    _not_copied: ClassVar[frozenset[str]] = frozenset(
        {"client", "http_client", "async_http_client", "http_async_client"}
    )
    #: fields shared, not copied, by ``deepcopy`` and left out of pickles: connection pools
    _transport: ClassVar[frozenset[str]] = frozenset(
        {"http_client", "async_http_client", "http_async_client"}
    )

    @field_validator("dimensions", check_fields=False)
    @classmethod
    def _check_dimensions(cls, value: int) -> int:
        return validate_dimensions(value)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _scrubbed(exc) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise _scrubbed(exc) from None

    def model_post_init(self, context: Any, /) -> None:
        self._current()  # a bad setting or a missing key fails here, at construction

    def _option_values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, self._renames.get(name, name), None) for name in CLIENT_OPTIONS)

    def _current(self) -> EmbeddingClient:
        """The client for the fields as they are now."""
        shared: EmbeddingClient | None = getattr(self, "client", None)
        options = self._option_values()
        built, built_from = self._built, self._built_from
        if built is not None and built_from == (shared, options) and built_from[0] is shared:
            return built
        if shared is not None and (built_from is None or built_from[0] is not shared):
            client = shared  # a client given (or newly assigned) is adopted as it is
        else:
            client = build_client(self, self._renames)
        self._built, self._built_from = client, (shared, options)
        return client

    @property
    def _client(self) -> EmbeddingClient:
        return self._current()

    @property
    def limits(self) -> LimitsInEffect:
        """The rate limits pacing now and where they came from. The ``rpm``/``tpm`` fields say
        what was set (or the default, 50 and 2,000,000); a limit nobody set follows what the
        server advertises, which this shows (``str()`` says it in a sentence)."""
        return self._current().limits

    @property
    def empirio_client(self) -> EmbeddingClient:
        """The :class:`empirio.EmbeddingClient` doing the work (usage, token counts, ...)."""
        return self._current()

    def _sibling_fields(self) -> dict[str, Any]:
        """Fields for the other view's object: the same settings, sharing this client."""
        client = self._current()
        client.enable_shared_views()
        fields = {
            name: getattr(self, name)
            for name in type(self).model_fields
            if name not in self._not_copied and name != "class_name"
        }
        fields["client"] = client
        return fields

    # ------------------------------------------------------------------ copies and pickles

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Any:
        memo = {} if memo is None else memo
        for name in self._transport:
            value = getattr(self, name, None)
            if value is not None:
                memo[id(value)] = value  # a connection pool is shared, not copied
        for value in (self._built, self._built_from):
            if value is not None:
                memo[id(value)] = None  # the copy makes its own client
        shared = getattr(self, "client", None)
        if shared is not None:
            memo[id(shared)] = None
        return BaseModel.__deepcopy__(self, memo)

    def __getstate__(self) -> dict[Any, Any]:
        state = BaseModel.__getstate__(self)
        fields = seal_secrets(state["__dict__"])  # the key, a cache secret, Redis passwords
        for name in self._transport | {"client"}:
            if name in fields:
                fields[name] = None
        private = dict(state.get("__pydantic_private__") or {})
        private.update(_built=None, _built_from=None)
        return {**state, "__dict__": fields, "__pydantic_private__": private}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        fields = open_sealed(state["__dict__"])
        BaseModel.__setstate__(self, {**state, "__dict__": fields})


#: Fields whose values never appear in a validation error.
_SECRET_FIELDS = frozenset({*SECRET_OPTIONS, *URL_OPTIONS})


def _masked(value: Any) -> Any:
    """``value`` with secret fields' values masked (a dict of arguments, or a secret itself)."""
    if isinstance(value, dict):
        return {k: (MASK if k in _SECRET_FIELDS else v) for k, v in value.items()}
    return MASK if isinstance(value, str | SecretStr) else value


def _scrubbed(exc: ValidationError) -> ValidationError:
    """``exc`` without the key: pydantic keeps each failure's input, and a failure raised while
    the client is built (``batch_size=0``, an insecure ``base_url``) has all the arguments, the
    key among them, as its input; ``errors()`` and ``json()`` would show it whatever
    ``hide_input_in_errors`` says."""
    details: list[InitErrorDetails] = []
    for err in exc.errors(include_url=False):
        secret_loc = any(str(part) in _SECRET_FIELDS for part in err["loc"])
        detail: InitErrorDetails = {
            "type": err["type"],
            "loc": err["loc"],
            "input": MASK if secret_loc else _masked(err["input"]),
        }
        if "ctx" in err:
            detail["ctx"] = err["ctx"]
        details.append(detail)
    return ValidationError.from_exception_data(exc.title, details, hide_input=True)
