"""``EmbeddingClient``: thin sync and async shells around the pure per-call driver.

Everything that decides (planning, pacing, retries, splitting, bookkeeping) lives in ``_plan``,
``_pace``, ``_retry``, ``_engine`` and ``_driver``; this module only reads the clock, sleeps,
sends HTTP and hands outcomes back. Both shells run the same loop over a
:class:`~empirio._core.driver.CallDriver`:

* async: requests run as tasks on the caller's loop, with one ``httpx.AsyncClient`` per loop;
* sync: the loop runs in the caller's thread (so input is read, and warnings are raised, there),
  and requests run on a private event loop in a daemon thread. Waiting on futures in slices of
  at most a second keeps Ctrl-C prompt; an interrupt cancels the requests in flight, which
  closes their connections at once (a blocking socket read in a worker thread could only be
  waited out). It also makes a sync call inside a running loop (a notebook cell) safe.

After ``fork`` the child forgets its parent's connections, threads, loops and locks
(``os.register_at_fork``) and makes its own on first use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import importlib
import itertools
import json
import logging
import math
import os
import socket
import sys
import threading
import time
import warnings
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, Literal, TypeVar, cast

import httpx
import numpy as np
from pydantic import SecretStr

from ._core.config import (
    DEFAULT_RPM,
    DEFAULT_TPM,
    FROM_ENV,
    RPM_ENV,
    TPM_ENV,
    FromEnv,
    host_port,
    is_loopback_url,
    package_version,
    resolve_api_key,
    resolve_base_url,
    resolve_rate,
    validate_dimensions,
)
from ._core.decode import Decoded, advertised_limits, decode_error, decode_success
from ._core.distinct import Distinct
from ._core.driver import Call, CallDriver, known_result
from ._core.engine import SLOT_POLL_S, Attempt, BatchLimit, Engine
from ._core.errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    CacheError,
    CacheWarning,
    ConfigurationError,
    EmpirioError,
    InvalidInputError,
    TruncationWarning,
    UnsupportedFeatureError,
    truncation_message,
)
from ._core.pace import AUTO_CEILING, Concurrency, Limits, LimitsInEffect, LimitSource
from ._core.plan import (
    NFC_BYTES_PER_CHAR,
    InstructionMode,
    Kind,
    Known,
    Output,
    Overflow,
    SegmentPlan,
    Unique,
    as_text_list,
    check_collection,
    check_texts,
    over_limit,
    plan_segment,
    prompt_overhead,
    unique_texts,
)
from ._core.result import EmbeddingResult, Usage, UsageMeter
from ._core.retry import RetryPolicy
from ._core.secret import SealedKey, open_sealed, seal_urls
from ._core.settings import DEFAULTS
from ._core.tokens import SAFE_INPUT_TOKENS, QwenTokenizer, get_tokenizer
from ._core.views import ViewCache
from ._io.budget import (
    Budget,
    LocalBudget,
    ShareBudget,
    budget_for,
    is_redis_url,
    resolve_share_budget,
)
from ._io.cache import (
    IDENTITY_HEADER,
    CacheScope,
    EmbeddingCache,
    EmbeddingStore,
    View,
    decode_dense_rows,
    decode_sparse,
    endpoint_identity,
)
from ._io.progress import Progress, tqdm_class
from ._io.redis_store import RedisStore
from ._io.sqlite_store import SqliteStore

__all__ = ["EmbeddingClient"]

logger = logging.getLogger("empirio")

_VERSION = package_version()
_MAX_BATCH_SIZE = 2048
_KINDS = ("document", "query")
_OUTPUTS = ("dense", "sparse", "both")
_OVERFLOWS = ("truncate", "chunk", "error")
_MODES = ("prompt", "api", "none")
#: The longest a sync call waits in one piece, in seconds: how soon Ctrl-C is seen on platforms
#: where a blocking wait is not interrupted by signals.
_WAIT_SLICE_S = 0.5
#: Async calls of more texts than this are planned (tokenised) off the event loop.
_PLAN_IN_THREAD = 200
#: Calls of more texts than this (with overflow other than "error", whose refusals must come
#: before anything is sent) are planned in segments: a small first one, so that sending starts
#: at once, and the rest on a planning thread, well ahead of the sends. Planning 9,000 texts
#: at once held the first send back by about half a second.
_PIPELINE_MIN = 1000
_FIRST_SEGMENT = 100
_SEGMENT = 1000
_T = TypeVar("_T")
_Loop = asyncio.AbstractEventLoop
#: Every client of this process, so that a forked child can make each forget its parent's
#: connections, threads and locks.
_CLIENTS: weakref.WeakSet[EmbeddingClient] = weakref.WeakSet()


class EmbeddingClient:
    """Turns any number of texts into text-embedding-v4 vectors as fast as the account allows.

    Batching, exact token limits, pacing to the account's rate limits, retries and concurrency
    are handled here; results always come back complete and in input order. Construction does
    no I/O (except opening a ``cache`` file, so that a bad one fails at once). The client is
    thread-safe and may be shared; close it (or use ``with``) to release
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
        max_concurrency: most requests in flight at once, or ``"auto"`` (default): as many as
            the account's rate needs at the measured latency (rate x latency, Little's law;
            up to 256), or 8 where no limits are known.
        rpm: the account's requests per minute, paced client-side; ``None`` disables. Default
            ``EMPIRIOLABS_RPM``, else 50 (EmpirioLabs' default account limit).
        tpm: the account's tokens per minute, paced client-side; ``None`` disables. Default
            ``EMPIRIOLABS_TPM``, else 2,000,000.
        max_retries: retries per request for 408/409/429/5xx and lost connections.
        timeout: seconds one attempt may take, headers and body (a trickling response too).
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
        share_budget: who shares this client's rate-limit budget (the account's ``rpm`` and
            ``tpm``): ``"machine"`` (every client of this key and endpoint in every process of
            this machine, through a small SQLite file), ``"process"`` (the clients of this
            process), ``"client"`` (this client alone), or ``"redis://[:password@]host:port/db"``
            (every process on every host using that Redis; needs ``empirio[redis]``). Default:
            ``EMPIRIOLABS_SHARE_BUDGET``, else ``"machine"``.
        cache: a persistent embedding cache: a file path (a SQLite file, made if missing, safe
            to share between threads, processes, both framework adapters and the CLI), a
            ``redis://[:password@]host:port/db`` URL (one cache for every host; needs
            ``empirio[redis]``; the password is kept like the key) or any
            :class:`~empirio.EmbeddingStore` (``mget``/``mset`` of bytes, such as a LangChain
            byte store). Cached texts are never sent; each request's vectors are written as it
            finishes, so an interrupted job resumes where it stopped. See :attr:`cache`.

    Raises:
        ConfigurationError: a setting is invalid or the key is missing.
    """

    def __init__(
        self,
        *,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        model: str = DEFAULTS["model"],
        dimensions: int = DEFAULTS["dimensions"],
        batch_size: int = DEFAULTS["batch_size"],
        max_concurrency: int | Literal["auto"] = DEFAULTS["max_concurrency"],
        rpm: float | FromEnv | None = DEFAULTS["rpm"],
        tpm: float | FromEnv | None = DEFAULTS["tpm"],
        max_retries: int = DEFAULTS["max_retries"],
        timeout: float = DEFAULTS["timeout"],
        overflow: Overflow = DEFAULTS["overflow"],
        instruction_mode: InstructionMode = DEFAULTS["instruction_mode"],
        query_instruction: str = DEFAULTS["query_instruction"],
        user: str | None = DEFAULTS["user"],
        encoding_format: Literal["base64", "float"] = DEFAULTS["encoding_format"],
        show_progress: bool = DEFAULTS["show_progress"],
        allow_insecure: bool = DEFAULTS["allow_insecure"],
        http_client: httpx.Client | None = DEFAULTS["http_client"],
        async_http_client: httpx.AsyncClient | None = DEFAULTS["async_http_client"],
        share_views: bool = DEFAULTS["share_views"],
        share_budget: ShareBudget | None = DEFAULTS["share_budget"],
        cache: str | os.PathLike[str] | EmbeddingStore | None = DEFAULTS["cache"],
    ) -> None:
        raw_key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        key = resolve_api_key(raw_key)
        if not key:
            raise ConfigurationError(
                "no API key: pass api_key=... or set EMPIRIOLABS_API_KEY "
                "(for the local emulator any non-empty key works)"
            )
        if key != key.strip():
            raise ConfigurationError(
                "the API key has leading or trailing whitespace (a newline copied from a "
                "file?); remove it"
            )
        if not (key.isascii() and key.isprintable()):
            raise ConfigurationError(
                "the API key contains characters an HTTP header cannot carry (non-ASCII or "
                "control characters); check that it was copied whole"
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
        if max_concurrency != "auto" and (
            isinstance(max_concurrency, bool)
            or not isinstance(max_concurrency, int)
            or not 1 <= max_concurrency <= 1024
        ):
            raise ConfigurationError(
                f"max_concurrency must be 'auto' or an int from 1 to 1024; got {max_concurrency!r}"
            )
        _check_range("max_retries", max_retries, 0, 100)
        # Limits nobody set (no argument, no environment variable) are provisional: the first
        # response that advertises the account's limits replaces them (see _adopt_limits).
        self._adopt = {
            name: value is FROM_ENV and not os.environ.get(env, "").strip()
            for name, value, env in (("rpm", rpm, RPM_ENV), ("tpm", tpm, TPM_ENV))
        }
        self._sources: dict[str, LimitSource] = {
            name: "default" if adopt else "set" for name, adopt in self._adopt.items()
        }
        try:  # None and 0 mean unpaced here, in the environment and on the command line
            rpm = resolve_rate(rpm, RPM_ENV, DEFAULT_RPM)
            tpm = resolve_rate(tpm, TPM_ENV, DEFAULT_TPM)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not (math.isfinite(timeout) and timeout > 0)
        ):
            raise ConfigurationError(
                f"timeout must be a finite positive number of seconds; got {timeout!r}"
            )
        _check_choice("overflow", overflow, _OVERFLOWS)
        _check_choice("instruction_mode", instruction_mode, _MODES)
        _check_choice("encoding_format", encoding_format, ("base64", "float"))
        try:
            share_budget = resolve_share_budget(share_budget)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
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

        self.share_budget: ShareBudget = share_budget

        self._tokenizer: QwenTokenizer | None = None
        self._lock = threading.Lock()  # guards the state shared by this client's calls, below
        try:
            self._limits = Limits(rpm, tpm)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        # An unpaced client needs no shared file: its budget only carries 429 pauses.
        self._budget: Budget = (
            budget_for(share_budget, self.base_url, key) if self._limits.paced else LocalBudget()
        )
        self._concurrency = (
            Concurrency(AUTO_CEILING, auto=True, limits=self._limits)
            if max_concurrency == "auto"
            else Concurrency(max_concurrency, limits=self._limits)
        )
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
        self._io: _IOLoop | None = None
        self._io_finalizer: weakref.finalize[Any, Any] | None = None
        self._views: ViewCache | None = ViewCache() if share_views else None
        self._cache, self._own_store = _open_cache(cache)
        self._identity: str | None = None  # the endpoint's, for cache keys: asked on first use
        self._identity_lock = threading.Lock()
        # Set when the endpoint answers a sparse request without sparse vectors: sparse calls
        # are refused from then on, and dense calls stop asking for both views.
        self._no_sparse = False
        # What a copy or a pickle of this client is made from (never the key itself, nor the
        # connections or the user's http clients, which cannot be copied).
        self._options: dict[str, Any] = {
            "base_url": self.base_url,
            "model": model,
            "dimensions": self.dimensions,
            "batch_size": batch_size,
            "max_concurrency": max_concurrency,
            "rpm": FROM_ENV if self._adopt["rpm"] else rpm,
            "tpm": FROM_ENV if self._adopt["tpm"] else tpm,
            "max_retries": max_retries,
            "timeout": timeout,
            "overflow": overflow,
            "instruction_mode": instruction_mode,
            "query_instruction": query_instruction,
            "user": user,
            "encoding_format": encoding_format,
            "show_progress": show_progress,
            "allow_insecure": allow_insecure,
            "share_budget": share_budget,
            "cache": cache,
        }
        self._async_http: list[
            tuple[asyncio.AbstractEventLoop, httpx.AsyncClient, AsyncGenerator[None, None]]
        ] = []
        # Calls under way: driver -> (its requests on the wire, the loop it runs on or None)
        self._calls: dict[CallDriver, tuple[Mapping[Any, Attempt], _Loop | None]] = {}
        self._wired: set[CallDriver] = set()
        _CLIENTS.add(self)
        self._frozen = True

    #: Settings read as attributes; fixed once the client is made (see ``__setattr__``).
    _SETTINGS = frozenset(
        {
            "base_url", "model", "dimensions", "batch_size", "max_concurrency", "rpm", "tpm",
            "max_retries", "timeout", "overflow", "instruction_mode", "query_instruction",
            "user", "encoding_format", "show_progress", "allow_insecure", "share_budget",
        }
    )  # fmt: skip

    def __setattr__(self, name: str, value: Any) -> None:
        # Setting one would look like it worked while the pacer, the pools, the cache keys and
        # the budget went on with the old value: refused, with what to do instead.
        if name in self._SETTINGS and self.__dict__.get("_frozen"):
            raise AttributeError(
                f"EmbeddingClient.{name} is fixed when the client is made; make a new client "
                f"with {name}=... (the LangChain and LlamaIndex classes' fields can be changed)"
            )
        super().__setattr__(name, value)

    # ------------------------------------------------------------------ copies

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickles and deep copies are new clients with the same settings: same key (sealed,
        see :mod:`empirio._core.secret`), same account budget; fresh connections, usage and locks.
        ``http_client``/``async_http_client`` are not carried."""
        # A Redis URL's password is a secret like the key.
        options = seal_urls(dict(self._options, share_views=self._views is not None))
        return _restore_client, (SealedKey(self._api_key.get_secret_value()), options)

    # ------------------------------------------------------------------ public helpers

    def __repr__(self) -> str:
        return (
            f"EmbeddingClient(model={self.model!r}, base_url={self.base_url!r}, "
            f"dimensions={self.dimensions}, api_key={self._api_key!r}, "
            f"batch_size={self._batch_limit.size}, rpm={self.rpm}, tpm={self.tpm})"
        )

    @property
    def limits(self) -> LimitsInEffect:
        """The rate limits pacing this client now, and where each came from: set (argument or
        environment), the defaults (until the server advertises its own) or the server. ``rpm``
        and ``tpm`` follow the server's advertised limits too; this also says why."""
        return LimitsInEffect(self.rpm, self.tpm, self._sources["rpm"], self._sources["tpm"])

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
            if self._views is None and not self._no_sparse:
                self._views = ViewCache()

    @property
    def shares_views(self) -> bool:
        """Whether dense and sparse calls share requests (see :meth:`enable_shared_views`)."""
        return self._views is not None

    @property
    def cache(self) -> EmbeddingCache | None:
        """The persistent embedding cache, if one was given: ``cache.stats()`` gives this
        client's hits and misses and the store's size."""
        return self._cache

    @property
    def effective_batch_size(self) -> int:
        """Inputs per request now: ``batch_size``, or less if the service named a lower limit."""
        return self._batch_limit.size

    # ------------------------------------------------------------------ planning

    def _check_call(self, kind: str, output: str) -> Call:
        _check_choice("kind", kind, _KINDS, error=InvalidInputError)
        _check_choice("output", output, _OUTPUTS, error=InvalidInputError)
        if output != "dense" and self._no_sparse:
            raise UnsupportedFeatureError(
                f"{self.base_url} does not return sparse vectors (an earlier response had "
                "none), so output='sparse' or 'both' cannot be served; dense calls still work"
            )
        return Call(cast(Kind, kind), cast(Output, output))

    def _plan(
        self, texts: Sequence[str], call: Call, index: int, offset: int, first_id: int
    ) -> SegmentPlan:
        return self._warn_truncated(self._plan_quietly(texts, call, index, offset, first_id))

    def _plan_quietly(
        self, texts: Sequence[str], call: Call, index: int, offset: int, first_id: int
    ) -> SegmentPlan:
        mode = self.instruction_mode if call.kind == "query" else "none"
        uniq = unique_texts(
            texts, kind=call.kind, instruction_mode=mode, instruction=self.query_instruction
        )
        known, keys = self._lookup(uniq, call) if self._cache is not None else (None, None)
        return plan_segment(
            uniq,
            known=known,
            cache_keys=keys,
            tokenizer=get_tokenizer if self._tokenizer is None else self._tokenizer,
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

    def _lookup(self, uniq: Unique, call: Call) -> tuple[Known | None, dict[str, tuple[str, ...]]]:
        """The cached vectors of the distinct texts (every view asked for), and their keys."""
        cache = self._cache
        assert cache is not None
        api = call.kind == "query" and self.instruction_mode == "api"
        scope = CacheScope(
            endpoint=self._endpoint_identity(),
            model=self.model,
            dimensions=self.dimensions,
            text_type="query" if api else "",
            instruct=self.query_instruction if api else "",
        )
        mode = self.instruction_mode if call.kind == "query" else "none"
        if any(len(t) > SAFE_INPUT_TOKENS // NFC_BYTES_PER_CHAR for t in uniq.texts):
            limit = SAFE_INPUT_TOKENS - prompt_overhead(
                self.tokenizer, call.kind, mode, self.query_instruction
            )
            tags = [
                self.overflow if over_limit(self.tokenizer, t, limit) else "" for t in uniq.texts
            ]
        else:
            tags = [""] * len(uniq.texts)
        views: list[View] = [v for v in ("dense", "sparse") if getattr(call, v)]
        keys: dict[str, tuple[str, ...]] = {
            v: tuple(scope.keys(v, uniq.texts, tags)) for v in views
        }
        width = 4 * self.dimensions
        raw: dict[str, list[bytes | None]] = {}
        for view in views:
            values = cache.store.mget(list(keys[view]))
            if len(values) != len(uniq.texts):
                raise CacheError(f"the cache store {cache.store!r} answered the wrong count")
            raw[view] = values
        sparse_found: list[dict[int, float] | None] = []
        if call.sparse:
            sparse_found = [None if v is None else decode_sparse(v) for v in raw["sparse"]]
        # A value of the wrong size (a damaged entry) is a miss, and is written again.
        hits = [
            u
            for u in range(len(uniq.texts))
            if (not call.dense or len(raw["dense"][u] or b"") == width)
            and (not call.sparse or sparse_found[u] is not None)
        ]
        cache.count(len(hits), len(uniq.texts) - len(hits))
        if not hits:
            return None, keys
        dense = None
        if call.dense:
            rows = b"".join(cast(bytes, raw["dense"][u]) for u in hits)
            dense = decode_dense_rows(rows, self.dimensions)
        sparse = (
            tuple(cast(dict[int, float], sparse_found[u]) for u in hits) if call.sparse else None
        )
        return Known(tuple(hits), dense, sparse), keys

    def _endpoint_identity(self) -> str:
        """The endpoint's identity for cache keys (see
        :func:`~empirio._io.cache.endpoint_identity`). A server on this machine is asked once,
        with ``GET /models``, what it serves; one that does not say is known by its port."""
        with self._identity_lock:  # one probe, however many threads look up at once
            if self._identity is not None:
                return self._identity
            declared = None
            if is_loopback_url(self.base_url):
                with contextlib.suppress(httpx.HTTPError):
                    r = httpx.get(
                        f"{self.base_url}/models",
                        headers=self._headers,
                        timeout=min(5.0, self.timeout),
                        trust_env=False,
                    )
                    declared = r.headers.get(IDENTITY_HEADER)
            self._identity = endpoint_identity(self.base_url, declared)
            return self._identity

    def _save(self, driver: CallDriver) -> None:
        """Write the vectors of the texts ``driver`` finished to the cache. A failure to write
        warns and the call goes on: its vectors are still returned."""
        pairs = driver.take_cache_pairs()
        if not pairs or self._cache is None:
            return
        try:
            self._cache.store.mset(pairs)
        except Exception as exc:  # any store's failure; the vectors themselves are safe
            warnings.warn(
                f"{len(pairs)} vectors could not be written to the embedding cache: {exc}",
                CacheWarning,
                stacklevel=2,
            )

    def _warn_truncated(
        self, plan: SegmentPlan, positions: Sequence[int] | None = None
    ) -> SegmentPlan:
        """Warn of the texts ``plan`` truncated; ``positions`` maps the plan's positions to the
        caller's (a call whose duplicates were set aside: each text's first position)."""
        if plan.truncated:
            at = (lambda i: i) if positions is None else positions.__getitem__
            cut = tuple((at(i), n) for i, n in plan.truncated)
            warnings.warn(
                TruncationWarning(truncation_message(cut, "position", "overflow='{}'"), cut),
                stacklevel=_caller_level(),
            )
        return plan

    def _pipelines(self, texts: Sequence[str]) -> bool:
        """Whether a call of ``texts`` is planned in segments (see ``_PIPELINE_MIN``)."""
        return len(texts) > _PIPELINE_MIN and self.overflow != "error"

    def _pipelined_plans(
        self, texts: list[str], call: Call, positions: Sequence[int] | None = None
    ) -> Iterator[SegmentPlan | None]:
        """Plans of ``texts`` in segments: the first (small) one here, each later one on a
        planning thread while the one before it is sent. Planned one ahead, not all at once:
        a burst of tokenising competes with the paced sends for the interpreter and makes
        their arrivals jitter. ``positions``: see :meth:`_warn_truncated`."""
        bounds = [(0, _FIRST_SEGMENT)] + [
            (a, min(a + _SEGMENT, len(texts))) for a in range(_FIRST_SEGMENT, len(texts), _SEGMENT)
        ]
        pool = _background_pool("empirio-plan")

        def plan(i: int) -> concurrent.futures.Future[SegmentPlan]:
            a, b = bounds[i]
            # Request ids must be unique within the call: each segment gets its own range.
            return pool.submit(self._plan_quietly, texts[a:b], call, i, a, i << 24)

        ahead = plan(1) if len(bounds) > 1 else None
        try:
            first = self._plan_quietly(texts[:_FIRST_SEGMENT], call, 0, 0, 0)
            yield self._warn_truncated(first, positions)
            for i in range(1, len(bounds)):
                assert ahead is not None
                while not ahead.done():
                    yield None  # not ready: the driver sends what it has and asks again
                current, ahead = ahead, plan(i + 1) if i + 1 < len(bounds) else None
                yield self._warn_truncated(current.result(), positions)
        finally:
            if ahead is not None:
                ahead.cancel()  # the call ended early: plan no more
            pool.shutdown(wait=False)

    def _plans(self, texts: Iterable[str], call: Call, segment_size: int) -> Iterator[SegmentPlan]:
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

    def _new_driver(
        self,
        plans: Iterator[SegmentPlan | None],
        call: Call,
        ahead: int,
        pending: Mapping[Any, Attempt],
        loop: asyncio.AbstractEventLoop | None,
    ) -> CallDriver:
        engine = Engine(
            budget=self._budget,
            limits=self._limits,
            concurrency=self._concurrency,
            policy=self._policy,
            batch_limit=self._batch_limit,
        )
        driver = CallDriver(
            call,
            self.dimensions,
            plans,
            engine,
            self._meter,
            ahead=ahead,
            keep_cache_pairs=self._cache is not None,
        )
        with self._lock:
            self._calls[driver] = (pending, loop)
        return driver

    def _busy_elsewhere(self, me: CallDriver, blocked: asyncio.AbstractEventLoop | None) -> int:
        """Requests other calls of this client have on the wire and can still finish.

        Derived afresh each time rather than kept as a count, so nothing can strand a slot:
        calls whose loop has closed or is not running (they cannot progress) are not counted,
        nor those on ``blocked``, the loop a sync call is blocking by running in its thread.
        Must hold ``self._lock``.
        """
        busy = 0
        for driver in list(self._wired):  # calls with requests out: few, whatever the calls
            entry = self._calls.get(driver)
            if entry is None:
                self._wired.discard(driver)
                continue
            pending, loop = entry
            if loop is not None and loop.is_closed():
                del self._calls[driver]  # died with its loop; its finally never ran
                self._wired.discard(driver)
                continue
            if driver is me or (loop is not None and (loop is blocked or not loop.is_running())):
                continue
            # Sent by the driver (some perhaps not yet handed to a task), less those finished
            # on the wire and waiting for their call to read them.
            finished = sum(1 for handle in list(pending) if handle.done())
            busy += max(0, driver.engine.n_in_flight - finished)
        return busy

    def _step(
        self, driver: CallDriver, blocked: asyncio.AbstractEventLoop | None, progress: Progress
    ) -> tuple[tuple[Attempt, ...], float | None] | None:
        """The driver's next step: what to send now, and how long to wait for a completion
        before asking again (``None``: until one completes). ``None`` when the call is over."""
        with self._lock:
            # Calls waiting for a slot look again every SLOT_POLL_S, less often when many wait.
            poll = SLOT_POLL_S * max(1.0, len(self._calls) / self._concurrency.maximum)
            step = driver.step(time.monotonic(), self._busy_elsewhere(driver, blocked), poll)
            self._note_wire(driver)
            known, driver.known_done = driver.known_done, 0
        progress.update(known)
        if step is None:
            return None
        timeout = None if step.wake_at is None else max(0.0, step.wake_at - time.monotonic())
        return step.sends, timeout

    def _complete(
        self,
        driver: CallDriver,
        attempt: Attempt,
        outcome: Decoded | EmpirioError,
        progress: Progress,
    ) -> None:
        with self._lock:
            finished = driver.complete(attempt, outcome, time.monotonic())
            retry_in = driver.retry_in
            self._note_wire(driver)
        self._save(driver)
        if finished:
            progress.update(finished)
        elif not isinstance(outcome, Decoded):
            why = _describe(outcome)
            if retry_in is None:
                logger.info("request of %d inputs failed (%s)", len(attempt.request), why)
            else:  # one line per wait, and the bar says what it waits for
                logger.info(
                    "request of %d inputs failed (%s); retrying in %.1f s (attempt %d)",
                    len(attempt.request),
                    why,
                    retry_in,
                    attempt.retries + 2,
                )
                progress.waiting(f"retrying in {retry_in:.0f} s: {why}")

    def _note_wire(self, driver: CallDriver) -> None:
        """Keep :attr:`_wired`, the calls with requests out. Must hold ``self._lock``."""
        if driver.engine.has_in_flight:
            self._wired.add(driver)
        else:
            self._wired.discard(driver)

    def _end(self, driver: CallDriver) -> None:
        with self._lock:
            self._calls.pop(driver, None)
            self._wired.discard(driver)
            gone = driver.close()
        if gone:
            logger.warning(
                "%d requests (%d tokens) were abandoned in flight; the service may have billed "
                "them (see usage.abandoned_requests)",
                len(gone),
                sum(a.request.tokens for a in gone),
            )

    def _body(self, texts: Sequence[str], call: Call) -> bytes:
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
        self, status: int, content: bytes, headers: httpx.Headers, n: int, call: Call
    ) -> Decoded | EmpirioError:
        if self._adopt["rpm"] or self._adopt["tpm"]:
            self._adopt_limits(headers)
        if 200 <= status < 300:
            try:
                return decode_success(
                    content,
                    n_inputs=n,
                    dimensions=self.dimensions,
                    dense=call.dense,
                    sparse=call.sparse,
                )
            except UnsupportedFeatureError as exc:
                with self._lock:
                    self._no_sparse, self._views = True, None
                return exc
            except EmpirioError as exc:
                return exc
        return decode_error(
            status, content, headers, time.time(), (self._api_key.get_secret_value(),)
        )

    def _adopt_limits(self, headers: httpx.Headers) -> None:
        """Take the limits a server advertises (``x-ratelimit-limit-requests``/``-tokens``, a
        number per minute or ``unlimited``) in place of defaults nobody chose: a local emulator
        is then not paced like the real account. Limits given as arguments or in the
        environment are never changed; where nothing is advertised the defaults stay."""
        found = {k: v for k, v in advertised_limits(headers).items() if self._adopt[k]}
        if not found:
            return
        with self._lock:
            for name in found:
                self._adopt[name] = False
            rpm = found.get("rpm", self.rpm)
            tpm = found.get("tpm", self.tpm)
            if (rpm, tpm) == (self.rpm, self.tpm):
                return
            self.__dict__.update(rpm=rpm, tpm=tpm)  # the limits in effect (from the server)
            self._sources.update(dict.fromkeys(found, "server"))
            self._limits = Limits(rpm, tpm)
            self._concurrency.limits = self._limits
            for driver in self._calls:  # calls under way pace to the new limits at once
                driver.engine.limits = self._limits
        logger.info("pacing to the limits the server advertises: rpm=%s, tpm=%s", rpm, tpm)

    def _transport_error(self, exc: httpx.HTTPError) -> EmpirioError:
        if _caused_by(exc, socket.gaierror) and not self._meter.usage.requests:
            # Never reached: a wrong host name or no network. Retrying for a minute would
            # only hide that; once requests have succeeded, a lookup failure is a blip.
            err = APIConnectionError(
                f"cannot resolve the host of {self.base_url}: check the address and the "
                "network (no request has reached it)"
            )
            err.retryable = False
            return err
        if _caused_by(exc, ConnectionRefusedError) and not self._meter.usage.requests:
            # A refused connection is an answer, not a blip: nothing listens there. Before any
            # success it fails at once with the likely fix (48 s of silent retries before).
            where = host_port(self.base_url)
            hint = (
                "is the emulator running? `empirio serve`, or start_if_no_key() in Python"
                if is_loopback_url(self.base_url)
                else "check the address and port"
            )
            err = APIConnectionError(
                f"nothing is listening on {where} (connection refused); {hint}"
            )
            err.retryable = False
            return err
        cause = _root_cause(exc)
        return APIConnectionError(
            f"connection to {self.base_url} failed: {type(exc).__name__}"
            + (f" ({cause})" if cause else "")
        )

    def _progress(
        self,
        total: int | None,
        show: bool | None,
        on_progress: Callable[[int], object] | None = None,
    ) -> contextlib.AbstractContextManager[Progress]:
        enabled = self.show_progress if show is None else show
        bar = tqdm_class()(total=total, unit="text", desc="Embedding") if enabled else None
        return Progress(bar, on_progress)

    # ------------------------------------------------------------------ sync shell

    def _io_loop(self) -> _IOLoop:
        with self._lock:
            if self._io is None:
                self._io = _IOLoop()
                # Framework objects are rarely closed by their users: stop the thread and close
                # its connections when this client is collected.
                self._io_finalizer = weakref.finalize(self, self._io.close)
            return self._io

    def _drive_sync(
        self,
        plans: Iterator[SegmentPlan | None],
        call: Call,
        progress: Progress,
        *,
        ahead: int,
    ) -> Iterator[EmbeddingResult]:
        io = self._io_loop()
        if self._user_http is None:
            # Made before the first pacing decision: an httpx client takes tens of ms to build
            # (its TLS context), which would delay the first send behind its slot.
            io.submit(self._async_http_for_loop()).result()
        pending: dict[concurrent.futures.Future[Decoded | EmpirioError], Attempt] = {}
        driver = self._new_driver(plans, call, ahead, pending, None)
        blocked = _running_loop()  # a loop this thread runs cannot progress while we wait
        try:
            while True:
                yield from driver.ready()
                step = self._step(driver, blocked, progress)
                if step is None:
                    return
                sends, timeout = step
                for attempt in sends:
                    pending[io.submit(self._send(attempt, call, sync=True))] = attempt
                wait = _WAIT_SLICE_S if timeout is None else min(timeout, _WAIT_SLICE_S)
                if not pending:
                    time.sleep(wait)
                    continue
                done, _ = concurrent.futures.wait(
                    pending, timeout=wait, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in done:
                    self._complete(driver, pending.pop(future), future.result(), progress)
        finally:
            # Reached with requests in flight only when the caller stopped early, or on Ctrl-C
            # or another BaseException (a failure waits for them in driver.step): cancelling
            # them closes their connections now instead of after the timeout.
            for future in pending:
                future.cancel()
            self._end(driver)

    def embed(
        self,
        texts: Sequence[str],
        *,
        kind: Kind = "document",
        output: Output = "dense",
        show_progress: bool | None = None,
        on_progress: Callable[[int], object] | None = None,
    ) -> EmbeddingResult:
        """Embed ``texts``; every bad input is reported before anything is sent.

        Args:
            texts: the texts, each non-blank.
            kind: ``"document"`` (no instruction) or ``"query"`` (gets the query instruction).
            output: ``"dense"``, ``"sparse"`` or ``"both"`` (one request serves both).
            show_progress: override the client's ``show_progress`` for this call.
            on_progress: called with a number of texts each time that many more are done
                (found in the cache, or their request finished): for a progress bar of your
                own spanning several calls.

        Returns:
            An :class:`EmbeddingResult` with one row per text, in order.

        Raises:
            InvalidInputError: a text is not a string, is blank, or (``overflow="error"``) is too
                long; raised before any request.
            APIError: a request failed for good (its ``inputs`` name the texts concerned).
        """
        call = self._check_call(kind, output)
        checked = check_texts(as_text_list(texts))
        shared = self._shared_lookup(checked, call)
        if shared is not None:
            parked, missing = shared
            try:
                fetched = self.embed(
                    missing,
                    kind=kind,
                    output="both",
                    show_progress=show_progress,
                    on_progress=on_progress,
                )
            except UnsupportedFeatureError:
                if call.output != "dense":
                    raise
                # The endpoint has no sparse output: the dense view alone, now and from now on.
                return self.embed(
                    checked,
                    kind=kind,
                    output="dense",
                    show_progress=show_progress,
                    on_progress=on_progress,
                )
            return self._shared_merge(checked, call, parked, missing, fetched, on_progress)
        if not checked:
            return self._empty(call)
        if self._pipelines(checked):
            distinct = Distinct.of(checked)
            parts: list[EmbeddingResult] = []
            with self._progress(len(checked), show_progress, on_progress) as bar:
                bar.update(distinct.repeats)
                try:
                    plans = self._pipelined_plans(distinct.texts, call, distinct.first)
                    parts.extend(self._drive_sync(plans, call, bar, ahead=4))
                except EmpirioError as exc:
                    _prepend_partial(exc, parts)
                    raise distinct.spread_error(exc) from None
            return distinct.spread(_concatenate(parts))
        plan = self._plan(checked, call, 0, 0, 0)
        if not plan.pieces:  # every text was cached: no network, no pacing
            if on_progress is not None:
                on_progress(len(checked))
            return known_result(plan, call, self.dimensions)
        with self._progress(len(checked), show_progress, on_progress) as bar:
            results = list(self._drive_sync(iter([plan]), call, bar, ahead=1))
        return results[0]

    def embed_as_lists(
        self,
        texts: Sequence[str],
        *,
        kind: Kind = "document",
        show_progress: bool | None = None,
        on_progress: Callable[[int], object] | None = None,
    ) -> list[list[float]]:
        """``embed(texts, kind=kind).dense_rows()``: the dense vectors as lists of Python
        floats, which LangChain and LlamaIndex return. For large calls each segment is
        converted on a worker thread as it arrives, while later ones are still being sent:
        converting 9,000 vectors at the end would add most of a second to the call."""
        checked = check_texts(as_text_list(texts))
        if not self._pipelines(checked) or self._views is not None:
            return self.embed(
                checked, kind=kind, show_progress=show_progress, on_progress=on_progress
            ).dense_rows()
        call = self._check_call(kind, "dense")
        distinct = Distinct.of(checked)
        parts: list[EmbeddingResult] = []
        with (
            _background_pool("empirio-lists") as pool,
            self._progress(len(checked), show_progress, on_progress) as bar,
        ):
            bar.update(distinct.repeats)
            converted = []
            try:
                plans = self._pipelined_plans(distinct.texts, call, distinct.first)
                for part in self._drive_sync(plans, call, bar, ahead=4):
                    parts.append(part)
                    converted.append(pool.submit(part.dense_rows))
            except EmpirioError as exc:
                _prepend_partial(exc, parts)
                raise distinct.spread_error(exc) from None
            return distinct.spread_rows([row for f in converted for row in f.result()])

    async def aembed_as_lists(
        self,
        texts: Sequence[str],
        *,
        kind: Kind = "document",
        show_progress: bool | None = None,
        on_progress: Callable[[int], object] | None = None,
    ) -> list[list[float]]:
        """:meth:`embed_as_lists`, natively async (conversions run off the event loop)."""
        checked = check_texts(as_text_list(texts))
        if not self._pipelines(checked) or self._views is not None:
            result = await self.aembed(
                checked, kind=kind, show_progress=show_progress, on_progress=on_progress
            )
            return result.dense_rows()
        call = self._check_call(kind, "dense")
        distinct = Distinct.of(checked)
        loop = asyncio.get_running_loop()
        parts: list[EmbeddingResult] = []
        converted: list[asyncio.Future[list[list[float]]]] = []
        with (
            _background_pool("empirio-lists") as pool,
            self._progress(len(checked), show_progress, on_progress) as bar,
        ):
            bar.update(distinct.repeats)
            try:
                plans = self._pipelined_plans(distinct.texts, call, distinct.first)
                async for part in self._drive_async(plans, call, bar, ahead=4):
                    parts.append(part)
                    converted.append(loop.run_in_executor(pool, part.dense_rows))
            except EmpirioError as exc:
                _prepend_partial(exc, parts)
                raise distinct.spread_error(exc) from None
            return distinct.spread_rows(
                [r for rows in await asyncio.gather(*converted) for r in rows]
            )

    def iter_embed(
        self,
        texts: Iterable[str],
        *,
        kind: Kind = "document",
        output: Output = "dense",
        segment_size: int = 1000,
        show_progress: bool | None = None,
        on_progress: Callable[[int], object] | None = None,
    ) -> Iterator[EmbeddingResult]:
        """Embed a large or endless stream of texts with bounded memory.

        Texts are planned ``segment_size`` at a time while earlier segments are in flight, and
        one :class:`EmbeddingResult` per segment is yielded in input order (its ``offset`` says
        where it starts). Memory holds about three segments, whatever the input's length.
        A bad text raises when its segment is planned; segments before it were already yielded.
        """
        call = self._check_call(kind, output)
        _check_range("segment_size", segment_size, 1, 10_000_000, error=InvalidInputError)
        total = len(texts) if isinstance(texts, Sequence) else None
        check_collection(texts)
        if isinstance(texts, Sequence):
            check_texts(texts)  # cheap, and finds a bad text before anything is sent
        with self._progress(total, show_progress, on_progress) as bar:
            yield from self._drive_sync(self._plans(texts, call, segment_size), call, bar, ahead=2)

    def _shared_lookup(self, texts: list[str], call: Call) -> tuple[list[Any], list[str]] | None:
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
        call: Call,
        parked: list[Any],
        missing: list[str],
        fetched: EmbeddingResult,
        on_progress: Callable[[int], object] | None,
    ) -> EmbeddingResult:
        """Combine parked values with freshly fetched ones; park the view not asked for.
        ``on_progress`` hears of the texts served without a request (the fetch reported the
        ``missing`` ones), so that every text of the call is counted once."""
        views = self._views
        assert views is not None
        if on_progress is not None and len(texts) > len(missing):
            on_progress(len(texts) - len(missing))
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

    def _empty(self, call: Call) -> EmbeddingResult:
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
            # httpcore imports anyio's asyncio backend on its first connection (about 80 ms);
            # done here, before pacing starts, it cannot delay a paced send behind its slot.
            importlib.import_module("anyio._backends._asyncio")
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout, connect=min(10.0, self.timeout)),
                # A loopback server is reached directly: HTTP_PROXY would otherwise receive
                # the key in clear text over http://.
                trust_env=not is_loopback_url(self.base_url),
                limits=httpx.Limits(
                    # The pool follows the in-flight ceiling; connections open as needed.
                    max_connections=self._concurrency.maximum + 2,
                    max_keepalive_connections=self._concurrency.maximum + 2,
                ),
            )
            keeper = _close_at_loop_shutdown(client)
            self._async_http.append((loop, client, keeper))
            if self._io is not None and self._io.loop is loop:
                # The loop only holds its async generators weakly: if this client is collected
                # first, the keeper must still be there for the loop's shutdown to close it.
                self._io.keepers.append(keeper)
        # Started here, the keeper is registered with this loop; asyncio.run (and any loop that
        # runs shutdown_asyncgens) closes it as the loop ends, and with it the connections.
        await anext(keeper)
        return client

    async def _send(self, attempt: Attempt, call: Call, *, sync: bool) -> Decoded | EmpirioError:
        """Send one attempt on the running loop; ``sync``: for the sync shell (which uses the
        ``http_client`` it was given, on a worker thread, where it was given one).

        ``timeout`` bounds the whole exchange, headers and body: httpx's own timeouts bound each
        read, so a server trickling a byte a second would otherwise hold the call for ever.
        """
        texts = attempt.request.texts
        body = self._body(texts, call)
        self._budget.sent(self._limits, attempt.sent_at, time.monotonic())
        cap = _response_cap(len(texts), self.dimensions, call)
        try:
            if sync and self._user_http is not None:
                post = functools.partial(
                    _post_capped_sync, self._user_http, self._url, body, self._headers, cap
                )
                got = await asyncio.wait_for(
                    asyncio.get_running_loop().run_in_executor(None, post), self.timeout
                )
            else:
                http = await self._async_http_for_loop()
                got = await asyncio.wait_for(
                    _post_capped(http, self._url, body, self._headers, cap), self.timeout
                )
        except (TimeoutError, httpx.TimeoutException):
            return APITimeoutError(f"no response from {self.base_url} within {self.timeout} s")
        except httpx.HTTPError as exc:
            return self._transport_error(exc)
        except _TooLarge:
            return APIResponseValidationError(
                f"the response from {self.base_url} is larger than {cap:,} bytes decoded, far "
                f"more than {len(texts)} embeddings take: refused"
            )
        status, content, headers = got
        return self._read(status, content, headers, len(texts), call)

    async def _drive_async(
        self,
        plans: Iterator[SegmentPlan | None],
        call: Call,
        progress: Progress,
        *,
        ahead: int,
    ) -> AsyncIterator[EmbeddingResult]:
        loop = asyncio.get_running_loop()
        await self._async_http_for_loop()  # before the first pacing decision, as in sync
        tasks: dict[asyncio.Task[Decoded | EmpirioError], Attempt] = {}
        driver = self._new_driver(plans, call, ahead, tasks, loop)
        try:
            while True:
                for result in driver.ready():
                    yield result
                step = self._step(driver, None, progress)
                if step is None:
                    return
                sends, timeout = step
                for attempt in sends:
                    tasks[asyncio.ensure_future(self._send(attempt, call, sync=False))] = attempt
                if not tasks:
                    await asyncio.sleep(timeout or 0.0)
                    continue
                done, _ = await asyncio.wait(
                    tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    self._complete(driver, tasks.pop(task), task.result(), progress)
        finally:
            self._end(driver)
            for task in tasks:
                task.cancel()
            if tasks and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop may be closing under us
                    await asyncio.gather(*tasks, return_exceptions=True)

    async def aembed(
        self,
        texts: Sequence[str],
        *,
        kind: Kind = "document",
        output: Output = "dense",
        show_progress: bool | None = None,
        on_progress: Callable[[int], object] | None = None,
    ) -> EmbeddingResult:
        """:meth:`embed`, natively async: requests run as tasks on the running loop."""
        call = self._check_call(kind, output)
        checked = check_texts(as_text_list(texts))
        shared = self._shared_lookup(checked, call)
        if shared is not None:
            parked, missing = shared
            try:
                fetched = await self.aembed(
                    missing,
                    kind=kind,
                    output="both",
                    show_progress=show_progress,
                    on_progress=on_progress,
                )
            except UnsupportedFeatureError:
                if call.output != "dense":
                    raise
                return await self.aembed(
                    checked,
                    kind=kind,
                    output="dense",
                    show_progress=show_progress,
                    on_progress=on_progress,
                )
            return self._shared_merge(checked, call, parked, missing, fetched, on_progress)
        if not checked:
            return self._empty(call)
        if self._pipelines(checked):
            distinct = Distinct.of(checked)
            parts: list[EmbeddingResult] = []
            with self._progress(len(checked), show_progress, on_progress) as bar:
                bar.update(distinct.repeats)
                try:
                    plans = self._pipelined_plans(distinct.texts, call, distinct.first)
                    async for part in self._drive_async(plans, call, bar, ahead=4):
                        parts.append(part)
                except EmpirioError as exc:
                    _prepend_partial(exc, parts)
                    raise distinct.spread_error(exc) from None
            return distinct.spread(_concatenate(parts))
        if len(checked) > _PLAN_IN_THREAD:
            # Tokenising thousands of texts would hold the loop (and the sends of every other
            # call on it) for tens of milliseconds, making their arrivals jitter: do it aside.
            quiet = functools.partial(self._plan_quietly, checked, call, 0, 0, 0)
            plan = self._warn_truncated(
                await asyncio.get_running_loop().run_in_executor(None, quiet)
            )
        else:
            plan = self._plan(checked, call, 0, 0, 0)
        if not plan.pieces:  # every text was cached: no network, no pacing
            if on_progress is not None:
                on_progress(len(checked))
            return known_result(plan, call, self.dimensions)
        results = []
        with self._progress(len(checked), show_progress, on_progress) as bar:
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
        on_progress: Callable[[int], object] | None = None,
    ) -> AsyncIterator[EmbeddingResult]:
        """:meth:`iter_embed`, natively async."""
        call = self._check_call(kind, output)
        _check_range("segment_size", segment_size, 1, 10_000_000, error=InvalidInputError)
        total = len(texts) if isinstance(texts, Sequence) else None
        check_collection(texts)
        if isinstance(texts, Sequence):
            check_texts(texts)  # cheap, and finds a bad text before anything is sent
        with self._progress(total, show_progress, on_progress) as bar:
            async for result in self._drive_async(
                self._plans(texts, call, segment_size), call, bar, ahead=2
            ):
                yield result

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the connections this client opened for sync calls, and stop their thread
        (not an ``http_client`` you passed). The client stays usable: it reopens on demand."""
        with self._lock:
            io, self._io = self._io, None
            finalizer, self._io_finalizer = self._io_finalizer, None
        if finalizer is not None:
            finalizer.detach()
        if io is not None:
            io.close()
        if self._own_store is not None:
            self._own_store.close()

    def _after_fork_in_child(self) -> None:
        """Forget the parent's connections, thread, loops, calls and locks; keep the settings,
        the usage so far and the budget (which renews its own state, see ``_budget``)."""
        self._lock = threading.Lock()
        self._identity_lock = threading.Lock()
        if self._io_finalizer is not None:
            self._io_finalizer.detach()  # the parent's thread is not ours to stop
        self._io, self._io_finalizer = None, None
        self._async_http = []
        self._calls = {}
        self._wired = set()
        self._meter.after_fork()
        if self._cache is not None:
            self._cache.after_fork()
        if self._views is not None:
            self._views.after_fork()

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


#: Folders of our packages: a warning is reported at the first frame outside them.
_OUR_DIRS = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), name) + os.sep
    for name in ("empirio", "langchain_empirio", "llamaindex_empirio", "llama_index")
)


def _caller_level() -> int:
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


def _background_pool(name: str) -> concurrent.futures.ThreadPoolExecutor:
    """One worker thread for work that runs ahead of the sends (planning, converting), at a
    lower scheduling priority where the OS allows: on a busy machine it must not take the CPU
    from the thread that sends on time."""
    return concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix=name, initializer=_lower_priority
    )


def _lower_priority() -> None:
    with contextlib.suppress(AttributeError, OSError):  # Linux: per thread; elsewhere: no-op
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def _concatenate(parts: Sequence[EmbeddingResult]) -> EmbeddingResult:
    """The results of a call's segments, in order, as one."""
    dense = None
    if parts[0].dense is not None:
        dense = np.concatenate([cast(np.ndarray, p.dense) for p in parts])
    sparse = None
    if parts[0].sparse is not None:
        sparse = [vec for p in parts for vec in cast(list[dict[int, float]], p.sparse)]
    usage = Usage()
    for p in parts:
        usage = usage + p.usage
    return EmbeddingResult(dense, sparse, usage)


