"""Sending one attempt: the HTTP connections (our own httpx transports per event loop, one per
request in flight, or the user's client), a body size cap, the timeout over the whole
exchange, and transport failures classified for :func:`empirio._core.retry.transport_error`
(which decides what they mean)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import socket
import ssl
import threading
import time
import urllib.request
import weakref
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import httpx

from .._core.config import is_loopback_url, package_version
from .._core.decode import Decoded
from .._core.driver import Call
from .._core.engine import Attempt
from .._core.errors import APIResponseValidationError, EmpirioError
from .._core.retry import TransportFailure, transport_error
from .._core.settings import ClientConfig
from .._core.wire import request_body, response_cap
from .deadline import bound, until
from .session import Session, note_sent

__all__ = ["Transport"]

_VERSION = package_version()
_Loop = asyncio.AbstractEventLoop


class Transport:
    """Sends a client's attempts and reads their answers (through its :class:`Session`).

    Args:
        session: the client's session (settings, budget, answers).
        http_client: a user's ``httpx.Client`` for the sync shell (used on a worker thread).
        async_http_client: a user's ``httpx.AsyncClient`` (used on any loop).
    """

    def __init__(
        self,
        session: Session,
        http_client: httpx.Client | None,
        async_http_client: httpx.AsyncClient | None,
    ) -> None:
        self.session = session
        self.config: ClientConfig = session.config
        self.url = f"{self.config.base_url}/embeddings"
        self.headers = {
            "Authorization": f"Bearer {self.config.api_key.get_secret_value()}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",
            "User-Agent": f"empirio/{_VERSION}",
        }
        # Parsed and normalised once, not for each request on our own transports (a third of
        # the CPU httpx.Request takes).
        self.wire_url, self.wire_headers = httpx.URL(self.url), httpx.Headers(self.headers)
        timeout = self.config.timeout
        #: httpx's per-read timeouts of each request sent on our own transports
        self.read_timeouts = httpx.Timeout(timeout, connect=min(10.0, timeout)).as_dict()
        self.user_http = http_client
        if http_client is not None:
            _bound_user_client(http_client, self.wire_url)
        self.user_async_http = async_http_client
        self.clients: list[tuple[_Loop, _Sender, AsyncGenerator[None, None]]] = []
        #: keepers of clients made on a loop that must close them at its shutdown even if this
        #: transport is collected first (the sync shell's private loop; see ``for_loop``)
        self.keep_with: tuple[_Loop, list[AsyncGenerator[None, None]]] | None = None
        self._blocking: _Lanes[httpx.HTTPTransport] | None = None
        self._close_blocking: weakref.finalize[Any, Any] | None = None

    def after_fork(self) -> None:
        self.clients = []
        self.keep_with = None
        if self._close_blocking is not None:  # the parent's connections: not ours to close
            self._close_blocking.detach()
        self._blocking = self._close_blocking = None

    async def for_loop(self) -> _Sender:
        """What sends on the running loop: the user's ``httpx.AsyncClient``, or our own
        transport for this loop (made on first use)."""
        if self.user_async_http is not None:
            return self.user_async_http
        loop = asyncio.get_running_loop()
        with self.session.lock:
            # An httpx.AsyncClient belongs to the loop that made its connections: keep one per
            # loop, and forget those whose loop has closed (notebooks and asyncio.run make many).
            self.clients = [e for e in self.clients if not e[0].is_closed()]
            for lp, client, _ in self.clients:
                if lp is loop:
                    return client
            # httpcore imports anyio's asyncio backend on its first connection (about 80 ms);
            # done here, before pacing starts, it cannot delay a paced send behind its slot.
            importlib.import_module("anyio._backends._asyncio")
            tls, proxy = self._lane_settings()
            lanes: _Sender = _Lanes(
                lambda: httpx.AsyncHTTPTransport(verify=tls, proxy=proxy, limits=_ONE_CONNECTION)
            )
            keeper = _close_at_loop_shutdown(lanes)
            self.clients.append((loop, lanes, keeper))
            if self.keep_with is not None and self.keep_with[0] is loop:
                # The loop only holds its async generators weakly: if this client is collected
                # first, the keeper must still be there for the loop's shutdown to close it.
                self.keep_with[1].append(keeper)
        # Started here, the keeper is registered with this loop; asyncio.run (and any loop that
        # runs shutdown_asyncgens) closes it as the loop ends, and with it the connections.
        await anext(keeper)
        return lanes

    def wire_request(self, body: bytes) -> httpx.Request:
        """The POST of ``body`` as our own transports send it (httpx's per-read timeouts)."""
        return httpx.Request(
            "POST",
            self.wire_url,
            content=body,
            headers=self.wire_headers,
            extensions={"timeout": self.read_timeouts},
        )

    def _lane_settings(self) -> tuple[ssl.SSLContext, str | None]:
        """The TLS context all our lanes share (``SSL_CERT_FILE`` and ``SSL_CERT_DIR``; about
        20 ms to make) and the environment's proxy. A loopback server is reached directly:
        ``HTTP_PROXY`` would otherwise receive the key in clear text over http://."""
        trust_env = not is_loopback_url(self.config.base_url)
        proxy = _environment_proxy(self.url) if trust_env else None
        return httpx.create_ssl_context(trust_env=trust_env), proxy

    async def aclose_for_loop(self) -> None:
        """Close the running loop's client (those of ended loops closed with their loop)."""
        with self.session.lock:
            clients, self.clients = self.clients, []
        loop = asyncio.get_running_loop()
        for lp, _, keeper in clients:
            if lp is loop:
                await keeper.aclose()

    def _request(self, attempt: Attempt, call: Call) -> tuple[bytes, int]:
        """The body of ``attempt`` and the most its answer may decode to, in bytes."""
        cfg, texts = self.config, attempt.request.texts
        body = request_body(
            texts,
            model=cfg.model,
            dimensions=cfg.dimensions,
            encoding_format=cfg.encoding_format,
            user=cfg.user,
            kind=call.kind,
            output=call.output,
            instruction_mode=cfg.instruction_mode,
            query_instruction=cfg.query_instruction,
        )
        return body, response_cap(len(texts), cfg.dimensions, call.sparse)

    async def send(self, attempt: Attempt, call: Call, *, sync: bool) -> Decoded | EmpirioError:
        """Send one attempt on the running loop; ``sync``: for the sync shell (which uses the
        ``http_client`` it was given, on a worker thread, where it was given one).

        ``timeout`` bounds the whole exchange, headers and body: httpx's own timeouts bound each
        read, so a server trickling a byte a second would otherwise hold the call for ever.
        """
        cfg = self.config
        body, cap = self._request(attempt, call)
        hold = attempt.slot - time.monotonic()
        if hold > 0:  # a slot booked ahead: leave at its time, whatever the caller does now
            await asyncio.sleep(hold)
        note_sent(self.session, attempt)
        try:
            if sync and self.user_http is not None:
                # The worker thread goes on past wait_for's timeout: bounded by the same deadline,
                # it lets go of the user's connection then too.
                post = functools.partial(
                    _post_capped_sync,
                    self.user_http,
                    self.url,
                    body,
                    self.headers,
                    cap,
                    time.monotonic() + cfg.timeout,
                )
                got = await asyncio.wait_for(
                    asyncio.get_running_loop().run_in_executor(None, post), cfg.timeout
                )
            else:
                http = await self.for_loop()
                async with asyncio.timeout(cfg.timeout):
                    if isinstance(http, httpx.AsyncClient):
                        got = await _post_capped(http, self.url, body, self.headers, cap)
                    else:
                        got = await _post_direct(http, self, body, cap)
        except Exception as exc:
            return self._failure(exc, cap, len(attempt.request.texts))
        status, content, headers = got
        return self.session.read(status, content, headers, len(attempt.request.texts), call)

    def send_blocking(self, attempt: Attempt, call: Call) -> Decoded | EmpirioError:
        """:meth:`send` on the caller's thread with sync httpx (a twin), for the sync shell when
        one request at most is in flight (``max_concurrency=1``): no hop to the I/O thread and
        back, and no event loop, for each request (about 0.6 ms of CPU a request, 40 % of the
        floor's, ``bench/client_cpu.py``). The whole exchange is bounded by ``timeout`` too:
        each socket operation of our transports waits at most what is left of it
        (:mod:`empirio._io.deadline`), a user's ``http_client``'s too where its transport for
        the endpoint is httpx's own (else each of its reads is bounded by its own timeout, and
        the body is checked as each piece arrives)."""
        cfg = self.config
        body, cap = self._request(attempt, call)
        hold = attempt.slot - time.monotonic()
        if hold > 0:  # a slot booked ahead: leave at its time
            time.sleep(hold)
        note_sent(self.session, attempt)
        deadline = time.monotonic() + cfg.timeout
        try:
            if self.user_http is not None:
                got = _post_capped_sync(self.user_http, self.url, body, self.headers, cap, deadline)
            else:
                got = _post_direct_sync(self.blocking_lanes(), self, body, cap, deadline)
        except Exception as exc:
            return self._failure(exc, cap, len(attempt.request.texts))
        status, content, headers = got
        return self.session.read(status, content, headers, len(attempt.request.texts), call)

    def blocking_lanes(self) -> _Lanes[httpx.HTTPTransport]:
        """Our sync transports for :meth:`send_blocking` (made on first use: the sync shell asks
        before its first pacing decision, as it does for the loop's)."""
        with self.session.lock:
            if self._blocking is None:
                tls, proxy = self._lane_settings()
                lanes = self._blocking = _Lanes(
                    lambda: bound(
                        httpx.HTTPTransport(verify=tls, proxy=proxy, limits=_ONE_CONNECTION)
                    )
                )
                # Framework objects are rarely closed by their users: their connections are
                # closed when this transport is collected.
                self._close_blocking = weakref.finalize(self, _close_lanes, lanes)
            return self._blocking

    def close_blocking(self) -> None:
        """Close the sync transports' connections."""
        with self.session.lock:
            self._blocking, close = None, self._close_blocking
        if close is not None:
            close()

    def _failure(self, exc: Exception, cap: int, n: int) -> EmpirioError:
        """What a failed exchange means (``exc`` raised again if it is not a transport's)."""
        if isinstance(exc, TimeoutError | httpx.TimeoutException):
            return self._failed("timeout")
        if isinstance(exc, httpx.HTTPError):
            return self._failed(_classify(exc), type(exc).__name__, _root_cause(exc))
        if isinstance(exc, _TooLarge):
            return APIResponseValidationError(
                f"the response from {self.config.base_url} is larger than {cap:,} bytes "
                f"decoded, far more than {n} embeddings take: refused"
            )
        raise exc

    def _failed(self, failure: TransportFailure, name: str = "", reason: str = "") -> EmpirioError:
        return transport_error(
            failure,
            base_url=self.config.base_url,
            timeout=self.config.timeout,
            exc_name=name,
            reason=reason,
            reached_before=self.session.meter.usage.requests > 0,
        )


class _TooLarge(Exception):
    """A response body grew past the size its request can explain (a compression bomb)."""


async def _post_capped(
    http: httpx.AsyncClient, url: str, body: bytes, headers: Mapping[str, str], cap: int
) -> tuple[int, bytes, httpx.Headers]:
    """POST and read the body, refusing one that decodes to more than ``cap`` bytes."""
    async with http.stream("POST", url, content=body, headers=headers) as r:
        return await _read_capped(r, cap)


async def _read_capped(r: httpx.Response, cap: int) -> tuple[int, bytes, httpx.Headers]:
    """The status, body and headers of ``r``, refusing a body that decodes to more than ``cap``
    bytes (a compression bomb)."""
    chunks, size = [], 0
    async for chunk in r.aiter_bytes():
        size += len(chunk)
        if size > cap:
            raise _TooLarge
        chunks.append(chunk)
    return r.status_code, b"".join(chunks), r.headers


#: Seconds a lane may stand idle before it is closed: httpx's keep-alive expiry, after which its
#: connection would be closed at its next use anyway.
_LANE_IDLE_S = 5.0


#: A lane's pool: one connection, kept alive.
_ONE_CONNECTION = httpx.Limits(max_connections=1, max_keepalive_connections=1)
_Lane = TypeVar("_Lane", httpx.AsyncHTTPTransport, httpx.HTTPTransport)


class _Lanes(Generic[_Lane]):
    """Our own connections: an httpx transport per request in flight, each keeping one
    connection alive, taken and given back last in, first out (the warmest connection first).
    Async ones on one loop; sync ones for :meth:`Transport.send_blocking`, on callers' threads.

    Why not one transport whose pool holds them all: on every request and every response,
    httpcore's pool (1.0) checks each of its connections and, for each idle one, counts the
    idle ones again, O(N^2) per event. At 32 in flight that was 40 % of the client's CPU
    (``bench/client_cpu.py``); a lane's pool holds one connection, and taking a lane is a pop.
    In-flight requests are bounded by the driver, and so is the number of lanes.

    Args:
        new: makes a lane (all of them share one TLS context).
    """

    def __init__(self, new: Callable[[], _Lane]) -> None:
        self._new_lane: Callable[[], _Lane] = new
        self._lock = threading.Lock()  # sync lanes are taken by several threads
        #: lanes not in use, with the monotonic time each was given back (the coldest first)
        self._idle: list[tuple[float, _Lane]] = []
        self._all: list[_Lane] = []
        # The first lane is made here, before pacing starts: making an httpx transport first
        # imports httpcore (about 45 ms), which would make the first paced send that late.
        self.give(self._new())

    def take(self) -> tuple[_Lane, list[_Lane]]:
        """The warmest idle lane, or a new one; and the lanes idle too long, for the caller to
        close, so that a burst of many in flight does not keep its connections open for ever
        after."""
        now, cold = time.monotonic(), []
        with self._lock:
            while self._idle and now - self._idle[0][0] > _LANE_IDLE_S:
                cold.append(self._idle.pop(0)[1])
                self._all.remove(cold[-1])
            if self._idle:
                return self._idle.pop()[1], cold
        return self._new(), cold

    def _new(self) -> _Lane:
        lane = self._new_lane()
        with self._lock:
            self._all.append(lane)
        return lane

    def give(self, lane: _Lane) -> None:
        with self._lock:
            self._idle.append((time.monotonic(), lane))

    def drop(self, lane: _Lane) -> _Lane:
        """Forget ``lane``, for the caller to close: an exchange on it did not end cleanly (an
        error; a request cancelled because its call stopped early). Its pool may then still
        hold that request, its one connection ACTIVE: given back, the lane held the next
        request sent on it until that request's timeout (a stream stopped early, then
        ``embed``, 1 run in 20-60)."""
        with self._lock:
            if lane in self._all:
                self._all.remove(lane)
        return lane

    def drain(self) -> list[_Lane]:
        """Every lane, forgotten here, for the caller to close."""
        with self._lock:
            lanes, self._all, self._idle = self._all, [], []
        return lanes

    async def aclose(self: _Lanes[httpx.AsyncHTTPTransport]) -> None:
        for lane in self.drain():
            await lane.aclose()


#: what sends on one loop: a user's client, or our own lanes
_Sender = httpx.AsyncClient | _Lanes[httpx.AsyncHTTPTransport]


async def _post_direct(
    lanes: _Lanes[httpx.AsyncHTTPTransport], sends: Transport, body: bytes, cap: int
) -> tuple[int, bytes, httpx.Headers]:
    """:func:`_post_capped` on our own transports, without an ``httpx.AsyncClient`` around them.

    The client's layer does nothing we use (one URL, our own headers, no cookies, auth,
    redirects or hooks), and costs about 0.5 ms of CPU per request, a third of all httpx does
    for one (``bench/client_cpu.py``). Exceptions are httpx's own either way, as the transport
    maps httpcore's; instrumentations of httpx patch the transport, so they still see each
    request.
    """
    request = sends.wire_request(body)
    lane, cold = lanes.take()
    for idle in cold:
        await idle.aclose()
    clean = False
    try:
        r = await lane.handle_async_request(request)
        try:
            got = await _read_capped(r, cap)
        finally:
            await r.aclose()
        clean = True
        return got
    finally:
        if clean:
            lanes.give(lane)  # its connection idle again (or closed by the server): reusable
        else:
            _close_soon(lanes.drop(lane))


#: lanes being closed after an exchange that did not end cleanly (a task must be referenced)
_closing: set[asyncio.Task[None]] = set()


def _close_soon(lane: httpx.AsyncHTTPTransport) -> None:
    """Close ``lane`` in a task of its own: the request that used it may be being cancelled."""
    task = asyncio.get_running_loop().create_task(lane.aclose())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


def _environment_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``, ``ALL_PROXY``, ...), unless
    ``NO_PROXY`` exempts its host: what ``httpx.AsyncClient(trust_env=True)`` would use."""
    parsed = httpx.URL(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parsed.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parsed.host):
        return None
    return str(proxy)


def _post_direct_sync(
    lanes: _Lanes[httpx.HTTPTransport], sends: Transport, body: bytes, cap: int, deadline: float
) -> tuple[int, bytes, httpx.Headers]:
    """:func:`_post_direct` on a sync transport (a twin); ``deadline``: see
    :func:`_read_capped_sync`."""
    request = sends.wire_request(body)
    lane, cold = lanes.take()
    for idle in cold:
        idle.close()
    clean = False
    try:
        with until(deadline):  # every socket operation of the exchange, headers included
            r = lane.handle_request(request)
            try:
                got = _read_capped_sync(r, cap, deadline)
            finally:
                r.close()
        clean = True
        return got
    finally:
        if clean:
            lanes.give(lane)  # its connection idle again (or closed by the server): reusable
        else:
            lanes.drop(lane).close()


def _post_capped_sync(
    http: httpx.Client,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    cap: int,
    deadline: float | None,
) -> tuple[int, bytes, httpx.Headers]:
    """:func:`_post_capped` for a user's ``httpx.Client`` (a twin); ``deadline``: see
    :func:`_read_capped_sync`, and :func:`_bound_user_client` for the headers."""
    with (
        contextlib.nullcontext() if deadline is None else until(deadline),
        http.stream("POST", url, content=body, headers=headers) as r,
    ):
        return _read_capped_sync(r, cap, deadline)


def _bound_user_client(http: httpx.Client, url: httpx.URL) -> None:
    """Bound the exchanges of a user's ``http`` with the endpoint at ``url`` by our deadline
    (:func:`~empirio._io.deadline.bound`): its connections made from now on, where the transport
    it picks for ``url`` (its mounts, its proxy) is httpx's own; other transports, and calls of
    theirs outside ours, are left as they are."""
    # httpx has no public way to ask which transport a URL goes through.
    pick = getattr(http, "_transport_for_url", None)
    transport = pick(url) if callable(pick) else None
    if isinstance(transport, httpx.HTTPTransport):
        bound(transport)


def _read_capped_sync(
    r: httpx.Response, cap: int, deadline: float | None
) -> tuple[int, bytes, httpx.Headers]:
    """:func:`_read_capped` (a twin); past ``deadline`` (monotonic seconds, if given), a
    :class:`TimeoutError`: a server trickling its body is cut off there."""
    chunks, size = [], 0
    for chunk in r.iter_bytes():
        size += len(chunk)
        if size > cap:
            raise _TooLarge
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError
        chunks.append(chunk)
    return r.status_code, b"".join(chunks), r.headers


def _close_lanes(lanes: _Lanes[httpx.HTTPTransport]) -> None:
    for lane in lanes.drain():
        lane.close()


async def _close_at_loop_shutdown(client: _Sender) -> AsyncGenerator[None, None]:
    """Yields once, then closes ``client`` when closed itself: by ``aclose()``, or by the loop's
    ``shutdown_asyncgens()`` as ``asyncio.run`` ends."""
    try:
        yield
        yield  # pragma: no cover - never resumed a second time
    finally:
        await client.aclose()


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes, outermost first (httpx -> httpcore -> OSError: a short chain)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


def _root_cause(exc: BaseException) -> str:
    """The innermost cause's words (an OS reason such as "Connection reset by peer")."""
    return next((str(e) for e in reversed(list(_chain(exc))) if str(e)), "")


def _classify(exc: BaseException) -> TransportFailure:
    """What kind of transport failure ``exc`` is (its meaning: ``transport_error``)."""
    if any(isinstance(e, socket.gaierror) for e in _chain(exc)):
        return "unresolved"
    if any(isinstance(e, ConnectionRefusedError) for e in _chain(exc)):
        return "refused"
    return "other"
