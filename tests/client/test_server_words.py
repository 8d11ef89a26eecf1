"""What a server says is checked before it is believed: advertised limits that change or lie,
and a ``Retry-After`` of a day. The "server" is a small HTTP proxy of our own in front of the
emulator (real sockets on 127.0.0.1) that rewrites what the emulator answers."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest

from empirio import EmbeddingClient, RateLimitError

from ..conftest import FEW_429S, QuietHTTPServer, stats

#: (answer number from 1, status, headers) -> (status, headers) to send instead; a status of 0
#: keeps the upstream's.
Rewrite = Callable[[int, int, dict[str, str]], tuple[int, dict[str, str]]]


@contextlib.contextmanager
def saying(upstream: str, rewrite: Rewrite) -> Iterator[str]:
    """A server on a free loopback port that forwards each request to ``upstream`` (the
    emulator's base URL) and answers as ``rewrite`` says; yields its base URL."""
    count = [0]
    lock = threading.Lock()
    forward = httpx.Client(timeout=30)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with lock:
                count[0] += 1
                n = count[0]
            got = forward.post(
                upstream + self.path.removeprefix("/v1"),
                content=body,
                headers={
                    "authorization": self.headers.get("authorization", ""),
                    "content-type": "application/json",
                },
            )
            headers = {k.lower(): v for k, v in got.headers.items()}
            status, headers = rewrite(n, got.status_code, headers)
            status = status or got.status_code
            payload = got.content if status == got.status_code else b'{"error":{"message":"no"}}'
            self.send_response(status)
            for name in ("content-type", "x-ratelimit-limit-requests", "retry-after"):
                if name in headers:
                    self.send_header(name, headers[name])
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = QuietHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        forward.close()


@pytest.fixture
def no_limits_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMPIRIOLABS_RPM", raising=False)
    monkeypatch.delenv("EMPIRIOLABS_TPM", raising=False)


@pytest.mark.usefixtures("no_limits_set")
def test_an_advertised_million_then_120_paces_at_120(emulator_process: Any) -> None:
    """Before, the first answer's 1,000,000 was adopted for the client's life: every request
    at once, a storm of 429s, and the later 120 never heard."""
    upstream = emulator_process("--rpm", "120", "--tpm", "100000000")

    def lie_then_tell(n: int, status: int, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        headers["x-ratelimit-limit-requests"] = "1000000" if n <= 6 else "120"
        return 0, headers

    with saying(upstream, lie_then_tell) as url:
        c = EmbeddingClient(api_key="k", base_url=url, tpm=None)
        assert len(c.embed([f"text {i}" for i in range(200)])) == 200
        assert (c.limits.rpm, c.limits.rpm_source) == (120, "server")
        s = stats(upstream)
        assert s["by_status"].get("429", 0) <= FEW_429S, s
        # From here on, 120 a minute: two a second at the most, as the service counts.
        before = stats(upstream)
        c.embed([f"later text {i}" for i in range(100)])
        after = stats(upstream)
        assert after["by_status"].get("429", 0) == before["by_status"].get("429", 0)


@pytest.mark.usefixtures("no_limits_set")
def test_one_unlimited_answer_does_not_unpace_the_client(emulator_process: Any) -> None:
    upstream = emulator_process("--rpm", "120", "--tpm", "100000000")

    def unlimited_once(n: int, status: int, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        headers["x-ratelimit-limit-requests"] = "unlimited" if n == 1 else "120"
        return 0, headers

    with saying(upstream, unlimited_once) as url:
        c = EmbeddingClient(api_key="k", base_url=url, tpm=None)
        c.embed([f"text {i}" for i in range(100)])
        assert c.limits.rpm == 120
    assert stats(upstream)["by_status"].get("429", 0) <= FEW_429S


def test_a_retry_after_of_a_day_fails_at_once_with_the_value_and_the_partial_result(
    emulator_url: str,
) -> None:
    def day_off_after_two(
        n: int, status: int, headers: dict[str, str]
    ) -> tuple[int, dict[str, str]]:
        if n <= 2:
            return 0, headers
        return 429, {"content-type": "application/json", "retry-after": "86400"}

    with saying(emulator_url, day_off_after_two) as url:
        c = EmbeddingClient(api_key="k", base_url=url, rpm=None, tpm=None, max_concurrency=1)
        start = time.monotonic()
        with pytest.raises(RateLimitError) as info:
            c.embed([f"text {i}" for i in range(50)])
        elapsed = time.monotonic() - start
    err = info.value
    assert elapsed < 10  # before: 11 tries 120 s apart, twenty minutes
    assert err.retry_after == 86_400
    assert "86,400 s" in str(err)
    assert err.partial is not None
    assert err.partial_indices == tuple(range(20))  # the two requests that were answered
    assert c.usage.rate_limited == 1
