"""Every benchmark in one command: ``python bench/run.py`` (about ten minutes on 2 cores).

Writes Markdown tables and a plot to ``bench/results/``. Nothing here is a test: the figures are
measured side by side in one run and reported as ratios, so a noisy machine moves both sides.

1. Ingestion under the account's limits (emulator at --scale x 50 RPM / 2M TPM, 300 ms latency,
   a corpus of tens to ~2,000 tokens per text; each contestant against its own emulator, all
   side by side): wall time, texts/s, ratio to the bound, 429s, texts lost or failed.
2. Latency-bound ingestion, no account limit, 200 ms latency, one contestant at a time.
3. Client CPU seconds per 10,000 vectors, base64 and float, 1024 and 2048 dimensions, against
   decoding the same payloads with numpy alone.
4. Peak RSS for 100,000 texts at 1024 dimensions: ``iter_embed`` against ``embed_documents``.
5. The emulator's own throughput.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from contestant import OURS

from empirio import get_tokenizer

from _common import emulator_process, machine_line, markdown_table, synthetic_corpus

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"

THEIRS = [
    "langchain-empiriolabs (defaults)",
    "langchain-empiriolabs (chunk_size=10)",
    "langchain-openai OpenAIEmbeddings (chunk_size=10)",
    "langchain-openai OpenAIEmbeddings (chunk_size=10, async)",
    "llama-index-embeddings-openai-like (sync)",
    "llama-index-embeddings-openai-like (async)",
]


def python_number(code: str) -> float:
    """Run ``code`` in a fresh interpreter (in bench/) and read the number it prints."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=HERE, text=True, capture_output=True, check=True
    )
    return float(done.stdout.strip())


def stats(url: str) -> dict[str, Any]:
    return dict(httpx.get(url.removesuffix("/v1") + "/_emulator/stats", timeout=30).json())


@contextlib.contextmanager
def started(cmd: list[str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=HERE
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def contestant_cmd(name: str, url: str, n: int, rpm: int = 0, tpm: int = 0) -> list[str]:
    return [
        sys.executable,
        str(HERE / "contestant.py"),
        name,
        "--url",
        url,
        "--n",
        str(n),
        "--rpm",
        str(rpm),
        "--tpm",
        str(tpm),
    ]


def collect(proc: subprocess.Popen[str], name: str, timeout: float) -> dict[str, Any]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"name": name, "error": f"did not finish within {timeout:.0f} s"}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"name": name, "error": "crashed (no result)"}


def row(r: dict[str, Any], n: int, bound_s: float | None, s: dict[str, Any]) -> list[Any]:
    seconds = r.get("seconds")
    ok = r.get("ok", False)
    lost = n - (r.get("vectors") or 0) if ok or "vectors" in r else n
    speed = f"{n / seconds:.1f}" if ok and seconds else "-"
    ratio = f"{bound_s / seconds:.3f}" if ok and seconds and bound_s else "-"
    status = "ok" if ok else r.get("error", "failed")
    return [
        r["name"],
        f"{seconds:.1f}" if seconds else "-",
        speed,
        ratio,
        s.get("by_status", {}).get("429", 0),
        lost,
        status,
    ]


