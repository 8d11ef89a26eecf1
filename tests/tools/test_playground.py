"""The playground in a real headless browser (Debian's chromium driven by Playwright), against
the emulator: texts in, settings changed, results read back from the DOM; errors shown; the key
absent from every byte the browser receives."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from empirio import get_tokenizer
from empirio.emulator import serve
from empirio.playground import playground

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "playground.png"
SECRET = "sk-playground-secret-never-in-the-page-0123456789"

if CHROMIUM is None:  # CI installs it (.ci/run); elsewhere say how
    if os.environ.get("EMPIRIO_REQUIRE_BROWSER"):
        raise RuntimeError("chromium is missing: apt-get install chromium")
    pytest.skip("needs Debian's chromium: apt-get install chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    pg = context.new_page()
    yield pg
    context.close()


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The playground with no key: on its own emulator."""
    monkeypatch.delenv("EMPIRIOLABS_API_KEY", raising=False)
    with playground() as url:
        yield url


def run(page: Any, n: int = 1) -> None:
    page.click("#run")
    page.wait_for_selector(f"body[data-runs='{n}']", timeout=60_000)


def test_texts_and_settings_in_results_out(page: Any, local: str) -> None:
    docs = [
        "To reset your password, open Settings and click Forgot password.",
        "Refunds go to the original payment card.",
        "The cat sat on the mat and purred.",
    ]
    page.goto(local)
    banner = page.inner_text("#mode-banner")
    assert "LOCAL EMULATOR" in banner
    assert "not text-embedding-v4" in banner
    page.fill("#documents", "\n".join(docs))
    page.fill("#queries", "how do I reset my password\nthe cat on the mat")
    page.select_option("#dimensions", "256")
    page.select_option("#output", "both")
    run(page)
    assert page.inner_text("#error") == ""
    queries = page.query_selector_all("#rankings .query")
    assert len(queries) == 2
    first = queries[0].query_selector_all("li")
    assert len(first) == 3
    assert "reset your password" in first[0].inner_text()
    scores = [float(li.get_attribute("data-score")) for li in first]
    assert scores == sorted(scores, reverse=True)
    assert "The cat sat" in queries[1].query_selector("li").inner_text()
    # exact Qwen token counts, documents first
    counts = [int(td.inner_text()) for td in page.query_selector_all("#tokens td.tokens")]
    tok = get_tokenizer()
    assert counts[:3] == [tok.count(d) for d in docs]
    page.evaluate("window.scrollTo(0, 0)")
    if os.environ.get("EMPIRIO_UPDATE_SCREENSHOT"):  # the README's picture, by this browser
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))
    # the code reproduces the settings; the last call carried them
    assert "dimensions=256" in page.inner_text("#code-core")
    page.click(".tabs button[data-tab='langchain']")
    assert "EmpirioEmbeddings(dimensions=256)" in page.inner_text("#code-langchain")
    # ... and it is the user's own code: their texts, and pasted anywhere with no key it runs
    # (on an emulator of its own, as the page did)
    code = page.inner_text("#code-core")
    assert all(repr(d) in code for d in docs[:3])
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMPIRIOLABS_")}
    pasted = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert pasted.returncode == 0, pasted.stderr[-2000:]
    assert pasted.stdout.count("[") >= 2  # the score matrix was printed
    assert '"dimensions": 256' in page.inner_text("#raw-request")
    assert "$EMPIRIOLABS_API_KEY" in page.inner_text("#curl")
    # sparse tokens, the heatmap and every dimension are there
    assert page.query_selector_all("#sparse .pill")
    assert len(page.query_selector_all("#heatmap tr")) == 1 + 5
    assert len(page.query_selector_all("#dims tr")) == 1 + 8
    assert "requests" in page.inner_text("#usage")
    # another run with other settings: dense only, 64 dimensions
    page.select_option("#dimensions", "64")
    page.select_option("#output", "dense")
    run(page, 2)
    assert '"dimensions": 64' in page.inner_text("#raw-request")
    assert "Choose output sparse" in page.inner_text("#sparse")


def test_over_length_texts_are_flagged(page: Any, local: str) -> None:
    page.goto(local)
    page.fill("#documents", "short text\n" + "word " * 9000)
    page.select_option("#overflow", "chunk")
    run(page)
    over = page.query_selector_all("#tokens tr.over")
    assert len(over) == 1
    assert "windows" in over[0].inner_text()
    page.select_option("#overflow", "error")
    run(page, 2)
    error = page.inner_text("#error")
    assert "1 text exceeds the limit of 8191 tokens" in error
    assert "document 2" in error  # numbered as the token table numbers it, from 1


