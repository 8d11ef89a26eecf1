"""The conventional LlamaIndex import path: ``from llama_index.embeddings.empirio import ...``.

``llama_index`` and ``llama_index.embeddings`` are namespace packages, so this module sits beside
the other integrations; the classes live in :mod:`llamaindex_empirio`.
"""

from llamaindex_empirio import EmpirioEmbedding, EmpirioSparseEmbedding

__all__ = ["EmpirioEmbedding", "EmpirioSparseEmbedding"]
