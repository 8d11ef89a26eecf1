"""The driver's ledger of payments, over real sockets on 127.0.0.1: what a worker told before it
was killed counts; a connection without the secret, or with a line that is not a payment,
counts nothing it did not prove."""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys
import textwrap
import warnings

from empirio._core.result import Usage
from empirio._ledger import Ledger, PaidTwiceWarning, Reporter

WORKER = """
    import os, pickle, sys
    from empirio._core.result import Usage
    from empirio._ledger import Reporter
    where = pickle.loads(sys.stdin.buffer.read())
    report = Reporter(where, "t-killed", "call-k", 0, 1)
    for _ in range(3):
        report(Usage(requests=1, input_tokens=100))
    os._exit(9)  # killed: no close, no flush of anything of ours
"""


def test_a_killed_worker_has_told_what_it_paid_and_strangers_count_nothing() -> None:
    ledger = Ledger("127.0.0.1", "127.0.0.1")
    where = ledger.pass_()
    blob = pickle.dumps(where)
    assert where.secret.reveal().encode() not in blob
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WORKER)], input=blob, timeout=60, check=False
    )
    assert done.returncode == 9
    assert ledger.paid("t-killed") == Usage(requests=3, input_tokens=300)

    with socket.create_connection((where.host, where.port)) as s:
        s.sendall(b"not-the-secret\n")
        s.sendall(b'["t-killed", "c", 0, 1, 5, 5, 0, 0, 0, 0, 0]\n')
    good = Reporter(where, "t-killed", "call-x", 0, 1)
    good(Usage(requests=1))
    good._sock.sendall(b'["t-killed", "c", 0, 1, -5, 0, 0, 0, 0, 0, 0]\n')  # type: ignore[union-attr]
    good(Usage(requests=1))  # after a bad line the connection is dropped: this one is lost
    good.close()
    assert ledger.paid("t-killed") == Usage(requests=4, input_tokens=300)


def test_one_partition_paid_by_two_stages_warns_once() -> None:
    """A task run again in its stage (a retry) is not a second computation; another stage (a
    second action) is, and is said once per call."""
    ledger = Ledger("127.0.0.1", "127.0.0.1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for stage in (1, 1, 2, 3):
            report = Reporter(ledger.pass_(), "t", "call-twice", 0, stage)
            report(Usage(requests=1))
            report.close()
            ledger.paid("t")  # read to the end before the next: the order is the stages'
    said = [w for w in caught if issubclass(w.category, PaidTwiceWarning)]
    assert len(said) == 1
    assert "stage 2 after stage 1" in str(said[0].message)
    assert ledger.paid("t").requests == 4


def test_a_worker_killed_before_its_handshake_is_let_go_quietly() -> None:
    """A reset while the driver reads the secret ends that connection, with no traceback from
    socketserver on the driver's console (it would print one for any error left raised)."""
    import io

    class Reset(io.RawIOBase):
        def readline(self, size: int | None = -1) -> bytes:
            raise ConnectionResetError(104, "Connection reset by peer")

    ledger = Ledger("127.0.0.1", "127.0.0.1")
    ledger._serve(Reset(), io.BytesIO())  # returns: nothing was told, nothing counts
    assert ledger.paid("t") == Usage()
