"""Progress of calls and jobs, in the caller's texts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Progress", "tqdm_class"]


class Progress:
    """A call's progress, in the caller's texts: a tqdm bar, a callback, both or neither."""

    def __init__(self, bar: Any, callback: Callable[[int], object] | None) -> None:
        self.bar = bar
        self.callback = callback

    def update(self, n: int) -> None:
        if n <= 0:
            return
        if self.bar is not None:
            self.bar.update(n)
        if self.callback is not None:
            self.callback(n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def tqdm_class() -> Any:
    """tqdm's notebook widget where ipywidgets is installed, else the text bar. Imported only
    when a bar is wanted: ``tqdm.auto`` warns in notebooks without ipywidgets."""
    try:
        import ipywidgets  # noqa: F401
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm.std import tqdm
    return tqdm
