"""``empirio embed``: texts from files or stdin to vectors in .npy or JSONL, paid for once.

Its flags, its checks of the input and the output path (before any request), its bar and its
summary. The other subcommands live in :mod:`empirio.cli`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from ._core.settings import DEFAULTS
from ._core.types import KINDS, OUTPUTS

__all__ = ["add_embed", "flag_names", "run_embed"]


def _concurrency(value: str) -> int | str:
    """``--max-concurrency``: a whole number, or ``auto``."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number or auto; got {value!r}") from None


def add_embed(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "embed",
        help="embed the lines of a file (or stdin) to .npy or JSONL",
        description="Embed each line of the input as one text (lines end at \\n only; line "
        "numbers count from 1). Settings come from the flags, then the environment "
        "(EMPIRIOLABS_API_KEY, EMPIRIOLABS_API_BASE, EMPIRIOLABS_RPM, EMPIRIOLABS_TPM). The "
        "key is read only from the environment, never from a flag (flags show in process "
        "lists). Exit status: 0 done, 1 failed, 2 bad usage, 130 interrupted.",
    )
    p.add_argument(
        "input", nargs="?", default="-", help="a UTF-8 text file, one text per line; - = stdin"
    )
    p.add_argument(
        "-o",
        "--output",
        default="-",
        help="where to write: a .npy file (the dense matrix) or a .jsonl file; - = JSONL on "
        "stdout (not to a terminal)",
    )
    p.add_argument(
        "--format",
        choices=("npy", "jsonl"),
        default=None,
        help="the output format (default: from the output's extension)",
    )
    p.add_argument(
        "--dimensions",
        type=int,
        default=DEFAULTS["dimensions"],
        help=f"vector size: 64 to 2048 (default {DEFAULTS['dimensions']})",
    )
    p.add_argument(
        "--kind",
        choices=KINDS,
        default="document",
        help="document (no instruction) or query (with the query instruction)",
    )
    p.add_argument(
        "--output-type",
        choices=OUTPUTS,
        default="dense",
        help="which vectors to write; sparse needs JSONL (default dense)",
    )
    p.add_argument(
        "--base-url",
        default=None,
        help="the endpoint (default: EMPIRIOLABS_API_BASE, else EmpirioLabs)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULTS["batch_size"],
        help=f"inputs per request (default {DEFAULTS['batch_size']})",
    )
    p.add_argument(
        "--share-budget",
        default=None,
        help="who shares the account's rate budget: machine, process, client or "
        "redis://[:password@]host:port/db for every host (default EMPIRIOLABS_SHARE_BUDGET, "
        "else machine)",
    )
    p.add_argument(
        "--account",
        default=None,
        help="a name for the account whose limits this key shares: keys naming one account "
        "pace as one (default EMPIRIOLABS_ACCOUNT, else each key is its own account)",
    )
    p.add_argument(
        "--allow-insecure",
        action="store_true",
        help="allow sending the key over plain http:// to a host that is not this machine",
    )
    p.add_argument(
        "--max-concurrency",
        type=_concurrency,
        default=DEFAULTS["max_concurrency"],
        help="requests in flight at most, or auto: what the account's rate needs at the "
        f"measured latency (default {DEFAULTS['max_concurrency']})",
    )
    p.add_argument(
        "--rpm",
        type=float,
        default=None,
        help="the account's requests/minute; 0 = unpaced (default: EMPIRIOLABS_RPM, else what "
        "the server advertises, else 50)",
    )
    p.add_argument(
        "--tpm",
        type=float,
        default=None,
        help="the account's tokens/minute; 0 = unpaced (default: EMPIRIOLABS_TPM, else what "
        "the server advertises, else 2,000,000)",
    )
    p.add_argument(
        "--overflow",
        choices=("truncate", "chunk", "error"),
        default=DEFAULTS["overflow"],
        help="lines over 8,191 tokens: cut them, embed them in windows, or refuse "
        f"(default {DEFAULTS['overflow']})",
    )
    p.add_argument("--skip-blank", action="store_true", help="skip blank lines instead of failing")
    p.add_argument(
        "--cache",
        default=None,
        metavar="PATH|URL",
        help="a persistent embedding cache (a SQLite file, made if missing, or a "
        "redis://[:password@]host:port/db URL shared by every host): texts already in "
        "it are not sent, and each request's vectors are written as it finishes, so a rerun "
        "after an interruption (even kill -9) pays only for what was not finished",
    )
    p.add_argument(
        "--emulator",
        action="store_true",
        help="start a local emulator for this run (no key or network needed; never paced)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


class _Count:
    """A running count, for ``on_progress``."""

    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> None:
        self.n += k


class _Usage(Exception):
    """A usage error: reported in one line, exit status 2."""


_FORMATS = {".npy": "npy", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


def _read_lines(source: str) -> list[str]:
    """The input's lines, split at ``\\n`` only (``str.splitlines`` also splits at ``\\f``,
    ``\\x85``, ``\\u2028`` and more, which are text inside a line here)."""
    if source == "-":
        if sys.stdin.isatty():
            print(
                "empirio embed: reading texts from the terminal, one per line; end with Ctrl-D "
                "(or give a file: empirio embed FILE)",
                file=sys.stderr,
            )
        data = sys.stdin.buffer.read()
        name = "stdin"
    else:
        if os.path.isdir(source):
            raise _Usage(f"{source} is a folder, not a text file")
        try:
            with open(source, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            raise _Usage(f"{source}: no such file") from None
        except PermissionError:
            raise _Usage(f"{source}: permission denied") from None
        name = source
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _Usage(f"{name} is not UTF-8 text (line {line}, byte {exc.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _output_format(args: argparse.Namespace) -> str:
    if args.format is not None:
        return str(args.format)
    if args.output == "-":
        return "jsonl"
    ext = os.path.splitext(args.output)[1].lower()
    if ext not in _FORMATS:
        raise _Usage(
            f"cannot tell the format of {args.output!r} from its extension; use .npy or .jsonl, "
            "or give --format"
        )
    return _FORMATS[ext]


def _rate(value: float | None, flag: str) -> Any:
    """A rate flag as the client reads rates (``0`` = unpaced); not given: the environment."""
    from ._core.config import FROM_ENV, check_rate

    if value is None:
        return FROM_ENV
    try:
        return check_rate(flag, value)
    except ValueError as exc:
        raise _Usage(str(exc)) from None


def _row_json(index: int, dense: Any, sparse: dict[int, float] | None) -> str:
    """One JSONL line; floats with the digits of float32, which is what the vectors are."""
    parts = [f'"index": {index}']
    if dense is not None:
        parts.append('"embedding": [' + ", ".join(map(str, dense)) + "]")
    if sparse is not None:
        parts.append('"sparse": ' + json.dumps({str(k): v for k, v in sparse.items()}))
    return "{" + ", ".join(parts) + "}\n"


def run_embed(args: argparse.Namespace) -> int:
    try:
        return _embed_checked(args)
    except _Usage as exc:
        print(f"empirio embed: {exc}", file=sys.stderr)
        return 2


def _embed_checked(args: argparse.Namespace) -> int:
    import numpy as np

    from ._core.errors import ConfigurationError, EmpirioError, InvalidInputError, agree, plural
    from .client import EmbeddingClient

    fmt = _output_format(args)
    if fmt == "npy" and args.output == "-":
        raise _Usage(".npy output needs a file: give -o FILE.npy")
    if fmt == "npy" and args.output_type != "dense":
        raise _Usage(".npy holds dense vectors only; use .jsonl for sparse")
    if args.output == "-" and sys.stdout.isatty():
        raise _Usage("refusing to write vectors to a terminal: give -o FILE or redirect stdout")
    if args.output != "-":  # checked before anything is paid for
        folder = os.path.dirname(os.path.abspath(args.output))
        if os.path.isdir(args.output):
            raise _Usage(f"-o {args.output} is a folder; give a file's path in it")
        if not os.path.isdir(folder):
            raise _Usage(f"the output's folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise _Usage(f"the output's folder {folder} is not writable")
        if os.path.exists(args.output) and not os.access(args.output, os.W_OK):
            raise _Usage(f"-o {args.output} exists and is not writable")
    rpm, tpm = _rate(args.rpm, "--rpm"), _rate(args.tpm, "--tpm")
    lines = _read_lines(args.input)
    numbers = list(range(1, len(lines) + 1))  # line numbers, from 1
    if args.skip_blank:
        kept = [(n, line) for n, line in zip(numbers, lines, strict=True) if line.strip()]
        numbers = [n for n, _ in kept]
        lines = [line for _, line in kept]
    with contextlib.ExitStack() as stack:
        base_url, key = args.base_url, None
        if args.emulator:
            from .emulator import serve

            base_url, key, rpm, tpm = stack.enter_context(serve()), "emulator-key", None, None
        try:
            client = EmbeddingClient(
                api_key=key,
                base_url=base_url,
                dimensions=args.dimensions,
                batch_size=args.batch_size,
                max_concurrency=args.max_concurrency,
                share_budget=args.share_budget,
                account=args.account,
                allow_insecure=args.allow_insecure,
                rpm=rpm,
                tpm=tpm,
                overflow=args.overflow,
                # A bar's frames are for a terminal; in a log they are noise.
                show_progress=not args.no_progress and sys.stderr.isatty(),
                cache=args.cache,
            )
        except ConfigurationError as exc:
            text = str(exc)
            if "no API key" in text:
                text = "no API key: set EMPIRIOLABS_API_KEY, or use --emulator for a local run"
            raise _Usage(flag_names(text)) from None
        except EmpirioError as exc:
            print(f"empirio embed: {exc}", file=sys.stderr)
            return 1
        stack.enter_context(client)
        stack.enter_context(_warnings_as_lines(numbers))
        # A file is written under a temporary name and renamed when complete, so that a file
        # with the output's name is never one that looks finished but is not.
        tmp = None if args.output == "-" else f"{args.output}.partial-{os.getpid()}"
        if tmp is not None:
            _discard_stale(args.output)
            stack.callback(_discard, tmp)
        done = 0
        finished = _Count()  # texts whose requests finished, handed out or not
        out: Any = None
        try:
            # Written with plain writes as each segment arrives (never a memory map: a full
            # disk under a map is a SIGBUS that kills the process with no word).
            out = (
                sys.stdout
                if tmp is None
                else stack.enter_context(
                    open(
                        tmp,
                        "wb" if fmt == "npy" else "w",
                        encoding=None if fmt == "npy" else "utf-8",
                    )
                )
            )
            if fmt == "npy":
                header = {
                    "descr": "<f4",
                    "fortran_order": False,
                    "shape": (len(lines), args.dimensions),
                }
                np.lib.format.write_array_header_1_0(out, header)
            for part in client.iter_embed(
                lines, kind=args.kind, output=args.output_type, on_progress=finished.add
            ):
                if fmt == "npy" and part.dense is not None:
                    out.write(np.ascontiguousarray(part.dense, dtype="<f4").tobytes())
                else:
                    for i in range(len(part)):
                        out.write(
                            _row_json(
                                numbers[part.offset + i],
                                None if part.dense is None else part.dense[i],
                                None if part.sparse is None else part.sparse[i],
                            )
                        )
                done = part.offset + len(part)
            out.flush()
            if out is not sys.stdout:
                os.fsync(out.fileno())  # a full disk is found here, not after the rename
                out.close()
            if tmp is not None:
                os.replace(tmp, args.output)
        except OSError as exc:
            if out is not None and out is not sys.stdout:
                with contextlib.suppress(OSError):
                    out.close()  # its buffer cannot be written either: closed here, quietly
            return _write_failed(exc, args, tmp, done, max(done, finished.n), len(lines))
        except InvalidInputError as exc:
            where = ", ".join(str(numbers[i]) for i in exc.indices[:10] if i < len(numbers))
            more = ", ..." if len(exc.indices) > 10 else ""
            line = agree(len(exc.indices), "line")
            if "empty or whitespace" in str(exc):
                reason = f"blank {line}: {where}{more} (the service refuses empty texts; "
                reason += "--skip-blank skips them)"
            elif "tokens per input (overflow=" in str(exc):
                reason = f"{line} over 8,191 tokens: {where}{more} (--overflow error)"
            else:
                reason = f"{str(exc).split(':')[0]}: {line} {where}{more}"
            sent = done or len(exc.partial_indices)
            outcome = (
                "nothing was sent"
                if not sent
                else f"{args.output} not written; "
                f"{sent} of {plural(len(lines), 'text')} had been embedded"
            )
            print(f"empirio embed: {reason}; {outcome}", file=sys.stderr)
            return 1
        except EmpirioError as exc:
            paid = max(done + len(exc.partial_indices), finished.n)
            print(
                f"empirio embed: {exc}\nempirio embed: {args.output} not written; "
                f"{paid} of {plural(len(lines), 'text')} had been embedded"
                + ("; they are in the cache: run again to resume" if args.cache else "")
                + f"; {client.usage}",
                file=sys.stderr,
            )
            return 1
        except KeyboardInterrupt:
            print(
                f"empirio embed: interrupted; {args.output} not written; "
                f"{max(done, finished.n)} of {plural(len(lines), 'text')} had been embedded"
                + ("; they are in the cache: run again to resume" if args.cache else ""),
                file=sys.stderr,
            )
            return 130
        cached = client.cache.stats().hits if client.cache is not None else 0
        from_cache = f" ({cached:,} from the cache)" if client.cache is not None else ""
        print(
            f"empirio embed: {plural(len(lines), 'text')}{from_cache}; {client.usage}",
            file=sys.stderr,
        )
    return 0


def _write_failed(
    exc: OSError, args: argparse.Namespace, tmp: str | None, written: int, paid: int, total: int
) -> int:
    """One line for an output that cannot be written (a full disk, a closed pipe), saying where
    what was paid for is: the cache, or the unfinished file, kept and named."""
    from ._core.errors import plural

    if isinstance(exc, BrokenPipeError) or tmp is None:
        # Nobody reads stdout any more: point it at /dev/null so that the interpreter's final
        # flush does not print a traceback (Python's documented way for SIGPIPE).
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        what = "the output pipe closed" if isinstance(exc, BrokenPipeError) else str(exc)
        where = f"{written} of them were written whole"
    else:
        what = f"cannot write {args.output}: {exc.strerror or exc}"
        if args.cache:
            where = f"{args.output} not written"  # the cache holds them; the stub is removed
        else:
            kept = f"{args.output}.incomplete"
            with contextlib.suppress(OSError):
                os.replace(tmp, kept)
            where = f"{kept} holds what could be written ({written} rows whole), kept"
    resume = (
        "they are in the cache: run again to resume"
        if args.cache
        else "--cache FILE keeps them for a rerun"
    )
    print(
        f"empirio embed: {what}; {paid} of {plural(total, 'text')} had been embedded; "
        f"{where}; {resume}",
        file=sys.stderr,
    )
    return 1


def flag_names(text: str) -> str:
    """Python's keyword names in a message, as this command's flags."""
    for name in (
        "batch_size",
        "max_concurrency",
        "dimensions",
        "rpm",
        "tpm",
        "base_url",
        "fail_rate",
        "drop_rate",
        "max_batch",
        "latency_ms",
        "storm_s",
        "credit_tokens",
    ):
        text = text.replace("allow_insecure=True", "--allow-insecure")
        text = text.replace(f"{name}=", f"--{name.replace('_', '-')} ").replace(
            f"{name} must", f"--{name.replace('_', '-')} must"
        )
    return text


@contextlib.contextmanager
def _warnings_as_lines(numbers: Sequence[int]) -> Iterator[None]:
    """Warnings as one line each, written above the progress bar rather than through it, in
    this command's terms: texts by their line ``numbers``, options as flags."""
    import warnings

    from tqdm import tqdm

    from ._core.errors import TruncationWarning, truncation_message

    def show(message: Any, category: Any, *rest: Any, **kw: Any) -> None:
        if isinstance(message, TruncationWarning) and message.truncated:
            lines = [(numbers[i], n) for i, n in message.truncated]
            message = truncation_message(lines, "line", "--overflow {}")
        tqdm.write(f"empirio embed: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


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
