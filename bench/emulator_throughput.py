"""How many inputs a second the emulator serves, so nobody mistakes it for the bottleneck.

Run: ``python bench/emulator_throughput.py [--seconds 8]``. The emulator runs in its own process;
a load generator in this process keeps ``--concurrency`` requests of 10 inputs in flight. Rows for
hashed vectors and, with ``empirio[semantic]``, for the semantic stand-in model: texts it has not
seen (each encoded by the model) and the same texts again (from its per-text cache).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import httpx

from empirio.emulator._semantic import semantic_available

from _common import emulator_process, machine_line, markdown_table, synthetic_corpus


async def _load(
    url: str, texts: list[str], fmt: str, dims: int, seconds: float, concurrency: int
) -> tuple[int, int]:
    sent = ok = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=60, headers={"Authorization": "Bearer bench"}
    ) as client:

        async def worker(w: int) -> None:
            nonlocal sent, ok
            i = w * 10
            while time.perf_counter() < deadline:
                batch = [texts[(i + k) % len(texts)] for k in range(10)]
                i += 10 * concurrency
                r = await client.post(
                    "/embeddings",
                    json={
                        "model": "text-embedding-v4",
                        "input": batch,
                        "dimensions": dims,
                        "encoding_format": fmt,
                    },
                )
                sent += 10
                if r.status_code == 200:
                    ok += 10

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return sent, ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    texts = synthetic_corpus(5000, mean_words=60)
    rows = []
    with emulator_process() as url:
        asyncio.run(_load(url, texts, "base64", 1024, 1.0, args.concurrency))  # warm-up
        for fmt, dims in (("base64", 1024), ("float", 1024), ("base64", 2048)):
            start = time.perf_counter()
            sent, ok = asyncio.run(_load(url, texts, fmt, dims, args.seconds, args.concurrency))
            took = time.perf_counter() - start
            rows.append(("hashed", fmt, dims, ok, f"{took:.1f}", f"{ok / took:,.0f}", sent - ok))
    if semantic_available():
        with emulator_process("--vectors", "semantic") as url:
            seen = texts
            for label in ("semantic, new texts", "semantic, cached texts"):
                start = time.perf_counter()
                sent, ok = asyncio.run(
                    _load(url, seen, "base64", 1024, args.seconds, args.concurrency)
                )
                took = time.perf_counter() - start
                rows.append(
                    (label, "base64", 1024, ok, f"{took:.1f}", f"{ok / took:,.0f}", sent - ok)
                )
                # The second pass cycles over what the first one served: all from the cache.
                served = max(10 * args.concurrency, ok - ok % (10 * args.concurrency))
                seen = texts[: min(served, len(texts))]
    table = markdown_table(
        ["vectors", "encoding", "dimensions", "inputs served", "seconds", "inputs/s", "failed"],
        rows,
    )
    text = (
        f"Emulator throughput ({machine_line()}); requests of 10 inputs of about 80 tokens, "
        f"{args.concurrency} in flight; load generator and server share the machine's cores.\n\n"
        f"{table}\n"
    )
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "emulator_throughput.md").write_text(text)


if __name__ == "__main__":
    main()
