"""Helpers shared by the benchmark scripts: an emulator in its own process, corpora, tables."""

from __future__ import annotations

import contextlib
import platform
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

__all__ = [
    "emulator_process",
    "machine_line",
    "markdown_table",
    "pinned",
    "redis_server",
    "synthetic_corpus",
]

_WORDS = (
    "embedding retrieval vector search model token batch index query document language "
    "system data cloud service account limit request latency memory network python store "
    "chunk hybrid sparse dense recall rank answer question context window policy price "
    "river mountain garden kitchen travel music history science market energy health"
).split()


@contextlib.contextmanager
def emulator_process(*flags: str, cpu: int | None = None) -> Iterator[str]:
    """Run ``empirio serve`` in a separate process (its own GIL), pinned to ``cpu`` if given;
    yield its base URL."""
    proc = subprocess.Popen(
        pinned(cpu, [sys.executable, "-m", "empirio", "serve", "--port", "0", *flags]),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url:
            raise RuntimeError("the emulator did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        if proc.stdout:
            proc.stdout.close()


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    """``argv`` run on ``cpu`` alone (``taskset``), where one is given and taskset exists."""
    if cpu is None or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", str(cpu), *argv]


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A ``redis-server`` on a free loopback port (Debian's package); yield its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("needs redis-server: apt-get install redis-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


def synthetic_corpus(
    n: int, *, seed: int = 0, mean_words: int = 60, spread: float = 1.0, max_words: int = 7500
) -> list[str]:
    """``n`` distinct texts whose lengths (in words, about one Qwen token each) follow a
    log-normal spread with mean about ``mean_words``, capped at ``max_words``."""
    rng = random.Random(seed)
    mu = -spread * spread / 2  # makes the log-normal factor's mean 1
    out = []
    for i in range(n):
        words = min(max_words, max(3, int(rng.lognormvariate(mu, spread) * mean_words)))
        out.append(f"doc {i}: " + " ".join(rng.choice(_WORDS) for _ in range(words)))
    return out


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line() -> str:
    """Where and when a table was made."""
    import os

    return (
        f"{time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cores, {platform.machine()}"
    )
