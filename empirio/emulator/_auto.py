"""Use the real service when a key is set, else a local emulator: one call for notebooks."""

from __future__ import annotations

import atexit
import contextlib
import os
import threading

from .._config import API_BASE_ENV, API_KEY_ENV, RPM_ENV, TPM_ENV
from ._server import serve

__all__ = ["start_if_no_key"]

_lock = threading.Lock()
_running: list[str] = []  # the one process-wide emulator's base URL, once started


def start_if_no_key(*, quiet: bool = False) -> str | None:
    """Point this process at the real service or at a local emulator.

    With ``EMPIRIOLABS_API_KEY`` set, changes nothing and returns ``None``. Otherwise starts an
    emulator on a free loopback port (once per process; stopped at exit) and sets
    ``EMPIRIOLABS_API_KEY``, ``EMPIRIOLABS_API_BASE`` and unpaced ``EMPIRIOLABS_RPM``/``_TPM``
    so that every client created afterwards uses it. Returns the emulator's base URL.

    Args:
        quiet: do not print which endpoint is used.
    """
    with _lock:
        if _running and os.environ.get(API_BASE_ENV) == _running[0]:
            return _running[0]
        if os.environ.get(API_KEY_ENV):
            if not quiet:
                print("Using the real EmpirioLabs service (EMPIRIOLABS_API_KEY is set).")
            return None
        if _running:  # started before, and the environment was reset since: point at it again
            url = _running[0]
        else:
            stack = contextlib.ExitStack()
            url = stack.enter_context(serve())
            atexit.register(stack.close)
            _running.append(url)
        os.environ.update(
            {API_KEY_ENV: "emulator", API_BASE_ENV: url, RPM_ENV: "none", TPM_ENV: "none"}
        )
        if not quiet:
            print(
                f"No EMPIRIOLABS_API_KEY: using the LOCAL EMULATOR at {url}. Its vectors come "
                "from hashed tokens, not the real model; numbers below are the emulator's."
            )
        return url
