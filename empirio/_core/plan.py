"""Planning, pure: caller's texts -> validated, de-duplicated pieces -> requests, and back.

A *segment* is a run of the caller's texts planned together (``embed`` plans all of its texts as
one segment, so every bad input is found before anything is sent; ``iter_embed`` plans a bounded
segment at a time). Within a segment identical texts are sent once, texts longer than the input
limit are truncated or cut into windows (*pieces*), and pieces are packed in order into requests
of at most ``batch_size`` inputs and ``token_budget`` billed tokens.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import numpy.typing as npt

from .config import format_query
from .errors import InvalidInputError, agree, plural
from .tokens import SAFE_INPUT_TOKENS, QwenTokenizer
from .types import InstructionMode, Kind, Output, Overflow

__all__ = [
    "InstructionMode",
    "Kind",
    "Known",
    "Output",
    "Overflow",
    "Piece",
    "PlannedRequest",
    "SegmentPlan",
    "Unique",
    "as_text_list",
    "check_collection",
    "check_texts",
    "combine_windows",
    "encodes",
    "over_limit",
    "pack",
    "plan_segment",
    "prompt_overhead",
    "unique_texts",
]


@dataclass(frozen=True, slots=True)
class Piece:
    """One input as sent: its text, its Qwen token count, and the unique text it belongs to."""

    text: str
    tokens: int
    owner: int


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """One request's worth of pieces.

    Attributes:
        id: unique within one call.
        segment: the segment the pieces belong to.
        pieces: indices into the segment's pieces, in order.
        texts: the pieces' texts, as sent.
        piece_tokens: tokens the service will bill for each piece, by our count.
        inputs: positions in the caller's input of the texts these pieces come from.
    """

    id: int
    segment: int
    pieces: tuple[int, ...]
    texts: tuple[str, ...]
    piece_tokens: tuple[int, ...]
    inputs: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def tokens(self) -> int:
        """Billed tokens of the whole request, by our count."""
        return sum(self.piece_tokens)

    def cut(self, k: int, first_id: int) -> tuple[PlannedRequest, PlannedRequest]:
        """The first ``k`` inputs and the rest, as two requests numbered from ``first_id``."""
        return tuple(  # type: ignore[return-value]
            PlannedRequest(
                id=first_id + n,
                segment=self.segment,
                pieces=self.pieces[part],
                texts=self.texts[part],
                piece_tokens=self.piece_tokens[part],
                inputs=self.inputs,
            )
            for n, part in enumerate((slice(0, k), slice(k, None)))
        )

    def split(self, size: int, first_id: int) -> list[PlannedRequest]:
        """Consecutive parts of at most ``size`` inputs, numbered from ``first_id``."""
        return [
            PlannedRequest(
                id=first_id + k,
                segment=self.segment,
                pieces=self.pieces[i : i + size],
                texts=self.texts[i : i + size],
                piece_tokens=self.piece_tokens[i : i + size],
                inputs=self.inputs,
            )
            for k, i in enumerate(range(0, len(self.texts), size))
        ]


@dataclass(frozen=True, slots=True)
class Unique:
    """A segment's distinct texts, as they will be sent.

    Attributes:
        texts: each distinct text once, with the query prompt where one is added.
        inverse: for each text of the segment, the index of its distinct text.
        first_at: for each distinct text, the first position (in the segment) where it occurs.
    """

    texts: tuple[str, ...]
    inverse: npt.NDArray[np.intp]
    first_at: npt.NDArray[np.intp]


@dataclass(frozen=True, slots=True)
class Known:
    """Vectors of some distinct texts that are already known (a cache's hits): not sent.

    Attributes:
        unique: indices of the distinct texts concerned.
        dense: their dense rows (``(len(unique), dimensions)`` float32), or ``None``.
        sparse: their sparse vectors, or ``None``.
    """

    unique: tuple[int, ...]
    dense: npt.NDArray[np.float32] | None
    sparse: tuple[dict[int, float], ...] | None


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    """A planned segment.

    Attributes:
        index: the segment's number within the call.
        offset: position in the caller's input of the segment's first text.
        inverse: for each text of the segment, the index of its unique text.
        pieces: every piece to send (none for a known text).
        n_unique: distinct texts in the segment.
        truncated: ``(input position, token count)`` of texts that were cut.
        requests: the pieces packed into requests.
        known: the distinct texts whose vectors were known, which nothing is sent for.
        cache_keys: for a cached call, each view's cache key of every distinct text.
    """

    index: int
    offset: int
    inverse: npt.NDArray[np.intp]
    pieces: tuple[Piece, ...]
    n_unique: int
    truncated: tuple[tuple[int, int], ...]
    requests: tuple[PlannedRequest, ...]
    known: Known | None = None
    cache_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def check_collection(texts: object) -> None:
    """Refuse what cannot be a caller's texts, without reading an iterator.

    Raises:
        InvalidInputError: ``texts`` is a single string, an unordered collection (a ``set`` or
            a ``dict``, whose order would not be the caller's) or not iterable at all.
    """
    if isinstance(texts, str | bytes):
        raise InvalidInputError(
            "texts must be a list of strings, not a single string; wrap it in a list: [text]"
        )
    if isinstance(texts, Set | Mapping):
        raise InvalidInputError(
            f"texts must be an ordered sequence or iterable of strings, not a "
            f"{type(texts).__name__}: results come back in input order"
        )
    if not isinstance(texts, Iterable):
        raise InvalidInputError(
            f"texts must be a list (or any iterable) of strings; got {type(texts).__name__}"
        )


def as_text_list(texts: object) -> list[object]:
    """The caller's texts as a list, reading an iterator or generator once (see
    :func:`check_collection` for what is refused)."""
    check_collection(texts)
    return texts if isinstance(texts, list) else list(cast(Iterable[object], texts))


def check_texts(texts: Sequence[object], offset: int = 0) -> list[str]:
    """The texts, if every one is a non-blank string; else :class:`InvalidInputError`.

    Raises:
        InvalidInputError: naming the positions (``offset`` + index) of non-strings or of empty
            and whitespace-only strings, which the service rejects with a 400.
    """
    check_collection(texts)
    bad_type = [offset + i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad_type:
        kinds = sorted({type(texts[i - offset]).__name__ for i in bad_type})
        raise InvalidInputError(
            f"texts must be strings; {len(bad_type)} are not ({', '.join(kinds)}) at "
            f"positions {_show(bad_type)}",
            tuple(bad_type),
        )
    strs: list[str] = list(texts)  # type: ignore[arg-type]
    try:
        "".join(strs).encode("utf-8")  # one pass finds whether any text cannot be sent
    except UnicodeEncodeError:
        unsendable = [offset + i for i, t in enumerate(strs) if not encodes(t)]
        raise InvalidInputError(
            f"{plural(len(unsendable), 'text')} {agree(len(unsendable), 'contains', 'contain')} "
            "lone surrogates (such as '\\ud800'), which are not valid Unicode and cannot be "
            f"sent: {agree(len(unsendable), 'position')} {_show(unsendable)}",
            tuple(unsendable),
        ) from None
    blank = [offset + i for i, t in enumerate(strs) if not t.strip()]
    if blank:
        raise InvalidInputError(
            f"{plural(len(blank), 'text')} {agree(len(blank), 'is', 'are')} empty or whitespace "
            "only, which the service rejects (input length must be 1 to 8,192 tokens): "
            f"{agree(len(blank), 'position')} {_show(blank)}",
            tuple(blank),
        )
    return strs


def encodes(text: str) -> bool:
    """Whether ``text`` can be sent (it holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _show(indices: Sequence[int], most: int = 10) -> str:
    head = ", ".join(str(i) for i in indices[:most])
    return f"[{head}, ...]" if len(indices) > most else f"[{head}]"


def pack(tokens: Sequence[int], batch_size: int, token_budget: int | None) -> list[tuple[int, ...]]:
    """Greedy, order-keeping packing of inputs into requests.

    Args:
        tokens: billed tokens of each input, in order.
        batch_size: most inputs per request.
        token_budget: most billed tokens per request, or ``None``; an input larger than the
            budget goes alone.

    Returns:
        Consecutive runs of input indices; together they hold every index once, in order.
    """
    out: list[tuple[int, ...]] = []
    run: list[int] = []
    run_tokens = 0
    for i, n in enumerate(tokens):
        if run and (
            len(run) >= batch_size or (token_budget is not None and run_tokens + n > token_budget)
        ):
            out.append(tuple(run))
            run, run_tokens = [], 0
        run.append(i)
        run_tokens += n
    if run:
        out.append(tuple(run))
    return out


def unique_texts(
    texts: Sequence[str],
    *,
    kind: Kind = "document",
    instruction_mode: InstructionMode = "prompt",
    instruction: str = "",
) -> Unique:
    """The distinct texts of a segment as they will be sent: queries get the instruction prompt
    with ``instruction_mode="prompt"``; documents never do."""
    prompt = kind == "query" and instruction_mode == "prompt"
    sent = [format_query(t, instruction) for t in texts] if prompt else list(texts)
    unique: dict[str, int] = {}
    inverse = np.fromiter(
        (unique.setdefault(t, len(unique)) for t in sent), dtype=np.intp, count=len(sent)
    )
    first_at = np.full(len(unique), -1, dtype=np.intp)
    first_at[inverse[::-1]] = np.arange(len(sent) - 1, -1, -1, dtype=np.intp)
    return Unique(tuple(unique), inverse, first_at)


def prompt_overhead(
    tokenizer: QwenTokenizer, kind: Kind, instruction_mode: InstructionMode, instruction: str
) -> int:
    """Tokens the service adds to each input itself: with ``instruction_mode="api"`` it
    prepends the query prompt, which counts against the input limit."""
    if kind == "query" and instruction_mode == "api":
        return tokenizer.count(format_query("", instruction))
    return 0


#: The most UTF-8 bytes one code point can become after NFC normalisation (3 code points of at
#: most 4 bytes each): a text of fewer than ``limit / 12`` code points is within ``limit``.
NFC_BYTES_PER_CHAR = 12


def over_limit(tokenizer: QwenTokenizer, text: str, limit: int) -> bool:
    """Whether ``text`` has more than ``limit`` tokens, tokenising only when it might: a token
    is at least one UTF-8 byte of the NFC-normalised text (which the tokenizer counts), so a
    text of at most ``limit`` such bytes is within it. NFC can make a text longer (up to three
    code points for one, each up to four bytes): measured after it, never before."""
    if len(text) <= limit // NFC_BYTES_PER_CHAR:
        return False
    if len(unicodedata.normalize("NFC", text).encode("utf-8", "surrogatepass")) <= limit:
        return False
    return tokenizer.count(text) > limit


def plan_segment(
    texts: Sequence[str] | Unique,
    *,
    tokenizer: QwenTokenizer | Callable[[], QwenTokenizer],
    index: int = 0,
    offset: int = 0,
    first_request_id: int = 0,
    kind: Kind = "document",
    instruction_mode: InstructionMode = "prompt",
    instruction: str = "",
    overflow: Overflow = "truncate",
    batch_size: int = 10,
    token_budget: int | None = None,
    max_input_tokens: int = SAFE_INPUT_TOKENS,
    known: Known | None = None,
    cache_keys: Mapping[str, tuple[str, ...]] | None = None,
) -> SegmentPlan:
    """Plan one segment of already-checked texts (see :func:`check_texts`).

    Queries get the instruction prompt (``"prompt"``), are counted with the prompt the service
    will add (``"api"``), or are left alone (``"none"``); documents never get an instruction.
    ``texts`` may be given already made distinct (:func:`unique_texts`, with the same ``kind``
    and instruction settings), and ``known`` names distinct texts not to send (nor count).
    ``tokenizer`` may be a function that loads it, called only if there is something to count.

    Raises:
        InvalidInputError: with ``overflow="error"``, naming texts over ``max_input_tokens``.
    """
    uniq = (
        texts
        if isinstance(texts, Unique)
        else unique_texts(
            texts, kind=kind, instruction_mode=instruction_mode, instruction=instruction
        )
    )
    inverse, first_at = uniq.inverse, uniq.first_at
    skip = frozenset(known.unique) if known is not None else frozenset()
    todo = [u for u in range(len(uniq.texts)) if u not in skip] if skip else None
    uniq_texts = list(uniq.texts) if todo is None else [uniq.texts[u] for u in todo]
    owner_of = list(range(len(uniq_texts))) if todo is None else todo
    if not uniq_texts:  # every text is known: nothing to count or send
        return SegmentPlan(
            index, offset, inverse, (), len(uniq.texts), (), (), known, cache_keys or {}
        )
    if not isinstance(tokenizer, QwenTokenizer):
        tokenizer = tokenizer()

    overhead = prompt_overhead(tokenizer, kind, instruction_mode, instruction)
    limit = max_input_tokens - overhead
    counts = tokenizer.count_batch(uniq_texts)

    over = [u for u, n in enumerate(counts) if n > limit]
    if over and overflow == "error":
        where = ", ".join(
            f"{offset + int(first_at[owner_of[u]])} ({counts[u]} tokens)" for u in over[:10]
        )
        raise InvalidInputError(
            f"{plural(len(over), 'text')} {agree(len(over), 'exceeds', 'exceed')} the limit of "
            f"{limit} tokens per input (overflow='error'): {agree(len(over), 'position')} "
            f"{where}{', ...' if len(over) > 10 else ''}. "
            "Use overflow='truncate' or 'chunk', or split them first.",
            tuple(offset + int(first_at[owner_of[u]]) for u in over),
        )
    pieces: list[Piece] = []
    truncated: list[tuple[int, int]] = []
    over_set = set(over)
    for u, text in enumerate(uniq_texts):
        owner = owner_of[u]
        if u not in over_set:
            pieces.append(Piece(text, counts[u], owner))
        elif overflow == "truncate":
            cut = tokenizer.truncate(text, limit)
            pieces.append(Piece(cut.text, cut.tokens, owner))
            truncated.append((offset + int(first_at[owner]), counts[u]))
        else:
            pieces.extend(Piece(w.text, w.tokens, owner) for w in tokenizer.windows(text, limit))

    runs = pack([p.tokens + overhead + 1 for p in pieces], batch_size, token_budget)
    owner_inputs = _inputs_by_unique(inverse, offset, len(uniq.texts))
    requests = tuple(
        PlannedRequest(
            id=first_request_id + k,
            segment=index,
            pieces=run,
            texts=tuple(pieces[i].text for i in run),
            piece_tokens=tuple(pieces[i].tokens + overhead + 1 for i in run),
            inputs=tuple(sorted({j for i in run for j in owner_inputs[pieces[i].owner]})),
        )
        for k, run in enumerate(runs)
    )
    return SegmentPlan(
        index=index,
        offset=offset,
        inverse=inverse,
        pieces=tuple(pieces),
        n_unique=len(uniq.texts),
        truncated=tuple(sorted(truncated)),
        requests=requests,
        known=known,
        cache_keys=cache_keys or {},
    )


def _inputs_by_unique(inverse: npt.NDArray[np.intp], offset: int, n_unique: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(n_unique)]
    for i, u in enumerate(inverse.tolist()):
        out[u].append(offset + i)
    return out


def combine_windows(
    dense: npt.NDArray[np.float32] | None,
    sparse: Sequence[dict[int, float]] | None,
    tokens: Sequence[int],
) -> tuple[npt.NDArray[np.float32] | None, dict[int, float] | None]:
    """One text's vector from the vectors of its windows: the token-weighted mean, re-normalised
    to unit length for the dense view; the token-weighted mean of the weights for the sparse.

    Args:
        dense: one row per window, or ``None``.
        sparse: one dict per window, or ``None``.
        tokens: each window's token count (its weight).
    """
    weights = np.maximum(np.asarray(tokens, dtype=np.float64), 1.0)
    row = None
    if dense is not None:
        acc = (dense.astype(np.float64) * weights[:, None]).sum(axis=0)
        norm = float(np.linalg.norm(acc))
        row = (acc / (norm or 1.0)).astype(np.float32)
    merged: dict[int, float] | None = None
    if sparse is not None:
        merged = {}
        total = float(weights.sum())
        for vec, w in zip(sparse, weights.tolist(), strict=True):
            share = w / total
            for k, v in vec.items():
                merged[k] = merged.get(k, 0.0) + v * share
    return row, merged
