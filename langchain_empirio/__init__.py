"""LangChain integration for Alibaba's text-embedding-v4 through EmpirioLabs.

from langchain_empirio import EmpirioEmbeddings

embeddings = EmpirioEmbeddings(dimensions=512)
sparse = embeddings.sparse()   # EmpirioSparseEmbeddings, for langchain-qdrant hybrid search
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    import langchain_core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without the extra
    raise ImportError(
        "langchain_empirio needs langchain-core, which is not installed: "
        "pip install 'empirio[langchain]'"
    ) from exc

from .embeddings import EmpirioEmbeddings

if TYPE_CHECKING:
    from .sparse import EmpirioSparseEmbeddings

__all__ = ["EmpirioEmbeddings", "EmpirioSparseEmbeddings"]


def __getattr__(name: str) -> Any:
    # The sparse class needs langchain-qdrant, an optional extra: import it only when asked.
    if name == "EmpirioSparseEmbeddings":
        from .sparse import EmpirioSparseEmbeddings

        return EmpirioSparseEmbeddings
    raise AttributeError(f"module 'langchain_empirio' has no attribute {name!r}")
