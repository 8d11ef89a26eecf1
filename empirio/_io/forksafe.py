"""Locks held across ``fork``, one helper for every store that guards SQLite with a lock.

SQLite keeps process-wide mutexes of its own: a child forked while another thread is inside
SQLite inherits them held, and hangs in its first ``sqlite3.connect``. Every use of a store's
connection holds the store's lock, so holding all of them across the fork means no thread of
ours is inside SQLite when it happens; the child then renews its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable

__all__ = ["hold_across_fork"]


def hold_across_fork(
    locks: Callable[[], Iterable[threading.Lock]], renew_in_child: Callable[[], None]
) -> None:
    """Acquire ``locks()`` before every fork, release them after it in the parent, and call
    ``renew_in_child`` in the child (which must replace them)."""
    held: list[threading.Lock] = []

    def before() -> None:
        for lock in locks():
            lock.acquire()
            held.append(lock)

    def after_in_parent() -> None:
        while held:
            held.pop().release()

    def after_in_child() -> None:
        held.clear()
        renew_in_child()

    os.register_at_fork(
        before=before, after_in_parent=after_in_parent, after_in_child=after_in_child
    )
