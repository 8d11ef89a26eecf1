"""Every Python block in the README runs, in order, against the emulator."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ..conftest import unconfigured

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def test_the_readme_has_python_blocks() -> None:
    assert len(python_blocks()) >= 4


def test_every_python_block_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As a new user runs them: no key, nothing configured. The first block starts an emulator
    # (start_if_no_key); the variables it sets are undone after the test.
    unconfigured(monkeypatch)
    namespace: dict[str, object] = {"__name__": "readme"}
    for i, block in enumerate(python_blocks()):
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message names the block
            pytest.fail(f"README python block {i + 1} failed: {exc!r}\n{block}")
    out = capsys.readouterr().out
    assert "(2, 512)" in out
    assert "2000 (500, 512)" in out
    assert "(1,) " in out  # the InvalidInputError example printed its indices
    assert out.count("Cats purr when") == 2  # the LangChain and LlamaIndex retrievals
    assert "Reset your password in Settings." in out
    client = namespace["client"]
    close = getattr(client, "close", None)
    assert callable(close)
    close()
    from llama_index.core import Settings

    Settings.tokenizer = None  # type: ignore[assignment]  # leave LlamaIndex as found
    Settings.embed_model = None  # type: ignore[assignment]
