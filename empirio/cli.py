"""``empirio serve | embed | demo``: the command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

__all__ = ["main"]


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the local text-embedding-v4 emulator",
        description="Run a local server that speaks text-embedding-v4's contract. "
        "Prints its base URL when ready; Ctrl-C stops it.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default 0)")
    p.add_argument("--api-key", default=None, help="the accepted key (default: any non-empty)")
    p.add_argument("--rpm", type=int, default=None, help="account requests/minute (default off)")
    p.add_argument("--tpm", type=int, default=None, help="account tokens/minute (default off)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="added latency per response")
    p.add_argument("--fail-rate", type=float, default=0.0, help="fraction of requests given 5xx")
    p.add_argument(
        "--drop-rate", type=float, default=0.0, help="fraction of connections closed unanswered"
    )
    p.add_argument(
        "--retry-after",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="whether 429 responses carry Retry-After (default: yes)",
    )
    p.add_argument("--max-batch", type=int, default=10, help="inputs per request (default 10)")
    p.add_argument(
        "--strict-burst",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also apply the service's per-second rules: at most rpm/60 requests and tpm/60 "
        "tokens in any second (default: yes, as the real service does)",
    )
    p.add_argument(
        "--storm-s",
        type=float,
        default=0.0,
        help="answer every request with 429 for this many seconds after start (default 0)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for fault injection (default 0)")
    p.add_argument("--vector-seed", type=int, default=0, help="seed for the vectors (default 0)")
    p.add_argument(
        "--credit-tokens", type=int, default=None, help="tokens before 402 (default unlimited)"
    )
    p.add_argument(
        "--sparse",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="honour output_type (sparse vectors); --no-sparse ignores it (default: yes)",
    )


def _serve(args: argparse.Namespace) -> int:
    from .emulator import EmulatorConfig, serve

    try:
        config = EmulatorConfig(
            api_key=args.api_key,
            rpm=args.rpm,
            tpm=args.tpm,
            latency_ms=args.latency_ms,
            fail_rate=args.fail_rate,
            drop_rate=args.drop_rate,
            retry_after=args.retry_after,
            max_batch=args.max_batch,
            strict_burst=args.strict_burst,
            storm_s=args.storm_s,
            seed=args.seed,
            vector_seed=args.vector_seed,
            credit_tokens=args.credit_tokens,
            sparse_output=args.sparse,
        )
    except ValueError as exc:
        print(f"empirio serve: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with serve(host=args.host, port=args.port, config=config) as url:
        print(url, flush=True)
        stop.wait()
    return 0


def _add_embed(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "embed",
        help="embed the lines of a file (or stdin) to JSONL or .npy",
        description="Embed each line of the input as one text. Settings come from the flags, "
        "then EMPIRIOLABS_API_KEY / EMPIRIOLABS_API_BASE. The key is read only from the "
        "environment, never from a flag (flags show in process lists).",
    )
    p.add_argument(
        "input", nargs="?", default="-", help="a text file, one text per line; - = stdin"
    )
    p.add_argument(
        "-o",
        "--output",
        default="-",
        help="where to write: a .npy file (dense matrix) or .jsonl; - = JSONL on stdout",
    )
    p.add_argument("--dimensions", type=int, default=1024)
    p.add_argument("--kind", choices=("document", "query"), default="document")
    p.add_argument("--output-type", choices=("dense", "sparse", "both"), default="dense")
    p.add_argument("--base-url", default=None)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--max-concurrency", type=int, default=8)
    p.add_argument("--rpm", type=float, default=50, help="account requests/minute; 0 = unpaced")
    p.add_argument(
        "--tpm", type=float, default=2_000_000, help="account tokens/minute; 0 = unpaced"
    )
    p.add_argument("--overflow", choices=("truncate", "chunk", "error"), default="truncate")
    p.add_argument("--skip-blank", action="store_true", help="skip blank lines instead of failing")
    p.add_argument(
        "--cache",
        default=None,
        metavar="PATH",
        help="a persistent embedding cache (a SQLite file, made if missing): texts already in "
        "it are not sent, and each request's vectors are written as it finishes, so a rerun "
        "after an interruption (even kill -9) pays only for what was not finished",
    )
    p.add_argument(
        "--emulator",
        action="store_true",
        help="start a local emulator for this run (no key or network needed)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _embed(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from ._client import EmbeddingClient
    from ._errors import EmpirioError

    if args.input == "-":
        lines = sys.stdin.read().splitlines()
    else:
        with open(args.input, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    if args.skip_blank:
        lines = [line for line in lines if line.strip()]
    with contextlib.ExitStack() as stack:
        base_url, key = args.base_url, None
        if args.emulator:
            from .emulator import serve

            base_url, key = stack.enter_context(serve()), "emulator-key"
        try:
            client = EmbeddingClient(
                api_key=key,
                base_url=base_url,
                dimensions=args.dimensions,
                batch_size=args.batch_size,
                max_concurrency=args.max_concurrency,
                rpm=args.rpm or None,
                tpm=args.tpm or None,
                overflow=args.overflow,
                show_progress=not args.no_progress,
                cache=args.cache,
            )
        except EmpirioError as exc:
            print(f"empirio embed: {exc}", file=sys.stderr)
            return 2
        stack.enter_context(client)
        try:
            to_npy = args.output.endswith(".npy")
            if to_npy and args.output_type != "dense":
                print(
                    "empirio embed: .npy holds dense vectors only; use .jsonl for sparse",
                    file=sys.stderr,
                )
                return 2
            matrix = None
            out = None
            # A file is written under a temporary name and renamed when complete, so that a
            # file with the output's name is never one that looks finished but is not.
            tmp = None if args.output == "-" else f"{args.output}.partial-{os.getpid()}"
            if tmp is not None:
                _discard_stale(args.output)
                stack.callback(_discard, tmp)
            if to_npy:
                assert tmp is not None  # a .npy output is always a file
                matrix = np.lib.format.open_memmap(
                    tmp, mode="w+", dtype=np.float32, shape=(len(lines), args.dimensions)
                )
            else:
                out = (
                    sys.stdout
                    if tmp is None
                    else stack.enter_context(open(tmp, "w", encoding="utf-8"))
                )
            done = 0
            for part in client.iter_embed(lines, kind=args.kind, output=args.output_type):
                done = part.offset + len(part)
                if matrix is not None and part.dense is not None:
                    matrix[part.offset : part.offset + len(part)] = part.dense
                    continue
                assert out is not None
                for i in range(len(part)):
                    row: dict[str, object] = {"index": part.offset + i}
                    if part.dense is not None:
                        row["embedding"] = part.dense[i].tolist()
                    if part.sparse is not None:
                        row["sparse"] = {str(k): v for k, v in part.sparse[i].items()}
                    out.write(json.dumps(row) + "\n")
            if matrix is not None:
                matrix.flush()
                del matrix  # release the memory map before renaming its file
            if out is not None and out is not sys.stdout:
                out.close()
            if tmp is not None:
                os.replace(tmp, args.output)
            print(f"empirio embed: {len(lines)} texts; {client.usage}", file=sys.stderr)
        except EmpirioError as exc:
            finished = exc.partial_indices[-1] + 1 if exc.partial_indices else done
            print(
                f"empirio embed: {exc}\nempirio embed: {args.output} not written; "
                f"{finished} of {len(lines)} texts had been embedded; {client.usage}",
                file=sys.stderr,
            )
            return 1
    return 0


def _discard(path: str) -> None:
    """Remove an unfinished output (kept nowhere under the output's name)."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _discard_stale(output: str) -> None:
    """Remove the unfinished outputs of earlier runs that were killed (their process is gone):
    a kill -9 leaves its temporary file behind; the vectors it paid for are in the cache."""
    import glob

    for path in glob.glob(f"{glob.escape(output)}.partial-*"):
        pid = path.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            _discard(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="embed and search a small multilingual corpus (emulator if no key)",
        description="Embeds a bundled corpus and runs a few dense and hybrid queries. Uses the "
        "real service when EMPIRIOLABS_API_KEY is set, else a local emulator.",
    )
    p.add_argument("--dimensions", type=int, default=512)
    p.add_argument("--emulator", action="store_true", help="use the emulator even with a key")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``empirio`` command; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="empirio", description="text-embedding-v4 through EmpirioLabs: tools."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_embed(sub)
    _add_demo(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "embed":
        return _embed(args)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(dimensions=args.dimensions, force_emulator=args.emulator)
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