def test_service_errors_show_in_the_page_and_the_server_stays_up(
    page: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve(credit_tokens=30) as api:
        monkeypatch.setenv("EMPIRIOLABS_API_KEY", SECRET)
        monkeypatch.setenv("EMPIRIOLABS_API_BASE", api)
        monkeypatch.setenv("EMPIRIOLABS_RPM", "none")
        monkeypatch.setenv("EMPIRIOLABS_TPM", "none")
        with playground() as url:
            page.goto(url)
            assert "Real service" in page.inner_text("#mode-banner")
            page.fill("#documents", "\n".join(f"document number {i}" for i in range(30)))
            run(page)
            assert "HTTP 402" in page.inner_text("#error")
            page.fill("#model", "text-embedding-v9")
            run(page, 2)
            assert "HTTP 404" in page.inner_text("#error")
            assert "does not exist" in page.inner_text("#error")


def test_the_key_is_absent_from_every_byte_the_browser_receives(
    page: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: list[bytes] = []

    def keep(response: Any) -> None:
        with contextlib.suppress(Exception):  # redirects and aborted requests have no body
            received.append(response.body())

    page.on("response", keep)
    with serve() as api:
        monkeypatch.setenv("EMPIRIOLABS_API_KEY", SECRET)
        monkeypatch.setenv("EMPIRIOLABS_API_BASE", api)
        with playground() as url:
            page.goto(url)
            page.fill("#queries", "a question")
            page.select_option("#output", "both")
            run(page)
            page.fill("#model", "no-such-model")
            run(page, 2)
            received.append(page.content().encode())
    assert len(received) >= 4
    for body in received:
        assert SECRET.encode() not in body
        assert SECRET[10:30].encode() not in body


def launch(*flags: str, **env_extra: str) -> tuple[subprocess.Popen[str], str]:
    """``empirio playground`` in a process of its own, with no key (on its emulator), and the
    URL it printed."""
    env = {k: v for k, v in os.environ.items() if k != "EMPIRIOLABS_API_KEY"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "empirio", "playground", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, **env_extra},
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def test_the_command_prints_its_url_serves_the_page_and_stops_on_sigterm() -> None:
    import signal

    import httpx

    proc, url = launch("--no-browser")
    try:
        assert url.startswith("http://127.0.0.1:")
        assert "/?token=" in url
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200
        assert "text-embedding-v4 playground" in page.text
        root, token = url.split("?token=")
        info = httpx.get(root + "api/info", headers={"X-Playground-Token": token}, timeout=30)
        assert info.json()["emulator"] is True
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


RUN_BODY = '{"documents": ["a document"], "queries": ["a question"]}'


def test_only_the_playgrounds_own_page_may_spend_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    from empirio.emulator import serve as serve_emulator

    from ..conftest import stats

    with serve_emulator() as api:
        monkeypatch.setenv("EMPIRIOLABS_API_KEY", SECRET)
        monkeypatch.setenv("EMPIRIOLABS_API_BASE", api)
        with playground() as url:
            root, token = url.split("?token=")
            run_url = root + "api/run"
            good = {"Content-Type": "application/json", "X-Playground-Token": token}
            port = root.rstrip("/").rsplit(":", 1)[1]
            refused = [
                {**good, "X-Playground-Token": ""},  # no token
                # a wrong token (one character off; a random token may end in "x" itself)
                {**good, "X-Playground-Token": token[:-1] + ("y" if token.endswith("x") else "x")},
                {**good, "Content-Type": "text/plain"},  # a "simple" cross-site POST
                {**good, "Host": "attacker.example"},  # DNS rebinding
                {**good, "Host": f"attacker.example:{port}"},
                {**good, "Origin": "http://attacker.example"},
                {**good, "Origin": "null"},
            ]
            for headers in refused:
                r = httpx.post(run_url, content=RUN_BODY, headers=headers, timeout=30)
                assert r.status_code in (403, 415), headers
            assert httpx.get(root, headers={"Host": "attacker.example"}).status_code == 403
            assert stats(api)["requests"] == 0
            ok = httpx.post(run_url, content=RUN_BODY, headers=good, timeout=60)
            assert ok.status_code == 200, ok.text
            for host in ("localhost", "127.0.0.1"):
                same = {**good, "Host": f"{host}:{port}", "Origin": f"http://{host}:{port}"}
                again = httpx.post(run_url, content=RUN_BODY, headers=same, timeout=60)
                assert again.status_code == 200


def test_a_page_from_another_origin_cannot_call_the_api(
    page: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler

    from ..conftest import QuietHTTPServer, stats

    class Hostile(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = b"<html><body>hostile</body></html>"
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    hostile = QuietHTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=hostile.serve_forever, daemon=True).start()
    try:
        with serve() as api:
            monkeypatch.setenv("EMPIRIOLABS_API_KEY", SECRET)
            monkeypatch.setenv("EMPIRIOLABS_API_BASE", api)
            with playground() as url:
                root = url.split("?token=")[0]
                page.goto(f"http://localhost:{hostile.server_address[1]}/")
                tries = page.evaluate(
                    """async (api) => {
                      const body = JSON.stringify({documents: ["spend"], queries: ["it"]});
                      const out = [];
                      for (const opts of [
                        {method: "POST", mode: "no-cors", body,
                         headers: {"Content-Type": "text/plain"}},
                        {method: "POST", body, headers: {"Content-Type": "application/json"}},
                      ]) {
                        try { const r = await fetch(api, opts); out.push(r.status); }
                        catch (e) { out.push(String(e)); }
                      }
                      return out;
                    }""",
                    root + "api/run",
                )
                assert tries  # each was sent, or refused by the browser
                assert stats(api)["requests"] == 0
    finally:
        hostile.shutdown()
        hostile.server_close()


def test_sparse_only_says_why_dense_panels_are_empty_and_a_phone_gets_one_column(
    browser: Any, local: str
) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        phone = context.new_page()
        phone.goto(local)
        columns = phone.evaluate(
            "getComputedStyle(document.querySelector('main')).gridTemplateColumns"
        )
        assert len(columns.split()) == 1, columns  # the form above the results
        phone.fill("#documents", "a cat on a mat\nbonds fell today")
        phone.fill("#queries", "cat")
        phone.select_option("#output", "sparse")
        run(phone)
        assert "sparse output only" in phone.inner_text("#dims")
        assert phone.query_selector_all("#sparse .pill")
    finally:
        context.close()


FAKE_BROWSER = """
import json, os, stat, sys
from urllib.parse import urlsplit, unquote
uri = sys.argv[1]
path = unquote(urlsplit(uri).path)
with open(sys.argv[2], "w") as out:
    json.dump({
        "argv": sys.argv,
        "cmdline": open("/proc/self/cmdline", "rb").read().decode(errors="replace"),
        "uri": uri,
        "file_mode": stat.S_IMODE(os.stat(path).st_mode),
        "folder_mode": stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode),
    }, out)
"""


def test_the_browser_is_opened_without_the_token_on_its_command_line(
    page: Any, tmp_path: Path
) -> None:
    """`empirio playground` opens the user's browser ($BROWSER, here a recorder) on a private
    file, not on the URL with the token; the file hands a one-time code over, which a real
    browser exchanges for the token once."""
    import json
    import signal
    import time

    import httpx

    fake, seen = tmp_path / "browser.py", tmp_path / "seen.json"
    fake.write_text(FAKE_BROWSER)
    proc, url = launch(BROWSER=f"{sys.executable} {fake} %s {seen}")
    try:
        root, token = url.split("?token=")
        for _ in range(300):
            if seen.exists() and seen.stat().st_size:
                break
            time.sleep(0.1)
        opened = json.loads(seen.read_text())
        assert token not in json.dumps(opened)  # not in argv, not in /proc/PID/cmdline
        assert opened["uri"].startswith("file://")
        assert (opened["file_mode"], opened["folder_mode"]) == (0o600, 0o700)
        page.goto(opened["uri"])
        page.wait_for_url(root, timeout=30_000)  # the token taken out of the address bar
        page.wait_for_function("document.querySelector('#mode-banner').innerText.length > 0")
        assert "emulator" in page.inner_text("#mode-banner").lower()
        assert page.evaluate("sessionStorage.getItem('empirio-playground-token')") == token
        handed = Path(httpx.URL(opened["uri"]).path).read_text()
        code_url = root + "?code=" + handed.split("?code=")[1].split('"')[0]
        again = httpx.get(code_url, timeout=30)
        assert again.status_code == 403  # spent: one browser, once
        assert token not in again.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
