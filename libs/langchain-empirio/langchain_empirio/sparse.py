"""``EmpirioSparseEmbeddings``: langchain-qdrant ``SparseEmbeddings`` for hybrid search."""

from __future__ import annotations

from typing import TYPE_CHECKING

try:
    from langchain_qdrant import SparseEmbeddings, SparseVector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "EmpirioSparseEmbeddings needs langchain-qdrant: pip install 'langchain-empirio[qdrant]'"
    ) from exc

from langchain_core.load.serializable import Serializable
from pydantic import ConfigDict

from ._base import EmpirioSettings

if TYPE_CHECKING:
    from .embeddings import EmpirioEmbeddings
    from .milvus import EmpirioMilvusSparseEmbeddings

__all__ = ["EmpirioSparseEmbeddings"]


def _vector(weights: dict[int, float]) -> SparseVector:
    indices = sorted(weights)
    return SparseVector(indices=indices, values=[float(weights[i]) for i in indices])


class EmpirioSparseEmbeddings(EmpirioSettings, SparseEmbeddings, Serializable):
    """text-embedding-v4 sparse vectors (Qwen token id -> weight) for Qdrant hybrid search.

    Example:
        .. code-block:: python

            from langchain_qdrant import QdrantVectorStore, RetrievalMode
            from langchain_empirio import EmpirioEmbeddings

            dense = EmpirioEmbeddings(dimensions=512)
            store = QdrantVectorStore.from_texts(
                texts, dense, sparse_embedding=dense.sparse(), location=":memory:",
                retrieval_mode=RetrievalMode.HYBRID,
            )

    Made with ``EmpirioEmbeddings(...).sparse()`` (or :meth:`dense` from this one), both views
    share one request per text.
    """

    # Serializable's config (extra="ignore") would otherwise win: a misspelt field must fail.
    model_config = ConfigDict(**EmpirioSettings.model_config)

    def embed_documents(self, texts: list[str]) -> list[SparseVector]:
        """Sparse vectors of documents, in order; indices unique and ascending."""
        if not texts:
            return []
        with self._traced(texts, "document", "sparse"):
            sparse = self._client.embed(texts, kind="document", output="sparse").sparse
        assert sparse is not None
        return [_vector(w) for w in sparse]

    def embed_query(self, text: str) -> SparseVector:
        """Sparse vector of a query."""
        with self._traced([text], "query", "sparse"):
            sparse = self._client.embed([text], kind="query", output="sparse").sparse
        assert sparse is not None
        return _vector(sparse[0])

    async def aembed_documents(self, texts: list[str]) -> list[SparseVector]:
        """:meth:`embed_documents`, natively async."""
        if not texts:
            return []
        with self._traced(texts, "document", "sparse"):
            sparse = (await self._client.aembed(texts, kind="document", output="sparse")).sparse
        assert sparse is not None
        return [_vector(w) for w in sparse]

    async def aembed_query(self, text: str) -> SparseVector:
        """:meth:`embed_query`, natively async."""
        with self._traced([text], "query", "sparse"):
            sparse = (await self._client.aembed([text], kind="query", output="sparse")).sparse
        assert sparse is not None
        return _vector(sparse[0])

    def dense(self) -> EmpirioEmbeddings:
        """The dense view, sharing this object's client (one request per text for both)."""
        from .embeddings import EmpirioEmbeddings

        return EmpirioEmbeddings(**self._sibling_fields())

    def milvus(self) -> EmpirioMilvusSparseEmbeddings:
        """This view as langchain-milvus wants it (``{token id: weight}`` dicts), sharing this
        object's client. Needs langchain-milvus (``langchain-empirio[milvus]``)."""
        from .milvus import EmpirioMilvusSparseEmbeddings

        return EmpirioMilvusSparseEmbeddings(**self._sibling_fields())
