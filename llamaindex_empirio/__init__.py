"""LlamaIndex integration for text-embedding-v4 (see issue 5)."""

__all__: list[str] = []
