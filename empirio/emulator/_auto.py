"""Use the real service when a key is set, else a local emulator: one call for notebooks."""

from __future__ import annotations

import atexit
import contextlib
import os
import threading

from .._core.config import API_BASE_ENV, API_KEY_ENV, RPM_ENV, TPM_ENV
from ._app import EmulatorConfig
from ._semantic import Vectors, describe_vectors
from ._server import serve

__all__ = ["start_if_no_key"]

_lock = threading.Lock()
_running: list[str] = []  # the one process-wide emulator's base URL, once started
_described: list[str] = []  # and what its vectors are (describe_vectors)


def start_if_no_key(*, quiet: bool = False, vectors: Vectors = "auto") -> str | None:
    """Point this process at the real service or at a local emulator.

    With ``EMPIRIOLABS_API_KEY`` set, changes nothing and returns ``None``. Otherwise starts an
    emulator on a free loopback port (once per process; stopped at exit) and sets
    ``EMPIRIOLABS_API_KEY``, ``EMPIRIOLABS_API_BASE`` and unpaced ``EMPIRIOLABS_RPM``/``_TPM``
    so that every client created afterwards uses it. Returns the emulator's base URL.

    Args:
        quiet: do not print which endpoint is used (and what the emulator's vectors are).
        vectors: the emulator's vectors: ``"auto"`` (the default) serves the semantic stand-in
            when ``empirio[semantic]`` is installed and hashed vectors otherwise, and says which;
            ``"semantic"`` or ``"hashed"`` insist. Only the first call in a process starts one.
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
            config = EmulatorConfig(vectors=vectors)
            stack = contextlib.ExitStack()
            url = stack.enter_context(serve(config=config))
            atexit.register(stack.close)
            _running.append(url)
            _described.append(describe_vectors(config.vectors))
        os.environ.update(
            {API_KEY_ENV: "emulator", API_BASE_ENV: url, RPM_ENV: "none", TPM_ENV: "none"}
        )
        if not quiet:
            print(
                f"No EMPIRIOLABS_API_KEY: using the LOCAL EMULATOR at {url}, {_described[0]}. "
                "Numbers below are the emulator's."
            )
        return url
