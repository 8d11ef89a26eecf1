"""Fields and client building shared by the dense and sparse LlamaIndex classes."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar, Literal

import httpx
from llama_index.core.bridge.pydantic import ConfigDict, Field, SecretStr

from empirio import EmbeddingClient, EmbeddingResult
from empirio.integration import (
    API_BASE_ENV,
    API_KEY_ENV,
    DEFAULTS,
    SETTINGS,
    ClientFields,
    InstructionMode,
    Overflow,
    abatch_job,
    add_usage_to_framework_span,
    as_text_list,
    batch_job,
    call_options,
    check_texts,
    claim_job_usage,
    default_rpm,
    default_tpm,
    served,
    worth_prefetching,
)

__all__ = ["EmpirioFields"]


def _doc(name: str) -> str:
    """The setting's description, from empirio's one table of settings."""
    return next(s.doc for s in SETTINGS if s.name == name).capitalize() + "."


def _env_key() -> SecretStr | None:
    key = os.environ.get(API_KEY_ENV)
    return SecretStr(key) if key else None


class EmpirioFields(ClientFields):
    """Mixin of pydantic fields for :class:`empirio.EmbeddingClient`'s options, with LlamaIndex's
    conventions (``model_name``, ``embed_batch_size``). Pass ``client=`` to share one
    :class:`~empirio.EmbeddingClient`.

    ``to_dict()``/``to_json()`` hold what changes the vectors (model, dimensions, endpoint,
    instructions, over-length policy), never the key, nor how they are fetched (limits,
    concurrency, timeouts, batch sizes): LlamaIndex's ``IngestionPipeline`` keys its cache by
    them, and a change of ``rpm`` must not re-embed a corpus."""

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

    model_name: str = Field(default=DEFAULTS["model"], description=_doc("model"))
    dimensions: int = Field(default=DEFAULTS["dimensions"], description=_doc("dimensions"))
    api_key: SecretStr | None = Field(
        default_factory=_env_key, exclude=True, description="Default: EMPIRIOLABS_API_KEY."
    )
    base_url: str | None = Field(
        default_factory=lambda: os.environ.get(API_BASE_ENV) or None,
        description="Default: EMPIRIOLABS_API_BASE, then EMPIRIOLABS_BASE_URL, then EmpirioLabs.",
    )
    # Fields that change how vectors are fetched, not the vectors, are excluded from to_dict().
    batch_size: int = Field(
        exclude=True, default=DEFAULTS["batch_size"], description=_doc("batch_size")
    )
    max_concurrency: int | Literal["auto"] = Field(
        exclude=True, default=DEFAULTS["max_concurrency"], description=_doc("max_concurrency")
    )
    rpm: float | None = Field(exclude=True, default_factory=default_rpm, description=_doc("rpm"))
    tpm: float | None = Field(exclude=True, default_factory=default_tpm, description=_doc("tpm"))
    max_retries: int = Field(
        exclude=True, default=DEFAULTS["max_retries"], description=_doc("max_retries")
    )
    timeout: float = Field(exclude=True, default=DEFAULTS["timeout"], description=_doc("timeout"))
    overflow: Overflow = Field(default=DEFAULTS["overflow"], description=_doc("overflow"))
    instruction_mode: InstructionMode = Field(
        default=DEFAULTS["instruction_mode"], description=_doc("instruction_mode")
    )
    query_instruction: str = Field(
        default=DEFAULTS["query_instruction"], description=_doc("query_instruction")
    )
    user: str | None = Field(default=DEFAULTS["user"], description=_doc("user"))
    encoding_format: Literal["base64", "float"] = Field(
        exclude=True, default=DEFAULTS["encoding_format"], description=_doc("encoding_format")
    )
    show_progress: bool = Field(
        exclude=True,
        default=DEFAULTS["show_progress"],
        description="One progress bar per batch job (get_text_embedding_batch).",
    )
    allow_insecure: bool = Field(
        exclude=True, default=DEFAULTS["allow_insecure"], description=_doc("allow_insecure")
    )
    share_budget: str | None = Field(
        exclude=True, default=DEFAULTS["share_budget"], repr=False, description=_doc("share_budget")
    )
    coalesce: bool = Field(exclude=True, default=DEFAULTS["coalesce"], description=_doc("coalesce"))
    account: str | None = Field(
        exclude=True, default=DEFAULTS["account"], description=_doc("account")
    )
    cache: Any = Field(
        default=None,
        exclude=True,
        repr=False,
        description="A persistent embedding cache shared with the core and the CLI: a file path "
        "(SQLite), a redis://[:password@]host:port/db URL (one cache for every host), or any "
        "byte store with mget/mset. Cached texts are never sent again.",
    )
    cache_secret: SecretStr | None = Field(
        default=None, exclude=True, repr=False, description=_doc("cache_secret")
    )
    http_client: httpx.Client | None = Field(default=None, exclude=True)
    async_http_client: httpx.AsyncClient | None = Field(default=None, exclude=True)
    client: EmbeddingClient | None = Field(default=None, exclude=True)

    # LlamaIndex's batch methods take len() of their input and number bad texts within each
    # embed_batch_size chunk, after earlier chunks were sent; and a bar per chunk floods a
    # notebook. So: any iterable, checked whole first (positions in the caller's list), and
    # one job over it (empirio.integration.batch_job: one bar, and the whole job fetched in one
    # pipelined call where LlamaIndex would embed chunk after chunk). LlamaIndex's bar is off.
    def get_text_embedding_batch(
        self, texts: Iterable[str], show_progress: bool = False, **kwargs: Any
    ) -> Any:
        """LlamaIndex's batch embedding, for any iterable of texts, checked whole first."""
        checked = check_texts(as_text_list(texts))
        parent: Any = super()
        show = show_progress or self.show_progress
        with batch_job(checked, show_progress=show, fetch=self._job_fetch(checked)):
            return parent.get_text_embedding_batch(checked, show_progress=False, **kwargs)

    async def aget_text_embedding_batch(
        self, texts: Iterable[str], show_progress: bool = False, **kwargs: Any
    ) -> Any:
        """:meth:`get_text_embedding_batch`, async."""
        checked = check_texts(as_text_list(texts))
        parent: Any = super()
        show = show_progress or self.show_progress
        async with abatch_job(checked, show_progress=show, fetch=self._job_afetch(checked)):
            return await parent.aget_text_embedding_batch(checked, show_progress=False, **kwargs)

    def _job_fetch(self, texts: list[str]) -> Callable[[list[str]], list[Any]] | None:
        """How to fetch a job's vectors whole; ``None``: leave them to LlamaIndex's chunks."""
        return None

    def _job_afetch(self, texts: list[str]) -> Callable[[list[str]], Awaitable[list[Any]]] | None:
        """:meth:`_job_fetch`, async."""
        return None

    def _worth_prefetching(self, texts: list[str]) -> bool:
        return worth_prefetching(
            texts,
            int(getattr(self, "embed_batch_size", 10**9)),
            getattr(self, "embeddings_cache", None),
        )

    def _call_options(self) -> dict[str, Any]:
        """Keywords for each call into the client: never a bar of its own (the job has one)."""
        return call_options()

    # Token usage for LlamaIndex's own tracing: OpenInference's instrumentation makes a span per
    # embedding step and records no tokens there; each call's billed tokens and cost are added
    # to it (empirio's own span, a child of it, has the details).
    def _spent(self, result: EmbeddingResult) -> EmbeddingResult:
        add_usage_to_framework_span(result.usage)
        return result

    def _served(self, texts: list[str]) -> list[Any] | None:
        """The vectors of a chunk of the job under way (see ``get_text_embedding_batch``); the
        first chunk served carries the job's usage to the framework's span."""
        done = served(texts)
        if done is not None:
            add_usage_to_framework_span(claim_job_usage())
        return done

    def billed_tokenizer(self, text: str) -> list[int]:
        """Tokens a document's request is billed for: Qwen's tokens of ``text`` and the one the
        service adds per input. Give it to LlamaIndex's ``TokenCountingHandler`` so that its
        embedding counts are what the service bills (its default counts with OpenAI's
        vocabulary): ``TokenCountingHandler(tokenizer=embed_model.billed_tokenizer)``. Texts
        served from a cache cost nothing; queries also pay for their instruction."""
        return [*self._client.tokenizer.encode(text), 0]
