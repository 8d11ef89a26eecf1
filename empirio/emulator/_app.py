"""The emulator's ASGI application: text-embedding-v4's contract over HTTP.

Plain ASGI rather than a framework, because two faults need the raw connection (closing it with
no response) and the hot path should carry nothing it does not need. Order of checks for
``POST /v1/embeddings``: injected latency, dropped connection, injected 5xx, auth, body size,
JSON and types, model, batch size, dimensions, input lengths, account rate limits, credits.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .._core.cache_keys import IDENTITY_HEADER
from .._core.config import (
    ALLOWED_DIMENSIONS,
    DEFAULT_DIMENSIONS,
    DEFAULT_MAX_BATCH,
    DEFAULT_MODEL,
    DEFAULT_QUERY_INSTRUCTION,
    format_query,
)
from .._core.plan import encodes
from .._core.tokens import MAX_INPUT_TOKENS, get_tokenizer
from .._core.wire import EmbeddingRequest, encode_base64
from ._embed import HashEmbedder
from ._limits import AccountLimiter, Verdict
from ._semantic import SemanticEmbedder, Vectors, resolve_vectors

__all__ = ["EmulatorConfig", "EmulatorStats", "create_app"]

logger = logging.getLogger("empirio.emulator")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_ALGO = "<400> InternalError.Algo.InvalidParameter: "
_SERVER_FAULTS = (
    (500, "internal_error", "Internal server error. Retry shortly."),
    (502, "upstream_error", "Upstream provider error. Retry shortly."),
    (503, "model_unavailable", "The model is temporarily unavailable. Retry shortly."),
)

try:  # orjson writes numpy rows straight to JSON, several times faster than json + tolist().
    import orjson

    def _dumps(obj: Any) -> bytes:
        return bytes(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY))

except ImportError:  # pragma: no cover - the server extra installs orjson

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, default=lambda a: a.tolist()).encode()


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """How the emulated service and account behave. All rates are fractions of requests.

    Attributes:
        api_key: the one accepted key; ``None`` accepts any non-empty key.
        rpm: account requests per minute (sliding 60 s window); ``None`` or ``0`` = no limit.
        tpm: account tokens per minute; ``None`` or ``0`` = no limit.
        strict_burst: also apply the per-second rules, as the service does: at most ``rpm/60``
            requests and ``tpm/60`` tokens in any second (on by default).
        latency_ms: added to every response, in milliseconds.
        fail_rate: fraction of requests answered with a 500, 502 or 503.
        drop_rate: fraction of connections closed without any response.
        retry_after: whether 429 responses carry a ``Retry-After`` header.
        max_batch: inputs allowed per request (10 upstream).
        seed: seeds fault injection and request ids.
        vector_seed: seeds the vectors; a different fault seed must not change the "model".
        vectors: where dense vectors come from: ``"hashed"`` (hashed Qwen tokens: exact, fast,
            model-free; the default), ``"semantic"`` (a small multilingual model shipped in
            ``empirio[semantic]``; see :mod:`empirio.emulator._semantic`) or ``"auto"``
            (semantic when installed, else hashed; resolved when the config is built).
        credit_tokens: tokens the account may spend before 402; ``None`` = unlimited.
        max_body_bytes: larger request bodies get 413.
        window_s: the rate limits' window in seconds (60 upstream).
        sparse_output: honour ``output_type``; ``False`` ignores it, as a plain
            OpenAI-compatible server would (for testing clients against such endpoints).
        storm_s: answer every embedding request with 429 for this many seconds after the
            start (or a reset), as an account exhausted by someone else would be.
    """

    api_key: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    strict_burst: bool = True
    latency_ms: float = 0.0
    fail_rate: float = 0.0
    drop_rate: float = 0.0
    retry_after: bool = True
    max_batch: int = DEFAULT_MAX_BATCH
    seed: int = 0
    vector_seed: int = 0
    vectors: Vectors = "hashed"
    credit_tokens: int | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    window_s: float = 60.0
    sparse_output: bool = True
    storm_s: float = 0.0

    def __post_init__(self) -> None:
        # Frozen, so "auto" is resolved here once: a config always says what it serves.
        object.__setattr__(self, "vectors", resolve_vectors(self.vectors))
        for name in ("rpm", "tpm"):  # 0 is no limit, as for the client
            if getattr(self, name) == 0:
                object.__setattr__(self, name, None)
        for name in ("fail_rate", "drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]; got {value}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1; got {self.max_batch}")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must not be negative; got {self.latency_ms}")
        if not 0 <= self.storm_s < float("inf"):
            raise ValueError(f"storm_s must be non-negative seconds; got {self.storm_s}")
        for name in ("rpm", "tpm", "credit_tokens"):
            value = getattr(self, name)
            if value is not None and not value >= 1:
                raise ValueError(f"{name} must be at least 1 (or unset for no limit); got {value}")


@dataclass(slots=True)
class EmulatorStats:
    """What the emulator has seen, for tests and benchmarks (``GET /_emulator/stats``)."""

    requests: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    dropped: int = 0
    inputs_embedded: int = 0
    tokens: int = 0
    #: how many 200 responses carried each text (key: first 16 hex digits of its SHA-256)
    delivered: Counter[str] = field(default_factory=Counter)
    max_inputs_per_request: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    #: the most requests that arrived within any one second (refused ones too): what the
    #: service's per-second rule sees of a client's pacing
    max_per_second: int = 0
    _recent: deque[float] = field(default_factory=deque)

    def arrived(self, now: float) -> None:
        """Count an arrival at ``now`` (monotonic seconds)."""
        self.requests += 1
        recent = self._recent
        recent.append(now)
        while recent[0] <= now - 1.0:
            recent.popleft()
        self.max_per_second = max(self.max_per_second, len(recent))

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "dropped": self.dropped,
            "inputs_embedded": self.inputs_embedded,
            "tokens": self.tokens,
            "delivered": dict(self.delivered),
            "max_inputs_per_request": self.max_inputs_per_request,
            "max_in_flight": self.max_in_flight,
            "max_per_second": self.max_per_second,
        }


def text_key(text: str) -> str:
    """The key under which ``delivered`` counts a text."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Reject(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.type, self.param, self.headers = type_, param, headers


