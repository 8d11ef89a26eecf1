"""``EmpirioMilvusSparseEmbeddings``: the sparse view in langchain-milvus's sparse slot."""

from __future__ import annotations

from typing import TYPE_CHECKING

try:
    from langchain_milvus.utils.sparse import BaseSparseEmbedding
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "EmpirioMilvusSparseEmbeddings needs langchain-milvus: "
        "pip install 'langchain-empirio[milvus]'"
    ) from exc

from langchain_core.load.serializable import Serializable
from pydantic import ConfigDict

from ._base import EmpirioSettings

if TYPE_CHECKING:
    from .embeddings import EmpirioEmbeddings

__all__ = ["EmpirioMilvusSparseEmbeddings"]


class EmpirioMilvusSparseEmbeddings(EmpirioSettings, BaseSparseEmbedding, Serializable):
    """text-embedding-v4 sparse vectors as langchain-milvus wants them: one
    ``{token id: weight}`` dict per text (a ``BaseSparseEmbedding``, which ``Milvus`` checks for).

    Example:
        .. code-block:: python

            from langchain_milvus import Milvus
            from langchain_empirio import EmpirioEmbeddings

            dense = EmpirioEmbeddings(dimensions=512)
            store = Milvus.from_texts(
                texts, [dense, dense.milvus_sparse()], vector_field=["dense", "sparse"],
                connection_args={"uri": "./milvus.db"},
            )

    Made with ``EmpirioEmbeddings(...).milvus_sparse()`` (or :meth:`dense` from this one), both
    views share one ``dense&sparse`` request per text.
    """

    # Serializable's config (extra="ignore") would otherwise win: a misspelt field must fail.
    model_config = ConfigDict(**EmpirioSettings.model_config)

    def embed_documents(self, texts: list[str]) -> list[dict[int, float]]:
        """Sparse vectors of documents, in order: Qwen token id -> positive weight."""
        if not texts:
            return []
        sparse = self._client.embed(texts, kind="document", output="sparse").sparse
        assert sparse is not None
        return sparse

    def embed_query(self, query: str) -> dict[int, float]:
        """Sparse vector of a query (the instruction is not part of it)."""
        sparse = self._client.embed([query], kind="query", output="sparse").sparse
        assert sparse is not None
        return sparse[0]

    async def aembed_documents(self, texts: list[str]) -> list[dict[int, float]]:
        """:meth:`embed_documents`, natively async."""
        if not texts:
            return []
        sparse = (await self._client.aembed(texts, kind="document", output="sparse")).sparse
        assert sparse is not None
        return sparse

    async def aembed_query(self, query: str) -> dict[int, float]:
        """:meth:`embed_query`, natively async."""
        sparse = (await self._client.aembed([query], kind="query", output="sparse")).sparse
        assert sparse is not None
        return sparse[0]

    def dense(self) -> EmpirioEmbeddings:
        """The dense view, sharing this object's client (one request per text for both)."""
        from .embeddings import EmpirioEmbeddings

        return EmpirioEmbeddings(**self._sibling_fields())
