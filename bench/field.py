"""Pacing outside the lab: a busy CPU, a Redis budget across a network, tokens that bind.

    python bench/field.py                     # about six minutes; writes bench/results/field.md
    python bench/field.py --before bd0e021    # the same rows for an earlier commit, beside them

Every row runs a client process against its own emulator process that enforces the account's
limits per minute and per second (``--strict-burst``, the default). The machine has two cores:
the emulator is pinned to one (``taskset``), the client to the other, and in the "busy CPU" rows
two (or four) CPU hogs are pinned beside the client. The Redis rows put a TCP proxy that adds
20 ms of round trip between the clients and ``redis-server`` (``tests/netem.py``). The bound is
what the account allows: one interval per request after the first (or tokens divided by the
tokens a minute, where tokens bind), plus one latency; ``bound/actual`` of 1 is as fast as the
account allows. 429s are counted by the emulator. Nothing here is a test: the figures go to the
README and the issue notes.

With ``--before REF``, each row also runs the client code of ``REF`` (a git worktree made for
the run), so that the two are measured on the same machine, minutes apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from _common import (
    emulator_process,
    machine_line,
    markdown_table,
    pinned,
    redis_server,
    synthetic_corpus,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

KEY = "bench-field-key"
WORDS = "alpha beta gamma delta river mountain system data cloud market energy".split()


@dataclass(frozen=True)
class Row:
    name: str
    rpm: int
    tpm: int
    latency_ms: int
    texts: int
    processes: int = 1
    hogs: int = 0
    redis_rtt_ms: float | None = None
    long_texts: bool = False


ROWS = (
    Row("busy CPU (2 hogs beside the client), 1 s latency", 1200, 48_000_000, 1000, 3000, hogs=2),
    Row("busy CPU (2 hogs beside the client), 2 s latency", 1200, 48_000_000, 2000, 3000, hogs=2),
    Row("busier CPU (4 hogs beside the client), 1 s latency", 1200, 48_000_000, 1000, 3000, hogs=4),
    Row("3 processes, Redis budget 20 ms away", 1200, 48_000_000, 300, 1000, 3, redis_rtt_ms=20),
    Row("~3,000-token texts (tokens bind), 300 RPM", 300, 2_000_000, 500, 200, long_texts=True),
    Row("~3,000-token texts (tokens bind), 1,200 RPM", 1200, 2_000_000, 500, 200, long_texts=True),
    Row("the default account, 50 RPM", 50, 2_000_000, 300, 300),
)


def corpus(row: Row, seed: int) -> list[str]:
    if not row.long_texts:
        return synthetic_corpus(row.texts, seed=seed, mean_words=60, spread=0.8)
    rng = random.Random(seed)
    return [
        f"doc {seed}-{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2600, 3200)))
        for i in range(row.texts)
    ]


def worker(spec: dict[str, Any]) -> None:
    """One client process: embed its texts, print a JSON line."""
    from empirio import EmbeddingClient, get_tokenizer

    row = Row(**spec["row"])
    texts = corpus(row, spec["seed"])
    tokenizer = get_tokenizer()
    tokens = sum(tokenizer.count(t) + 1 for t in texts)
    options: dict[str, Any] = {"rpm": row.rpm, "tpm": row.tpm, "dimensions": 64}
    if spec.get("budget"):
        options["share_budget"] = spec["budget"]
    client = EmbeddingClient(api_key=KEY, base_url=spec["url"], **options)
    start = time.perf_counter()
    rows = len(client.embed(texts))
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "rows": rows, "tokens": tokens}), flush=True)


@contextlib.contextmanager
def hogs(n: int, cpu: int | None) -> Iterator[None]:
    procs = [
        subprocess.Popen(pinned(cpu, [sys.executable, "-c", "while True: pass"])) for _ in range(n)
    ]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


@contextlib.contextmanager
def redis_far(rtt_ms: float | None) -> Iterator[str | None]:
    """A ``redis-server`` behind a proxy that adds ``rtt_ms`` of round trip (or nothing)."""
    if rtt_ms is None:
        yield None
        return
    sys.path.append(str(ROOT))  # the parent only: a worker imports the empirio it was given
    from tests.netem import latency_proxy

    with redis_server() as url, latency_proxy(url.split("//")[1].split("/")[0], rtt_ms) as far:
        yield f"redis://{far}/0"


def run_row(row: Row, code: Path, pin: bool) -> dict[str, Any]:
    client_cpu, server_cpu = (0, 1) if pin else (None, None)
    env = {**os.environ, "PYTHONPATH": str(code), "EMPIRIOLABS_BUDGET_DIR": tempfile.mkdtemp()}
    flags = ("--rpm", str(row.rpm), "--tpm", str(row.tpm), "--latency-ms", str(row.latency_ms))
    with (
        emulator_process(*flags, cpu=server_cpu) as url,
        redis_far(row.redis_rtt_ms) as budget,
        hogs(row.hogs, client_cpu),
    ):
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                pinned(
                    client_cpu,
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "--worker",
                        json.dumps({"row": row.__dict__, "url": url, "seed": k, "budget": budget}),
                    ],
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=str(code),
            )
            for k in range(row.processes)
        ]
        outs, failures = [], []
        for p in procs:
            out, err = p.communicate(timeout=1800)
            lines = out.strip().splitlines()
            if p.returncode == 0 and lines:
                outs.append(json.loads(lines[-1]))
            else:  # a process that failed is a result too: say how
                failures.append((err.strip().splitlines() or ["no output"])[-1][:120])
        wall = time.perf_counter() - start
        stats = httpx.get(url.removesuffix("/v1") + "/_emulator/stats", timeout=10).json()
    requests_needed = sum(-(-row.texts // 10) for _ in range(row.processes))
    if failures:
        return {
            "failed": f"{len(failures)} of {row.processes} failed: {failures[0]}",
            "429": stats["by_status"].get("429", 0),
            "requests": stats["requests"],
            "max_per_second": stats.get("max_per_second", "-"),
            "wall": wall,
        }
    tokens = sum(o["tokens"] for o in outs)
    # The first request goes at once: n requests need n - 1 intervals, then one latency.
    bound = max((requests_needed - 1) * 60 / row.rpm, tokens * 60 / row.tpm)
    bound += row.latency_ms / 1000
    slowest = max(o["seconds"] for o in outs)
    return {
        "seconds": slowest,
        "wall": wall,
        "bound": bound,
        "ratio": bound / slowest,
        "429": stats["by_status"].get("429", 0),
        "requests": stats["requests"],
        "max_per_second": stats.get("max_per_second", "-"),
        "rows": sum(o["rows"] for o in outs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--before", help="a git ref whose client code runs beside this one")
    parser.add_argument("--only", type=int, nargs="*", help="row numbers to run (from 1)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--out", default=str(HERE / "results" / "field.md"))
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    codes: list[tuple[str, Path]] = [("now", ROOT)]
    scratch = None
    if args.before:
        scratch = Path(tempfile.mkdtemp(prefix="empirio-before-"))
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(scratch), args.before],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        codes.insert(0, (args.before, scratch))
    table = []
    try:
        for k, row in enumerate(ROWS, 1):
            if args.only and k not in args.only:
                continue
            for label, code in codes:
                got = run_row(row, code, not args.no_pin)
                print(row.name, label, got, flush=True)
                failed = "failed" in got
                table.append(
                    [
                        row.name,
                        label,
                        "-" if failed else f"{got['bound']:.1f}",
                        f"({got['wall']:.1f})" if failed else f"{got['seconds']:.1f}",
                        got["failed"] if failed else f"{got['ratio']:.3f}",
                        got["429"],
                        got["requests"],
                        got["max_per_second"],
                    ]
                )
    finally:
        if scratch is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(scratch)], cwd=ROOT)
    header = [
        "row",
        "code",
        "bound s",
        "actual s",
        "bound/actual",
        "429s",
        "requests",
        "most requests in a second",
    ]
    text = (
        f"Pacing outside the lab ({machine_line()}): `python bench/field.py"
        + (f" --before {args.before}" if args.before else "")
        + "`.\n\n"
        + markdown_table(header, table)
        + "\n"
    )
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
