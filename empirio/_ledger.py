"""What the workers of an engine job paid, told to the driver as it is paid.

Spark sums an accumulator only from tasks that succeed: a task whose worker dies takes what it
paid with it (a tally of 360 requests where the service billed 400). So the engines' tallies
count rows with the engine (a row counts once, from the task that delivered it) but count
*payments* here: each worker's client tells a :class:`Ledger` on the driver, over one TCP
connection per partition, what every finished request spent, the moment it finishes
(:meth:`~empirio.EmbeddingClient.on_usage`). A worker killed after that has already told; only
requests in flight at the kill, which nobody saw answered, can be missing.

The ledger also sees a partition of one embedding paid for by two jobs (a DataFrame used by two
actions, each computing it again) and warns once (:class:`PaidTwiceWarning`).

Written by hand on the standard library's ``socketserver``: no engine offers a channel that
outlives a failed task, and the protocol is a line of JSON per payment. A random secret,
sealed in the pickles the workers get, must open each connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import socket
import socketserver
import threading
import warnings
from collections import defaultdict
from dataclasses import astuple, dataclass
from typing import Any

from ._core.result import Usage
from ._core.secret import SealedKey

__all__ = ["Ledger", "LedgerPass", "PaidTwiceWarning", "Reporter", "ledger"]

logger = logging.getLogger("empirio.engines")

#: Seconds :meth:`Ledger.paid` waits for connections still open (their last lines in flight).
_DRAIN_S = 10.0
#: Seconds a worker waits to connect and be let in.
_CONNECT_S = 10.0
_USAGE_FIELDS = len(astuple(Usage()))


class PaidTwiceWarning(UserWarning):
    """An embedded DataFrame was computed again by another action, and its texts were paid
    again: persist it (``.persist()``), or pass ``cache=``, so that they are paid once."""


@dataclass(frozen=True)
class LedgerPass:
    """What a worker needs to reach the ledger: its address and the secret (sealed)."""

    host: str
    port: int
    secret: SealedKey


class Ledger:
    """On the driver: a TCP server on ``bind`` (reached at ``host``) summing what workers paid,
    by tally."""

    def __init__(self, host: str, bind: str) -> None:
        self._secret = secrets.token_hex(16)
        self._lock = threading.Condition()
        self._paid: dict[str, Usage] = defaultdict(Usage)
        self._open = 0
        self._stages: dict[tuple[str, int], int] = {}
        self._warned: set[str] = set()
        ledger = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                ledger._serve(self.rfile, self.wfile)

        try:
            self._server = socketserver.ThreadingTCPServer((bind, 0), Handler)
        except OSError:  # an address this machine cannot bind (a name for the outside)
            self._server = socketserver.ThreadingTCPServer(("", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, name="empirio-ledger", daemon=True
        ).start()
        self.address = (host, int(self._server.server_address[1]))

    def pass_(self) -> LedgerPass:
        return LedgerPass(*self.address, SealedKey(self._secret))

    def _serve(self, rfile: Any, wfile: Any) -> None:
        try:
            given = rfile.readline(200).decode("ascii", "replace").strip()
        except OSError:  # a worker killed before it said who it is: nothing was told
            return
        if not secrets.compare_digest(given, self._secret):
            return
        with self._lock:
            self._open += 1
        try:
            wfile.write(b"ok\n")
            wfile.flush()
            for line in rfile:
                self._take(line)
        except (OSError, ValueError, TypeError):
            pass  # killed mid-line, or a line that is no payment: what it told before counts
        finally:
            with self._lock:
                self._open -= 1
                self._lock.notify_all()

    def _take(self, line: bytes) -> None:
        tally, call, partition, stage, *counts = json.loads(line)
        if len(counts) != _USAGE_FIELDS or not all(isinstance(n, int) and n >= 0 for n in counts):
            raise ValueError("not a payment")
        with self._lock:
            self._paid[str(tally)] += Usage(*counts)
            first = self._stages.setdefault((str(call), int(partition)), int(stage))
            again = first != stage and call not in self._warned
            if again:
                self._warned.add(call)
        if again:
            warnings.warn(
                PaidTwiceWarning(
                    f"an embedded DataFrame was computed again by another action (partition "
                    f"{partition}, stage {stage} after stage {first}): its texts are being paid "
                    "for again. Persist it (.persist()) before using it twice, or pass cache= "
                    "so that a second computation reads what the first paid for"
                ),
                stacklevel=1,
            )

    def paid(self, tally: str) -> Usage:
        """What the workers of ``tally`` paid, once the connections still open have been read
        to their end (at most :data:`_DRAIN_S` seconds; after an action all have closed)."""
        with self._lock:
            self._lock.wait_for(lambda: not self._open, timeout=_DRAIN_S)
            return self._paid[tally]


_LEDGER: Ledger | None = None
_LEDGER_LOCK = threading.Lock()


def ledger(host: str, bind: str) -> Ledger:
    """This driver's ledger, started on first use."""
    global _LEDGER
    with _LEDGER_LOCK:
        if _LEDGER is None:
            _LEDGER = Ledger(host, bind)
        return _LEDGER


class Reporter:
    """On a worker: tells the ledger each payment of one partition's client (a usage
    listener). A ledger that cannot be reached is warned of once and the work goes on."""

    def __init__(
        self, where: LedgerPass, tally: str, call: str, partition: int, stage: int
    ) -> None:
        self._where = where
        self._head = [tally, call, partition, stage]
        self._sock: socket.socket | None = None
        self._broken = False

    def __call__(self, delta: Usage) -> None:
        if self._broken:
            return
        try:
            if self._sock is None:
                self._sock = self._connect()
            line = json.dumps([*self._head, *astuple(delta)]) + "\n"
            self._sock.sendall(line.encode())
        except OSError as exc:
            self._broken = True
            logger.warning(
                "the job's tally on the driver cannot be reached (%s): its count of payments "
                "will be short",
                exc,
            )

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self._where.host, self._where.port), _CONNECT_S)
        try:
            sock.sendall(self._where.secret.reveal().encode() + b"\n")
            # Let in: the driver counts this connection open before any payment is sent, so
            # that it waits for its lines before it answers a total.
            if sock.recv(3) != b"ok\n":
                raise OSError("refused by the driver")
            sock.settimeout(_CONNECT_S)
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
