"""Exact Qwen token counts, checked by hand and against the service's observed usage."""

from __future__ import annotations

from pathlib import Path

import pytest

from empirio._core.tokens import END_OF_TEXT_ID, SAFE_INPUT_TOKENS, get_tokenizer

tok = get_tokenizer()


@pytest.mark.parametrize(
    ("text", "billed"),
    [("衣服的质量杠杠的", 6), ("我想知道迪士尼的退票政策", 8)],
)
def test_observed_usage_samples(text: str, billed: int) -> None:
    # Seen from the live service: prompt_tokens = Qwen tokens + 1 end token.
    assert tok.billed(text) == billed


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("Hello world", [9707, 1879]),
        ("12345", [16, 17, 18, 19, 20]),  # Qwen splits digits one by one
        ("衣服的质量杠杠的", [102214, 108042, 103178, 103178, 9370]),
        ("hello <|endoftext|> x", [14990, 220, END_OF_TEXT_ID, 856]),
    ],
)
def test_hand_checked_ids(text: str, ids: list[int]) -> None:
    assert tok.encode(text) == ids


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("Привет, мир!", ["Пр", "ив", "ет", ",", " мир", "!"]),
        ("こんにちは世界", ["こんにちは", "世界"]),
        ("مرحبا بالعالم", ["مر", "ح", "با", " بال", "عالم"]),
        (
            "The quick brown fox jumps over the lazy dog.",
            ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", "."],
        ),
        # The pre-tokenizer at work: "(x" is punctuation + letters, "):\n" punctuation with its
        # newline, and \s+(?!\S) leaves the last space of an indent to the next word.
        (
            "def f(x):\n    return x * 2\n",
            ["def", " f", "(x", "):\n", "   ", " return", " x", " *", " ", "2", "\n"],
        ),
        ("  leading and trailing  ", [" ", " leading", " and", " trailing", "  "]),
    ],
)
def test_pieces_in_several_scripts(text: str, pieces: list[str]) -> None:
    assert [tok.token_text(i) for i in tok.encode(text)] == pieces


def test_nfc_normalisation_makes_composed_and_decomposed_equal() -> None:
    assert tok.encode("caf\u00e9") == tok.encode("cafe\u0301")


def test_added_tokens_are_single_tokens() -> None:
    assert tok.count("<think></think>") == 2
    assert tok.n_vocab == 151_669


def test_batch_counts_equal_single_counts() -> None:
    texts = ["a", "Hello world", "衣服的质量杠杠的", "x" * 1000]
    assert tok.count_batch(texts) == [tok.count(t) for t in texts]


def test_truncate_keeps_a_prefix_within_the_limit() -> None:
    text = "word " * 10_000
    cut = tok.truncate(text)
    assert cut.tokens <= SAFE_INPUT_TOKENS
    assert cut.tokens >= SAFE_INPUT_TOKENS - 2
    assert text.startswith(cut.text)
    assert tok.count(cut.text) == cut.tokens


def test_truncate_never_splits_a_character() -> None:
    text = "迪士尼" * 9000
    cut = tok.truncate(text, 101)
    assert cut.tokens <= 101
    assert text.startswith(cut.text)


def test_windows_cover_the_text_in_order() -> None:
    text = " ".join(f"w{i}" for i in range(12_000))
    wins = tok.windows(text, 4000)
    assert all(w.tokens <= 4000 for w in wins)
    assert "".join(w.text for w in wins) == text
    assert sum(w.tokens for w in wins) == pytest.approx(tok.count(text), abs=len(wins))


def test_short_text_is_one_window() -> None:
    assert [w.text for w in tok.windows("short")] == ["short"]


def test_the_packed_vocabulary_is_the_verified_one_and_a_bad_copy_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The packed copy in the cache folder is used only when its checksum is the one fixed in
    the code: a damaged or planted copy is ignored and made again from qwen.tiktoken."""
    import hashlib

    from empirio._core import tokens

    decoded = tokens._decode_vocab()
    packed = tokens.pack_ranks(decoded)
    assert hashlib.sha256(packed).hexdigest() == tokens.PACKED_SHA256
    assert tokens.unpack_ranks(packed) == decoded
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = tokens._packed_path()
    assert tokens._load_ranks() == decoded  # made from the file, and kept
    assert path.read_bytes() == packed
    planted = bytearray(packed)
    planted[-1] ^= 1  # one byte of one token changed: a different vocabulary
    path.write_bytes(bytes(planted))
    assert tokens._load_ranks() == decoded
    assert path.read_bytes() == packed  # made again
    # A cache folder that cannot be made: decoded each time, no error.
    monkeypatch.setenv("XDG_CACHE_HOME", str(path))  # a file, not a folder
    assert tokens._load_ranks() == decoded
