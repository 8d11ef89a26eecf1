"""The playground's web app: one static page and a JSON API, as a bare ASGI app (the emulator's
stack: uvicorn, no framework, no front-end build).

The key stays in this process: the page, its assets and every response carry only what the
embedding calls returned and what the page needs to show, and the tests check every byte the
browser receives.

Only the playground's own page may spend the key. As Jupyter does, each launch makes a token,
printed in the URL (``http://127.0.0.1:PORT/?token=T``); the page sends it on every API call in
the :data:`TOKEN_HEADER` header, and a call without it is refused (403). A custom header cannot
be sent cross-origin without a CORS preflight, which this server never grants, so a page from
another origin cannot call the API even with a ``text/plain`` POST. ``Host`` must name this
server (a DNS-rebinding page names its own), an ``Origin`` must be this server's, and the run
API takes JSON bodies only.

The token is never on a command line, where any local user would read it in the process list.
When the command opens the browser for the user (:func:`open_in_browser`), it opens a private
file (mode 0600 in a folder of mode 0700, as Jupyter does) that redirects to the server with a
one-time code (``/?code=C``). The server exchanges the code, once and within
:data:`HANDOVER_S`, for the token (a 303 to ``/?token=T``), which the page then takes out of the
address bar. The URL the command prints is the only other copy of the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import importlib.resources
import json
import logging
import os
import secrets
import tempfile
import threading
import time
import webbrowser
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from pydantic import SecretStr, ValidationError

from .._core.config import (
    ALLOWED_DIMENSIONS,
    API_BASE_ENV,
    API_KEY_ENV,
    DEFAULT_QUERY_INSTRUCTION,
    is_loopback_url,
    resolve_base_url,
)
from .._core.errors import ConfigurationError
from ._run import MAX_DOCUMENTS, MAX_QUERIES, RunSettings, run

__all__ = [
    "HANDOVER_S",
    "TOKEN_HEADER",
    "Backend",
    "backend_from_env",
    "create_app",
    "open_in_browser",
    "playground",
    "show",
]

logger = logging.getLogger("empirio.playground")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_MAX_BODY = 8 * 1024 * 1024
#: The header in which the page sends the launch's token on every API call.
TOKEN_HEADER = "x-playground-token"
#: Seconds a one-time code for the browser stays good (it is also good only once).
HANDOVER_S = 60.0
#: Names of this machine a browser may use in ``Host`` and ``Origin``.
_LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True)
class Backend:
    """Where the playground's calls go.

    Attributes:
        api_key: the key (kept here, never sent to the page).
        base_url: the endpoint.
        emulator: whether it is the local emulator (the page says so plainly).
        vectors: for the emulator, what its vectors are (``describe_vectors``), shown on the page.
    """

    api_key: SecretStr
    base_url: str
    emulator: bool
    vectors: str | None = None

    def __repr__(self) -> str:
        return f"Backend(base_url={self.base_url!r}, emulator={self.emulator})"


def _page() -> bytes:
    return importlib.resources.files("empirio.playground").joinpath("index.html").read_bytes()


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _own_hosts(scope: Scope) -> set[str]:
    """``host:port`` forms that name this server: this machine's names, and the bound address
    (a playground served on another interface with ``--allow-remote``)."""
    server = scope.get("server") or ("127.0.0.1", None)
    host, port = server[0], server[1]
    names = {*_LOCAL_NAMES, f"[{host}]" if ":" in str(host) else str(host)}
    return {f"{n}:{port}" for n in names} if port else set(names)


def _refusal(scope: Scope, token: str) -> str | None:
    """Why a request may not use the API, or ``None`` when it may."""
    headers = _headers(scope)
    own = _own_hosts(scope)
    if headers.get("host", "").lower() not in own:
        return "this server answers only to its own address (Host header)"
    origin = headers.get("origin")
    if origin is not None and origin.lower().removeprefix("http://") not in own:
        return "calls from another origin are refused"
    if not secrets.compare_digest(headers.get(TOKEN_HEADER, ""), token):
        return (
            "a missing or wrong playground token: open the URL the command printed "
            "(it ends in ?token=...)"
        )
    return None


def create_app(
    backend: Backend, *, token: str | None = None
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI app for ``backend``; ``token`` (made here if not given) is what every API call
    must carry in :data:`TOKEN_HEADER`. The app's ``token`` attribute holds it."""
    token = token or secrets.token_urlsafe(24)
    page = _page()
    codes: dict[str, float] = {}  # one-time code -> when it expires (time.monotonic)
    codes_lock = threading.Lock()

    def handover() -> str:
        """A one-time code the browser exchanges for the token (see the module docstring)."""
        code = secrets.token_urlsafe(24)
        with codes_lock:
            codes[code] = time.monotonic() + HANDOVER_S
        return code

    def redeem(scope: Scope) -> bool:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = (query.get("code") or [""])[0]
        with codes_lock:
            for code, expires in list(codes.items()):
                if expires < time.monotonic():
                    del codes[code]
            # Constant-time over every live code; a match is spent at once.
            match = next((c for c in codes if secrets.compare_digest(c, given)), None)
            if match is not None:
                del codes[match]
        return match is not None

    info = json.dumps(
        {
            "emulator": backend.emulator,
            "endpoint": "the local emulator" if backend.emulator else backend.base_url,
            "vectors": backend.vectors,
            "dimensions": list(ALLOWED_DIMENSIONS),
            "query_instruction": DEFAULT_QUERY_INSTRUCTION,
            "max_documents": MAX_DOCUMENTS,
            "max_queries": MAX_QUERIES,
        }
    ).encode()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        try:
            if path.startswith("/api/"):
                why = _refusal(scope, token)
                if why is not None:
                    await _error(send, 403, "Forbidden", why)
                    return
            elif _headers(scope).get("host", "").lower() not in _own_hosts(scope):
                await _error(send, 403, "Forbidden", "this server answers only to its own address")
                return
            if (
                method == "GET"
                and path in ("/", "/index.html")
                and b"code=" in scope.get("query_string", b"")
            ):
                if redeem(scope):
                    await _redirect(send, f"/?token={token}")
                else:
                    await _error(
                        send,
                        403,
                        "Forbidden",
                        "this one-time link was used or is older than "
                        f"{HANDOVER_S:.0f} s: open the URL the command printed",
                    )
            elif method == "GET" and path in ("/", "/index.html"):
                await _send(send, 200, page, "text/html; charset=utf-8")
            elif method == "GET" and path == "/api/info":
                await _send(send, 200, info)
            elif method == "POST" and path == "/api/run":
                kind = _headers(scope).get("content-type", "").split(";")[0].strip().lower()
                if kind != "application/json":
                    await _error(send, 415, "UnsupportedMediaType", "send application/json")
                    return
                body = await _read(receive)
                try:
                    settings = RunSettings.model_validate_json(body)
                except ValidationError as exc:
                    first = exc.errors(include_input=False)[0]
                    where = ".".join(str(p) for p in first["loc"]) or "request"
                    await _error(send, 400, "InvalidInputError", f"{where}: {first['msg']}")
                    return
                result = await asyncio.to_thread(
                    run,
                    settings,
                    api_key=backend.api_key,
                    base_url=backend.base_url,
                    paced=not backend.emulator,
                )
                await _send(send, 200, json.dumps(result).encode())
            else:
                await _error(send, 404, "NotFound", f"no {method} {path} here")
        except Exception:  # the server stays up whatever a run does
            logger.exception("playground: %s %s failed", method, path)
            await _error(send, 500, "InternalError", "the playground failed; see its log")

    app.token = token  # type: ignore[attr-defined]
    app.handover = handover  # type: ignore[attr-defined]
    return app