def _prepend_partial(exc: EmpirioError, parts: Sequence[EmbeddingResult]) -> None:
    """Add the segments a call had already handed out to the partial result its error carries."""
    if not parts:
        return
    done = list(parts) + ([exc.partial] if exc.partial is not None else [])
    indices = [p.offset + i for p in parts for i in range(len(p))]
    exc.partial = _concatenate(done)
    exc.partial_indices = tuple(indices) + exc.partial_indices


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


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    return any(isinstance(e, kind) for e in _chain(exc))


def _restore_client(key: SealedKey, options: dict[str, Any]) -> EmbeddingClient:
    return EmbeddingClient(api_key=SecretStr(key.reveal()), **open_sealed(options))


def _open_cache(
    cache: str | os.PathLike[str] | EmbeddingStore | None,
) -> tuple[EmbeddingCache | None, SqliteStore | RedisStore | None]:
    """The client's cache, and the store the client opened itself (and so closes), if any:
    a ``redis://`` URL is a :class:`~empirio._io.redis_store.RedisStore`, another string or path
    a :class:`~empirio._io.sqlite_store.SqliteStore` file."""
    if cache is None:
        return None, None
    if is_redis_url(cache):
        redis_store = RedisStore(str(cache))
        return EmbeddingCache(redis_store), redis_store
    if isinstance(cache, str | os.PathLike):
        store = SqliteStore(cache)
        return EmbeddingCache(store), store
    if isinstance(cache, EmbeddingCache):
        return cache, None
    if not isinstance(cache, EmbeddingStore):
        raise ConfigurationError(
            f"cache must be a file path, a redis:// URL or a store with mget/mset (an "
            f"EmbeddingStore); got {type(cache).__name__}"
        )
    return EmbeddingCache(cache), None


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        client._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _IOLoop:
    """A private event loop on a daemon thread, where the sync shell's requests run.

    Daemon, so an interpreter exiting after Ctrl-C never waits for it.
    """

    def __init__(self) -> None:
        self.keepers: list[AsyncGenerator[None, None]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="empirio-io", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            # Closes the loop's httpx.AsyncClient (see _close_at_loop_shutdown), and with it the
            # connections; done on this thread whoever asked for the stop.
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        """Stop the loop, closing its connections; waits at most a few seconds (not at all
        when called on the loop's own thread, as a finalizer may be)."""
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # closed already
            return
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=5.0)


