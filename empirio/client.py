"""``EmbeddingClient``: the facade. It builds a client's settings (:class:`ClientConfig`), its
shared state (:class:`~empirio._io.session.Session`), its cache, planner and transport, and the
two shells that drive each call's flow (:func:`empirio._core.flow.embed_flow`): each public
method is a few lines. ``ARCHITECTURE.md`` draws the layers.

After ``fork`` the child forgets its parent's connections, threads, loops and locks
(``os.register_at_fork``) and makes its own on first use.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, Literal, TypeVar, overload

import httpx
from pydantic import SecretStr

from ._core.cache_keys import EmbeddingStore
from ._core.coalesce import joinable
from ._core.config import FromEnv
from ._core.driver import Call
from ._core.errors import InvalidInputError
from ._core.flow import CallOptions
from ._core.limits import LimitsInEffect
from ._core.plan import check_collection, check_texts
from ._core.result import EmbeddingResult, Usage
from ._core.secret import SealedKey, open_sealed, seal_secrets
from ._core.settings import DEFAULTS, ClientConfig, check_int
from ._core.tokens import QwenTokenizer
from ._core.types import InstructionMode, Kind, Output, Overflow, ShareBudget
from ._io.aio import AsyncShell
from ._io.cache import EmbeddingCache, open_cache
from ._io.coalesce import Coalescer
from ._io.http import Transport
from ._io.planning import Planner
from ._io.session import Session
from ._io.sync import SyncShell

__all__ = ["EmbeddingClient"]

_T = TypeVar("_T")
#: Every client of this process, so that a forked child can make each forget its parent's
#: connections, threads and locks.
_CLIENTS: weakref.WeakSet[EmbeddingClient] = weakref.WeakSet()


class _Fixed(Generic[_T]):
    """A setting read as an attribute and fixed once the client is made: setting one would look
    like it worked while the pacer, the pools, the cache keys and the budget went on with the
    old value, so it is refused with what to do instead. ``rpm``/``tpm`` read the limits in
    effect (they follow what a server advertises when nobody set them)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Fixed[_T]: ...
    @overload
    def __get__(self, obj: EmbeddingClient, owner: type | None = None) -> _T: ...
    def __get__(self, obj: EmbeddingClient | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        if self.name in ("rpm", "tpm"):
            return getattr(obj._session, self.name)
        return getattr(obj._session.config, self.name)

    def __set__(self, obj: EmbeddingClient, value: object) -> None:
        raise AttributeError(
            f"EmbeddingClient.{self.name} is fixed when the client is made; make a new client "
            f"with {self.name}=... (the LangChain and LlamaIndex classes' fields can be changed)"
        )


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
            up to 256), or 8 where no limits are known. With 1, the sync methods send from
            the caller's thread, with no I/O thread (the least CPU per request).
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
        coalesce: send small calls that arrive together (fewer texts than a request holds,
            within a few milliseconds, or while the account's next slot is still ahead) as one
            call, each caller getting its own rows and its own errors: 50 concurrent
            ``aembed_query`` calls at 50 requests a minute take 5 requests, not 50. Queries and
            documents never share a request. A merged call's ``usage`` is reported by the
            first caller's result; ``client.usage`` counts everything.
        account: a name for the account whose limits this key shares (the limits belong to
            the account, not to a key): clients of every key that names the same account at
            the same endpoint pace as one, in ``share_budget``'s scope. Default:
            ``EMPIRIOLABS_ACCOUNT``, else each key is its own account. Only a hash of it is
            kept in the budget's file or Redis key.
        cache: a persistent embedding cache: a file path (a SQLite file, made if missing, safe
            to share between threads, processes, both framework adapters and the CLI), a
            ``redis://[:password@]host:port/db`` URL (one cache for every host; needs
            ``empirio[redis]``; the password is kept like the key) or any
            :class:`~empirio.EmbeddingStore` (``mget``/``mset`` of bytes, such as a LangChain
            byte store). Cached texts are never sent; each request's vectors are written as it
            finishes, so an interrupted job resumes where it stopped. See :attr:`cache`.
            Entries are sealed: their keys are keyed hashes and each carries an AES-GCM tag,
            both made with a secret derived from the key (or ``cache_secret``), so a shared
            cache can be neither read nor poisoned by whoever lacks it; an entry that fails its
            check is fetched again (``cache.stats().rejected``).
        cache_secret: the secret the cache is sealed with, when keys of one account share a
            cache (at least 16 characters; kept like the key). Default:
            ``EMPIRIOLABS_CACHE_SECRET``, else one derived from the key (a new key then starts
            a new cache).

    Raises:
        ConfigurationError: a setting is invalid or the key is missing.
    """

    base_url: _Fixed[str] = _Fixed()
    model: _Fixed[str] = _Fixed()
    dimensions: _Fixed[int] = _Fixed()
    batch_size: _Fixed[int] = _Fixed()
    max_concurrency: _Fixed[int | Literal["auto"]] = _Fixed()
    rpm: _Fixed[float | None] = _Fixed()
    tpm: _Fixed[float | None] = _Fixed()
    max_retries: _Fixed[int] = _Fixed()
    timeout: _Fixed[float] = _Fixed()
    overflow: _Fixed[Overflow] = _Fixed()
    instruction_mode: _Fixed[InstructionMode] = _Fixed()
    query_instruction: _Fixed[str] = _Fixed()
    user: _Fixed[str | None] = _Fixed()
    encoding_format: _Fixed[Literal["base64", "float"]] = _Fixed()
    show_progress: _Fixed[bool] = _Fixed()
    allow_insecure: _Fixed[bool] = _Fixed()
    share_budget: _Fixed[ShareBudget] = _Fixed()
    account: _Fixed[str | None] = _Fixed()
    coalesce: _Fixed[bool] = _Fixed()

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
        coalesce: bool = DEFAULTS["coalesce"],
        account: str | None = DEFAULTS["account"],
        cache: str | os.PathLike[str] | EmbeddingStore | None = DEFAULTS["cache"],
        cache_secret: str | SecretStr | None = DEFAULTS["cache_secret"],
    ) -> None:
        config = ClientConfig.build(
            api_key=api_key,
            base_url=base_url,
            model=model,
            dimensions=dimensions,
            batch_size=batch_size,
            max_concurrency=max_concurrency,
            rpm=rpm,
            tpm=tpm,
            max_retries=max_retries,
            timeout=timeout,
            overflow=overflow,
            instruction_mode=instruction_mode,
            query_instruction=query_instruction,
            user=user,
            encoding_format=encoding_format,
            show_progress=show_progress,
            allow_insecure=allow_insecure,
            share_views=share_views,
            share_budget=share_budget,
            account=account,
            coalesce=coalesce,
            cache_secret=cache_secret,
        )
        self._cache_arg = cache  # what a copy opens again (a path, a URL or a store)
        self._cache, self._own_store = open_cache(cache)
        self._session = Session(config, self._cache)
        self._transport = Transport(self._session, http_client, async_http_client)
        self._planner = Planner(self._session, self._transport.headers)
        self._sync = SyncShell(self._session, self._planner, self._transport)
        self._async = AsyncShell(self._session, self._planner, self._transport)
        self._coalescer = Coalescer(self._session.next_slot_in)
        _CLIENTS.add(self)

    # ------------------------------------------------------------------ copies

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickles and deep copies are new clients with the same settings: same key (sealed,
        see :mod:`empirio._core.secret`), same account budget; fresh connections, usage and locks.
        ``http_client``/``async_http_client`` are not carried."""
        options = dict(
            self._session.config.options(), cache=self._cache_arg, share_views=self.shares_views
        )
        # A Redis URL's password is a secret like the key.
        return _restore_client, (SealedKey(self.api_key.get_secret_value()), seal_secrets(options))

    def __repr__(self) -> str:
        return (
            f"EmbeddingClient(model={self.model!r}, base_url={self.base_url!r}, "
            f"dimensions={self.dimensions}, api_key={self.api_key!r}, "
            f"batch_size={self.effective_batch_size}, rpm={self.rpm}, tpm={self.tpm})"
        )

    # ------------------------------------------------------------------ public helpers

    @property
    def limits(self) -> LimitsInEffect:
        """The rate limits pacing this client now, and where each came from: set (argument or
        environment), the defaults (until the server advertises its own) or the server. ``rpm``
        and ``tpm`` follow the server's advertised limits too; this also says why."""
        return self._session.limits_in_effect()

    @property
    def api_key(self) -> SecretStr:
        """The key, as a ``SecretStr`` (``.get_secret_value()`` reveals it)."""
        return self._session.config.api_key

    @property
    def tokenizer(self) -> QwenTokenizer:
        """The exact Qwen tokenizer (loaded on first use, about a quarter second)."""
        return self._planner.tokenizer

    def count_tokens(self, text: str) -> int:
        """Qwen tokens in ``text`` as the model sees it; the service bills this + 1 per input."""
        return self.tokenizer.count(text)

    @property
    def usage(self) -> Usage:
        """Requests, tokens and estimated cost of everything this client has done."""
        return self._session.meter.usage

    def on_usage(self, listener: Callable[[Usage], None]) -> Callable[[], None]:
        """Call ``listener(delta)`` with what was spent each time requests finish (or are
        abandoned in flight): in the thread that finished them, outside the client's locks;
        keep it quick. For tallies that must count what was paid even if the process dies
        after (the engines' ``Tally``), meters and tracing. Returns what stops it."""
        return self._session.listen(listener)

    def enable_shared_views(self) -> None:
        """From now on, ``embed(output="dense")`` and ``embed(output="sparse")`` fetch both views
        in one request and keep the other until asked for (hybrid search bills once)."""
        self._session.enable_shared_views()

    @property
    def shares_views(self) -> bool:
        """Whether dense and sparse calls share requests (see :meth:`enable_shared_views`)."""
        return self._session.views is not None

    @property
    def cache(self) -> EmbeddingCache | None:
        """The persistent embedding cache, if one was given: ``cache.stats()`` gives this
        client's hits and misses and the store's size."""
        return self._cache

    @property
    def effective_batch_size(self) -> int:
        """Inputs per request now: ``batch_size``, or less if the service named a lower limit."""
        return self._session.batch_limit.size

    # ------------------------------------------------------------------ embedding

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
        options = CallOptions(kind, output, show_progress, on_progress)
        if self._joins(texts, options):
            return self._coalescer.call(list(texts), options, self._embed_alone)
        return self._embed_alone(texts, options)

    def _embed_alone(self, texts: Sequence[str], options: CallOptions) -> EmbeddingResult:
        result: EmbeddingResult = self._sync.call(texts, options)
        return result

    async def _aembed_alone(self, texts: Sequence[str], options: CallOptions) -> EmbeddingResult:
        result: EmbeddingResult = await self._async.call(texts, options)
        return result

    def _joins(self, texts: Sequence[str], options: CallOptions) -> bool:
        """Whether this call is merged with others arriving together (``coalesce``); its own
        input is checked first, so that a bad text fails its caller alone."""
        if not self._session.config.coalesce or not isinstance(texts, list | tuple):
            return False
        progress = bool(options.show_progress) or options.on_progress is not None
        if not joinable(
            len(texts), self._session.batch_limit.size, progress=progress, as_lists=False
        ):
            return False
        check_texts(texts)
        self._session.check_call(options.kind, options.output)
        return True

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
        options = CallOptions(kind, output, show_progress, on_progress)
        if self._joins(texts, options):
            return await self._coalescer.acall(list(texts), options, self._aembed_alone)
        return await self._aembed_alone(texts, options)

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
        options = CallOptions(kind, "dense", show_progress, on_progress, as_lists=True)
        rows: list[list[float]] = self._sync.call(texts, options)
        return rows

    async def aembed_as_lists(
        self,
        texts: Sequence[str],
        *,
        kind: Kind = "document",
        show_progress: bool | None = None,
        on_progress: Callable[[int], object] | None = None,
    ) -> list[list[float]]:
        """:meth:`embed_as_lists`, natively async (conversions run off the event loop)."""
        options = CallOptions(kind, "dense", show_progress, on_progress, as_lists=True)
        rows: list[list[float]] = await self._async.call(texts, options)
        return rows

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
        options = CallOptions(kind, output, show_progress, on_progress)
        call, total = self._check_stream(texts, options, segment_size)
        yield from self._sync.stream(texts, call, options, segment_size, total)

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
        options = CallOptions(kind, output, show_progress, on_progress)
        call, total = self._check_stream(texts, options, segment_size)
        async for result in self._async.stream(texts, call, options, segment_size, total):
            yield result

    def _check_stream(
        self, texts: Iterable[str], options: CallOptions, size: int
    ) -> tuple[Call, int | None]:
        """Check a stream's call before anything is sent: the call, and the stream's length
        where it has one."""
        call = self._session.check_call(options.kind, options.output)
        check_int("segment_size", size, (1, 10_000_000), error=InvalidInputError)
        check_collection(texts)
        if isinstance(texts, Sequence):
            check_texts(texts)  # cheap, and finds a bad text before anything is sent
            return call, len(texts)
        return call, None

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the connections this client opened for sync calls, and stop their thread
        (not an ``http_client`` you passed). The client stays usable: it reopens on demand."""
        self._sync.close()
        if self._own_store is not None:
            self._own_store.close()

    async def aclose(self) -> None:
        """Close the connections this client opened, sync and on the running loop. Those on
        loops that have ended were closed as their loop shut down."""
        self.close()
        await self._transport.aclose_for_loop()

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> EmbeddingClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _after_fork_in_child(self) -> None:
        """Forget the parent's connections, thread, loops, calls and locks; keep the settings,
        the usage so far and the budget (which renews its own state)."""
        self._session.after_fork()
        self._planner.after_fork()
        self._transport.after_fork()
        self._sync.after_fork()
        self._coalescer = Coalescer(self._session.next_slot_in)  # the parent's calls are not ours
        if self._cache is not None:
            self._cache.after_fork()


def _restore_client(key: SealedKey, options: dict[str, Any]) -> EmbeddingClient:
    return EmbeddingClient(api_key=SecretStr(key.reveal()), **open_sealed(options))


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        client._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