def ingestion_under_limits(scale: int, n: int) -> tuple[str, list[tuple[str, float]]]:
    rpm, tpm = 50 * scale, 2_000_000 * scale
    texts = synthetic_corpus(n, seed=1, mean_words=200, spread=1.0)
    mean_tokens = float(np.mean(get_tokenizer().count_batch(texts))) + 1
    bound_s = n / min(rpm * 10, tpm / mean_tokens) * 60
    names = OURS + THEIRS
    flags = ["--rpm", str(rpm), "--tpm", str(tpm), "--latency-ms", "300"]
    results: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        urls = {name: stack.enter_context(emulator_process(*flags)) for name in names}
        procs = {
            name: stack.enter_context(
                started(
                    contestant_cmd(
                        name, urls[name], n, rpm if name in OURS else 0, tpm if name in OURS else 0
                    )
                )
            )
            for name in names
        }
        deadline = time.monotonic() + bound_s * 6 + 120
        for name in names:
            r = collect(procs[name], name, max(10.0, deadline - time.monotonic()))
            results[name] = (r, stats(urls[name]))
    rows = [row(r, n, bound_s, s) for r, s in results.values()]
    table = markdown_table(
        ["contestant", "wall s", "texts/s", "bound/actual", "429s", "lost", "result"], rows
    )
    text = (
        f"### 1. Ingestion under the account's limits\n\n{n} texts (mean {mean_tokens:.0f} billed "
        f"tokens), emulator at {rpm} RPM / {tpm:,} TPM ({scale}x the real 50 RPM / 2M TPM, "
        f"sliding 60 s window and the service's per-second rules), 300 ms latency. "
        f"Bound: {bound_s:.0f} s "
        f"({min(rpm * 10, tpm / mean_tokens) / 60:.1f} texts/s). Our contestants are told the "
        "limits; the others have no setting for them. Each ran against its own emulator, all "
        f"side by side.\n\n{table}\n"
    )
    speeds = [(r["name"], n / r["seconds"] if r.get("ok") else 0.0) for r, _ in results.values()]
    return text, speeds


def ingestion_latency_bound(n: int) -> tuple[str, list[tuple[str, float]]]:
    rows, speeds = [], []
    for name in OURS + THEIRS:
        with (
            emulator_process("--latency-ms", "200") as url,
            started(contestant_cmd(name, url, n)) as proc,
        ):
            r = collect(proc, name, 300)
            s = stats(url)
        rows.append(row(r, n, None, s))
        speeds.append((name, n / r["seconds"] if r.get("ok") else 0.0))
    table = markdown_table(["contestant", "wall s", "texts/s", "-", "429s", "lost", "result"], rows)
    return (
        f"### 2. Latency-bound ingestion\n\n{n} texts, no account limit, 200 ms latency per "
        f"request, one contestant at a time.\n\n{table}\n",
        speeds,
    )


def client_cpu(n: int) -> str:
    texts = synthetic_corpus(n, seed=3, mean_words=20, spread=0.5)
    rows = []
    for dims in (1024, 2048):
        for fmt in ("base64", "float"):
            with emulator_process() as url:
                code = (
                    "import resource, sys, time\n"
                    "sys.path.insert(0, '.')\n"
                    "from _common import synthetic_corpus\n"
                    "from empirio import EmbeddingClient\n"
                    f"texts = synthetic_corpus({n}, seed=3, mean_words=20, spread=0.5)\n"
                    f"c = EmbeddingClient(api_key='k', base_url='{url}', dimensions={dims}, "
                    f"encoding_format='{fmt}', rpm=None, tpm=None)\n"
                    "c.count_tokens('warm up the tokenizer')\n"
                    "r0 = resource.getrusage(resource.RUSAGE_SELF)\n"
                    "c.embed(texts)\n"
                    "r1 = resource.getrusage(resource.RUSAGE_SELF)\n"
                    "print((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))\n"
                )
                ours = python_number(code)
                bodies = [
                    httpx.post(
                        f"{url}/embeddings",
                        headers={"Authorization": "Bearer k"},
                        json={
                            "model": "text-embedding-v4",
                            "input": texts[i : i + 10],
                            "dimensions": dims,
                            "encoding_format": fmt,
                        },
                        timeout=60,
                    ).content
                    for i in range(0, n, 10)
                ]
            t0 = time.process_time()
            for body in bodies:
                data = json.loads(body)["data"]
                if fmt == "base64":
                    np.vstack(
                        [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data]
                    )
                else:
                    np.asarray([d["embedding"] for d in data], dtype=np.float32)
            floor = time.process_time() - t0
            per10k = 10_000 / n
            rows.append(
                [dims, fmt, f"{ours * per10k:.2f}", f"{floor * per10k:.2f}", f"{ours / floor:.1f}x"]
            )
    table = markdown_table(
        [
            "dimensions",
            "wire format",
            "client CPU s / 10k vectors",
            "numpy decode floor s",
            "ratio",
        ],
        rows,
    )
    return (
        f"### 3. Client CPU\n\nCPU seconds of the client process (user + system) per 10,000 "
        f"vectors, everything included: tokenising, planning, HTTP, parsing, checking, decoding. "
        f"The floor decodes the same response bodies with json + numpy alone.\n\n{table}\n"
    )


