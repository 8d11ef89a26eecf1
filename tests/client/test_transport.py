"""Our own transport (an ``httpx.AsyncHTTPTransport`` without a client around it) keeps what a
client reading the environment would do: a service behind ``HTTP_PROXY`` is reached through
it, ``NO_PROXY`` exempts a host, and a loopback server is never sent to a proxy."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest

from empirio import EmbeddingClient
from empirio._io.http import _environment_proxy

from ..conftest import QuietHTTPServer, stats

#: a name nothing resolves: only the proxy can reach it (tests never reach the internet)
FAR = "http://embeddings.far.invalid/v1"


@pytest.fixture
def forward_proxy(emulator_url: str) -> Iterator[tuple[str, list[str]]]:
    """A plain HTTP forward proxy on 127.0.0.1 that sends whatever reaches it to the emulator,
    and notes each URL it was asked for."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            asked.append(self.path)  # a proxy is asked for the absolute URL
            body = self.rfile.read(int(self.headers["Content-Length"]))
            path = httpx.URL(self.path).path.removeprefix("/v1")
            got = httpx.post(
                f"{emulator_url}{path}",
                content=body,
                headers={k: v for k, v in self.headers.items() if k.lower() == "authorization"},
            )
            self.send_response(got.status_code)
            for name in ("content-type", "x-ratelimit-limit-requests"):
                if name in got.headers:
                    self.send_header(name, got.headers[name])
            self.send_header("Content-Length", str(len(got.content)))
            self.end_headers()
            self.wfile.write(got.content)

    server = QuietHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", asked
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("flight", ["auto", 1], ids=["io-thread", "caller-thread"])
def test_a_service_behind_http_proxy_is_reached_through_it(
    forward_proxy: tuple[str, list[str]],
    emulator_url: str,
    monkeypatch: pytest.MonkeyPatch,
    flight: int | str,
) -> None:
    proxy, asked = forward_proxy
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # the test's own requests to the emulator
    before = stats(emulator_url)["requests"]
    with EmbeddingClient(
        api_key="k",
        base_url=FAR,
        rpm=None,
        tpm=None,
        dimensions=64,
        allow_insecure=True,
        max_concurrency=flight,
    ) as c:
        result = c.embed([f"through the proxy {i}" for i in range(25)])
    assert result.dense.shape == (25, 64)
    assert asked == [f"{FAR}/embeddings"] * 3
    assert stats(emulator_url)["requests"] - before == 3

    assert _environment_proxy(f"{FAR}/embeddings") == proxy
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,far.invalid")
    assert _environment_proxy(f"{FAR}/embeddings") is None
    assert _environment_proxy("https://api.empiriolabs.ai/v1/embeddings") is None  # no HTTPS_PROXY


