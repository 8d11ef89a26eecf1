"""One call written once: a generator that decides, driven by the sync and the async shell.

In the manner of httpx's ``auth_flow``, :func:`embed_flow` holds every decision of a call
(``embed``, ``aembed``, ``embed_as_lists``, ``aembed_as_lists``): it checks the input, looks up
shared views, chooses between one plan and a pipeline of segments, and merges, concatenates,
spreads repeats, keeps partial results or falls back to the dense view. What needs I/O it
*yields* as a step; the shell does it and sends the answer back in::

    flow = embed_flow(context, texts, options)
    step = next(flow)
    while True:
        answer = do(step)              # plan, drive requests, or run a nested call
        step = flow.send(answer)       # (flow.throw(error) when a nested call failed)
    ...                                # StopIteration.value is the call's result

The shells (:mod:`empirio._io.sync`, :mod:`empirio._io.aio`) each drive it in a dozen lines
that mirror each other line for line; a test compares them.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeAlias, cast

import numpy as np
import numpy.typing as npt

from .distinct import Distinct
from .driver import Call, known_result
from .errors import EmpirioError, UnsupportedFeatureError
from .plan import SegmentPlan, as_text_list, check_texts
from .result import EmbeddingResult, Usage
from .types import Kind, Output

__all__ = [
    "PIPELINE_MIN",
    "CallOptions",
    "Drive",
    "Driven",
    "Fetch",
    "FlowContext",
    "Gathered",
    "PlanAll",
    "Step",
    "concatenate",
    "embed_flow",
    "prepend_partial",
]

#: Calls of more distinct texts than this (with overflow other than "error", whose refusals
#: must come before anything is sent) are planned in segments: a small first one, so that
#: sending starts at once, and the rest on a planning thread, well ahead of the sends.
#: Planning 9,000 texts at once held the first send back by about half a second.
PIPELINE_MIN = 1000


@dataclass(frozen=True, slots=True)
class CallOptions:
    """One call's options, fixed for the call (in the manner of openai-python's
    ``FinalRequestOptions``).

    Attributes:
        kind: ``"document"`` or ``"query"``.
        output: ``"dense"``, ``"sparse"`` or ``"both"``.
        show_progress: a bar for this call; ``None``: the client's setting.
        on_progress: told each time more texts are done (found, or their request finished).
        as_lists: return the dense vectors as lists of Python floats, converted as the parts
            of a large call arrive rather than all at the end.
    """

    kind: Kind = "document"
    output: Output = "dense"
    show_progress: bool | None = None
    on_progress: Callable[[int], object] | None = None
    as_lists: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class PlanAll:
    """Step: plan ``texts`` as one segment (truncation warned); answer: a ``SegmentPlan``."""

    texts: list[str]
    call: Call


@dataclass(frozen=True, slots=True, eq=False)
class Drive:
    """Step: send a call's requests, with a progress bar over ``total`` texts of which ``done``
    are done already; answer: :class:`Driven`. Either ``plan`` (one, made by :class:`PlanAll`),
    or ``texts`` (distinct) planned in segments as they are sent, ``positions`` being their
    places in the caller's list (for warnings)."""

    call: Call
    options: CallOptions
    total: int
    done: int = 0
    plan: SegmentPlan | None = None
    texts: Sequence[str] = ()
    positions: Sequence[int] | None = None
    ahead: int = 1

    @property
    def size(self) -> int:
        """Rows the call's parts will hold together."""
        return len(self.plan.inverse) if self.plan is not None else len(self.texts)

    @property
    def lists_per_part(self) -> bool:
        """Whether each part's dense rows become lists as it arrives (a pipelined call asked
        for lists): converting them all at the end would add most of a second to a large call;
        a single plan's one part is converted by the flow."""
        return self.options.as_lists and self.plan is None


@dataclass(frozen=True, slots=True)
class Driven:
    """What a :class:`Drive` gave: the parts handed out, gathered in order; their dense rows
    as lists where ``as_lists`` asked for them; and the failure that ended it, if one did."""

    parts: Gathered
    rows: list[list[float]] | None = None
    error: EmpirioError | None = None


