"""The budget's and the cache's transactions never run on the caller's event loop.

Another process holds the machine's budget file for a few seconds (as a process stuck in a
transaction, or a slow disk, would). An async call waits for it, as it must, but the loop it
runs on goes on serving other tasks: a heartbeat on the loop is never held up for long, where
a transaction on the loop would stall it for the whole hold. A call cancelled meanwhile counts
nothing as abandoned: what the budget was being asked about was never sent.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from empirio import EmbeddingClient

from ..conftest import stats

KEY = "sk-store-off-loop-0123456789"
HOLD_S = 3.0

HOLDER = """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("COMMIT")
"""


@pytest.fixture
def served(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, EmbeddingClient]:
    """An emulator, and a client whose machine budget file (in ``tmp_path``) exists."""
    url = make_emulator()
    monkeypatch.setenv("EMPIRIOLABS_BUDGET_DIR", str(tmp_path))
    c = EmbeddingClient(
        api_key=KEY, base_url=url, rpm=600, tpm=10_000_000, dimensions=64, share_budget="machine"
    )
    c.embed(["the budget file is made"])
    return url, c


def hold(budget_dir: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process takes the budget file and keeps it for ``seconds``."""
    (path,) = budget_dir.glob("*.sqlite3")
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


async def heartbeat(gaps: list[float], stop: asyncio.Event) -> None:
    last = time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(0.02)
        now = time.monotonic()
        gaps.append(now - last)
        last = now


def test_a_held_budget_file_does_not_stall_the_event_loop(
    served: tuple[str, EmbeddingClient], tmp_path: Path
) -> None:
    _, c = served
    holder = hold(tmp_path, HOLD_S)

    async def main() -> tuple[Any, list[float], float]:
        gaps: list[float] = []
        stop = asyncio.Event()
        beat = asyncio.create_task(heartbeat(gaps, stop))
        start = time.monotonic()
        result = await c.aembed([f"text {i} while the file is held" for i in range(30)])
        took = time.monotonic() - start
        stop.set()
        await beat
        return result, gaps, took

    result, gaps, took = asyncio.run(main())
    holder.communicate(timeout=30)
    assert result.dense is not None
    assert result.dense.shape == (30, 64)
    assert took >= HOLD_S - 1.0  # the call did wait for the file (it may have begun late)
    # Held on the loop, one gap would span the whole hold; off it, the beats go on.
    assert max(gaps) < HOLD_S / 2, max(gaps)


def test_a_call_cancelled_while_the_budget_is_asked_abandons_nothing(
    served: tuple[str, EmbeddingClient], tmp_path: Path
) -> None:
    url, c = served
    before = stats(url)["requests"]
    holder = hold(tmp_path, 2.0)

    async def main() -> None:
        task = asyncio.create_task(c.aembed([f"cancelled text {i}" for i in range(30)]))
        await asyncio.sleep(0.5)  # the call waits for the budget's answer, on a store thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    holder.communicate(timeout=30)
    assert c.usage.abandoned_requests == 0  # nothing it asked about was sent
    assert stats(url)["requests"] == before
    again = c.embed(["after the hold"])  # and the client goes on
    assert again.dense is not None
    assert len(again) == 1
