"""Dense and sparse views of one response, shared between two callers.

Hybrid stores ask for the dense vectors of a batch and then for the sparse vectors of the same
batch (or the reverse). With view sharing on, the first call fetches ``dense&sparse`` once and
parks the other view here until the second call takes it, so each text is billed once. Pure
bookkeeping, bounded (least recently parked entries go first); the client calls it under its
lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .types import View

__all__ = ["ViewCache"]

_Value = npt.NDArray[np.float32] | dict[int, float]


class ViewCache:
    """Parked views keyed by ``(view, kind, text)``.

    Args:
        max_items: most parked views; older ones are dropped (and simply fetched again).
        max_bytes: most bytes parked (vectors and their texts, roughly); older ones are dropped.
            Views nobody asks for (a sparse sibling's texts whose dense view no one wants) must
            not grow without bound: 50,000 views of 2,048 floats are 400 MB.
    """

    def __init__(self, max_items: int = 50_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str, str], _Value] = OrderedDict()
        self._bytes = 0

    @staticmethod
    def _size(key: tuple[str, str, str], value: _Value) -> int:
        held = value.nbytes if isinstance(value, np.ndarray) else 48 * len(value)
        return held + len(key[2]) + 100

    @property
    def nbytes(self) -> int:
        """Bytes parked now, roughly (see ``max_bytes``)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def take(self, view: View, kind: str, texts: Sequence[str]) -> list[_Value | None]:
        """Pop the parked ``view`` of each text, or ``None`` where there is none. A text that
        appears several times gets the same value at each place."""
        found = {}
        for t in dict.fromkeys(texts):
            value = found[t] = self._items.pop((view, kind, t), None)
            if value is not None:
                self._bytes -= self._size((view, kind, t), value)
        return [found[t] for t in texts]

    def park(
        self,
        kind: str,
        texts: Sequence[str],
        dense: npt.NDArray[np.float32] | None,
        sparse: Sequence[dict[int, float]] | None,
    ) -> None:
        """Park the given views of ``texts`` for a later :meth:`take`."""
        for i, text in enumerate(texts):
            if dense is not None:
                self._put(("dense", kind, text), dense[i].copy())
            if sparse is not None:
                self._put(("sparse", kind, text), sparse[i])
        while self._items and (len(self._items) > self.max_items or self._bytes > self.max_bytes):
            key, value = self._items.popitem(last=False)
            self._bytes -= self._size(key, value)

    def _put(self, key: tuple[str, str, str], value: _Value) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= self._size(key, old)
        self._items[key] = value
        self._bytes += self._size(key, value)
