"""LlamaIndex integration for Alibaba's text-embedding-v4 through EmpirioLabs.

from llama_index.core import Settings
from llamaindex_empirio import EmpirioEmbedding

Settings.embed_model = EmpirioEmbedding(dimensions=512)
"""

try:
    import llama_index.core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without the extra
    raise ImportError(
        "llama_index.embeddings.empirio needs llama-index-core, which is not installed: "
        "pip install llama-index-embeddings-empirio"
    ) from exc

from .embeddings import EmpirioEmbedding
from .sparse import EmpirioSparseEmbedding

__all__ = ["EmpirioEmbedding", "EmpirioSparseEmbedding"]
