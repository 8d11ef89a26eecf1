"""Shared fixtures. Everything networked talks to the emulator on 127.0.0.1 over real sockets."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from empirio.emulator import serve

#: A small corpus for retrieval tests: each text answers one obvious question.
CORPUS = [
    "To reset your password, open Settings, choose Security and click Forgot password.",
    "Refunds for cancelled tickets are issued to the original payment card.",
    "Our support team answers chat messages every day from 8 am to 10 pm.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen.",
    "The cat sat on the mat and purred quietly all afternoon.",
]

#: Fewer collected tests than this means a broken import or a renamed folder, not success.
MIN_TESTS = 40


def pytest_configure(config: pytest.Config) -> None:
    # Machine-wide rate-limit budgets go to a private folder, not the user's cache.
    import os
    import tempfile

    os.environ["EMPIRIOLABS_BUDGET_DIR"] = tempfile.mkdtemp(prefix="empirio-budget-")


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    selected = config.getoption("-k") or config.getoption("-m") or config.args != ["tests"]
    if not selected and len(items) < MIN_TESTS and not config.getoption("collectonly"):
        raise pytest.UsageError(
            f"only {len(items)} tests were collected, expected at least {MIN_TESTS}: "
            "a test module failed to import or was not found"
        )


@pytest.fixture(scope="session")
def emulator_url() -> Iterator[str]:
    """A shared emulator with no limits and no faults."""
    with serve(seed=0) as url:
        yield url


@pytest.fixture
def make_emulator() -> Iterator[Any]:
    """Start emulators with given options; all are stopped when the test ends."""
    import contextlib

    with contextlib.ExitStack() as stack:

        def start(**options: Any) -> str:
            return stack.enter_context(serve(**options))

        yield start


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(headers={"Authorization": "Bearer test-key"}, timeout=30) as client:
        yield client


def unconfigured(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of a new user: no key, no endpoint, no limits set (undone after)."""
    for var in (
        "EMPIRIOLABS_API_KEY",
        "EMPIRIOLABS_API_BASE",
        "EMPIRIOLABS_BASE_URL",
        "EMPIRIOLABS_RPM",
        "EMPIRIOLABS_TPM",
    ):
        monkeypatch.delenv(var, raising=False)


def stats(base_url: str) -> dict[str, Any]:
    """The emulator's counters."""
    root = base_url.removesuffix("/v1")
    return dict(httpx.get(f"{root}/_emulator/stats", timeout=10).json())


#: The most 429s a paced run may meet and still count as "no overrun". The pace tolerates 20 ms
#: of arrival jitter and doubles that margin after each 429 (up to 0.5 s, five refusals away),
#: so a loaded 2-core machine (a JVM collecting, Ray winding down) can cost a few 429s before
#: it settles; with two senders in flight each widening can be answered twice. An account
#: overrun (senders that do not share a budget) sees dozens to hundreds. Retried 429s are never
#: paid for and lose nothing: the tests that use this check what was paid separately.
FEW_429S = 12


def assert_few_429s(counters: dict[str, Any], before: dict[str, Any] | None = None) -> None:
    """The emulator refused at most :data:`FEW_429S` requests (since ``before``, if given)."""
    seen = counters["by_status"].get("429", 0)
    if before is not None:
        seen -= before["by_status"].get("429", 0)
    assert seen <= FEW_429S, counters["by_status"]


@contextlib.contextmanager
def emulator_processes() -> Iterator[Any]:
    """Start ``empirio serve`` processes with given flags; all are stopped at the end."""
    procs: list[subprocess.Popen[str]] = []

    def start(*flags: str) -> str:
        proc = subprocess.Popen(
            [sys.executable, "-m", "empirio", "serve", *flags],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"http://\S+/v1", line)
        assert match, f"the emulator did not start: {line!r}"
        return match.group(0)

    try:
        yield start
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def emulator_process() -> Iterator[Any]:
    """Start ``empirio serve`` processes with given flags, stopped when the test ends."""
    with emulator_processes() as start:
        yield start


def run_cli(
    *args: str, stdin: str = "", env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m empirio ARGS`` in a subprocess with no EMPIRIOLABS_* settings but
    ``env_extra``; text in and out, two minutes at most."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMPIRIOLABS_")}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "empirio", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


class QuietHTTPServer(ThreadingHTTPServer):
    """A test's fake HTTP server that prints nothing when a client drops its connection (a
    client closed mid-answer, a process that exits with a kept-alive connection): that is no
    error, and its traceback on stderr would look like one. Any other error still prints."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)
