"""Deterministic embeddings that mean something, with no model weights.

Each Qwen token (and each pair of neighbouring tokens) is hashed to six signed slots, slot ``j``
falling in the first ``64 * 2**j`` components. So every prefix of the 2048-dim vector (64, 128,
... dims) holds every feature, with more collisions the shorter it is: lower dimensions are the
re-normalised prefix and lose a little quality, as Matryoshka embeddings do. Weights are
``sqrt(term count) * rarity``; rarity grows with the BPE rank, since BPE merges frequent strings
first, so " the" weighs less than " photosynthesis". Texts that share words are close; texts that
share none are near orthogonal, in any script.

Dense features are taken from the case-folded text. Queries in Qwen3-Embedding's prompt form
``Instruct: {task}\nQuery:{text}`` embed as the query
text plus a small pull towards the task, so a query is close to its answer and different tasks
still give different vectors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .._core.tokens import QwenTokenizer

__all__ = ["FULL_DIMENSIONS", "HashEmbedder", "SparseWeights"]

FULL_DIMENSIONS = 2048
_SLOT_LIMITS = np.array([64, 128, 256, 512, 1024, 2048], dtype=np.int64)
_BIGRAM_WEIGHT = np.float32(0.5)
_TASK_WEIGHT = np.float32(0.15)
_QUERY_RE = re.compile(r"\AInstruct: (?P<task>.*?)\nQuery:(?P<query>.*)\Z", re.DOTALL)
_MIX = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True, slots=True)
class SparseWeights:
    """A sparse vector: Qwen token ids, positive weights, and the tokens' text."""

    indices: tuple[int, ...]
    values: tuple[float, ...]
    tokens: tuple[str, ...]


def split_query(text: str) -> tuple[str, str | None]:
    """``(query, task)`` of a text in the query prompt form, else ``(text, None)``."""
    m = _QUERY_RE.match(text)
    if m is None:
        return text, None
    return m.group("query"), m.group("task")


