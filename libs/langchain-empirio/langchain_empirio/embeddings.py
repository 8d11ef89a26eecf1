"""``EmpirioEmbeddings``: LangChain ``Embeddings`` for text-embedding-v4."""

from __future__ import annotations

from typing import TYPE_CHECKING

from langchain_core.embeddings import Embeddings
from langchain_core.load.serializable import Serializable
from pydantic import ConfigDict

from ._base import EmpirioSettings

if TYPE_CHECKING:
    from .milvus import EmpirioMilvusSparseEmbeddings
    from .sparse import EmpirioSparseEmbeddings

__all__ = ["EmpirioEmbeddings"]


class EmpirioEmbeddings(EmpirioSettings, Embeddings, Serializable):
    """text-embedding-v4 dense embeddings for LangChain.

    Batching, exact token limits, pacing to the account's limits, retries and concurrency are
    done by :class:`empirio.EmbeddingClient`; this class only maps LangChain's interface onto it.
    Queries get the task instruction, documents never do.

    Example:
        .. code-block:: python

            from langchain_core.vectorstores import InMemoryVectorStore
            from langchain_empirio import EmpirioEmbeddings

            embeddings = EmpirioEmbeddings(dimensions=512)  # key from EMPIRIOLABS_API_KEY
            store = InMemoryVectorStore.from_texts(["cats purr", "dogs bark"], embeddings)
            store.similarity_search("which animal purrs?", k=1)

    For hybrid search, ``embeddings.sparse()`` gives the sparse view from the same requests.
    """

    # Serializable's config (extra="ignore") would otherwise win: a misspelt field must fail.
    model_config = ConfigDict(**EmpirioSettings.model_config)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (no instruction). Returns one list of floats per text, in order."""
        if not texts:
            return []
        with self._traced(texts, "document"):
            return self._client.embed_as_lists(texts, kind="document")

    def embed_query(self, text: str) -> list[float]:
        """Embed a search query (with the query instruction)."""
        with self._traced([text], "query"):
            return self._client.embed([text], kind="query").dense_rows()[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """:meth:`embed_documents`, natively async."""
        if not texts:
            return []
        with self._traced(texts, "document"):
            return await self._client.aembed_as_lists(texts, kind="document")

    async def aembed_query(self, text: str) -> list[float]:
        """:meth:`embed_query`, natively async."""
        with self._traced([text], "query"):
            return (await self._client.aembed([text], kind="query")).dense_rows()[0]

    def sparse(self) -> EmpirioSparseEmbeddings:
        """The sparse view of the same model, sharing this object's client.

        Both views of a text then come from one ``dense&sparse`` request: whichever object asks
        first fetches both and the other is served from that response, so hybrid ingestion is
        billed once. Needs the ``qdrant`` extra (langchain-qdrant).
        """
        from .sparse import EmpirioSparseEmbeddings

        return EmpirioSparseEmbeddings(**self._sibling_fields())

    def milvus_sparse(self) -> EmpirioMilvusSparseEmbeddings:
        """The sparse view for langchain-milvus (``{token id: weight}`` dicts), sharing this
        object's client, so that dense and sparse come from one request per text. Needs
        langchain-milvus (``langchain-empirio[milvus]``)."""
        from .milvus import EmpirioMilvusSparseEmbeddings

        return EmpirioMilvusSparseEmbeddings(**self._sibling_fields())
