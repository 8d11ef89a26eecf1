"""The key inside pickles and copies.

A pickled client must carry its key to work in another process, but the key must never appear
in the pickle's bytes or text (where logs, caches and ``pickletools`` would show it). A
:class:`SealedKey` keeps it XOR-masked with a random pad of its own length: not encryption (the
pad travels with it, so treat pickles as secrets), but nothing that reads the bytes sees the key.
"""

from __future__ import annotations

import secrets

__all__ = ["SealedKey"]


class SealedKey:
    """An API key masked for pickling; :meth:`reveal` gives it back."""

    __slots__ = ("_masked", "_pad")

    def __init__(self, key: str) -> None:
        raw = key.encode("utf-8", "surrogatepass")
        self._pad = secrets.token_bytes(len(raw))
        self._masked = bytes(a ^ b for a, b in zip(raw, self._pad, strict=True))

    def reveal(self) -> str:
        """The key."""
        raw = bytes(a ^ b for a, b in zip(self._masked, self._pad, strict=True))
        return raw.decode("utf-8", "surrogatepass")

    def __getstate__(self) -> tuple[bytes, bytes]:
        return self._masked, self._pad

    def __setstate__(self, state: tuple[bytes, bytes]) -> None:
        self._masked, self._pad = state

    def __repr__(self) -> str:
        return "SealedKey('**********')"
