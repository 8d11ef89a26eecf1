"""Every Python block in the README runs alone, in a fresh interpreter, as a newcomer copies it:
no key and nothing configured (each block starts its own emulator)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"

#: (something in a block, what its output must then hold)
EXPECTED = [
    ('similarity_search("why do cats purr?"', "Cats purr when"),
    ('retrieve("why do cats purr?")', "Cats purr when"),
    ("QdrantVectorStore.from_texts", "Reset your password in Settings."),
    ('client.embed(["The cat sat', "(2, 512)"),
    ("iter_embed(rows()", "2000 (500, 512)"),
    ('client.embed(["fine", "   "])', "(1,) "),
    ("cached.cache.stats()", "CacheStats(hits=2"),
]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def test_the_readme_has_python_blocks_and_leads_with_both_frameworks() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 8
    assert "langchain_empirio" in blocks[0]
    assert "llama_index.embeddings.empirio" in blocks[1]
    for block in blocks[:2]:
        assert len(block.strip().splitlines()) <= 10
    for marker, _ in EXPECTED:
        assert any(marker in b for b in blocks), marker


@pytest.mark.parametrize("index", range(len(python_blocks())), ids=lambda i: f"block{i + 1}")
def test_each_python_block_runs_alone(index: int, tmp_path: Path) -> None:
    block = python_blocks()[index]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMPIRIOLABS_")}
    env["EMPIRIOLABS_BUDGET_DIR"] = str(tmp_path / "budget")  # no machine state of the tests
    done = subprocess.run(
        [sys.executable, "-c", block],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"README python block {index + 1} failed:\n{block}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    for marker, expected in EXPECTED:
        if marker in block:
            assert expected in done.stdout, (block, done.stdout)