class EmulatorApp:
    """The ASGI callable. One instance is one emulated account."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.tokenizer = get_tokenizer()
        hashed = HashEmbedder(self.tokenizer, seed=config.vector_seed)
        self.embedder: HashEmbedder | SemanticEmbedder = (
            SemanticEmbedder(hashed, seed=config.vector_seed)
            if config.vectors == "semantic"
            else hashed
        )
        self.reset()

    def reset(self) -> None:
        """Forget rate-limit history, spent credits, fault draws and statistics."""
        cfg = self.config
        self.limiter = AccountLimiter(
            cfg.rpm, cfg.tpm, strict_burst=cfg.strict_burst, window=cfg.window_s
        )
        self.rng = random.Random(cfg.seed)
        self.credits = cfg.credit_tokens
        self.stats = EmulatorStats()
        self.storm_until = time.monotonic() + cfg.storm_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":  # pragma: no cover - websockets are not part of the contract
            return
        method, path = scope["method"], scope["path"].rstrip("/")
        request_id = str(uuid.UUID(int=self.rng.getrandbits(128)))
        try:
            if path == "/v1/embeddings" and method == "POST":
                await self._embeddings(scope, receive, send, request_id)
                return
            if path == "/v1/models" and method == "GET":
                identity = ((IDENTITY_HEADER.encode(), self.identity.encode()),)
                await _respond(send, 200, _dumps(self._models()), request_id, identity)
                return
            if path == "/_emulator/stats" and method == "GET":
                await _respond(send, 200, _dumps(self.stats.snapshot()), request_id)
                return
            if path == "/_emulator/reset" and method == "POST":
                self.reset()
                await _respond(send, 200, b'{"ok":true}', request_id)
                return
            if path == "/health":
                await _respond(send, 200, b'{"status":"ok"}', request_id)
                return
            raise _Reject(404, f"Unknown endpoint: {method} {scope['path']}", "not_found")
        except _Reject as r:
            await _respond(send, r.status, _error_body(r, request_id), request_id, r.headers)

    def _limit_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """The account limits, advertised as OpenAI-style headers (``unlimited`` where there is
        none), so that a client not told its limits adopts these rather than pacing a local
        server like the real account."""
        cfg = self.config
        return (
            (b"x-ratelimit-limit-requests", str(cfg.rpm or "unlimited").encode()),
            (b"x-ratelimit-limit-tokens", str(cfg.tpm or "unlimited").encode()),
            (IDENTITY_HEADER.encode(), self.identity.encode()),
        )

    @property
    def identity(self) -> str:
        """Which vectors this emulator serves (see :data:`IDENTITY_HEADER`): emulators with the
        same identity on any port serve the same vectors, so a cache may share their entries."""
        return f"emulator-{self.config.vectors}-{self.config.vector_seed}"

    def _models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": DEFAULT_MODEL,
                    "object": "model",
                    "created": 1_746_000_000,
                    "owned_by": "alibaba",
                }
            ],
        }

    async def _embeddings(
        self, scope: Scope, receive: Receive, send: Send, request_id: str
    ) -> None:
        cfg, stats = self.config, self.stats
        # The account's limits are counted where the service counts them: at its gateway, as
        # the request arrives, before the model's time (``latency_ms``) is spent on it.
        arrived = time.monotonic()
        stats.arrived(arrived)
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            if cfg.latency_ms:
                await asyncio.sleep(cfg.latency_ms / 1000.0)
            # Fault draws happen in arrival order from one seeded generator: reproducible runs.
            drop = cfg.drop_rate and self.rng.random() < cfg.drop_rate
            fail = cfg.fail_rate and self.rng.random() < cfg.fail_rate
            if drop:
                stats.dropped += 1
                await _drop_connection(send)
                return
            if fail:
                status, code, message = self.rng.choice(_SERVER_FAULTS)
                raise _Reject(status, message, code, type_="server_error")
            self._authenticate(scope)
            body = await _read_body(scope, receive, cfg.max_body_bytes)
            req = _parse(body)
            payload = self._embed(req, request_id, arrived)
            stats.by_status[200] += 1
            await _respond(send, 200, payload, request_id, self._limit_headers())
        except _Reject as r:
            stats.by_status[r.status] += 1
            await _respond(
                send,
                r.status,
                _error_body(r, request_id),
                request_id,
                (*r.headers, *self._limit_headers()),
            )
        except Exception:  # a bug of ours: still an OpenAI-style JSON error, never plain text
            logger.exception("emulator: request %s failed", request_id)
            stats.by_status[500] += 1
            oops = _Reject(500, "The server had an error processing your request.", "server_error")
            await _respond(send, 500, _error_body(oops, request_id), request_id)
        finally:
            stats.in_flight -= 1

    def _authenticate(self, scope: Scope) -> None:
        auth = ""
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value.decode("latin-1")
                break
        scheme, _, key = auth.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise _Reject(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "missing_api_key",
            )
        if self.config.api_key is not None and key != self.config.api_key:
            raise _Reject(401, "Incorrect API key provided.", "invalid_api_key")

    def _embed(self, req: EmbeddingRequest, request_id: str, arrived: float) -> bytes:
        cfg = self.config
        if req.model != DEFAULT_MODEL:
            raise _Reject(
                404,
                f"The model `{req.model}` does not exist or you do not have access to it.",
                "model_not_found",
                param="model",
            )
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts:
            raise _Reject(
                400,
                _ALGO + "Range of input length should be [1, 8192]",
                "InvalidParameter",
                param="input",
            )
        if len(texts) > cfg.max_batch:
            raise _Reject(
                400,
                _ALGO + "Value error, batch size is invalid, it should not be larger than "
                f"{cfg.max_batch}.: input.contents",
                "InvalidParameter",
                param="input",
            )
        dims = DEFAULT_DIMENSIONS if req.dimensions is None else req.dimensions
        if dims not in ALLOWED_DIMENSIONS:
            raise _Reject(
                400,
                _ALGO + f"Value error, dimension {dims} is invalid, its value should be in "
                f"{list(ALLOWED_DIMENSIONS)}",
                "InvalidParameter",
                param="dimensions",
            )
        if req.text_type == "query":
            texts = [format_query(t, req.instruct or DEFAULT_QUERY_INSTRUCTION) for t in texts]
        ids = self.tokenizer.encode_batch(texts)
        counts = [len(x) for x in ids]
        for text, n in zip(texts, counts, strict=True):
            # Upstream counts the appended end token toward the limit, as far as we can tell.
            if not text.strip() or n + 1 > MAX_INPUT_TOKENS:
                raise _Reject(
                    400,
                    _ALGO + "Range of input length should be [1, 8192]",
                    "InvalidParameter",
                    param="input",
                )
        billed = sum(counts) + len(texts)
        verdict = (
            self.limiter.check(arrived, billed)
            if arrived >= self.storm_until
            else Verdict(False, "storm", self.storm_until - arrived)
        )
        if not verdict.admitted:
            headers: tuple[tuple[bytes, bytes], ...] = ()
            if cfg.retry_after:
                seconds = AccountLimiter.header_seconds(verdict.retry_after)
                headers = ((b"retry-after", str(seconds).encode()),)
            what = {
                "requests": "requests per minute",
                "tokens": "tokens per minute",
                "burst": "requests per second",
                "token burst": "tokens per second",
                "storm": "requests",
            }[verdict.limit]
            raise _Reject(
                429,
                f"Rate limit exceeded: too many {what} for this account. "
                "Use exponential backoff with jitter.",
                "rate_limit_exceeded",
                type_="rate_limit_error",
                headers=headers,
            )
        if self.credits is not None:
            if self.credits < billed:
                raise _Reject(
                    402,
                    "Insufficient credits. Top up your account to continue.",
                    "insufficient_credits",
                    type_="billing_error",
                )
            self.credits -= billed

        output = (req.output_type or "dense") if cfg.sparse_output else "dense"
        dense = self.embedder.embed(texts, dims, ids) if output != "sparse" else None
        sparse = self.embedder.sparse(texts, ids) if output != "dense" else None
        data: list[dict[str, Any]] = []
        for i in range(len(texts)):
            item: dict[str, Any] = {"object": "embedding", "index": i}
            if dense is not None:
                row = dense[i]
                item["embedding"] = encode_base64(row) if req.encoding_format == "base64" else row
            if sparse is not None:
                sv = sparse[i]
                item["sparse_embedding"] = [
                    {"index": ix, "value": v, "token": tk}
                    for ix, v, tk in zip(sv.indices, sv.values, sv.tokens, strict=True)
                ]
            data.append(item)
        stats = self.stats
        stats.inputs_embedded += len(texts)
        stats.tokens += billed
        stats.max_inputs_per_request = max(stats.max_inputs_per_request, len(texts))
        originals = [req.input] if isinstance(req.input, str) else req.input
        stats.delivered.update(text_key(t) for t in originals)
        body = {
            "object": "list",
            "model": req.model,
            "id": request_id,
            "data": data,
            "usage": {"prompt_tokens": billed, "total_tokens": billed},
        }
        return _dumps(body)


def _parse(body: bytes) -> EmbeddingRequest:
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Reject(
            400, f"We could not parse the JSON body of your request: {exc}", "invalid_json"
        ) from None
    except (ValueError, RecursionError):  # a 5,000-digit number, nesting thousands deep
        raise _Reject(
            400,
            "We could not parse the JSON body of your request: a number too long or "
            "nesting too deep.",
            "invalid_json",
        ) from None
    texts = raw.get("input") if isinstance(raw, dict) else None
    for text in [texts] if isinstance(texts, str) else texts if isinstance(texts, list) else ():
        if isinstance(text, str) and not encodes(text):
            # Checked before anything is counted: an invalid request uses no quota or credit.
            raise _Reject(
                400,
                _ALGO + "Value error, input contains invalid Unicode (a lone surrogate escape).",
                "InvalidParameter",
                param="input",
            )
    if not isinstance(raw, dict):
        raise _Reject(400, "The request body must be a JSON object.", "invalid_json")
    try:
        return EmbeddingRequest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "body"
        raise _Reject(
            400,
            _ALGO + f"Value error, {loc}: {first['msg']}",
            "InvalidParameter",
            param=str(first["loc"][0]) if first["loc"] else None,
        ) from None


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    too_large = _Reject(
        413, f"Request body too large; the limit is {limit} bytes.", "request_too_large"
    )
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise too_large
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Reject(400, "Client disconnected.", "client_disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _error_body(r: _Reject, request_id: str) -> bytes:
    return _dumps(
        {
            "error": {"message": r.message, "type": r.type, "param": r.param, "code": r.code},
            "request_id": request_id,
        }
    )


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    request_id: str,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _drop_connection(send: Send) -> None:
    """Close the client's connection without a response, as a failing proxy would.

    ASGI has no message for this, so reach the transport through uvicorn's response cycle.
    """
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:  # pragma: no cover - only under a server other than uvicorn
        raise RuntimeError("drop_rate needs the emulator to run under uvicorn")
    transport.close()
    # Let connection_lost run so uvicorn sees the disconnect and does not write a 500.
    for _ in range(3):
        await asyncio.sleep(0)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_app(config: EmulatorConfig | None = None, **options: Any) -> EmulatorApp:
    """An ASGI app emulating text-embedding-v4; ``options`` are :class:`EmulatorConfig` fields."""
    return EmulatorApp(config if config is not None else EmulatorConfig(**options))
