"""The project's own style gates run with the tests, so CI enforces them: ruff lint and format,
and mypy --strict on the packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_lint_and_format() -> None:
    lint = run("ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = run("ruff", "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_strict() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_modules_stay_small_enough_to_read() -> None:
    """No module of empirio/ over 600 lines, and the client facade under 450: decisions go in
    empirio/_core, I/O in empirio/_io (see ARCHITECTURE.md), not back into one file."""
    import inspect

    from empirio import EmbeddingClient

    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "empirio").rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600
    }
    assert not long, f"modules over 600 lines: {long}"
    lines = len(inspect.getsource(EmbeddingClient).splitlines())
    assert lines < 450, f"EmbeddingClient is {lines} lines"
