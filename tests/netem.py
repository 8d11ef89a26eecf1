"""A TCP proxy on loopback that adds latency: a server "a few milliseconds away" for tests and
benchmarks (a Redis in another zone, say), over real sockets.

    python tests/netem.py --target 127.0.0.1:6379 --rtt-ms 20     # prints "127.0.0.1:PORT"

Each direction holds every chunk for half the round trip before passing it on, in order, so a
request and its answer together take ``rtt_ms`` more, whatever their size, as a network link
would. It runs in its own process (its own interpreter and GIL), so a busy client does not
slow the "network". Written by hand: ``tc netem`` needs privileges and a network namespace a
test cannot count on; toxiproxy is a Go binary that is not on PyPI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["latency_proxy"]


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    task = asyncio.ensure_future(deliver())
    try:
        while True:
            data = await reader.read(65536)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                break
    except OSError:
        queue.put_nowait((0.0, b""))
    with contextlib.suppress(OSError):
        await task


async def _serve(target: str, rtt: float) -> None:
    host, port = target.rsplit(":", 1)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        for sock in (writer, up_writer):
            raw = sock.get_extra_info("socket")
            if raw is not None:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(_pump(reader, up_writer, rtt / 2), _pump(up_reader, writer, rtt / 2))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    sockname = server.sockets[0].getsockname()
    print(f"127.0.0.1:{sockname[1]}", flush=True)
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def latency_proxy(target: str, rtt_ms: float) -> Iterator[str]:
    """Run the proxy in a subprocess in front of ``target`` (``host:port``); yield its own
    ``host:port``. Stopped on exit."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--target",
            target,
            "--rtt-ms",
            str(rtt_ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line:
            raise RuntimeError("the latency proxy did not start")
        yield line
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="host:port to forward to")
    parser.add_argument("--rtt-ms", type=float, required=True, help="round trip added, in ms")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.target, args.rtt_ms / 1000.0))


if __name__ == "__main__":
    main()
