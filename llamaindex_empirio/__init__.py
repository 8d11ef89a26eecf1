"""LlamaIndex integration for Alibaba's text-embedding-v4 through EmpirioLabs.

from llama_index.core import Settings
from llamaindex_empirio import EmpirioEmbedding

Settings.embed_model = EmpirioEmbedding(dimensions=512)
"""

from .embeddings import EmpirioEmbedding
from .sparse import EmpirioSparseEmbedding

__all__ = ["EmpirioEmbedding", "EmpirioSparseEmbedding"]