def test_a_loopback_server_is_never_sent_to_a_proxy(
    emulator_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # the discard port: nothing answers
    with EmbeddingClient(api_key="k", base_url=emulator_url, rpm=None, tpm=None) as c:
        assert len(c.embed(["straight to the server"])) == 1


def test_each_request_in_flight_has_its_lane_and_lanes_are_reused(
    emulator_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our transports are one per request in flight, each keeping its connection: never one per
    request (a connection opened per request would cost a handshake each); lanes left idle past
    the keep-alive expiry are closed."""
    from empirio._io import http
    from empirio._io.http import _Lanes

    texts = [f"lane text {i}" for i in range(300)]
    with EmbeddingClient(
        api_key="k", base_url=emulator_url, rpm=None, tpm=None, dimensions=64, max_concurrency=4
    ) as c:
        assert len(c.embed(texts)) == 300  # 30 requests
        lanes = c._transport.clients[0][1]
        assert isinstance(lanes, _Lanes)
        assert 1 <= len(lanes._all) <= 4
        assert sorted(id(lane) for _, lane in lanes._idle) == sorted(map(id, lanes._all))
        c.embed([f"again {i}" for i in range(100)])
        assert len(lanes._all) <= 4
        monkeypatch.setattr(http, "_LANE_IDLE_S", 0.0)  # every idle lane is now too old
        c.embed(["one request"])
        assert len(lanes._all) == 1  # the others were closed before it was sent


def test_two_streams_read_in_turn_on_one_thread_each_get_their_own_rows(
    emulator_url: str,
) -> None:
    """Requests tell the thread that sent them when they end; two calls read in turn on one
    thread see each other's tokens, and each still gets exactly its own rows, in order."""
    import itertools

    import numpy as np

    a = [f"stream a {i}" for i in range(120)]
    b = [f"stream b {i}" for i in range(90)]
    with EmbeddingClient(
        api_key="k", base_url=emulator_url, rpm=None, tpm=None, dimensions=64, max_concurrency=3
    ) as c:
        got_a, got_b = [], []
        for part_a, part_b in itertools.zip_longest(
            c.iter_embed(a, segment_size=30), c.iter_embed(b, segment_size=30)
        ):
            got_a += [part_a.dense] if part_a is not None else []
            got_b += [part_b.dense] if part_b is not None else []
        whole_a, whole_b = c.embed(a).dense, c.embed(b).dense
    np.testing.assert_array_equal(np.vstack(got_a), whole_a)
    np.testing.assert_array_equal(np.vstack(got_b), whole_b)


def test_one_request_at_a_time_is_sent_from_the_callers_thread(emulator_url: str) -> None:
    """With ``max_concurrency=1`` the sync shell sends on the caller's thread (sync httpx, no
    I/O thread, one kept-alive connection): the same rows, in order, as the I/O thread's; a
    user's ``httpx.Client`` is used there too."""
    import numpy as np

    texts = [f"one at a time {i}" for i in range(95)]
    with EmbeddingClient(api_key="k", base_url=emulator_url, rpm=None, tpm=None) as c:
        expected = c.embed(texts).dense
    with EmbeddingClient(
        api_key="k", base_url=emulator_url, rpm=None, tpm=None, max_concurrency=1
    ) as c:
        got = c.embed(texts).dense
        for part in c.iter_embed(texts, segment_size=40):
            assert part.dense is not None
        assert c._sync._io is None  # no I/O thread was started
        lanes = c._transport._blocking
        assert lanes is not None
        assert len(lanes._all) == 1
    np.testing.assert_array_equal(got, expected)
    assert c._transport._blocking is None  # closed with the client

    threads: list[str] = []
    hooks = {"request": [lambda r: threads.append(_thread_name())]}
    with (
        httpx.Client(event_hooks=hooks) as user,
        EmbeddingClient(
            api_key="k",
            base_url=emulator_url,
            rpm=None,
            tpm=None,
            max_concurrency=1,
            http_client=user,
        ) as c,
    ):
        np.testing.assert_array_equal(c.embed(texts).dense, expected)
    assert threads == [threading.current_thread().name] * 10


def _thread_name() -> str:
    return threading.current_thread().name


async def test_a_lane_left_by_a_cancelled_request_is_closed_not_reused() -> None:
    """A request cancelled mid-exchange (its call stopped early: a stream left after its first
    part) may leave its lane's pool holding it, the one connection ACTIVE. Given back, that lane
    held the next request sent on it until its timeout (a stream stopped early, then ``embed``,
    1 run in 20-60 of ``test_stopping_early_leaves_the_client_usable``): it is closed instead."""
    import asyncio
    import socket
    from types import SimpleNamespace

    from empirio._io.http import _ONE_CONNECTION, _Lanes, _post_direct

    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1/embeddings"
        lanes = _Lanes(lambda: httpx.AsyncHTTPTransport(limits=_ONE_CONNECTION))
        (lane,) = lanes._all
        sends = SimpleNamespace(wire_request=lambda body: httpx.Request("POST", url, content=body))
        task = asyncio.create_task(_post_direct(lanes, sends, b"{}", 1 << 20))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)  # sent; its answer never comes
        assert lanes._idle == []  # the lane is in use
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.1)  # its closing task runs
        assert lane not in lanes._all
        assert lane not in [idle for _, idle in lanes._idle]
        assert lanes.take()[0] is not lane  # the next request gets a lane of its own
        await lanes.aclose()
