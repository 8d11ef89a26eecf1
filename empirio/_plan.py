"""Planning, pure: caller's texts -> validated, de-duplicated pieces -> requests, and back.

A *segment* is a run of the caller's texts planned together (``embed`` plans all of its texts as
one segment, so every bad input is found before anything is sent; ``iter_embed`` plans a bounded
segment at a time). Within a segment identical texts are sent once, texts longer than the input
limit are truncated or cut into windows (*pieces*), and pieces are packed in order into requests
of at most ``batch_size`` inputs and ``token_budget`` billed tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import numpy.typing as npt

from ._config import format_query
from ._errors import InvalidInputError
from ._tokens import SAFE_INPUT_TOKENS, QwenTokenizer

__all__ = [
    "InstructionMode",
    "Kind",
    "Output",
    "Overflow",
    "Piece",
    "PlannedRequest",
    "SegmentPlan",
    "as_text_list",
    "assemble",
    "check_collection",
    "check_texts",
    "pack",
    "plan_segment",
]

Kind = Literal["document", "query"]
Output = Literal["dense", "sparse", "both"]
Overflow = Literal["truncate", "chunk", "error"]
InstructionMode = Literal["prompt", "api", "none"]


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
class SegmentPlan:
    """A planned segment.

    Attributes:
        index: the segment's number within the call.
        offset: position in the caller's input of the segment's first text.
        inverse: for each text of the segment, the index of its unique text.
        pieces: every piece to send.
        n_unique: distinct texts in the segment.
        truncated: ``(input position, token count)`` of texts that were cut.
        requests: the pieces packed into requests.
    """

    index: int
    offset: int
    inverse: npt.NDArray[np.intp]
    pieces: tuple[Piece, ...]
    n_unique: int
    truncated: tuple[tuple[int, int], ...]
    requests: tuple[PlannedRequest, ...]

    @property
    def n_texts(self) -> int:
        return len(self.inverse)


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
        unsendable = [offset + i for i, t in enumerate(strs) if not _encodes(t)]
        raise InvalidInputError(
            f"{len(unsendable)} texts contain lone surrogates (such as '\\ud800'), which are not "
            f"valid Unicode and cannot be sent: positions {_show(unsendable)}",
            tuple(unsendable),
        ) from None
    blank = [offset + i for i, t in enumerate(strs) if not t.strip()]
    if blank:
        raise InvalidInputError(
            f"{len(blank)} texts are empty or whitespace only, which the service rejects "
            f"(input length must be 1 to 8,192 tokens): positions {_show(blank)}",
            tuple(blank),
        )
    return strs


def _encodes(text: str) -> bool:
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


def plan_segment(
    texts: Sequence[str],
    *,
    tokenizer: QwenTokenizer,
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
) -> SegmentPlan:
    """Plan one segment of already-checked texts (see :func:`check_texts`).

    Queries get the instruction prompt (``"prompt"``), are counted with the prompt the service
    will add (``"api"``), or are left alone (``"none"``); documents never get an instruction.

    Raises:
        InvalidInputError: with ``overflow="error"``, naming texts over ``max_input_tokens``.
    """
    prompt = kind == "query" and instruction_mode == "prompt"
    sent = [format_query(t, instruction) for t in texts] if prompt else list(texts)
    unique: dict[str, int] = {}
    inverse = np.fromiter(
        (unique.setdefault(t, len(unique)) for t in sent), dtype=np.intp, count=len(sent)
    )
    first_at = np.full(len(unique), -1, dtype=np.intp)
    first_at[inverse[::-1]] = np.arange(len(sent) - 1, -1, -1, dtype=np.intp)
    uniq_texts = list(unique)

    # With instruction_mode="api" the service prepends the prompt itself: budget for it.
    overhead = 0
    if kind == "query" and instruction_mode == "api":
        overhead = tokenizer.count(format_query("", instruction))
    limit = max_input_tokens - overhead
    counts = tokenizer.count_batch(uniq_texts)

    over = [u for u, n in enumerate(counts) if n > limit]
    if over and overflow == "error":
        where = ", ".join(f"{offset + int(first_at[u])} ({counts[u]} tokens)" for u in over[:10])
        raise InvalidInputError(
            f"{len(over)} texts exceed the limit of {limit} tokens per input "
            f"(overflow='error'): positions {where}{', ...' if len(over) > 10 else ''}. "
            "Use overflow='truncate' or 'chunk', or split them first.",
            tuple(offset + int(first_at[u]) for u in over),
        )
    pieces: list[Piece] = []
    truncated: list[tuple[int, int]] = []
    over_set = set(over)
    for u, text in enumerate(uniq_texts):
        if u not in over_set:
            pieces.append(Piece(text, counts[u], u))
        elif overflow == "truncate":
            cut = tokenizer.truncate(text, limit)
            pieces.append(Piece(cut.text, cut.tokens, u))
            truncated.append((offset + int(first_at[u]), counts[u]))
        else:
            pieces.extend(Piece(w.text, w.tokens, u) for w in tokenizer.windows(text, limit))

    runs = pack([p.tokens + overhead + 1 for p in pieces], batch_size, token_budget)
    owner_inputs = _inputs_by_unique(inverse, offset, len(uniq_texts))
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
        n_unique=len(uniq_texts),
        truncated=tuple(truncated),
        requests=requests,
    )


def _inputs_by_unique(inverse: npt.NDArray[np.intp], offset: int, n_unique: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(n_unique)]
    for i, u in enumerate(inverse.tolist()):
        out[u].append(offset + i)
    return out


def assemble(
    plan: SegmentPlan,
    dense: npt.NDArray[np.float32] | None,
    sparse: Sequence[dict[int, float]] | None,
) -> tuple[npt.NDArray[np.float32] | None, list[dict[int, float]] | None]:
    """Per-piece results -> per-text results in the caller's order.

    A text cut into windows gets the token-weighted mean of its windows' vectors, re-normalised
    to unit length; its sparse weights are the token-weighted mean of the windows' weights.

    Args:
        plan: the segment's plan.
        dense: one row per piece, or ``None``.
        sparse: one dict per piece, or ``None``.

    Returns:
        ``(dense, sparse)`` with one row / dict per text of the segment.
    """
    owners = np.fromiter((p.owner for p in plan.pieces), dtype=np.intp, count=len(plan.pieces))
    single = len(plan.pieces) == plan.n_unique  # no text was cut into windows
    weights = np.fromiter(
        (max(p.tokens, 1) for p in plan.pieces), dtype=np.float64, count=len(plan.pieces)
    )
    out_dense = None
    if dense is not None:
        if single:
            uniq = np.empty_like(dense)
            uniq[owners] = dense
        else:
            acc = np.zeros((plan.n_unique, dense.shape[1]), dtype=np.float64)
            np.add.at(acc, owners, dense.astype(np.float64) * weights[:, None])
            norms = np.linalg.norm(acc, axis=1, keepdims=True)
            norms[norms == 0] = 1.0
            uniq = (acc / norms).astype(np.float32)
        out_dense = uniq[plan.inverse]
    out_sparse = None
    if sparse is not None:
        merged: list[dict[int, float]] = [{} for _ in range(plan.n_unique)]
        total = np.zeros(plan.n_unique, dtype=np.float64)
        np.add.at(total, owners, weights)
        for piece, vec, w in zip(plan.pieces, sparse, weights.tolist(), strict=True):
            share = 1.0 if single else w / float(total[piece.owner])
            target = merged[piece.owner]
            for k, v in vec.items():
                target[k] = target.get(k, 0.0) + v * share
        out_sparse = [dict(merged[u]) for u in plan.inverse.tolist()]
    return out_dense, out_sparse