class HashEmbedder:
    """Maps texts to unit vectors of 2048 float32 components, deterministically.

    Args:
        tokenizer: the Qwen tokenizer (features are its token ids).
        seed: changes every vector; the same seed always gives the same vectors.
    """

    def __init__(self, tokenizer: QwenTokenizer, seed: int = 0) -> None:
        self._tok = tokenizer
        rng = np.random.default_rng(seed)
        n = tokenizer.n_vocab
        k = len(_SLOT_LIMITS)
        self._slots = (rng.integers(0, 1 << 30, size=(n, k)) % _SLOT_LIMITS).astype(np.int64)
        self._signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(n, k))
        self._seed = np.uint64(rng.integers(1, 1 << 62))
        ranks = np.arange(n, dtype=np.float32)
        self._rarity = (0.3 + np.log1p(ranks / 2000.0)).astype(np.float32)
        self._rarity[n - 26 :] = 0.3  # added tokens such as <|endoftext|> carry no meaning

    def _features(self, ids_per_text: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        """Un-normalised 2048-dim feature vectors, one row per token list."""
        n_texts = len(ids_per_text)
        out = np.zeros((n_texts, FULL_DIMENSIONS), dtype=np.float32)
        lengths = np.fromiter((len(x) for x in ids_per_text), dtype=np.int64, count=n_texts)
        if lengths.sum() == 0:
            return out
        ids = np.fromiter(
            (t for x in ids_per_text for t in x), dtype=np.int64, count=int(lengths.sum())
        )
        row = np.repeat(np.arange(n_texts, dtype=np.int64), lengths)
        # Unigrams: sqrt of the term count within each text, times rarity.
        key = row * self._tok.n_vocab + ids
        ukey, counts = np.unique(key, return_counts=True)
        urow, uid = np.divmod(ukey, self._tok.n_vocab)
        w = np.sqrt(counts).astype(np.float32) * self._rarity[uid]
        flat = (urow[:, None] * FULL_DIMENSIONS + self._slots[uid]).ravel()
        vals = (self._signs[uid] * w[:, None]).ravel()
        acc = np.bincount(flat, weights=vals, minlength=n_texts * FULL_DIMENSIONS)

        # Bigrams of neighbouring tokens inside the same text, hashed to slots on the fly.
        same = row[1:] == row[:-1]
        if same.any():
            a, b, brow = ids[:-1][same], ids[1:][same], row[1:][same]
            h = (a.astype(np.uint64) * np.uint64(1_000_003) + b.astype(np.uint64)) ^ self._seed
            bw = _BIGRAM_WEIGHT * np.minimum(self._rarity[a], self._rarity[b])
            for j, limit in enumerate(_SLOT_LIMITS):
                hj = (h + np.uint64(j + 1)) * _MIX
                hj ^= hj >> np.uint64(29)
                slot = (hj % np.uint64(limit)).astype(np.int64)
                sign = np.where((hj >> np.uint64(40)) & np.uint64(1), 1.0, -1.0)
                acc += np.bincount(
                    brow * FULL_DIMENSIONS + slot,
                    weights=sign * bw,
                    minlength=n_texts * FULL_DIMENSIONS,
                )
        out[:] = acc.reshape(n_texts, FULL_DIMENSIONS)
        return out

    def _bodies(
        self, texts: Sequence[str], ids: Sequence[Sequence[int]] | None, *, fold: bool
    ) -> tuple[list[tuple[str, str | None]], list[Sequence[int]]]:
        """Each text split into (query, task), case-folded if ``fold``, and the token ids of its
        query part. The caller's ``ids`` are reused where they still apply (the common case)."""
        parts = [split_query(t) for t in texts]
        if fold:
            parts = [(q.lower(), None if task is None else task.lower()) for q, task in parts]
        # The caller's ids hold where the query part is the whole, unchanged text.
        bodies: list[Sequence[int]] = list(ids) if ids is not None else [()] * len(parts)
        redo = [
            i
            for i, (q, task) in enumerate(parts)
            if ids is None or task is not None or q != texts[i]
        ]
        for i, b in zip(redo, self._tok.encode_batch([parts[i][0] for i in redo]), strict=True):
            bodies[i] = b
        return parts, bodies

    def embed(
        self,
        texts: Sequence[str],
        dimensions: int = FULL_DIMENSIONS,
        ids: Sequence[Sequence[int]] | None = None,
    ) -> npt.NDArray[np.float32]:
        """Unit vectors of ``dimensions`` components (the re-normalised prefix of the full vector).

        Args:
            texts: the inputs, exactly as sent (a query may carry the instruction prompt).
            dimensions: 64 to 2048.
            ids: the texts' token ids if the caller has them already (saves tokenising twice).

        Returns:
            float32 array of shape ``(len(texts), dimensions)``, each row of L2 norm 1.
        """
        # Case-folded, as a real model is nearly blind to case: "Refunds" is close to "refunds".
        parts, bodies = self._bodies(texts, ids, fold=True)
        vecs = self._features(bodies)
        task_rows = [i for i, (_, task) in enumerate(parts) if task]
        if task_rows:
            tasks = self._tok.encode_batch([parts[i][1] or "" for i in task_rows])
            tv = _normalise(self._features(tasks))
            vecs = _normalise(vecs)
            vecs[task_rows] += _TASK_WEIGHT * tv
        prefix = vecs[:, :dimensions]
        empty = ~np.any(prefix, axis=1)
        prefix[empty, 0] = 1.0  # a text of no features still gets a valid unit vector
        return _normalise(prefix)

    def sparse(
        self, texts: Sequence[str], ids: Sequence[Sequence[int]] | None = None
    ) -> list[SparseWeights]:
        """Sparse vectors keyed by Qwen token ids, for hybrid search.

        Only tokens with a letter or digit count; weight ``log1p(count) * rarity``, rounded to
        4 places; indices unique and ascending. The query prompt's task is left out.
        """
        _, bodies = self._bodies(texts, ids, fold=False)
        out = []
        for body in bodies:
            uniq, counts = np.unique(np.asarray(body, dtype=np.int64), return_counts=True)
            idx: list[int] = []
            val: list[float] = []
            tok: list[str] = []
            for token_id, c in zip(uniq.tolist(), counts.tolist(), strict=True):
                text = self._tok.token_text(token_id)
                if not any(ch.isalnum() for ch in text):
                    continue
                weight = round(float(np.log1p(c) * self._rarity[token_id]), 4)
                if weight > 0:
                    idx.append(token_id)
                    val.append(weight)
                    tok.append(text.strip())
            out.append(SparseWeights(tuple(idx), tuple(val), tuple(tok)))
        return out


def _normalise(m: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: npt.NDArray[np.float32] = (m / norms).astype(np.float32)
    return out
