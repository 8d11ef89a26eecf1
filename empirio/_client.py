"""``EmbeddingClient``: thin sync and async shells around the pure planner and engine.

Everything that decides (planning, pacing, retries, splitting) lives in ``_plan``, ``_pace``,
``_retry`` and ``_engine``; this module only reads the clock, sleeps, sends HTTP and hands
outcomes back. The sync shell runs requests on a thread pool, the async shell as tasks on the
running loop; both are the same loop over :class:`~empirio._engine.Engine`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import logging
import threading
import time
import warnings
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

import httpx
import numpy as np
from pydantic import SecretStr

from ._config import (
    DEFAULT_DIMENSIONS,
    DEFAULT_MAX_BATCH,
    DEFAULT_MODEL,
    DEFAULT_QUERY_INSTRUCTION,
    DEFAULT_RPM,
    DEFAULT_TPM,
    FROM_ENV,
    RPM_ENV,
    TPM_ENV,
    FromEnv,
    is_loopback_url,
    resolve_api_key,
    resolve_base_url,
    resolve_rate,
    validate_dimensions,
)
from ._decode import Decoded, decode_error, decode_success
from ._engine import Attempt, BatchLimit, Engine
from ._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ConfigurationError,
    EmpirioError,
    TruncationWarning,
)
from ._pace import Concurrency, Pacer
from ._plan import (
    InstructionMode,
    Kind,
    Output,
    Overflow,
    PlannedRequest,
    SegmentPlan,
    assemble,
    check_texts,
    plan_segment,
)
from ._result import EmbeddingResult, Usage, UsageMeter
from ._retry import RetryPolicy
from ._tokens import QwenTokenizer, get_tokenizer
from ._views import ViewCache

__all__ = ["EmbeddingClient"]

logger = logging.getLogger("empirio")

_VERSION = "0.1.0"
_MAX_BATCH_SIZE = 2048
_KINDS = ("document", "query")
_OUTPUTS = ("dense", "sparse", "both")
_OVERFLOWS = ("truncate", "chunk", "error")
_MODES = ("prompt", "api", "none")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Call:
    """What one call asks for."""

    kind: Kind
    output: Output

    @property
    def dense(self) -> bool:
        return self.output != "sparse"

    @property
    def sparse(self) -> bool:
        return self.output != "dense"


class _Segment:
    """Buffers of one planned segment until every piece has its vector."""

    __slots__ = ("dense", "plan", "remaining", "sparse", "usage")

    def __init__(self, plan: SegmentPlan, call: _Call, dimensions: int) -> None:
        n = len(plan.pieces)
        self.plan = plan
        self.dense = np.empty((n, dimensions), dtype=np.float32) if call.dense else None
        self.sparse: list[dict[int, float]] | None = [{}] * n if call.sparse else None
        self.remaining = n
        self.usage = Usage()


class _Run:
    """Per-call bookkeeping, pure: open segments, store results, release them in order."""

    def __init__(self, call: _Call, dimensions: int, plans: Iterator[SegmentPlan]) -> None:
        self.call = call
        self.dimensions = dimensions
        self.segments: dict[int, _Segment] = {}
        self.next_out = 0
        self._plans = plans
        self._exhausted = False

    def fill(self, engine: Engine, ahead: int) -> None:
        """Plan segments until ``ahead`` are open (or the input ends) and queue their requests.
        Planning may raise :class:`InvalidInputError`; nothing of that segment is sent."""
        while not self._exhausted and len(self.segments) < ahead:
            plan = next(self._plans, None)
            if plan is None:
                self._exhausted = True
                return
            self.segments[plan.index] = _Segment(plan, self.call, self.dimensions)
            engine.add(plan.requests)

    @property
    def done(self) -> bool:
        """Every segment planned, sent and handed out."""
        return self._exhausted and not self.segments

    def store(self, request: PlannedRequest, decoded: Decoded) -> None:
        seg = self.segments[request.segment]
        rows = list(request.pieces)
        if seg.dense is not None and decoded.dense is not None:
            seg.dense[rows] = decoded.dense
        if seg.sparse is not None and decoded.sparse is not None:
            for row, vec in zip(rows, decoded.sparse, strict=True):
                seg.sparse[row] = vec
        seg.remaining -= len(rows)

    def account(self, segment: int, delta: Usage) -> None:
        seg = self.segments.get(segment)
        if seg is not None:
            seg.usage = seg.usage + delta

    def ready(self) -> Iterator[EmbeddingResult]:
        """Finished segments, in input order."""
        while (seg := self.segments.get(self.next_out)) is not None and seg.remaining == 0:
            del self.segments[self.next_out]
            self.next_out += 1
            dense, sparse = assemble(seg.plan, seg.dense, seg.sparse)
            yield EmbeddingResult(dense, sparse, seg.usage, seg.plan.offset)


class _InlineExecutor:
    """Runs a submitted call at once; for calls of a single request, where a pool is waste."""

    def submit(self, fn: Callable[..., _T], *args: Any) -> concurrent.futures.Future[_T]:
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None


class EmbeddingClient:
    """Turns any number of texts into text-embedding-v4 vectors as fast as the account allows.

    Batching, exact token limits, pacing to the account's rate limits, retries and concurrency
    are handled here; results always come back complete and in input order. Construction does
    no I/O. The client is thread-safe and may be shared; close it (or use ``with``) to release
    its connections.

    Args:
        api_key: the key; default ``EMPIRIOLABS_API_KEY``. Kept as a secret: never shown.
        base_url: default ``EMPIRIOLABS_API_BASE``, then ``EMPIRIOLABS_BASE_URL``, then
            ``https://api.empiriolabs.ai/v1``. Any OpenAI-compatible endpoint works.
        model: the model id.
        dimensions: output size, one of 64, 128, 256, 512, 768, 1024, 1536, 2048.
        batch_size: most inputs per request (10 at EmpirioLabs; up to 2048 where allowed). If the
            service answers that the batch may be no larger than N, the client splits to N and
            keeps N.
        max_concurrency: most requests in flight at once.
        rpm: the account's requests per minute, paced client-side; ``None`` disables. Default
            ``EMPIRIOLABS_RPM``, else 50 (EmpirioLabs' default account limit).
        tpm: the account's tokens per minute, paced client-side; ``None`` disables. Default
            ``EMPIRIOLABS_TPM``, else 2,000,000.
        max_retries: retries per request for 408/409/429/5xx and lost connections.
        timeout: seconds to wait for each response.
        overflow: what to do with a text over 8,191 tokens: ``"truncate"`` (cut it, warn once
            per call), ``"chunk"`` (embed windows, return their token-weighted mean) or
            ``"error"`` (raise before anything is sent).
        instruction_mode: how queries get their task instruction: ``"prompt"`` (client-side
            ``Instruct: ...\\nQuery:...``), ``"api"`` (``text_type``/``instruct`` fields) or
            ``"none"``. Documents never get one.
        query_instruction: the task description for queries.
        user: an end-user id passed through to the service.
        encoding_format: ``"base64"`` (4x smaller on the wire) or ``"float"``.
        show_progress: show a tqdm bar that advances as requests finish.
        allow_insecure: allow sending the key over plain ``http://`` to a non-loopback host.
        http_client: an ``httpx.Client`` to use (not closed by this client).
        async_http_client: an ``httpx.AsyncClient`` to use (not closed by this client).
        share_views: fetch dense and sparse together and keep the view not asked for until it
            is asked for, so a dense and a sparse caller of the same texts (hybrid search) pay
            for one request per text. See :meth:`enable_shared_views`.

    Raises:
        ConfigurationError: a setting is invalid or the key is missing.
    """

    def __init__(
        self,
        *,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        model: str = DEFAULT_MODEL,
        dimensions: int = DEFAULT_DIMENSIONS,
        batch_size: int = DEFAULT_MAX_BATCH,
        max_concurrency: int = 8,
        rpm: float | FromEnv | None = FROM_ENV,
        tpm: float | FromEnv | None = FROM_ENV,
        max_retries: int = 10,
        timeout: float = 60.0,
        overflow: Overflow = "truncate",
        instruction_mode: InstructionMode = "prompt",
        query_instruction: str = DEFAULT_QUERY_INSTRUCTION,
        user: str | None = None,
        encoding_format: Literal["base64", "float"] = "base64",
        show_progress: bool = False,
        allow_insecure: bool = False,
        http_client: httpx.Client | None = None,
        async_http_client: httpx.AsyncClient | None = None,
        share_views: bool = False,
    ) -> None:
        raw_key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        key = resolve_api_key(raw_key)
        if not key:
            raise ConfigurationError(
                "no API key: pass api_key=... or set EMPIRIOLABS_API_KEY "
                "(for the local emulator any non-empty key works)"
            )
        self._api_key = SecretStr(key)
        self.base_url = resolve_base_url(base_url)
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"base_url must start with http:// or https://; got {self.base_url!r}"
            )
        if (
            self.base_url.startswith("http://")
            and not is_loopback_url(self.base_url)
            and not allow_insecure
        ):
            raise ConfigurationError(
                f"refusing to send the API key in clear text to {self.base_url}; use https, "
                "or pass allow_insecure=True if this network is trusted"
            )
        try:
            self.dimensions = validate_dimensions(dimensions)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        _check_range("batch_size", batch_size, 1, _MAX_BATCH_SIZE)
        _check_range("max_concurrency", max_concurrency, 1, 1024)
        _check_range("max_retries", max_retries, 0, 100)
        try:
            rpm = resolve_rate(rpm, RPM_ENV, DEFAULT_RPM)
            tpm = resolve_rate(tpm, TPM_ENV, DEFAULT_TPM)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        for name, rate in (("rpm", rpm), ("tpm", tpm)):
            if rate is not None and not rate > 0:
                raise ConfigurationError(f"{name} must be positive or None; got {rate!r}")
        if not timeout > 0:
            raise ConfigurationError(f"timeout must be positive seconds; got {timeout!r}")
        _check_choice("overflow", overflow, _OVERFLOWS)
        _check_choice("instruction_mode", instruction_mode, _MODES)
        _check_choice("encoding_format", encoding_format, ("base64", "float"))
        self.model = model
        self.batch_size = batch_size
        self.max_concurrency = max_concurrency
        self.rpm, self.tpm = rpm, tpm
        self.max_retries = max_retries
        self.timeout = timeout
        self.overflow: Overflow = overflow
        self.instruction_mode: InstructionMode = instruction_mode
        self.query_instruction = query_instruction
        self.user = user
        self.encoding_format = encoding_format
        self.show_progress = show_progress
        self.allow_insecure = allow_insecure

        self._tokenizer: QwenTokenizer | None = None
        self._lock = threading.Lock()  # guards the shared pacing state below
        self._pacer = Pacer(rpm, tpm)
        self._concurrency = Concurrency(max_concurrency)
        self._batch_limit = BatchLimit(batch_size)
        self._policy = RetryPolicy(max_retries=max_retries)
        self._meter = UsageMeter()
        self._url = f"{self.base_url}/embeddings"
        self._headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"empirio/{_VERSION}",
        }
        self._user_http = http_client
        self._user_async_http = async_http_client
        self._http: httpx.Client | None = None
        self._views: ViewCache | None = ViewCache() if share_views else None
        self._async_http: list[
            tuple[asyncio.AbstractEventLoop, httpx.AsyncClient, AsyncGenerator[None, None]]
        ] = []

    # ------------------------------------------------------------------ public helpers

    def __repr__(self) -> str:
        return (
            f"EmbeddingClient(model={self.model!r}, base_url={self.base_url!r}, "
            f"dimensions={self.dimensions}, api_key={self._api_key!r}, "
            f"batch_size={self._batch_limit.size}, rpm={self.rpm}, tpm={self.tpm})"
        )

    @property
    def api_key(self) -> SecretStr:
        """The key, as a ``SecretStr`` (``.get_secret_value()`` reveals it)."""
        return self._api_key

    @property
    def tokenizer(self) -> QwenTokenizer:
        """The exact Qwen tokenizer (loaded on first use, about a quarter second)."""
        if self._tokenizer is None:
            self._tokenizer = get_tokenizer()
        return self._tokenizer

    def count_tokens(self, text: str) -> int:
        """Qwen tokens in ``text`` as the model sees it; the service bills this + 1 per input."""
        return self.tokenizer.count(text)

    @property
    def usage(self) -> Usage:
        """Requests, tokens and estimated cost of everything this client has done."""
        return self._meter.usage

    def enable_shared_views(self) -> None:
        """From now on, ``embed(output="dense")`` and ``embed(output="sparse")`` fetch both views
        in one request and keep the other until asked for (hybrid search bills once)."""
        with self._lock:
            if self._views is None:
                self._views = ViewCache()

    @property
    def shares_views(self) -> bool:
        """Whether dense and sparse calls share requests (see :meth:`enable_shared_views`)."""
        return self._views is not None

    @property
    def effective_batch_size(self) -> int:
        """Inputs per request now: ``batch_size``, or less if the service named a lower limit."""
        return self._batch_limit.size

    # ------------------------------------------------------------------ planning

    def _check_call(self, kind: str, output: str) -> _Call:
        _check_choice("kind", kind, _KINDS, error=ValueError)
        _check_choice("output", output, _OUTPUTS, error=ValueError)
        return _Call(cast(Kind, kind), cast(Output, output))

    def _plan(
        self, texts: Sequence[str], call: _Call, index: int, offset: int, first_id: int
    ) -> SegmentPlan:
        plan = plan_segment(
            texts,
            tokenizer=self.tokenizer,
            index=index,
            offset=offset,
            first_request_id=first_id,
            kind=call.kind,
            instruction_mode=self.instruction_mode if call.kind == "query" else "none",
            instruction=self.query_instruction,
            overflow=self.overflow,
            batch_size=self._batch_limit.size,
            token_budget=int(self.tpm) if self.tpm is not None else None,
        )
        if plan.truncated:
            shown = ", ".join(f"{i} ({n} tokens)" for i, n in plan.truncated[:5])
            more = f" and {len(plan.truncated) - 5} more" if len(plan.truncated) > 5 else ""
            warnings.warn(
                f"{len(plan.truncated)} texts exceeded the model's input limit and were "
                f"truncated to 8,191 tokens: positions {shown}{more}. Pass overflow='chunk' "
                "to embed them whole, or overflow='error' to refuse them.",
                TruncationWarning,
                stacklevel=4,
            )
        return plan

    def _plans(self, texts: Iterable[str], call: _Call, segment_size: int) -> Iterator[SegmentPlan]:
        """Plan ``texts`` lazily, ``segment_size`` at a time."""
        it = iter(texts)
        offset = first_id = 0
        for index in itertools.count():
            chunk = list(itertools.islice(it, segment_size))
            if not chunk:
                return
            plan = self._plan(check_texts(chunk, offset), call, index, offset, first_id)
            offset += len(chunk)
            first_id += len(plan.requests)
            yield plan

    def _new_engine(self) -> Engine:
        return Engine(
            pacer=self._pacer,
            concurrency=self._concurrency,
            policy=self._policy,
            batch_limit=self._batch_limit,
        )

    def _body(self, texts: Sequence[str], call: _Call) -> bytes:
        body: dict[str, Any] = {
            "model": self.model,
            "input": list(texts),
            "dimensions": self.dimensions,
            "encoding_format": self.encoding_format,
        }
        if self.user is not None:
            body["user"] = self.user
        if call.kind == "query" and self.instruction_mode == "api":
            body["text_type"] = "query"
            body["instruct"] = self.query_instruction
        if call.output != "dense":
            body["output_type"] = "dense&sparse" if call.output == "both" else "sparse"
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    def _read(
        self, status: int, content: bytes, headers: httpx.Headers, n: int, call: _Call
    ) -> Decoded | EmpirioError:
        if 200 <= status < 300:
            try:
                return decode_success(
                    content,
                    n_inputs=n,
                    dimensions=self.dimensions,
                    dense=call.dense,
                    sparse=call.sparse,
                )
            except EmpirioError as exc:
                return exc
        return decode_error(status, content, headers, time.time())

    def _transport_error(self, exc: httpx.HTTPError) -> EmpirioError:
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(f"no response from {self.base_url} within {self.timeout} s")
        return APIConnectionError(f"connection to {self.base_url} failed: {type(exc).__name__}")

    def _finish(
        self,
        engine: Engine,
        run: _Run,
        attempt: Attempt,
        outcome: Decoded | EmpirioError,
        progress: Any,
    ) -> None:
        """Hand an outcome to the engine, store what succeeded, and count usage."""
        now = time.monotonic()
        with self._lock:
            retries_before = engine.stats.retries
            decoded = engine.complete(attempt, outcome, now)
            retried = engine.stats.retries - retries_before
        request = attempt.request
        if decoded is not None:
            run.store(request, decoded)
            delta = Usage(requests=1, input_tokens=decoded.tokens)
            progress.update(len(request))
        else:
            throttled = isinstance(outcome, APIStatusError) and outcome.status_code == 429
            delta = Usage(retries=retried, rate_limited=int(throttled), failed_requests=1)
            if retried:
                logger.info(
                    "request of %d inputs failed (%s); retry %d of %d",
                    len(request),
                    _describe(outcome),
                    attempt.retries + 1,
                    self.max_retries,
                )
        run.account(request.segment, delta)
        self._meter.add(delta)

    def _next_step(
        self, engine: Engine, in_flight: bool
    ) -> tuple[tuple[Attempt, ...], float | None]:
        """What to send now, and how long to wait for a completion before asking again
        (``None``: until something completes). Raises the call's fatal error, if any.

        Both shells use this, so they cannot differ in how they read the engine.
        """
        with self._lock:
            step = engine.step(time.monotonic())
        if engine.failed is not None:
            raise engine.failed
        timeout = None if step.wake_at is None else max(0.0, step.wake_at - time.monotonic())
        if timeout is None and not step.sends and not in_flight:  # pragma: no cover - a bug
            raise RuntimeError("empirio: nothing in flight and nothing scheduled")
        return step.sends, timeout

    def _progress(self, total: int | None, show: bool | None) -> Any:
        enabled = self.show_progress if show is None else show
        if not enabled:
            return contextlib.nullcontext(_NoProgress())
        return _tqdm()(total=total, unit="input", desc="Embedding")

    # ------------------------------------------------------------------ sync shell

    def _sync_http(self) -> httpx.Client:
        if self._user_http is not None:
            return self._user_http
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(
                    timeout=httpx.Timeout(self.timeout, connect=min(10.0, self.timeout)),
                    limits=httpx.Limits(
                        max_connections=self.max_concurrency + 2,
                        max_keepalive_connections=self.max_concurrency + 2,
                    ),
                )
                # Framework objects are rarely closed by their users: release the connections
                # when this client is collected (async ones close as their loop shuts down).
                weakref.finalize(self, self._http.close)
            return self._http

    def _send_sync(self, attempt: Attempt, call: _Call) -> Decoded | EmpirioError:
        texts = attempt.request.texts
        try:
            r = self._sync_http().post(
                self._url, content=self._body(texts, call), headers=self._headers
            )
        except httpx.HTTPError as exc:
            return self._transport_error(exc)
        return self._read(r.status_code, r.content, r.headers, len(texts), call)

    def _drive_sync(
        self,
        plans: Iterator[SegmentPlan],
        call: _Call,
        progress: Any,
        *,
        ahead: int,
        pooled: bool = True,
    ) -> Iterator[EmbeddingResult]:
        run = _Run(call, self.dimensions, plans)
        engine = self._new_engine()
        executor: concurrent.futures.ThreadPoolExecutor | _InlineExecutor
        if pooled and self.max_concurrency > 1:
            executor = concurrent.futures.ThreadPoolExecutor(
                self.max_concurrency, thread_name_prefix="empirio"
            )
        else:
            executor = _InlineExecutor()
        futures: dict[concurrent.futures.Future[Decoded | EmpirioError], Attempt] = {}
        try:
            while True:
                yield from run.ready()
                run.fill(engine, ahead)
                if run.done:
                    return
                sends, timeout = self._next_step(engine, bool(futures))
                for attempt in sends:
                    futures[executor.submit(self._send_sync, attempt, call)] = attempt
                if not futures:
                    time.sleep(timeout or 0.0)
                    continue
                done, _ = concurrent.futures.wait(
                    futures, timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in done:
                    self._finish(engine, run, futures.pop(future), future.result(), progress)
        finally:
            with self._lock:
                engine.abandon()
            # Queued requests are cancelled; running ones cannot be, so wait for them (at most
            # the timeout): nothing may go on spending, or hold a socket, after the call ends.
            executor.shutdown(wait=True, cancel_futures=True)

    def embed(
        self,
        texts: Sequence[str],
        *,
        kind: Kind = "document",
        output: Output = "dense",
        show_progress: bool | None = None,
    ) -> EmbeddingResult:
        """Embed ``texts``; every bad input is reported before anything is sent.

        Args:
            texts: the texts, each non-blank.
            kind: ``"document"`` (no instruction) or ``"query"`` (gets the query instruction).
            output: ``"dense"``, ``"sparse"`` or ``"both"`` (one request serves both).
            show_progress: override the client's ``show_progress`` for this call.

        Returns:
            An :class:`EmbeddingResult` with one row per text, in order.

        Raises:
            InvalidInputError: a text is not a string, is blank, or (``overflow="error"``) is too
                long; raised before any request.
            APIError: a request failed for good (its ``inputs`` name the texts concerned).
        """
        call = self._check_call(kind, output)
        checked = check_texts(texts)
        shared = self._shared_lookup(checked, call)
        if shared is not None:
            parked, missing = shared
            fetched = self.embed(missing, kind=kind, output="both", show_progress=show_progress)
            return self._shared_merge(checked, call, parked, missing, fetched)
        if not checked:
            return self._empty(call)
        plan = self._plan(checked, call, 0, 0, 0)
        with self._progress(len(plan.pieces), show_progress) as bar:
            results = list(
                self._drive_sync(iter([plan]), call, bar, ahead=1, pooled=len(plan.requests) > 1)
            )
        return results[0]

    def iter_embed(
        self,
        texts: Iterable[str],
        *,
        kind: Kind = "document",
        output: Output = "dense",
        segment_size: int = 1000,
        show_progress: bool | None = None,
    ) -> Iterator[EmbeddingResult]:
        """Embed a large or endless stream of texts with bounded memory.

        Texts are planned ``segment_size`` at a time while earlier segments are in flight, and
        one :class:`EmbeddingResult` per segment is yielded in input order (its ``offset`` says
        where it starts). Memory holds about three segments, whatever the input's length.
        A bad text raises when its segment is planned; segments before it were already yielded.
        """
        call = self._check_call(kind, output)
        _check_range("segment_size", segment_size, 1, 10_000_000, error=ValueError)
        total = len(texts) if isinstance(texts, Sequence) else None
        if isinstance(texts, Sequence):
            check_texts(texts)  # cheap, and finds a blank text before anything is sent
        with self._progress(total, show_progress) as bar:
            yield from self._drive_sync(self._plans(texts, call, segment_size), call, bar, ahead=2)

    def _shared_lookup(self, texts: list[str], call: _Call) -> tuple[list[Any], list[str]] | None:
        """With shared views and one view asked for: the parked values of that view (``None``
        where there is none) and the distinct texts still to fetch. Else ``None``."""
        views = self._views
        if views is None or call.output == "both" or not texts:
            return None
        parked = views.take(call.output, call.kind, texts)
        missing = list(dict.fromkeys(t for t, v in zip(texts, parked, strict=True) if v is None))
        return parked, missing

    def _shared_merge(
        self,
        texts: list[str],
        call: _Call,
        parked: list[Any],
        missing: list[str],
        fetched: EmbeddingResult,
    ) -> EmbeddingResult:
        """Combine parked values with freshly fetched ones; park the view not asked for."""
        views = self._views
        assert views is not None
        other_dense = fetched.dense if call.output == "sparse" else None
        other_sparse = fetched.sparse if call.output == "dense" else None
        views.park(call.kind, missing, other_dense, other_sparse)
        row = {t: i for i, t in enumerate(missing)}
        if call.output == "dense":
            assert fetched.dense is not None
            fresh_dense = fetched.dense
            dense = np.empty((len(texts), self.dimensions), dtype=np.float32)
            for i, (t, v) in enumerate(zip(texts, parked, strict=True)):
                dense[i] = fresh_dense[row[t]] if v is None else v
            return EmbeddingResult(dense, None, fetched.usage)
        assert fetched.sparse is not None
        fresh_sparse = fetched.sparse
        sparse = [
            dict(fresh_sparse[row[t]] if v is None else v)
            for t, v in zip(texts, parked, strict=True)
        ]
        return EmbeddingResult(None, sparse, fetched.usage)

    def _empty(self, call: _Call) -> EmbeddingResult:
        dense = np.empty((0, self.dimensions), dtype=np.float32) if call.dense else None
        return EmbeddingResult(dense, [] if call.sparse else None, Usage())

    # ------------------------------------------------------------------ async shell

    async def _async_http_for_loop(self) -> httpx.AsyncClient:
        if self._user_async_http is not None:
            return self._user_async_http
        loop = asyncio.get_running_loop()
        with self._lock:
            # An httpx.AsyncClient belongs to the loop that made its connections: keep one per
            # loop, and forget those whose loop has closed (notebooks and asyncio.run make many).
            self._async_http = [e for e in self._async_http if not e[0].is_closed()]
            for lp, client, _ in self._async_http:
                if lp is loop:
                    return client
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout, connect=min(10.0, self.timeout)),
                limits=httpx.Limits(
                    max_connections=self.max_concurrency + 2,
                    max_keepalive_connections=self.max_concurrency + 2,
                ),
            )
            keeper = _close_at_loop_shutdown(client)
            self._async_http.append((loop, client, keeper))
        # Started here, the keeper is registered with this loop; asyncio.run (and any loop that
        # runs shutdown_asyncgens) closes it as the loop ends, and with it the connections.
        await anext(keeper)
        return client

    async def _send_async(self, attempt: Attempt, call: _Call) -> Decoded | EmpirioError:
        texts = attempt.request.texts
        try:
            http = await self._async_http_for_loop()
            r = await http.post(self._url, content=self._body(texts, call), headers=self._headers)
        except httpx.HTTPError as exc:
            return self._transport_error(exc)
        return self._read(r.status_code, r.content, r.headers, len(texts), call)

    async def _drive_async(
        self, plans: Iterator[SegmentPlan], call: _Call, progress: Any, *, ahead: int
    ) -> AsyncIterator[EmbeddingResult]:
        run = _Run(call, self.dimensions, plans)
        engine = self._new_engine()
        tasks: dict[asyncio.Task[Decoded | EmpirioError], Attempt] = {}
        try:
            while True:
                for result in run.ready():
                    yield result
                run.fill(engine, ahead)
                if run.done:
                    return
                sends, timeout = self._next_step(engine, bool(tasks))
                for attempt in sends:
                    tasks[asyncio.ensure_future(self._send_async(attempt, call))] = attempt
                if not tasks:
                    await asyncio.sleep(timeout or 0.0)
                    continue
                done, _ = await asyncio.wait(
                    tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    self._finish(engine, run, tasks.pop(task), task.result(), progress)
        finally:
            with self._lock:
                engine.abandon()
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def aembed(
        self,
        texts: Sequence[str],
        *,
        kind: Kind = "document",
        output: Output = "dense",
        show_progress: bool | None = None,
    ) -> EmbeddingResult:
        """:meth:`embed`, natively async: requests run as tasks on the running loop."""
        call = self._check_call(kind, output)
        checked = check_texts(texts)
        shared = self._shared_lookup(checked, call)
        if shared is not None:
            parked, missing = shared
            fetched = await self.aembed(
                missing, kind=kind, output="both", show_progress=show_progress
            )
            return self._shared_merge(checked, call, parked, missing, fetched)
        if not checked:
            return self._empty(call)
        plan = self._plan(checked, call, 0, 0, 0)
        results = []
        with self._progress(len(plan.pieces), show_progress) as bar:
            async for result in self._drive_async(iter([plan]), call, bar, ahead=1):
                results.append(result)
        return results[0]

    async def aiter_embed(
        self,
        texts: Iterable[str],
        *,
        kind: Kind = "document",
        output: Output = "dense",
        segment_size: int = 1000,
        show_progress: bool | None = None,
    ) -> AsyncIterator[EmbeddingResult]:
        """:meth:`iter_embed`, natively async."""
        call = self._check_call(kind, output)
        _check_range("segment_size", segment_size, 1, 10_000_000, error=ValueError)
        total = len(texts) if isinstance(texts, Sequence) else None
        if isinstance(texts, Sequence):
            check_texts(texts)
        with self._progress(total, show_progress) as bar:
            async for result in self._drive_async(
                self._plans(texts, call, segment_size), call, bar, ahead=2
            ):
                yield result

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the connections this client opened (not an ``http_client`` you passed)."""
        with self._lock:
            http, self._http = self._http, None
        if http is not None:
            http.close()

    async def aclose(self) -> None:
        """Close the connections this client opened, sync and on the running loop. Those on
        loops that have ended were closed as their loop shut down."""
        self.close()
        with self._lock:
            clients, self._async_http = self._async_http, []
        loop = asyncio.get_running_loop()
        for lp, _, keeper in clients:
            if lp is loop:
                await keeper.aclose()

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> EmbeddingClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _NoProgress:
    def update(self, n: int = 1) -> None:
        return None


def _tqdm() -> Any:
    """tqdm's notebook widget where ipywidgets is installed, else the text bar. Imported only
    when a bar is wanted: ``tqdm.auto`` warns in notebooks without ipywidgets."""
    try:
        import ipywidgets  # noqa: F401
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm.std import tqdm
    return tqdm


async def _close_at_loop_shutdown(client: httpx.AsyncClient) -> AsyncGenerator[None, None]:
    """Yields once, then closes ``client`` when closed itself: by ``aclose()``, or by the loop's
    ``shutdown_asyncgens()`` as ``asyncio.run`` ends."""
    try:
        yield
        yield  # pragma: no cover - never resumed a second time
    finally:
        await client.aclose()


def _describe(outcome: object) -> str:
    if isinstance(outcome, APIStatusError):
        return f"HTTP {outcome.status_code} {outcome.code or ''}".strip()
    return type(outcome).__name__


def _check_range(
    name: str, value: int, lo: int, hi: int, *, error: type[Exception] = ConfigurationError
) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise error(f"{name} must be an int from {lo} to {hi}; got {value!r}")


def _check_choice(
    name: str, value: str, choices: Sequence[str], *, error: type[Exception] = ConfigurationError
) -> None:
    if value not in choices:
        raise error(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
