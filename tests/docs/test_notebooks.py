"""Every notebook executes end to end against the emulator, and never shows a key."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from ..conftest import unconfigured

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


def test_there_are_six_notebooks() -> None:
    assert len(NAMES) == 6


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The kernel inherits this environment: no key, so the notebook starts its own emulator.
    if "spark" in name and shutil.which("java") is None:
        if os.environ.get("CI"):
            raise RuntimeError("java is missing: apt-get install default-jre-headless")
        pytest.skip("needs Java: apt-get install default-jre-headless")
    unconfigured(monkeypatch)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    work = tmp_path / "nb"
    work.mkdir()
    (work / "data").symlink_to(NOTEBOOKS / "data")
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    ).execute()
    outputs = nbformat.writes(nb)
    assert "LOCAL EMULATOR" in outputs
    assert '"output_type": "error"' not in outputs
    committed = nbformat.read(NOTEBOOKS / name, as_version=4)

    def with_output(book: nbformat.NotebookNode) -> list[int]:
        return [i for i, c in enumerate(book.cells) if c.cell_type == "code" and c.get("outputs")]

    # Outputs are kept in the repository: the same cells show output as in a fresh run.
    assert with_output(committed) == with_output(nb)
    secret = os.environ.get("EMPIRIOLABS_API_KEY")
    assert not secret or secret not in outputs


def test_the_notebooks_extra_opens_and_converts_them(tmp_path: Path) -> None:
    """What a reader runs: `jupyter nbconvert --execute` (and JupyterLab, ipywidgets for the
    bars) from the `notebooks` extra."""
    import subprocess
    import sys

    import ipywidgets  # noqa: F401  # progress bars render as widgets
    import jupyterlab  # noqa: F401

    env = {k: v for k, v in os.environ.items() if not k.startswith("EMPIRIOLABS_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter",
            "nbconvert",
            "--to",
            "notebook",
            "--execute",
            str(NOTEBOOKS / "01_quickstart.ipynb"),
            "--output-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=NOTEBOOKS,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "LOCAL EMULATOR" in (tmp_path / "01_quickstart.ipynb").read_text()
