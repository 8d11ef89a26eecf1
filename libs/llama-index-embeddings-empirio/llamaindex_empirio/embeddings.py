"""``EmpirioEmbedding``: LlamaIndex ``BaseEmbedding`` for text-embedding-v4."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import ConfigDict, Field

from empirio.integration import call_options

from ._base import EmpirioFields

if TYPE_CHECKING:
    from .sparse import EmpirioSparseEmbedding

__all__ = ["EmpirioEmbedding"]


class EmpirioEmbedding(EmpirioFields, BaseEmbedding):
    """text-embedding-v4 dense embeddings for LlamaIndex.

    ``embed_batch_size`` is LlamaIndex's batch: each such batch is handed to
    :class:`empirio.EmbeddingClient`, which sends it as requests of at most the service's limit,
    concurrently, paced to the account. Query methods add the task instruction; text methods
    never do.

    Example:
        .. code-block:: python

            from llama_index.core import Settings, VectorStoreIndex
            from llamaindex_empirio import EmpirioEmbedding

            Settings.embed_model = EmpirioEmbedding(dimensions=512)
            index = VectorStoreIndex.from_documents(documents)
    """

    model_config = ConfigDict(
        protected_namespaces=("pydantic_model_",),
        arbitrary_types_allowed=True,
        extra="forbid",
        hide_input_in_errors=True,
        validate_assignment=True,
    )

    # 1000, not LlamaIndex's usual 100: its sync path embeds one batch after another, each
    # waiting for its slowest request, which at high rates loses a latency per batch (0.80 of the
    # account's bound at 1,200 RPM with 100). The client splits any batch into requests of 10.
    embed_batch_size: int = Field(
        default=1000,
        gt=0,
        le=2048,
        exclude=True,
        description="Texts per call into the client (which splits them into requests of 10).",
    )

    @classmethod
    def class_name(cls) -> str:
        return "EmpirioEmbedding"

    def _get_query_embedding(self, query: str) -> Embedding:
        result = self._client.embed([query], kind="query", **self._call_options())
        return self._spent(result).dense_rows()[0]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        result = await self._client.aembed([query], kind="query", **self._call_options())
        return self._spent(result).dense_rows()[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._aget_text_embeddings([text]))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        if not texts:
            return []
        done = self._served(texts)
        if done is not None:
            return done
        result = self._client.embed(texts, kind="document", **self._call_options())
        return self._spent(result).dense_rows()

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        if not texts:
            return []
        done = self._served(texts)
        if done is not None:
            return done
        result = await self._client.aembed(texts, kind="document", **self._call_options())
        return self._spent(result).dense_rows()

    def _job_fetch(self, texts: list[str]) -> Callable[[list[str]], list[Embedding]] | None:
        if not self._worth_prefetching(texts):
            return None
        return lambda job: self._client.embed_as_lists(job, kind="document", **call_options())

    def _job_afetch(
        self, texts: list[str]
    ) -> Callable[[list[str]], Awaitable[list[Embedding]]] | None:
        if not self._worth_prefetching(texts):
            return None
        return lambda job: self._client.aembed_as_lists(job, kind="document", **call_options())

    def sparse(self) -> EmpirioSparseEmbedding:
        """The sparse view of the same model, sharing this object's client: dense and sparse of
        a text then come from one request."""
        from .sparse import EmpirioSparseEmbedding

        return EmpirioSparseEmbedding(**self._sibling_fields())
