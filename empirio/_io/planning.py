"""Planning with the I/O it needs: cache lookups, the endpoint's identity, a planning thread
ahead of the sends, truncation warnings at the caller's line. The plan itself is pure
(:func:`empirio._core.plan.plan_segment`)."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import os
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence

import httpx

from .._core.cache_keys import (
    IDENTITY_HEADER,
    CacheScope,
    Checked,
    EmbeddingStore,
    View,
    endpoint_identity,
    open_checked,
)
from .._core.config import is_loopback_url
from .._core.driver import Call
from .._core.errors import CacheError, TruncationWarning, truncation_message
from .._core.plan import (
    NFC_BYTES_PER_CHAR,
    Known,
    SegmentPlan,
    Unique,
    check_texts,
    over_limit,
    plan_segment,
    prompt_overhead,
    unique_texts,
)
from .._core.settings import ClientConfig
from .._core.tokens import SAFE_INPUT_TOKENS, QwenTokenizer, get_tokenizer
from .callers import caller_level
from .session import Session

__all__ = ["Planner", "background_pool"]

#: The first segment of a pipelined call, small so that sending starts at once; then segments
#: of this many texts, planned one ahead of the sends.
_FIRST_SEGMENT = 100
_SEGMENT = 1000
#: Segments a pipelined call plans ahead of the one it sends (see ``Planner.pipelined``).
_PLANS_AHEAD = 2


class Planner:
    """Plans a client's calls (see the module docstring).

    Args:
        session: the client's session (its batch limit, cache and settings).
        headers: the request headers (the identity probe of a local server sends them).
    """

    def __init__(self, session: Session, headers: dict[str, str]) -> None:
        self.session = session
        self.config: ClientConfig = session.config
        self.headers = headers
        self._tokenizer: QwenTokenizer | None = None
        self._identity: str | None = None  # the endpoint's, for cache keys: asked on first use
        self._identity_lock = threading.Lock()

    def after_fork(self) -> None:
        self._identity_lock = threading.Lock()

    @property
    def tokenizer(self) -> QwenTokenizer:
        """The exact Qwen tokenizer (loaded on first use, about a quarter second)."""
        if self._tokenizer is None:
            self._tokenizer = get_tokenizer()
        return self._tokenizer

    def plan(self, texts: Sequence[str], call: Call) -> SegmentPlan:
        """``texts`` as one segment, truncations warned of at the caller's line."""
        return self.warn_truncated(self.plan_quietly(texts, call, 0, 0, 0))

    def plan_quietly(
        self, texts: Sequence[str], call: Call, index: int, offset: int, first_id: int
    ) -> SegmentPlan:
        cfg = self.config
        mode = cfg.instruction_mode if call.kind == "query" else "none"
        uniq = unique_texts(
            texts, kind=call.kind, instruction_mode=mode, instruction=cfg.query_instruction
        )
        known, keys = self._lookup(uniq, call) if self.session.cache is not None else (None, None)
        return plan_segment(
            uniq,
            known=known,
            cache_keys=keys,
            tokenizer=get_tokenizer if self._tokenizer is None else self._tokenizer,
            index=index,
            offset=offset,
            first_request_id=first_id,
            kind=call.kind,
            instruction_mode=mode,
            instruction=cfg.query_instruction,
            overflow=cfg.overflow,
            batch_size=self.session.batch_limit.size,
            token_budget=int(self.session.tpm) if self.session.tpm is not None else None,
        )

    def _lookup(self, uniq: Unique, call: Call) -> tuple[Known | None, dict[str, tuple[str, ...]]]:
        """The cached vectors of the distinct texts (every view asked for), and their keys."""
        cache = self.session.cache
        assert cache is not None
        cfg = self.config
        api = call.kind == "query" and cfg.instruction_mode == "api"
        scope = CacheScope(
            endpoint=self._endpoint_identity(),
            model=cfg.model,
            dimensions=cfg.dimensions,
            text_type="query" if api else "",
            instruct=cfg.query_instruction if api else "",
            secret=self.session.cache_secret,
        )
        mode = cfg.instruction_mode if call.kind == "query" else "none"
        if any(len(t) > SAFE_INPUT_TOKENS // NFC_BYTES_PER_CHAR for t in uniq.texts):
            limit = SAFE_INPUT_TOKENS - prompt_overhead(
                self.tokenizer, call.kind, mode, cfg.query_instruction
            )
            tags = [
                cfg.overflow if over_limit(self.tokenizer, t, limit) else "" for t in uniq.texts
            ]
        else:
            tags = [""] * len(uniq.texts)
        views: list[View] = [v for v in ("dense", "sparse") if getattr(call, v)]
        keys: dict[str, tuple[str, ...]] = {
            v: tuple(scope.keys(v, uniq.texts, tags)) for v in views
        }
        # Every entry is checked (its seal, its vector): one that fails is a miss, written again.
        checked: dict[str, Checked] = {
            view: _read_checked(cache.store, scope.secret, keys[view]) for view in views
        }
        found = open_checked(checked, cfg.dimensions)
        cache.count(len(found.hits), len(uniq.texts) - len(found.hits), found.rejected)
        if not found.hits:
            return None, keys
        return Known(found.hits, found.dense, found.sparse), keys

    def _endpoint_identity(self) -> str:
        """The endpoint's identity for cache keys (see
        :func:`~empirio._core.cache_keys.endpoint_identity`). A server on this machine is asked
        once, with ``GET /models``, what it serves; one that does not say is known by its port."""
        with self._identity_lock:  # one probe, however many threads look up at once
            if self._identity is not None:
                return self._identity
            declared = None
            base_url = self.config.base_url
            if is_loopback_url(base_url):
                with contextlib.suppress(httpx.HTTPError):
                    r = httpx.get(
                        f"{base_url}/models",
                        headers=self.headers,
                        timeout=min(5.0, self.config.timeout),
                        trust_env=False,
                    )
                    declared = r.headers.get(IDENTITY_HEADER)
            self._identity = endpoint_identity(base_url, declared)
            return self._identity

    def warn_truncated(
        self, plan: SegmentPlan, positions: Sequence[int] | None = None
    ) -> SegmentPlan:
        """Warn of the texts ``plan`` truncated; ``positions`` maps the plan's positions to the
        caller's (a call whose duplicates were set aside: each text's first position)."""
        if plan.truncated:
            at = (lambda i: i) if positions is None else positions.__getitem__
            cut = tuple((at(i), n) for i, n in plan.truncated)
            warnings.warn(
                TruncationWarning(truncation_message(cut, "position", "overflow='{}'"), cut),
                stacklevel=caller_level(),
            )
        return plan

    def pipelined(
        self, texts: Sequence[str], call: Call, positions: Sequence[int] | None = None
    ) -> Iterator[SegmentPlan | None]:
        """Plans of ``texts`` in segments: the first (small) one here, the later ones on a
        planning thread, at most :data:`_PLANS_AHEAD` ahead of the one being sent, not all at
        once: a burst of tokenising competes with the paced sends for the interpreter and
        makes their arrivals jitter. Two, not one: the thread then goes on to the next while
        the caller takes the last (with one, it stood idle for each hand-over; a call served
        from the cache, where planning is all the work, took half as long again).
        ``positions``: see :meth:`warn_truncated`."""
        bounds = [(0, _FIRST_SEGMENT)] + [
            (a, min(a + _SEGMENT, len(texts))) for a in range(_FIRST_SEGMENT, len(texts), _SEGMENT)
        ]
        pool = background_pool("empirio-plan")

        def plan(i: int) -> concurrent.futures.Future[SegmentPlan]:
            a, b = bounds[i]
            # Request ids must be unique within the call: each segment gets its own range.
            return pool.submit(self.plan_quietly, texts[a:b], call, i, a, i << 24)

        ahead = collections.deque(plan(i) for i in range(1, min(1 + _PLANS_AHEAD, len(bounds))))
        try:
            first = self.plan_quietly(texts[:_FIRST_SEGMENT], call, 0, 0, 0)
            yield self.warn_truncated(first, positions)
            for i in range(1, len(bounds)):
                while not ahead[0].done():
                    yield None  # not ready: the driver sends what it has and asks again
                current = ahead.popleft()
                if i + _PLANS_AHEAD < len(bounds):
                    ahead.append(plan(i + _PLANS_AHEAD))
                yield self.warn_truncated(current.result(), positions)
        finally:
            for future in ahead:
                future.cancel()  # the call ended early: plan no more
            pool.shutdown(wait=False)

    def streamed(
        self, texts: Iterable[str], call: Call, segment_size: int
    ) -> Iterator[SegmentPlan]:
        """Plan ``texts`` lazily, ``segment_size`` at a time (``iter_embed``)."""
        it = iter(texts)
        offset = first_id = 0
        for index in itertools.count():
            chunk: list[str] = []
            failure: Exception | None = None
            try:  # the texts read before the source fails are embedded and handed out first
                chunk.extend(itertools.islice(it, segment_size))
            except Exception as exc:
                failure = exc
            if chunk:
                plan = self.warn_truncated(
                    self.plan_quietly(check_texts(chunk, offset), call, index, offset, first_id)
                )
                offset += len(chunk)
                first_id += len(plan.requests)
                yield plan
            if failure is not None:
                raise failure
            if len(chunk) < segment_size:
                return


def _not_bytes(store: EmbeddingStore, values: Sequence[object]) -> CacheError | None:
    """What to raise for a store whose ``mget`` gave back something other than bytes (such as a
    Redis client that decodes answers to ``str``): a :class:`CacheError` naming the type found,
    before anything is sent; ``None`` if every value was bytes. Looked for only once
    :meth:`Checked.of` has failed, so that a good read pays nothing for it."""
    found = next(
        (v for v in values if v is not None and not isinstance(v, bytes | bytearray | memoryview)),
        None,
    )
    if found is None:
        return None
    return CacheError(
        f"the cache store {store!r} gave back a {type(found).__name__} where bytes (or None) "
        "were due: its mget must return the bytes its mset was given (a Redis client made with "
        "decode_responses=True, for one, returns str)"
    )


def _read_checked(store: EmbeddingStore, secret: bytes, keys: Sequence[str]) -> Checked:
    """The entries of ``keys``, each checked against its seal: part by part as a store that
    reads in parts (``iter_mget``: ours do) hands them out, while the next part is read and
    this one is still in the CPU's cache; else from one ``mget``."""
    in_parts = getattr(store, "iter_mget", None)
    parts = in_parts(keys) if callable(in_parts) else iter([store.mget(list(keys))])
    checked: list[Checked] = []
    at = 0
    try:
        for values in parts:
            if at + len(values) > len(keys):
                break
            try:
                checked.append(Checked.of(secret, keys[at : at + len(values)], values))
            except TypeError:
                wrong = _not_bytes(store, values)
                if wrong is None:  # not the store's doing: raised as it is
                    raise
                raise wrong from None
            at += len(values)
    finally:
        close = getattr(parts, "close", None)
        if callable(close):
            close()  # a read given up on (a bad answer, an error): its connection is let go
    if at != len(keys):
        raise CacheError(f"the cache store {store!r} answered the wrong count")
    return Checked.joined(checked)


def background_pool(name: str) -> concurrent.futures.ThreadPoolExecutor:
    """One worker thread for work that runs ahead of the sends (planning, converting), at a
    lower scheduling priority where the OS allows: on a busy machine it must not take the CPU
    from the thread that sends on time."""
    return concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix=name, initializer=_lower_priority
    )


def _lower_priority() -> None:
    with contextlib.suppress(AttributeError, OSError):  # Linux: per thread; elsewhere: no-op
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