class Gathered:
    """A call's parts, gathered as they are handed out: their dense rows copied into one array
    of the call's size, made at the first part, so that no part is kept and nothing is joined
    at the end. The peak of a large ``embed`` is then the result plus the segments still open,
    not twice the result. Parts must come in order, each starting where the last ended.

    Args:
        size: the rows the call will have (more grow the array, at the cost of a copy).
    """

    __slots__ = ("_dense", "_size", "_sparse", "n", "usage")

    def __init__(self, size: int) -> None:
        self._size = size
        self._dense: npt.NDArray[np.float32] | None = None
        self._sparse: list[dict[int, float]] | None = None
        #: rows gathered so far
        self.n = 0
        #: the parts' usage, summed
        self.usage = Usage()

    @classmethod
    def of(cls, parts: Sequence[EmbeddingResult]) -> Gathered:
        """``parts`` gathered (for callers that have them all)."""
        gathered = cls(sum(len(p) for p in parts))
        for part in parts:
            gathered.add(part)
        return gathered

    def add(self, part: EmbeddingResult) -> None:
        """Take the next part: its rows are copied in, and it can be dropped."""
        if part.offset != self.n:
            raise ValueError(f"a part at {part.offset} where {self.n} was next")
        k = len(part)
        if part.dense is not None:
            self._place(part.dense, k)
        self.n += k
        if part.sparse is not None:
            if self._sparse is None:
                self._sparse = []
            self._sparse.extend(part.sparse)
        self.usage = self.usage + part.usage

    def _place(self, dense: npt.NDArray[np.float32], k: int) -> None:
        if self._dense is None and self.n == 0 and k == self._size:
            self._dense = dense  # the whole call in one part: it is the result
        elif self._dense is None:
            self._dense = np.empty((max(self._size, k), dense.shape[1]), dtype=np.float32)
            self._dense[:k] = dense
        elif self.n + k > len(self._dense):  # more rows than announced: grow (a copy)
            self._dense = np.concatenate([self._dense[: self.n], dense])
        else:
            self._dense[self.n : self.n + k] = dense

    def result(self) -> EmbeddingResult:
        """The rows gathered, as one result (the array itself when every row came)."""
        dense = self._dense
        if dense is not None and len(dense) != self.n:
            dense = dense[: self.n]
        return EmbeddingResult(dense, self._sparse, self.usage)


@dataclass(frozen=True, slots=True, eq=False)
class Fetch:
    """Step: run a whole nested call of ``texts`` with ``options``; answer: its result (or its
    error, thrown into the flow)."""

    texts: list[str]
    options: CallOptions


Step: TypeAlias = PlanAll | Drive | Fetch
Answer: TypeAlias = Any  # SegmentPlan | Driven | EmbeddingResult, by step
Flow: TypeAlias = Generator[Step, Answer, EmbeddingResult | list[list[float]]]


class FlowContext(Protocol):
    """What a flow reads from its client: settings and the shared views (the client keeps its
    views under its lock; these methods take it)."""

    @property
    def dimensions(self) -> int: ...

    def check_call(self, kind: str, output: str) -> Call:
        """The call, or ``InvalidInputError``/``UnsupportedFeatureError`` before anything."""

    def pipelines(self, texts: Sequence[str]) -> bool:
        """Whether ``texts`` are planned in segments (see :data:`PIPELINE_MIN`)."""

    def take_parked(self, texts: list[str], call: Call) -> tuple[list[Any], list[str]] | None:
        """With shared views and one view asked for: the parked values of that view (``None``
        where there is none) and the distinct texts still to fetch; else ``None``."""

    def park_other(self, call: Call, missing: list[str], fetched: EmbeddingResult) -> None:
        """Park the view of ``fetched`` that ``call`` did not ask for."""


