"""How fast the playground answers: one run of 50 texts (45 documents, 5 queries) on the
emulator, end to end through its HTTP API, against the 300 ms the page should take.

    python bench/playground.py            # 20 runs after a warm-up; prints the median and p90
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line, markdown_table

BOUND_S = 0.300


def main() -> int:
    os.environ.pop("EMPIRIOLABS_API_KEY", None)
    from empirio.playground import playground

    docs = [f"document {i}: a passage about topic {i % 7} and detail {i}" for i in range(45)]
    queries = [f"which passage is about topic {i}?" for i in range(5)]
    rows = []
    with playground() as launched:
        url, token = launched.split("?token=")
        http = httpx.Client(timeout=60, headers={"X-Playground-Token": token})
        for output, dims in (("dense", 1024), ("both", 1024), ("dense", 2048)):
            body = {"documents": docs, "queries": queries, "output": output, "dimensions": dims}
            http.post(url + "api/run", json=body).raise_for_status()  # warm-up: tokenizer, pools
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                r = http.post(url + "api/run", json=body)
                times.append(time.perf_counter() - t0)
                r.raise_for_status()
                assert "error" not in r.json(), r.text[:300]
            median = statistics.median(times)
            p90 = sorted(times)[int(0.9 * len(times)) - 1]
            rows.append(
                [
                    f"{output}, {dims}",
                    f"{median * 1000:.0f}",
                    f"{p90 * 1000:.0f}",
                    f"{median / BOUND_S:.2f}",
                ]
            )
    text = (
        f"50 texts per run on the emulator; {machine_line()}\n\n"
        + markdown_table(["output, dimensions", "median ms", "p90 ms", "median / 300 ms"], rows)
        + "\n"
    )
    print(text)
    out = Path(__file__).resolve().parent / "results" / "playground.md"
    out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("EMPIRIOLABS_BUDGET_DIR", tempfile.mkdtemp(prefix="empirio-budget-"))
    raise SystemExit(main())
