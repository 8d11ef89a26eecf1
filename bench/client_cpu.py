"""Client CPU against its floor: plain httpx + numpy doing the same requests, side by side.

    python bench/client_cpu.py [--n 10000] [--rounds 3] [--latency-ms 10]

The emulator runs in a process of its own on one core (``empirio serve``, unpaced, answering
after ``--latency-ms``); each measurement is a fresh process on the other core that embeds the
same ``n`` texts and prints the CPU seconds its process used (every thread:
``time.process_time``), after a warm-up. For each of 1,024 and 2,048 dimensions, base64 and
float, and 1 and 32 requests in flight:

- ``floor``: httpx alone, 10 texts per request as ours sends, decoding each answer into its
  rows of one preallocated float32 matrix (``np.frombuffer`` of the base64; ``json.loads`` and
  ``np.asarray`` of the floats). One in flight is a plain ``httpx.Client`` loop; 32 is an
  ``httpx.AsyncClient`` with 32 tasks, the cheapest way to keep 32 in flight in Python.
- ``ours``: ``EmbeddingClient.embed`` of all ``n`` texts with ``max_concurrency`` 1 or 32,
  everything included (counting tokens, planning, checking every answer, usage, the result).

Rounds alternate the two so that the machine's drift touches both alike; medians are printed,
with the ratio the issue asks to be at most 1.25.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from _common import emulator_process, markdown_table, pinned

FLOOR = """
import asyncio, base64, json, sys, time
import httpx, numpy as np
sys.path.insert(0, "bench")
from _common import synthetic_corpus

url, n, dims, fmt, flight = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], \
    int(sys.argv[5])
texts = synthetic_corpus(n, seed=3, mean_words=20, spread=0.5)
out = np.empty((n, dims), np.float32)
head = {"Authorization": "Bearer k"}

def body(i):
    return {"model": "text-embedding-v4", "input": texts[i : i + 10], "dimensions": dims,
            "encoding_format": fmt}

def store(i, content):
    data = json.loads(content)["data"]
    if fmt == "base64":
        for row in data:
            out[i + row["index"]] = np.frombuffer(base64.b64decode(row["embedding"]), "<f4")
    else:
        out[i : i + len(data)] = np.asarray([row["embedding"] for row in data], np.float32)

if flight == 1:
    with httpx.Client(base_url=url, headers=head, timeout=60) as http:
        http.post("/embeddings", json=body(0))  # warm up
        start = time.process_time()
        for i in range(0, n, 10):
            store(i, http.post("/embeddings", json=body(i)).content)
        used = time.process_time() - start
else:
    async def main():
        async with httpx.AsyncClient(base_url=url, headers=head, timeout=60,
                                     limits=httpx.Limits(max_connections=flight)) as http:
            await http.post("/embeddings", json=body(0))
            start = time.process_time()
            todo = iter(range(0, n, 10))

            async def worker():
                for i in todo:
                    store(i, (await http.post("/embeddings", json=body(i))).content)

            await asyncio.gather(*(worker() for _ in range(flight)))
            return time.process_time() - start
    used = asyncio.run(main())
print(used)
"""

OURS = """
import sys, time
sys.path.insert(0, "bench")
from _common import synthetic_corpus
from empirio import EmbeddingClient

url, n, dims, fmt, flight = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], \
    int(sys.argv[5])
texts = synthetic_corpus(n, seed=3, mean_words=20, spread=0.5)
c = EmbeddingClient(api_key="k", base_url=url, rpm=None, tpm=None, dimensions=dims,
                    encoding_format=fmt, max_concurrency=flight, share_budget="client")
c.embed([f"warm up {i}" for i in range(50)])
start = time.process_time()
r = c.embed(texts)
used = time.process_time() - start
assert r.dense.shape == (n, dims)
print(used)
"""


def one(code: str, url: str, n: int, dims: int, fmt: str, flight: int) -> float:
    argv = pinned(0, [sys.executable, "-c", code, url, str(n), str(dims), fmt, str(flight)])
    root = Path(__file__).resolve().parent.parent  # the scripts import bench/_common.py from it
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=900, cwd=root)
    if done.returncode:
        raise SystemExit(done.stderr)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-ms", type=int, default=10)
    ap.add_argument("--only", default="", help="e.g. 1024/base64/32 to run one row")
    args = ap.parse_args()
    rows = []
    per10k = 10_000 / args.n
    with emulator_process("--latency-ms", str(args.latency_ms), cpu=1) as url:
        for dims in (1024, 2048):
            for fmt in ("base64", "float"):
                for flight in (1, 32):
                    if args.only and args.only != f"{dims}/{fmt}/{flight}":
                        continue
                    floor, ours = [], []
                    for _ in range(args.rounds):
                        floor.append(one(FLOOR, url, args.n, dims, fmt, flight))
                        ours.append(one(OURS, url, args.n, dims, fmt, flight))
                    f, o = statistics.median(floor), statistics.median(ours)
                    rows.append(
                        [dims, fmt, flight, f"{f * per10k:.2f}", f"{o * per10k:.2f}",
                         f"{o / f:.2f}x"]
                    )  # fmt: skip
                    print(*rows[-1], sep=" | ", flush=True)
    print()
    head = ["dimensions", "wire format", "in flight", "floor CPU s / 10k", "ours CPU s / 10k"]
    print(markdown_table([*head, "ours / floor"], rows))


if __name__ == "__main__":
    main()
