"""LangChain integration for Alibaba's text-embedding-v4 through EmpirioLabs.

from langchain_empirio import EmpirioEmbeddings

embeddings = EmpirioEmbeddings(dimensions=512)
sparse = embeddings.sparse()   # EmpirioSparseEmbeddings, for langchain-qdrant hybrid search
milvus = embeddings.milvus_sparse()  # EmpirioMilvusSparseEmbeddings, for langchain-milvus
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    import langchain_core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without the extra
    raise ImportError(
        "langchain_empirio needs langchain-core, which is not installed: "
        "pip install langchain-empirio"
    ) from exc

from .embeddings import EmpirioEmbeddings

if TYPE_CHECKING:
    from .milvus import EmpirioMilvusSparseEmbeddings
    from .sparse import EmpirioSparseEmbeddings

__all__ = ["EmpirioEmbeddings", "EmpirioMilvusSparseEmbeddings", "EmpirioSparseEmbeddings"]


def __getattr__(name: str) -> Any:
    # The sparse classes need langchain-qdrant or langchain-milvus, optional extras: import
    # them only when asked.
    if name == "EmpirioSparseEmbeddings":
        from .sparse import EmpirioSparseEmbeddings

        return EmpirioSparseEmbeddings
    if name == "EmpirioMilvusSparseEmbeddings":
        from .milvus import EmpirioMilvusSparseEmbeddings

        return EmpirioMilvusSparseEmbeddings
    raise AttributeError(f"module 'langchain_empirio' has no attribute {name!r}")
