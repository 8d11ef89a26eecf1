"""Account-wide errors cross process pools intact: a 401 or a 402 raised in a worker arrives in
the parent as the same error type with its status, instead of hanging the pool or breaking it
(``BrokenProcessPool``). Real pools in subprocesses (a hang ends in the subprocess timeout),
against emulators in their own processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

KEY = "sk-pools-wrong-key-0123456789"

FORK_POOL = """
    import multiprocessing, sys
    from empirio import EmbeddingClient, EmpirioError

    url, key = sys.argv[1], sys.argv[2]

    def work(i):
        with EmbeddingClient(api_key=key, base_url=url, rpm=None, tpm=None) as c:
            return c.embed([f"text {i} " * 40]).dense.shape

    if __name__ == "__main__":
        with multiprocessing.get_context("fork").Pool(2) as pool:
            try:
                pool.map(work, range(4))
            except EmpirioError as exc:
                print(type(exc).__name__, exc.status_code, key in str(exc))
"""

PIPELINE = """
    import asyncio, sys
    from llama_index.core import Document
    from llama_index.core.ingestion import IngestionPipeline
    from llamaindex_empirio import EmpirioEmbedding
    from empirio import EmpirioError

    url, key, mode = sys.argv[1], sys.argv[2], sys.argv[3]

    if __name__ == "__main__":
        embed = EmpirioEmbedding(api_key=key, base_url=url, rpm=None, tpm=None)
        # No SentenceSplitter: it loses private attributes when pickled to spawn workers and
        # LlamaIndex's sync pool then hangs with any embedding (MockEmbedding too): theirs.
        pipe = IngestionPipeline(transformations=[embed])
        docs = [Document(text=f"document {i} has a few words. " * 30) for i in range(6)]
        try:
            if mode == "sync":
                pipe.run(documents=docs, num_workers=2)
            else:
                asyncio.run(pipe.arun(documents=docs, num_workers=2))
        except EmpirioError as exc:
            print(type(exc).__name__, exc.status_code)
"""


def run_script(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "pool.py"
    script.write_text(textwrap.dedent(source))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMPIRIOLABS_")}
    env["EMPIRIOLABS_BUDGET_DIR"] = str(tmp_path / "budget")
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,  # a pool that hangs on an error fails here
    )


def test_a_401_in_a_fork_pool_arrives_as_authentication_error(
    tmp_path: Path, emulator_process: Any
) -> None:
    url = emulator_process("--api-key", "the-right-key-0123456789")
    r = run_script(tmp_path, FORK_POOL, url, KEY)
    assert r.stdout.strip() == "AuthenticationError 401 False", r.stderr[-2000:]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_llamaindex_ingestion_pipeline_with_workers_raises_401_and_402(
    tmp_path: Path, emulator_process: Any, mode: str
) -> None:
    pytest.importorskip("llama_index.core")
    url = emulator_process("--api-key", "the-right-key-0123456789")
    r = run_script(tmp_path, PIPELINE, url, KEY, mode)
    assert r.stdout.strip() == "AuthenticationError 401", r.stderr[-2000:]
    broke = emulator_process("--credit-tokens", "20")
    r = run_script(tmp_path, PIPELINE, broke, "any-key-0123456789", mode)
    assert r.stdout.strip() == "InsufficientCreditsError 402", r.stderr[-2000:]
