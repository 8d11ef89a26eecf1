"""Three "hosts" of one account: processes with separate budget folders (as on three machines,
pods or containers), with and without one Redis budget between them.

    python bench/hosts.py                 # about two minutes; writes bench/results/hosts.md
    python bench/hosts.py --rpm 600 --seconds 30

Each row runs three processes at once against one emulator process that enforces the account's
limits per minute and per second (``--strict-burst``, 100 ms latency). The bound is the
requests divided by the rate, plus one latency; 429s are counted by the emulator. Needs
``redis-server`` (Debian's package). Nothing here is a test: the figures go to the README.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from _common import emulator_process, machine_line, markdown_table, redis_server, synthetic_corpus

HERE = Path(__file__).resolve().parent
KEY = "bench-hosts-key"
TPM_PER_RPM = 40_000


def worker(url: str, budget: str, n: int, seed: int, rpm: int) -> None:
    from empirio import EmbeddingClient, get_tokenizer

    texts = synthetic_corpus(n, seed=seed, mean_words=60, spread=0.8)
    get_tokenizer().count("load the tokenizer before the clock starts")
    client = EmbeddingClient(
        api_key=KEY, base_url=url, rpm=rpm, tpm=rpm * TPM_PER_RPM, share_budget=budget
    )
    start = time.perf_counter()
    rows = len(client.embed(texts))
    print(json.dumps({"seconds": time.perf_counter() - start, "rows": rows}), flush=True)


def run_row(name: str, budget: str, rpm: int, n: int) -> list[object]:
    flags = ("--rpm", str(rpm), "--tpm", str(rpm * TPM_PER_RPM), "--strict-burst")
    with emulator_process(*flags, "--latency-ms", "100") as url:
        procs = []
        for k in range(3):
            env = {**os.environ, "EMPIRIOLABS_BUDGET_DIR": tempfile.mkdtemp(prefix="host-")}
            args = [sys.executable, __file__, "--worker", url, budget, str(n), str(k), str(rpm)]
            procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env))
        results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        root = url.removesuffix("/v1")
        by_status = httpx.get(f"{root}/_emulator/stats", timeout=10).json()["by_status"]
    requests = 3 * math.ceil(n / 10)
    bound = requests * 60.0 / rpm + 0.1
    wall = max(r["seconds"] for r in results)
    lost = 3 * n - sum(r["rows"] for r in results)
    return [name, rpm, 3 * n, f"{bound:.1f}", f"{wall:.1f}", f"{bound / wall:.3f}",
            by_status.get("429", 0), lost]  # fmt: skip


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, budget, n, seed, rpm = sys.argv[2:7]
        worker(url, budget, int(n), int(seed), int(rpm))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rpm", type=int, default=600, help="the account's requests a minute")
    ap.add_argument("--seconds", type=float, default=30.0, help="bound of each row, in seconds")
    args = ap.parse_args()
    n = int(args.seconds * args.rpm / 60 / 3) * 10  # texts per host
    rows = [run_row("three hosts, each its machine budget (control)", "machine", args.rpm, n)]
    print(" | ".join(map(str, rows[-1])), flush=True)
    with redis_server() as url:
        rows.append(run_row("three hosts, one Redis budget", url, args.rpm, n))
    print(" | ".join(map(str, rows[-1])), flush=True)
    header = ["contestant", "RPM", "texts", "bound s", "wall s", "bound/actual", "429s", "lost"]
    text = (
        f"Three hosts of one account ({machine_line()}): three processes with separate budget "
        f"folders against one emulator with `--strict-burst --latency-ms 100`.\n\n"
        f"{markdown_table(header, rows)}\n"
    )
    out = HERE / "results" / "hosts.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
