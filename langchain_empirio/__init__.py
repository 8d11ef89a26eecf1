"""LangChain integration for text-embedding-v4 (see issue 4)."""

__all__: list[str] = []
