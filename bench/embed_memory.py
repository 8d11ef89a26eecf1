"""The peak memory of one large ``embed`` against its floor, the result matrix itself.

    python bench/embed_memory.py --n 100000

Each run is a process of its own (``ru_maxrss`` is a process's peak): a client on an unpaced
emulator in the same process is warmed up, then ``embed`` of ``n`` short texts; the peak
resident memory above the start is printed as a ratio of the result's bytes (1.0: nothing but
the result). ``iter_embed`` is measured the same way, against 0 (what it holds is bounded).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

ONE = """
import resource, sys
from empirio import EmbeddingClient
from empirio.emulator import serve

n, dims, how = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
with serve() as url:
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
    args = parser.parse_args(argv)
    for how in ("embed", "iter_embed"):
        out = subprocess.run(
            [sys.executable, "-c", ONE, str(args.n), str(args.dimensions), how],
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
