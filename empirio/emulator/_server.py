"""Running the emulator: in a background thread for tests and notebooks, or in the foreground."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

from .._core.errors import ConfigurationError
from ._app import EmulatorConfig, create_app

__all__ = ["missing_server_extra", "require_server_extra", "run_app", "serve"]


def missing_server_extra() -> str | None:
    """The first package of the ``server`` extra that cannot be imported, if any."""
    import importlib.util

    for name in ("uvicorn", "orjson"):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a module stubbed out as None, or broken
            found = False
        if not found:
            return name
    return None


def require_server_extra(what: str) -> None:
    """Raise a one-line :class:`~empirio.ConfigurationError` naming the extra when the
    ``server`` extra is missing; ``what`` is what needs it (``"the emulator"``, ...)."""
    missing = missing_server_extra()
    if missing:
        raise ConfigurationError(
            f"{what} needs {missing}, which is not installed: pip install 'empirio[server]'"
        )


@contextlib.contextmanager
def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    config: EmulatorConfig | None = None,
    startup_timeout: float = 30.0,
    **options: Any,
) -> Iterator[str]:
    """Run the emulator in a background thread; yield its base URL (``http://127.0.0.1:PORT/v1``).

    Args:
        host: address to bind; loopback by default, so nothing outside this machine can reach it.
        port: port to bind; 0 picks a free one.
        config: a ready :class:`EmulatorConfig`; otherwise ``options`` are its fields
            (``api_key``, ``rpm``, ``tpm``, ``latency_ms``, ``fail_rate``, ``drop_rate``,
            ``retry_after``, ``max_batch``, ``strict_burst``, ``seed``, ``vectors``, ...);
            ``vectors="semantic"`` serves vectors that carry meaning across languages from the
            ``empirio[semantic]`` model, ``"auto"`` does when it is installed.
        startup_timeout: seconds to wait for the server to accept connections.

    The server stops, and its port is released, when the ``with`` block ends.
    """
    app = create_app(config, **options)
    with run_app(app, host=host, port=port, name="empirio-emulator", timeout=startup_timeout) as (
        shown,
        bound_port,
    ):
        yield f"http://{shown}:{bound_port}/v1"


@contextlib.contextmanager
def run_app(
    app: Any, *, host: str, port: int, name: str, timeout: float = 30.0
) -> Iterator[tuple[str, int]]:
    """Serve an ASGI ``app`` with uvicorn in a daemon thread; yield ``(host for URLs, port)``.

    Shared by the emulator and the playground. The server stops, and its port is released, when
    the ``with`` block ends.

    Raises:
        OSError: the address cannot be bound (the port is taken, say).
        RuntimeError: the server did not start within ``timeout`` seconds.
    """
    require_server_extra(f"the {name.removeprefix('empirio-')}")
    import uvicorn  # the server extra; imported here so the client never needs it

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=30,
            # The emulator drops connections on purpose; uvicorn must not answer them itself.
            timeout_graceful_shutdown=2,
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    try:
        waited = 0.0
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"{name} failed to start; see the log above")
            if waited >= timeout:
                raise RuntimeError(f"{name} did not start within {timeout} s")
            threading.Event().wait(0.01)
            waited += 0.01
        yield (f"[{host}]" if family == socket.AF_INET6 else host), bound_port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
