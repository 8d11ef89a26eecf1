"""Fields and client building shared by the dense and sparse LlamaIndex classes."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Literal

import httpx
from llama_index.core.bridge.pydantic import ConfigDict, Field, SecretStr

from empirio import DEFAULT_MODEL, DEFAULT_QUERY_INSTRUCTION, EmbeddingClient
from empirio._config import API_BASE_ENV, API_KEY_ENV
from empirio._options import ClientFields, default_rpm, default_tpm
from empirio._plan import InstructionMode, Overflow, as_text_list, check_texts

__all__ = ["EmpirioFields"]


def _env_key() -> SecretStr | None:
    key = os.environ.get(API_KEY_ENV)
    return SecretStr(key) if key else None


class EmpirioFields(ClientFields):
    """Mixin of pydantic fields for :class:`empirio.EmbeddingClient`'s options, with LlamaIndex's
    conventions (``model_name``, ``embed_batch_size``). The key is excluded from ``to_dict()`` and
    ``to_json()``; pass ``client=`` to share one :class:`~empirio.EmbeddingClient`."""

    model_config = ConfigDict(
        arbitrary_types_allowed=True, protected_namespaces=("pydantic_model_",)
    )
    # LlamaIndex calls the model "model_name"; every other client option keeps its name.
    _renames: ClassVar[Mapping[str, str]] = {"model": "model_name"}
    _not_copied: ClassVar[frozenset[str]] = ClientFields._not_copied | {
        "callback_manager",
        "embeddings_cache",
        "rate_limiter",
    }

    model_name: str = Field(default=DEFAULT_MODEL, description="Model id.")
    dimensions: int = Field(default=1024, description="64, 128, 256, 512, 768, 1024, 1536 or 2048.")
    api_key: SecretStr | None = Field(
        default_factory=_env_key, exclude=True, description="Default: EMPIRIOLABS_API_KEY."
    )
    base_url: str | None = Field(
        default_factory=lambda: os.environ.get(API_BASE_ENV) or None,
        description="Default: EMPIRIOLABS_API_BASE, then EMPIRIOLABS_BASE_URL, then EmpirioLabs.",
    )
    batch_size: int = Field(default=10, description="Most inputs per request sent.")
    max_concurrency: int = Field(default=8, description="Most requests in flight.")
    rpm: float | None = Field(
        default_factory=default_rpm, description="Account requests/minute; None = unpaced."
    )
    tpm: float | None = Field(
        default_factory=default_tpm, description="Account tokens/minute; None = unpaced."
    )
    max_retries: int = Field(default=10, description="Retries per request.")
    timeout: float = Field(default=60.0, description="Seconds to wait for a response.")
    overflow: Overflow = Field(default="truncate", description="truncate, chunk or error.")
    instruction_mode: InstructionMode = Field(default="prompt", description="prompt, api, none.")
    query_instruction: str = Field(
        default=DEFAULT_QUERY_INSTRUCTION, description="Task description for queries."
    )
    user: str | None = Field(default=None, description="End-user id passed through.")
    encoding_format: Literal["base64", "float"] = Field(default="base64")
    show_progress: bool = Field(default=False, description="tqdm bar inside each call.")
    allow_insecure: bool = Field(default=False, description="Key over plain http allowed.")
    share_budget: Literal["machine", "process", "client"] = Field(
        default="machine",
        description="Who shares this key's rate-limit budget: the machine, the process, or "
        "this object alone.",
    )
    cache: Any = Field(
        default=None,
        exclude=True,
        description="A persistent embedding cache shared with the core and the CLI: a file path "
        "(SQLite) or any byte store with mget/mset. Cached texts are never sent again.",
    )
    http_client: httpx.Client | None = Field(default=None, exclude=True)
    async_http_client: httpx.AsyncClient | None = Field(default=None, exclude=True)
    client: EmbeddingClient | None = Field(default=None, exclude=True)

    # LlamaIndex's batch methods take len() of their input and number bad texts within each
    # embed_batch_size chunk, after earlier chunks were sent: take any iterable, and check the
    # whole of it first, naming positions in the caller's list.
    def get_text_embedding_batch(
        self, texts: Iterable[str], show_progress: bool = False, **kwargs: Any
    ) -> Any:
        """LlamaIndex's batch embedding, for any iterable of texts, checked whole first."""
        checked = check_texts(as_text_list(texts))
        parent: Any = super()
        return parent.get_text_embedding_batch(checked, show_progress=show_progress, **kwargs)

    async def aget_text_embedding_batch(
        self, texts: Iterable[str], show_progress: bool = False, **kwargs: Any
    ) -> Any:
        """:meth:`get_text_embedding_batch`, async."""
        checked = check_texts(as_text_list(texts))
        parent: Any = super()
        return await parent.aget_text_embedding_batch(
            checked, show_progress=show_progress, **kwargs
        )