async def _close_at_loop_shutdown(client: httpx.AsyncClient) -> AsyncGenerator[None, None]:
    """Yields once, then closes ``client`` when closed itself: by ``aclose()``, or by the loop's
    ``shutdown_asyncgens()`` as ``asyncio.run`` ends."""
    try:
        yield
        yield  # pragma: no cover - never resumed a second time
    finally:
        await client.aclose()


class _TooLarge(Exception):
    """A response body grew past the size its request can explain (a compression bomb)."""


def _response_cap(n: int, dimensions: int, call: Call) -> int:
    """The most bytes a decoded response to ``n`` inputs may hold: float-list JSON takes at
    most ~26 bytes a component, sparse output at most a few thousand weights of ~60 bytes."""
    per_input = 26 * dimensions + (512 * 1024 if call.sparse else 0) + 1024
    return 1024 * 1024 + n * per_input


async def _post_capped(
    http: httpx.AsyncClient, url: str, body: bytes, headers: Mapping[str, str], cap: int
) -> tuple[int, bytes, httpx.Headers]:
    """POST and read the body, refusing one that decodes to more than ``cap`` bytes."""
    async with http.stream("POST", url, content=body, headers=headers) as r:
        chunks, size = [], 0
        async for chunk in r.aiter_bytes():
            size += len(chunk)
            if size > cap:
                raise _TooLarge
            chunks.append(chunk)
        return r.status_code, b"".join(chunks), r.headers


def _post_capped_sync(
    http: httpx.Client, url: str, body: bytes, headers: Mapping[str, str], cap: int
) -> tuple[int, bytes, httpx.Headers]:
    """:func:`_post_capped` for a user's ``httpx.Client`` (a line-for-line mirror)."""
    with http.stream("POST", url, content=body, headers=headers) as r:
        chunks, size = [], 0
        for chunk in r.iter_bytes():
            size += len(chunk)
            if size > cap:
                raise _TooLarge
            chunks.append(chunk)
        return r.status_code, b"".join(chunks), r.headers


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