def embed_flow(ctx: FlowContext, texts: Sequence[str], options: CallOptions) -> Flow:
    """The decisions of one call of ``texts`` (see the module docstring).

    Returns (as ``StopIteration.value``) an :class:`EmbeddingResult`, or the dense rows as
    lists with ``options.as_lists``.
    """
    call = ctx.check_call(options.kind, options.output)
    checked = check_texts(as_text_list(texts))
    shared = ctx.take_parked(checked, call)
    if shared is not None:
        parked, missing = shared
        try:
            fetched = yield Fetch(missing, replace(options, output="both", as_lists=False))
        except UnsupportedFeatureError:
            if call.output != "dense":
                raise
            # The endpoint has no sparse output: the dense view alone, now and from now on.
            dense_only: EmbeddingResult | list[list[float]]
            dense_only = yield Fetch(checked, replace(options, output="dense"))
            return dense_only
        ctx.park_other(call, missing, fetched)
        if options.on_progress is not None and len(checked) > len(missing):
            # The fetch reported the missing texts; the rest were served without a request.
            options.on_progress(len(checked) - len(missing))
        return _finish(_merge(checked, call, parked, missing, fetched, ctx.dimensions), options)
    if not checked:
        return _finish(_empty(call, ctx.dimensions), options)
    if ctx.pipelines(checked):
        distinct = Distinct.of(checked)
        driven: Driven = yield Drive(
            call,
            options,
            len(checked),
            distinct.repeats,
            texts=distinct.texts,
            positions=distinct.first,
            ahead=4,
        )
        if driven.error is not None:
            prepend_partial(driven.error, driven.parts)
            raise distinct.spread_error(driven.error) from None
        if driven.rows is not None:
            return distinct.spread_rows(driven.rows)
        return _finish(distinct.spread(driven.parts.result()), options)
    plan: SegmentPlan = yield PlanAll(checked, call)
    if not plan.pieces:  # every text was cached: no network, no pacing
        if options.on_progress is not None:
            options.on_progress(len(checked))
        return _finish(known_result(plan, call, ctx.dimensions), options)
    driven = yield Drive(call, options, len(checked), plan=plan)
    if driven.error is not None:
        raise driven.error
    return _finish(driven.parts.result(), options)


def _finish(result: EmbeddingResult, options: CallOptions) -> EmbeddingResult | list[list[float]]:
    return result.dense_rows() if options.as_lists else result


def _empty(call: Call, dimensions: int) -> EmbeddingResult:
    dense = np.empty((0, dimensions), dtype=np.float32) if call.dense else None
    return EmbeddingResult(dense, [] if call.sparse else None, Usage())


def _merge(
    texts: list[str],
    call: Call,
    parked: list[Any],
    missing: list[str],
    fetched: EmbeddingResult,
    dimensions: int,
) -> EmbeddingResult:
    """Parked values combined with freshly fetched ones, in the order of ``texts``."""
    row = {t: i for i, t in enumerate(missing)}
    if call.output == "dense":
        assert fetched.dense is not None
        fresh_dense = fetched.dense
        dense = np.empty((len(texts), dimensions), dtype=np.float32)
        for i, (t, v) in enumerate(zip(texts, parked, strict=True)):
            dense[i] = fresh_dense[row[t]] if v is None else v
        return EmbeddingResult(dense, None, fetched.usage)
    assert fetched.sparse is not None
    fresh_sparse = fetched.sparse
    sparse = [
        dict(fresh_sparse[row[t]] if v is None else v) for t, v in zip(texts, parked, strict=True)
    ]
    return EmbeddingResult(None, sparse, fetched.usage)


def concatenate(parts: Sequence[EmbeddingResult]) -> EmbeddingResult:
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


def prepend_partial(exc: EmpirioError, parts: Gathered) -> None:
    """Add the rows a call had already handed out (gathered from position 0) to the partial
    result its error carries."""
    if not parts.n:
        return
    done = [parts.result()] + ([exc.partial] if exc.partial is not None else [])
    exc.partial = concatenate(done)
    exc.partial_indices = tuple(range(parts.n)) + exc.partial_indices
