"""The peak memory of one large ``embed`` against its floor, the result matrix itself.

    python bench/embed_memory.py --n 100000

Each run is a process of its own (``ru_maxrss`` is a process's peak): a client on an unpaced
emulator (in a process of its own, so that only the client's memory is counted) is warmed up,
then ``embed`` of ``n`` short texts; the peak resident memory above the start is printed as a
ratio of the result's bytes (1.0: nothing but the result). ``iter_embed`` is measured the same
way, against 0 (what it holds is bounded): the issue asks at most +64 MB at 1,000,000 texts.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from _common import emulator_process

ONE = """
import resource, sys
from empirio import EmbeddingClient

n, dims, how, url = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if True:
    c = EmbeddingClient(api_key="k", base_url=url, rpm=None, tpm=None, dimensions=dims,
                        max_concurrency=16)
    c.embed([f"warm {i}" for i in range(2000)])
    texts = [f"text number {i} about something" for i in range(n)]
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if how == "embed":
        held = c.embed(texts).dense.nbytes
    else:
        held = 0
        for part in c.iter_embed(iter(texts)):
            held = max(held, part.dense.nbytes)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((peak - start) * 1024, n * dims * 4)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="texts (default 100,000)")
    parser.add_argument("--dimensions", type=int, default=1024)
    parser.add_argument("--only", choices=("embed", "iter_embed"), help="one of the two")
    args = parser.parse_args(argv)
    for how in [args.only] if args.only else ["embed", "iter_embed"]:
        with emulator_process() as url:
            out = subprocess.run(
                [sys.executable, "-c", ONE, str(args.n), str(args.dimensions), how, url],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
        above, result = int(out[0]), int(out[1])
        print(
            f"{how}: {args.n:,} texts at {args.dimensions}: peak {above / 1e6:,.0f} MB above the "
            f"start, {above / result:.2f}x the result matrix ({result / 1e6:,.0f} MB)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
