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
        self._note = False

    @classmethod
    def of(
        cls, total: int | None, show: bool, callback: Callable[[int], object] | None
    ) -> Progress:
        """Progress over ``total`` texts (``None``: unknown), with a bar if ``show``."""
        bar = tqdm_class()(total=total, unit="text", desc="Embedding") if show else None
        return cls(bar, callback)

    def waiting(self, why: str) -> None:
        """Say on the bar what the call waits for (a retry after a 429, say), until the next
        text finishes."""
        if self.bar is not None and hasattr(self.bar, "set_postfix_str"):
            self.bar.set_postfix_str(why)
            self._note = True

    def update(self, n: int) -> None:
        if n <= 0:
            return
        bar = self.bar
        if bar is not None:
            if self._note:  # what it waited for is over
                bar.set_postfix_str("", refresh=False)
                self._note = False
            if bar.total is not None and bar.n + n >= bar.total:
                # The last step is drawn once, by close(): updating would draw "N/N" too when
                # the refresh interval has passed, and the bar would show its end twice.
                bar.n += n
            else:
                bar.update(n)
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
