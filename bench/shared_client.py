"""Many callers sharing one client's concurrency slots, against as many callers as slots.

A web service's threads (or an app's tasks) share one ``EmbeddingClient`` whose
``max_concurrency`` is below their number: a caller waiting for a slot must take it as soon as
another caller's request ends. Each row runs the same requests (one call of 10 texts each)
against an emulator that answers after ``--latency-ms``, twice, in alternating rounds:

* **floor**: as many callers as slots, so that no caller ever waits for another's slot;
* **shared**: ``--callers`` callers on the same slots.

``shared / floor`` is what waiting for slots costs (1.00: nothing). Threads call ``embed``;
tasks of one event loop call ``aembed``.

Run from the repository root::

    python bench/shared_client.py                 # 8 callers, 1 and 2 slots
    python bench/shared_client.py --callers 3 --slots 2
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from empirio import EmbeddingClient

from _common import emulator_process, machine_line, markdown_table

TEXTS_PER_CALL = 10


def _threads(c: EmbeddingClient, callers: int, calls: int, tag: str) -> float:
    def work(who: int) -> None:
        for k in range(calls):
            c.embed([f"{tag} {who} {k} {j}" for j in range(TEXTS_PER_CALL)])

    threads = [threading.Thread(target=work, args=(who,)) for who in range(callers)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - t0


def _tasks(c: EmbeddingClient, callers: int, calls: int, tag: str) -> float:
    async def work(who: int) -> None:
        for k in range(calls):
            await c.aembed([f"{tag} {who} {k} {j}" for j in range(TEXTS_PER_CALL)])

    async def everyone() -> None:
        await asyncio.gather(*(work(who) for who in range(callers)))

    t0 = time.perf_counter()
    asyncio.run(everyone())
    return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--requests", type=int, default=80, help="per row (default 80)")
    parser.add_argument("--latency-ms", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    rows = []
    with emulator_process("--latency-ms", str(args.latency_ms)) as url:
        for slots in args.slots:
            for name, run in (("threads", _threads), ("tasks", _tasks)):
                times: dict[str, list[float]] = {"floor": [], "shared": []}
                for r in range(args.rounds):
                    for kind, callers in (("floor", slots), ("shared", args.callers)):
                        with EmbeddingClient(
                            api_key="bench", base_url=url, rpm=None, tpm=None, max_concurrency=slots
                        ) as c:
                            c.embed(["warm up"])
                            calls = args.requests // callers
                            took = run(c, callers, calls, f"{name} {kind} {r}")
                            times[kind].append(took / (calls * callers))  # s per request
                floor, shared = (statistics.median(times[k]) for k in ("floor", "shared"))
                rows.append(
                    [
                        name,
                        slots,
                        args.callers,
                        f"{floor * 1000:.1f}",
                        f"{shared * 1000:.1f}",
                        f"{shared / floor:.2f}",
                    ]
                )
    table = markdown_table(
        [
            "callers",
            "slots",
            "sharing",
            "floor ms / request",
            "shared ms / request",
            "shared / floor",
        ],
        rows,
    )
    print(
        f"{args.requests} requests per row, emulator answering after {args.latency_ms} ms; "
        f"medians of {args.rounds} alternating rounds; {machine_line()}\n\n{table}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
