"""A deadline over a whole sync exchange: each socket operation of our sync transports waits at
most the time left to the request's deadline, not a fresh read timeout each.

httpx's timeouts bound each read. The async shell bounds the whole exchange with
``asyncio.timeout``; a sync request sent from the caller's thread (``max_concurrency=1``) has
no such thing, and a server trickling its response headers a byte at a time would hold it for a
read timeout per byte. httpcore reads and writes through a network backend; ours wraps the
default one (:func:`bound`) and shortens each operation's timeout to what is left before the
deadline that :func:`until` sets for the thread's request; a user's ``httpx.Client`` has the
transport it uses for the endpoint bound too. Written by hand because neither httpx
nor httpcore bounds a whole exchange in sync code.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

__all__ = ["bound", "until"]

_local = threading.local()
#: The shortest wait a socket operation is given past the deadline: what is already there is
#: still read (a fast answer finishing), nothing more is waited for.
_AT_ONCE_S = 1e-6


@contextlib.contextmanager
def until(deadline: float) -> Iterator[None]:
    """Bound this thread's socket operations on bound transports by ``deadline`` (monotonic
    seconds) while inside."""
    _local.deadline = deadline
    try:
        yield
    finally:
        _local.deadline = None


def bound(transport: httpx.HTTPTransport) -> httpx.HTTPTransport:
    """``transport`` with its connections made through a deadline-aware backend.

    httpx does not take a network backend; its pool keeps one as ``_network_backend``, used for
    every connection it makes. Where a later version moves it, the transport is returned as it
    is (each read then bounded by the read timeout alone); ``tests/faults/test_trust.py`` holds
    the bound. Bounding a transport twice (a user's client given to two of ours) is bounding
    it once. Outside :func:`until` a bound transport behaves as before: a user's client bound
    for our calls is unchanged for theirs.
    """
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, httpcore.NetworkBackend) and not isinstance(backend, _Backend):
        pool._network_backend = _Backend(backend)  # type: ignore[union-attr]
    return transport


def _left(timeout: float | None) -> float | None:
    """``timeout``, shortened to the time left before this thread's deadline."""
    deadline: float | None = getattr(_local, "deadline", None)
    if deadline is None:
        return timeout
    left = max(_AT_ONCE_S, deadline - time.monotonic())
    return left if timeout is None else min(timeout, left)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(
            host, port, _left(timeout), local_address, socket_options
        )
        return _Stream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _Stream(self._backend.connect_unix_socket(path, _left(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _Stream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _left(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _Stream(self._stream.start_tls(ssl_context, server_hostname, _left(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)