def memory(n: int) -> str:
    rows = []
    modes = {
        "import only": "pass",
        "EmbeddingClient.iter_embed (segments of 1,000)": "for part in c.iter_embed(texts): pass",
        "EmbeddingClient.embed (one float32 matrix)": "r = c.embed(texts)",
        "LangChain EmpirioEmbeddings.embed_documents (lists of floats)": (
            "v = e.embed_documents(texts)"
        ),
    }
    for label, stmt in modes.items():
        with emulator_process() as url:
            code = (
                "import resource, sys\n"
                "sys.path.insert(0, '.')\n"
                "from empirio import EmbeddingClient\n"
                "from langchain_empirio import EmpirioEmbeddings\n"
                f"texts = [f'short text number {{i}} for the memory run' for i in range({n})]\n"
                f"c = EmbeddingClient(api_key='k', base_url='{url}', rpm=None, tpm=None)\n"
                "e = EmpirioEmbeddings(client=c)\n"
                f"{stmt}\n"
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
            )
            t0 = time.perf_counter()
            rss = python_number(code)
            rows.append([label, f"{rss:,.0f}", f"{time.perf_counter() - t0:.0f}"])
    table = markdown_table(["how", "peak RSS MiB", "wall s"], rows)
    return (
        f"### 4. Memory\n\nPeak resident memory of a process embedding {n:,} short texts at 1024 "
        f"dimensions (unpaced emulator; the texts themselves are in memory in every row).\n\n"
        f"{table}\n"
    )


def emulator_throughput() -> str:
    out = subprocess.run(
        [sys.executable, str(HERE / "emulator_throughput.py"), "--seconds", "4"],
        cwd=HERE,
        text=True,
        capture_output=True,
        check=True,
    ).stdout
    return "### 5. The emulator's own throughput\n\n" + out.split("\n\n", 1)[1]


def plot(under_limits: list[tuple[str, float]], latency: list[tuple[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for ax, data, title in (
        (axes[0], under_limits, "under account limits"),
        (axes[1], latency, "latency-bound, 200 ms"),
    ):
        names = [n for n, _ in data]
        colours = ["tab:blue" if n in OURS else "tab:grey" for n in names]
        ax.barh(names, [v for _, v in data], color=colours)
        ax.set_title(f"texts/s, {title}")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(OUT / "ingestion.png", dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--n-limits", type=int, default=3000)
    ap.add_argument("--n-latency", type=int, default=1000)
    ap.add_argument("--n-cpu", type=int, default=5000)
    ap.add_argument("--n-memory", type=int, default=100_000)
    ap.add_argument("--only", default="12345")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    parts = [f"## Benchmarks\n\n{machine_line()}. Reproduce with `python bench/run.py`.\n"]
    limits = latency = None
    if "1" in args.only:
        text, limits = ingestion_under_limits(args.scale, args.n_limits)
        parts.append(text)
        print(text, flush=True)
    if "2" in args.only:
        text, latency = ingestion_latency_bound(args.n_latency)
        parts.append(text)
        print(text, flush=True)
    if "3" in args.only:
        parts.append(client_cpu(args.n_cpu))
        print(parts[-1], flush=True)
    if "4" in args.only:
        parts.append(memory(args.n_memory))
        print(parts[-1], flush=True)
    if "5" in args.only:
        parts.append(emulator_throughput())
        print(parts[-1], flush=True)
    if limits and latency:
        plot(limits, latency)
    # A partial run (--only) must not overwrite the full run's tables.
    name = "summary.md" if args.only == "12345" else "summary-partial.md"
    (OUT / name).write_text("\n".join(parts))


if __name__ == "__main__":
    main()
