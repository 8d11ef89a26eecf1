"""Where a warning points: the first frame of the caller's code, however deep in ours."""

from __future__ import annotations

import os
import sys

__all__ = ["caller_level"]

#: Folders of our packages: a warning is reported at the first frame outside them.
_OUR_DIRS = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), n)
    + os.sep
    for n in ("empirio", "langchain_empirio", "llamaindex_empirio", "llama_index")
)


def caller_level() -> int:
    """``stacklevel`` for a warning raised by the function calling this, pointing at the
    user's code however deep the call (``iter_embed`` plans inside generators and drivers)."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_OUR_DIRS):
        if frame.f_back is None:
            break
        frame = frame.f_back
        level += 1
    return level
