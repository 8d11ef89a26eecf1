"""Ingestion under the account's limits: the bare core against the emulator.

The emulator enforces RPM/TPM over a sliding minute, scaled up from the real account's
50 RPM / 2M TPM by ``--scale`` (same ratio) so a run takes tens of seconds. The client is given
the same limits. Reported: wall time, texts/s, the ratio of the bound
``N / min(rpm * batch_size, tpm / mean_tokens)`` minutes to the actual time (1.0 = at the bound),
429s seen and texts lost.

Run: ``python bench/ingest_core.py [--scale 12] [--n 3000]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from empirio import EmbeddingClient, get_tokenizer

from _common import emulator_process, machine_line, markdown_table, synthetic_corpus


def run(label: str, texts: list[str], rpm: int, tpm: int, latency_ms: int) -> tuple[object, ...]:
    tok = get_tokenizer()
    billed = np.array(tok.count_batch(texts)) + 1
    mean_tokens = float(billed.mean())
    bound_per_min = min(rpm * 10, tpm / mean_tokens)
    bound_s = len(texts) / bound_per_min * 60
    flags = ["--rpm", str(rpm), "--tpm", str(tpm), "--latency-ms", str(latency_ms)]
    with (
        emulator_process(*flags) as url,
        EmbeddingClient(
            api_key="bench", base_url=url, rpm=rpm, tpm=tpm, max_concurrency=16
        ) as client,
    ):
        start = time.perf_counter()
        result = client.embed(texts)
        took = time.perf_counter() - start
        usage = client.usage
    assert result.dense is not None
    lost = len(texts) - int(np.isfinite(result.dense).all(axis=1).sum())
    return (
        label,
        len(texts),
        f"{mean_tokens:.0f}",
        f"{bound_s:.1f}",
        f"{took:.1f}",
        f"{len(texts) / took:.1f}",
        f"{bound_s / took:.3f}",
        usage.rate_limited,
        lost,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=int, default=12, help="multiply 50 RPM / 2M TPM by this")
    ap.add_argument("--n", type=int, default=3000, help="texts in the request-bound run")
    ap.add_argument("--latency-ms", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    rpm, tpm = 50 * args.scale, 2_000_000 * args.scale
    short = synthetic_corpus(args.n, seed=1, mean_words=200, spread=1.0)
    # Long texts (5,000 tokens on average, 20x the short ones) make the token limit bind:
    # 2M TPM / 5,000 = 400 texts a minute, below 50 RPM x 10 = 500.
    long = synthetic_corpus(args.n // 3, seed=2, mean_words=5000, spread=0.3)
    rows = [
        run("request-bound (tens to ~1.5k tokens)", short, rpm, tpm, args.latency_ms),
        run("token-bound (~2k to 7.5k tokens)", long, rpm, tpm, args.latency_ms),
    ]
    table = markdown_table(
        [
            "corpus",
            "texts",
            "mean billed tokens",
            "bound s",
            "actual s",
            "texts/s",
            "bound/actual",
            "429s",
            "lost",
        ],
        rows,
    )
    text = (
        f"Bare core, emulator at {rpm} RPM / {tpm:,} TPM ({args.scale}x the real account), "
        f"{args.latency_ms} ms latency, batch 10 ({machine_line()}).\n\n{table}\n"
    )
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ingest_core.md").write_text(text)


if __name__ == "__main__":
    main()
