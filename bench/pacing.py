"""Ingestion under the service's per-second rules, and several clients and processes of one key.

    python bench/pacing.py            # about five minutes; writes bench/results/pacing.md
    python bench/pacing.py --seconds 20 --rates 300

For each rate, every empirio path runs in turn (``--side-by-side``: all at once, sharing the
two cores), each against its own emulator process
that enforces the account's limits per minute and per second (``--strict-burst``, the
emulator's default) with 100 ms of latency. Then two rows share one emulator and one key:
two clients in one process, and two processes. The bound is the requests divided by the
rate, plus one latency (the last request's answer); ``bound/actual`` of 1 is as fast as the
account allows. 429s are counted by the
emulator. Nothing here is a test: the figures go to the README.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from contestant import OURS

from _common import emulator_process, machine_line, markdown_table, synthetic_corpus

HERE = Path(__file__).resolve().parent
TWO_CLIENTS = "two core clients, one process, one key"
TWO_PROCESSES = "two processes, one key"
KEY = "bench-key"
#: tokens per minute for each rate: the real account's ratio, 2,000,000 per 50 requests
TPM_PER_RPM = 40_000


def corpus(n: int, seed: int) -> list[str]:
    return synthetic_corpus(n, seed=seed, mean_words=60, spread=0.8)


def worker(args: argparse.Namespace) -> None:
    """One process: embed its share of the corpus, print a JSON line."""
    from contestant import make

    from empirio import get_tokenizer

    texts = corpus(args.n, args.seed)
    get_tokenizer().count("a one-time load per process (about 0.3 s), not ingestion")
    out: dict[str, Any] = {"name": args.worker}
    start = time.perf_counter()
    try:
        if args.worker == TWO_CLIENTS:
            from empirio import EmbeddingClient

            clients = [
                EmbeddingClient(api_key=KEY, base_url=args.url, rpm=args.rpm, tpm=args.tpm)
                for _ in range(2)
            ]
            halves = [texts[: len(texts) // 2], texts[len(texts) // 2 :]]
            start = time.perf_counter()
            threads = [
                threading.Thread(target=c.embed, args=(h,))
                for c, h in zip(clients, halves, strict=True)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            n = len(texts)
        else:
            import asyncio

            fn = make(args.worker, args.url, args.rpm, args.tpm, 1024)
            start = time.perf_counter()
            result = asyncio.run(fn(texts)) if asyncio.iscoroutinefunction(fn) else fn(texts)
            n = len(result)
        out["seconds"] = time.perf_counter() - start
        out["vectors"] = n
    except BaseException as exc:
        out["seconds"] = time.perf_counter() - start
        out["error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
    print(json.dumps(out), flush=True)
    os._exit(0)


def launch(name: str, url: str, n: int, seed: int, rpm: int, env: dict[str, str]) -> Any:
    return subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            name,
            "--url",
            url,
            "--n",
            str(n),
            "--seed",
            str(seed),
            "--rpm",
            str(rpm),
            "--tpm",
            str(rpm * TPM_PER_RPM),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def refused(url: str) -> int:
    root = url.removesuffix("/v1")
    by_status = httpx.get(f"{root}/_emulator/stats", timeout=10).json()["by_status"]
    return int(by_status.get("429", 0))


def row(
    name: str, rpm: int, n: int, results: list[dict[str, Any]], n429: int, latency_s: float = 0.1
) -> list[object]:
    requests = math.ceil(n / 10)
    # The last request leaves at the rate's pace and answers one latency later.
    bound = requests * 60.0 / rpm + latency_s
    errors = [r["error"] for r in results if "error" in r]
    wall = max(r["seconds"] for r in results)
    done = sum(r.get("vectors", 0) for r in results)
    return [
        name,
        rpm,
        n,
        f"{bound:.1f}",
        f"{wall:.1f}",
        f"{bound / wall:.3f}",
        n429,
        n - done,
        errors[0] if errors else "ok",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker")
    ap.add_argument("--url")
    ap.add_argument("--n", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rpm", type=int, default=0)
    ap.add_argument("--tpm", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=45.0, help="bound of each run, in seconds")
    ap.add_argument("--rates", default="50,300,1200", help="requests per minute to measure")
    ap.add_argument("--side-by-side", action="store_true", help="run a rate's contestants at once")
    ap.add_argument(
        "--latency-ms", type=int, default=100, help="the emulator's latency per request, in ms"
    )
    ap.add_argument("--only", default="", help="comma-separated contestants to run (default all)")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    rows: list[list[object]] = []
    budget_dir = tempfile.mkdtemp(prefix="empirio-bench-budget-")
    env = {**os.environ, "EMPIRIOLABS_BUDGET_DIR": budget_dir}
    flags = ("--latency-ms", str(args.latency_ms), "--strict-burst")
    contestants = [c for c in OURS if not args.only or c in args.only.split(",")]
    rates = [int(r) for r in args.rates.split(",")]
    shared_rate = 300 if 300 in rates else rates[0]
    for rpm in rates:
        n = int(args.seconds * rpm / 60) * 10
        limits = ("--rpm", str(rpm), "--tpm", str(rpm * TPM_PER_RPM))
        groups = [contestants] if args.side_by_side else [[name] for name in contestants]
        for group in groups:
            with contextlib.ExitStack() as stack:
                urls = [stack.enter_context(emulator_process(*limits, *flags)) for _ in group]
                procs = [
                    launch(name, url, n, k, rpm, env)
                    for k, (name, url) in enumerate(zip(group, urls, strict=True))
                ]
                for name, url, proc in zip(group, urls, procs, strict=True):
                    result = json.loads(proc.communicate()[0].strip().splitlines()[-1])
                    rows.append(row(name, rpm, n, [result], refused(url), args.latency_ms / 1000))
                    print(" | ".join(map(str, rows[-1])), flush=True)
        if rpm != shared_rate:
            continue
        for name in (TWO_CLIENTS, TWO_PROCESSES):
            with emulator_process(*limits, *flags) as url:
                if name == TWO_CLIENTS:
                    procs = [launch(name, url, n, 11, rpm, env)]
                else:
                    procs = [launch(OURS[0], url, n // 2, 12 + k, rpm, env) for k in (0, 1)]
                results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
                rows.append(row(name, rpm, n, results, refused(url), args.latency_ms / 1000))
                print(" | ".join(map(str, rows[-1])), flush=True)
    header = ["contestant", "RPM", "texts", "bound s", "wall s", "bound/actual", "429s", "lost"]
    table = markdown_table([*header, "result"], rows)
    text = (
        f"Ingestion under the per-second rules ({machine_line()}; "
        f"{'side by side' if args.side_by_side else 'one contestant at a time'}): emulator with "
        f"`--strict-burst --latency-ms {args.latency_ms}`, TPM = 40,000 x RPM; each row's texts "
        "take "
        f"{args.seconds:.0f} s at the bound.\n\n{table}\n"
    )
    out = (
        HERE
        / "results"
        / ("pacing.md" if args.latency_ms == 100 else f"pacing-{args.latency_ms}ms.md")
    )
    out.parent.mkdir(exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
