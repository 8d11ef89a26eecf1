"""Fields and client building shared by the dense and sparse LangChain classes."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import httpx
from langchain_core.utils import from_env, secret_from_env
from pydantic import ConfigDict, Field, SecretStr, field_serializer

from empirio import EmbeddingClient
from empirio.integration import (
    API_BASE_ENV,
    API_KEY_ENV,
    DEFAULTS,
    SHARE_BUDGET_ENV,
    ClientFields,
    InstructionMode,
    Overflow,
    default_rpm,
    default_tpm,
    is_redis_url,
    masked_url,
)

from ._tracing import langsmith_run

__all__ = ["EmpirioSettings"]


class EmpirioSettings(ClientFields):
    """Settings of text-embedding-v4 over EmpirioLabs, as LangChain-style pydantic fields.

    Every option of :class:`empirio.EmbeddingClient` is here; see its docstring for details.
    Pass ``client=`` to share one :class:`~empirio.EmbeddingClient` (its pacing, usage and
    connections) between several objects; the other fields are then ignored.
    """

    # Client options whose LangChain field has another name (LangChain's own conventions).
    _renames: ClassVar[Mapping[str, str]] = {
        "show_progress": "show_progress_bar",
        "async_http_client": "http_async_client",
    }

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        arbitrary_types_allowed=True,
        protected_namespaces=(),
        # A failed validation would otherwise print every argument, the key included.
        hide_input_in_errors=True,
        validate_assignment=True,
    )

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """LangChain's ``dumpd``/``dumps`` and ``load``/``loads`` round-trip these objects."""
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        """``["langchain_empirio"]``: pass it to ``loads(..., valid_namespaces=...)``."""
        return ["langchain_empirio"]

    @property
    def lc_secrets(self) -> dict[str, str]:
        """The key is serialised as a reference to ``EMPIRIOLABS_API_KEY``, never its value; a
        Redis budget URL as one to ``EMPIRIOLABS_SHARE_BUDGET`` (it may hold a password)."""
        secrets = {"api_key": API_KEY_ENV}
        if is_redis_url(self.share_budget):
            secrets["share_budget"] = SHARE_BUDGET_ENV
        return secrets

    @field_serializer("share_budget")
    def _masked_share_budget(self, value: str | None) -> object:
        """``model_dump``, ``model_dump_json`` and ``dict`` show a Redis URL without its
        password (``dumps`` writes a reference to ``EMPIRIOLABS_SHARE_BUDGET`` instead)."""
        return masked_url(value)

    @property
    def lc_attributes(self) -> dict[str, Any]:
        """The rate limits, always: ``None`` (unpaced) is not their default."""
        return {"rpm": self.rpm, "tpm": self.tpm}

    model: str = DEFAULTS["model"]
    """Model id."""
    dimensions: int = DEFAULTS["dimensions"]
    """Output dimensions: 64, 128, 256, 512, 768, 1024, 1536 or 2048."""
    api_key: SecretStr | None = Field(default_factory=secret_from_env(API_KEY_ENV, default=None))
    """API key; default from ``EMPIRIOLABS_API_KEY``."""
    base_url: str | None = Field(default_factory=from_env(API_BASE_ENV, default=None))
    """Endpoint; default from ``EMPIRIOLABS_API_BASE`` (then ``EMPIRIOLABS_BASE_URL``)."""
    batch_size: int = DEFAULTS["batch_size"]
    """Most inputs per request (10 at EmpirioLabs)."""
    max_concurrency: int | Literal["auto"] = DEFAULTS["max_concurrency"]
    """Most requests in flight, or ``"auto"``: the account's rate x the measured latency."""
    rpm: float | None = Field(default_factory=default_rpm)
    """Account requests per minute, paced client-side; ``None`` or 0 = unpaced. Default
    ``EMPIRIOLABS_RPM`` or 50 (replaced by what the server advertises when nobody set it:
    ``.limits`` shows the limits in effect and where they came from)."""
    tpm: float | None = Field(default_factory=default_tpm)
    """Account tokens per minute; ``None`` or 0 = unpaced. Default ``EMPIRIOLABS_TPM`` or
    2,000,000 (see ``rpm``)."""
    max_retries: int = DEFAULTS["max_retries"]
    """Retries per request for 408/409/429/5xx and lost connections."""
    timeout: float = DEFAULTS["timeout"]
    """Seconds one attempt may take, headers and body."""
    overflow: Overflow = DEFAULTS["overflow"]
    """Texts over 8,191 tokens: ``"truncate"``, ``"chunk"`` or ``"error"``."""
    instruction_mode: InstructionMode = DEFAULTS["instruction_mode"]
    """How queries get their instruction: ``"prompt"``, ``"api"`` or ``"none"``."""
    query_instruction: str = DEFAULTS["query_instruction"]
    """Task description for queries."""
    user: str | None = DEFAULTS["user"]
    """End-user id passed through to the service."""
    encoding_format: Literal["base64", "float"] = DEFAULTS["encoding_format"]
    """Wire format of vectors."""
    show_progress_bar: bool = DEFAULTS["show_progress"]
    """Show a tqdm bar for long calls."""
    allow_insecure: bool = DEFAULTS["allow_insecure"]
    """Allow the key over plain http to a non-loopback host."""
    share_budget: str | None = Field(default=DEFAULTS["share_budget"], repr=False)
    """Who shares the rate-limit budget of this key: ``"machine"``, ``"process"``, ``"client"``
    or every host through ``"redis://[:password@]host:port/db"``; default
    ``EMPIRIOLABS_SHARE_BUDGET``, else the machine. A password in it is kept out of ``repr``,
    pickles and ``dumps`` (written as a reference to ``EMPIRIOLABS_SHARE_BUDGET``)."""
    coalesce: bool = DEFAULTS["coalesce"]
    """Send small calls that arrive together (concurrent ``embed_query``/``aembed_query``) in
    shared requests of up to 10, each caller getting its own vector and errors."""
    account: str | None = DEFAULTS["account"]
    """A name for the account whose limits this key shares: keys naming one account pace as
    one (default ``EMPIRIOLABS_ACCOUNT``, else each key is its own account)."""
    cache: Any = Field(default=None, exclude=True, repr=False)
    """A persistent embedding cache shared with the core and the CLI: a file path (SQLite), a
    ``"redis://[:password@]host:port/db"`` URL (one cache for every host), or any byte store
    with ``mget``/``mset`` (a LangChain ``ByteStore`` works). Cached texts are never sent
    again. Kept out of ``repr`` and ``dumps``."""
    cache_secret: SecretStr | None = Field(default=None, exclude=True, repr=False)
    """The secret the cache is sealed with when keys of one account share a cache (16+
    characters); default ``EMPIRIOLABS_CACHE_SECRET``, else one derived from the key."""
    http_client: httpx.Client | None = Field(default=None, exclude=True)
    """An httpx.Client to use."""
    http_async_client: httpx.AsyncClient | None = Field(default=None, exclude=True)
    """An httpx.AsyncClient to use."""
    client: EmbeddingClient | None = Field(default=None, exclude=True)
    """An existing client to share."""

    def _traced(
        self, texts: Sequence[str], kind: str, output: str = "dense"
    ) -> contextlib.AbstractContextManager[None]:
        """The block as a LangSmith ``embedding`` run when tracing is on (see ``_tracing``)."""
        return langsmith_run(
            type(self).__name__, self._client.model, texts, kind=kind, output=output
        )
