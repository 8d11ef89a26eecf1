"""Fields and client building shared by the dense and sparse LlamaIndex classes."""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, Literal

import httpx
from llama_index.core.bridge.pydantic import ConfigDict, Field, SecretStr

from empirio import EmbeddingClient
from empirio.integration import (
    API_BASE_ENV,
    API_KEY_ENV,
    DEFAULTS,
    SETTINGS,
    ClientFields,
    InstructionMode,
    Overflow,
    Progress,
    as_text_list,
    check_texts,
    default_rpm,
    default_tpm,
    tqdm_class,
)

__all__ = ["EmpirioFields"]

#: The vectors of the batch job under way in this context, by text (see ``_prefetch``).
_PREFETCHED: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "empirio_llamaindex_prefetched", default=None
)

#: The progress callback of the batch job under way in this context, if it shows a bar.
_JOB: contextvars.ContextVar[Callable[[int], None] | None] = contextvars.ContextVar(
    "empirio_llamaindex_job", default=None
)


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
    cache: Any = Field(
        default=None,
        exclude=True,
        repr=False,
        description="A persistent embedding cache shared with the core and the CLI: a file path "
        "(SQLite), a redis://[:password@]host:port/db URL (one cache for every host), or any "
        "byte store with mget/mset. Cached texts are never sent again.",
    )
    http_client: httpx.Client | None = Field(default=None, exclude=True)
    async_http_client: httpx.AsyncClient | None = Field(default=None, exclude=True)
    client: EmbeddingClient | None = Field(default=None, exclude=True)

    # LlamaIndex's batch methods take len() of their input and number bad texts within each
    # embed_batch_size chunk, after earlier chunks were sent; and a bar per chunk floods a
    # notebook. So: any iterable, checked whole first (positions in the caller's list), and one
    # bar for the whole job, advanced as each request finishes; LlamaIndex's own is off.
    def get_text_embedding_batch(
        self, texts: Iterable[str], show_progress: bool = False, **kwargs: Any
    ) -> Any:
        """LlamaIndex's batch embedding, for any iterable of texts, checked whole first."""
        checked = check_texts(as_text_list(texts))
        parent: Any = super()
        with self._job(len(checked), show_progress), self._serving(self._prefetch(checked)):
            return parent.get_text_embedding_batch(checked, show_progress=False, **kwargs)

    async def aget_text_embedding_batch(
        self, texts: Iterable[str], show_progress: bool = False, **kwargs: Any
    ) -> Any:
        """:meth:`get_text_embedding_batch`, async."""
        checked = check_texts(as_text_list(texts))
        parent: Any = super()
        with self._job(len(checked), show_progress), self._serving(await self._aprefetch(checked)):
            return await parent.aget_text_embedding_batch(checked, show_progress=False, **kwargs)

    @contextlib.contextmanager
    def _job(self, total: int, show: bool) -> Iterator[None]:
        if not (show or self.show_progress) or _JOB.get() is not None:
            yield
            return
        with Progress(tqdm_class()(total=total, unit="text", desc="Embedding"), None) as bar:
            token = _JOB.set(bar.update)
            try:
                yield
            finally:
                _JOB.reset(token)

    # LlamaIndex's batch loop embeds one embed_batch_size chunk after another, each waiting for
    # its slowest request (a latency lost per chunk, and its sync path never overlaps them).
    # So the whole job is embedded first, as one pipelined call into the client, and the
    # chunks LlamaIndex then asks for are served from it: its callbacks and events still fire.
    def _prefetch(self, texts: list[str]) -> dict[str, Any] | None:
        """The job's vectors by text, fetched in one call; ``None`` to leave it to the chunks."""
        return None

    async def _aprefetch(self, texts: list[str]) -> dict[str, Any] | None:
        """:meth:`_prefetch`, async."""
        return None

    def _can_prefetch(self, texts: list[str]) -> bool:
        # LlamaIndex's own embeddings cache skips texts it has: embedding them all would pay
        # for those again. Small jobs are one chunk anyway.
        return getattr(self, "embeddings_cache", None) is None and len(texts) > int(
            getattr(self, "embed_batch_size", 10**9)
        )

    @contextlib.contextmanager
    def _serving(self, vectors: dict[str, Any] | None) -> Iterator[None]:
        token = _PREFETCHED.set(vectors)
        try:
            yield
        finally:
            _PREFETCHED.reset(token)

    def _prefetched(self, texts: list[str]) -> list[Any] | None:
        """The vectors of ``texts`` if this job fetched them all already, else ``None``."""
        vectors = _PREFETCHED.get()
        if vectors is None or any(t not in vectors for t in texts):
            return None
        return [vectors[t] for t in texts]

    def _call_options(self) -> dict[str, Any]:
        """Keywords for each call into the client: never a bar of its own (the job has one)."""
        return {"show_progress": False, "on_progress": _JOB.get()}
