"""``EmpirioSparseEmbedding``: LlamaIndex ``BaseSparseEmbedding``, and Qdrant hybrid functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from llama_index.core.base.embeddings.base_sparse import BaseSparseEmbedding, SparseEmbedding
from llama_index.core.bridge.pydantic import ConfigDict, Field

from empirio import Kind

from ._base import EmpirioFields

if TYPE_CHECKING:
    from .embeddings import EmpirioEmbedding

__all__ = ["EmpirioSparseEmbedding"]

BatchSparse = tuple[list[list[int]], list[list[float]]]


def _split(vectors: list[dict[int, float]]) -> BatchSparse:
    indices = [sorted(v) for v in vectors]
    values = [[float(v[i]) for i in idx] for v, idx in zip(vectors, indices, strict=True)]
    return indices, values


class EmpirioSparseEmbedding(EmpirioFields, BaseSparseEmbedding):
    """text-embedding-v4 sparse vectors (``{qwen_token_id: weight}``) for LlamaIndex.

    For Qdrant hybrid search, which takes encoding functions rather than a model (and would
    otherwise download a SPLADE model)::

        dense = EmpirioEmbedding(dimensions=512)
        store = QdrantVectorStore(
            client=qdrant, collection_name="docs", enable_hybrid=True,
            **dense.sparse().qdrant_functions(),
        )

    Made with ``EmpirioEmbedding(...).sparse()`` (or :meth:`dense`), both views share one
    request per text.
    """

    model_config = ConfigDict(
        protected_namespaces=("pydantic_model_",),
        arbitrary_types_allowed=True,
        extra="forbid",
        hide_input_in_errors=True,
        validate_assignment=True,
    )

    embed_batch_size: int = Field(default=1000, gt=0, le=2048, exclude=True)  # see EmpirioEmbedding

    @classmethod
    def class_name(cls) -> str:
        return "EmpirioSparseEmbedding"

    def _embed(self, texts: list[str], kind: Kind) -> list[dict[int, float]]:
        if not texts:
            return []
        result = self._client.embed(texts, kind=kind, output="sparse", **self._call_options())
        sparse = self._spent(result).sparse
        assert sparse is not None
        return sparse

    async def _aembed(self, texts: list[str], kind: Kind) -> list[dict[int, float]]:
        if not texts:
            return []
        result = await self._client.aembed(
            texts, kind=kind, output="sparse", **self._call_options()
        )
        sparse = self._spent(result).sparse
        assert sparse is not None
        return sparse

    def _get_query_embedding(self, query: str) -> SparseEmbedding:
        return self._embed([query], "query")[0]

    async def _aget_query_embedding(self, query: str) -> SparseEmbedding:
        return (await self._aembed([query], "query"))[0]

    def _get_text_embedding(self, text: str) -> SparseEmbedding:
        return self._embed([text], "document")[0]

    async def _aget_text_embedding(self, text: str) -> SparseEmbedding:
        return (await self._aembed([text], "document"))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[SparseEmbedding]:
        return self._embed(texts, "document")

    async def _aget_text_embeddings(self, texts: list[str]) -> list[SparseEmbedding]:
        return await self._aembed(texts, "document")

    def qdrant_functions(self) -> dict[str, Callable[[list[str]], BatchSparse]]:
        """``sparse_doc_fn`` and ``sparse_query_fn`` for ``QdrantVectorStore(enable_hybrid=True)``:
        ``QdrantVectorStore(..., **sparse.qdrant_functions())``."""

        def sparse_doc_fn(texts: list[str]) -> BatchSparse:
            return _split(self._embed(list(texts), "document"))

        def sparse_query_fn(texts: list[str]) -> BatchSparse:
            return _split(self._embed(list(texts), "query"))

        return {"sparse_doc_fn": sparse_doc_fn, "sparse_query_fn": sparse_query_fn}

    def dense(self) -> EmpirioEmbedding:
        """The dense view, sharing this object's client (one request per text for both)."""
        from .embeddings import EmpirioEmbedding

        return EmpirioEmbedding(**self._sibling_fields())