async def _read(receive: Receive) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _MAX_BODY:
            raise ValueError("request too large")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send(send: Send, status: int, body: bytes, kind: str = "application/json") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", kind.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                # The page talks to this server only: no third-party script can read a thing.
                (
                    b"content-security-policy",
                    b"default-src 'self'; script-src 'self' 'unsafe-inline'; "
                    b"style-src 'self' 'unsafe-inline'; img-src 'self' data:",
                ),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _redirect(send: Send, location: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [
                (b"location", location.encode()),
                (b"content-length", b"0"),
                (b"cache-control", b"no-store"),
                (b"referrer-policy", b"no-referrer"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})


async def _error(send: Send, status: int, kind: str, message: str) -> None:
    body = json.dumps({"error": {"type": kind, "message": message, "status": status}})
    await _send(send, status, body.encode())


def backend_from_env(*, force_emulator: bool = False) -> tuple[Backend, contextlib.ExitStack]:
    """The real service if ``EMPIRIOLABS_API_KEY`` is set (and not ``force_emulator``), else a
    local emulator started now (stopped when the returned stack closes)."""
    stack = contextlib.ExitStack()
    key = os.environ.get(API_KEY_ENV)
    if key and not force_emulator:
        base = resolve_base_url(os.environ.get(API_BASE_ENV))
        return Backend(SecretStr(key), base, emulator=False), stack
    from ..emulator import EmulatorConfig, describe_vectors, serve

    config = EmulatorConfig(vectors="auto")  # meaning across languages when it is installed
    url = stack.enter_context(serve(config=config))
    return Backend(
        SecretStr("emulator"), url, emulator=True, vectors=describe_vectors(config.vectors)
    ), stack


@contextlib.contextmanager
def playground(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    force_emulator: bool = False,
    allow_remote: bool = False,
) -> Iterator[str]:
    """Run the playground in a background thread; yield its URL with the launch's token
    (``http://127.0.0.1:PORT/?token=T``).

    Args:
        host: the address to bind; loopback by default.
        port: the port; 0 picks a free one.
        force_emulator: use the emulator even when a key is set.
        allow_remote: required to bind an address other machines reach while a key is set
            (anyone who can reach it and has the URL can spend the key); warns.

    Raises:
        ConfigurationError: a non-loopback ``host`` with a key, without ``allow_remote``.
    """
    from ..emulator._server import run_app

    backend, stack = backend_from_env(force_emulator=force_emulator)
    if not backend.emulator and not is_loopback_url(f"http://{_bracket(host)}/"):
        if not allow_remote:
            stack.close()
            raise ConfigurationError(
                f"--host {host} would let other machines reach a playground that spends your "
                "key; pass --allow-remote (allow_remote=True) if you mean it"
            )
        logger.warning(
            "the playground listens on %s with your key: anyone who reaches it with the "
            "printed URL can spend it",
            host,
        )
    app = create_app(backend)
    token = app.token  # type: ignore[attr-defined]
    with stack, run_app(app, host=host, port=port, name="empirio-playground") as (shown, bound):
        root = f"http://{shown}:{bound}/"
        _LAUNCHED[root] = app.handover  # type: ignore[attr-defined]
        try:
            yield f"{root}?token={token}"
        finally:
            _LAUNCHED.pop(root, None)


#: The playgrounds running in this process, by root URL: their one-time code makers.
_LAUNCHED: dict[str, Callable[[], str]] = {}


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


_SHOWN: list[tuple[str, contextlib.ExitStack]] = []


def show(*, height: int = 900, force_emulator: bool = False) -> Any:
    """The playground inside a Jupyter notebook: starts it once per kernel and returns an
    ``IPython.display.IFrame`` of it."""
    from IPython.display import IFrame

    if not _SHOWN:
        stack = contextlib.ExitStack()
        url = stack.enter_context(playground(force_emulator=force_emulator))
        _SHOWN.append((url, stack))
    return IFrame(_SHOWN[0][0], width="100%", height=height)


def open_in_browser(url: str) -> None:
    """Open the playground at ``url`` (as :func:`playground` yields it) in the user's browser,
    quietly doing nothing where there is none.

    The browser's command line, which every local user can read, never holds the token: it
    names a private file that redirects to a one-time code (for a playground of this process;
    to ``url`` itself otherwise). The file is removed after :data:`HANDOVER_S` seconds, when
    the code no longer works anyway.
    """
    root, _, _ = url.partition("?")
    handover = _LAUNCHED.get(root)
    target = f"{root}?code={handover()}" if handover is not None else url
    with contextlib.suppress(Exception):
        page = _handover_file(target)
        timer = threading.Timer(HANDOVER_S, _remove, (page,))
        timer.daemon = True
        timer.start()
        webbrowser.open(page.as_uri())


def _handover_file(target: str) -> Path:
    """A file only this user can read (in a folder only this user can enter) that sends the
    browser to ``target``."""
    folder = Path(tempfile.mkdtemp(prefix="empirio-playground-"))  # mode 0700
    page = folder / "open.html"
    attr = html.escape(target, quote=True)
    body = (
        '<!doctype html><meta charset="utf-8"><meta name="referrer" content="no-referrer">'
        f'<meta http-equiv="refresh" content="0;url={attr}"><title>empirio playground</title>'
        f'<p>Opening the playground&hellip; <a href="{attr}">continue</a></p>'
    )
    fd = os.open(page, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(body)
    return page


def _remove(page: Path) -> None:
    with contextlib.suppress(OSError):
        page.unlink()
        page.parent.rmdir()
