"""Dense and sparse views of one response, shared between two callers.

Hybrid stores ask for the dense vectors of a batch and then for the sparse vectors of the same
batch (or the reverse). With view sharing on, the first call fetches ``dense&sparse`` once and
parks the other view here until the second call takes it, so each text is billed once. Pure
bookkeeping under a lock; bounded (least recently parked entries go first).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["ViewCache"]

View = Literal["dense", "sparse"]
_Value = npt.NDArray[np.float32] | dict[int, float]


class ViewCache:
    """Parked views keyed by ``(view, kind, text)``.

    Args:
        max_items: most parked views; older ones are dropped (and simply fetched again).
    """

    def __init__(self, max_items: int = 50_000) -> None:
        self.max_items = max_items
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, str, str], _Value] = OrderedDict()

    def after_fork(self) -> None:
        """A forked child's cache: a new lock (the parent's may have been held at the fork)."""
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def take(self, view: View, kind: str, texts: Sequence[str]) -> list[_Value | None]:
        """Pop the parked ``view`` of each text, or ``None`` where there is none. A text that
        appears several times gets the same value at each place."""
        with self._lock:
            found = {t: self._items.pop((view, kind, t), None) for t in dict.fromkeys(texts)}
        return [found[t] for t in texts]

    def park(
        self,
        kind: str,
        texts: Sequence[str],
        dense: npt.NDArray[np.float32] | None,
        sparse: Sequence[dict[int, float]] | None,
    ) -> None:
        """Park the given views of ``texts`` for a later :meth:`take`."""
        with self._lock:
            for i, text in enumerate(texts):
                if dense is not None:
                    self._items[("dense", kind, text)] = dense[i].copy()
                if sparse is not None:
                    self._items[("sparse", kind, text)] = sparse[i]
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
