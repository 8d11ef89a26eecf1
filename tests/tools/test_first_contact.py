"""First contact: what a newcomer meets in the CLI and in a first script, said in one line and in
the reader's own terms, and ``empirio check`` for what an endpoint really supports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ..conftest import run_cli, stats

KEY = "sk-first-contact-0123456789abcdef"


run = run_cli


# ---------------------------------------------------------------------- empirio check


def test_check_reports_what_the_default_emulator_supports(emulator_process: Any) -> None:
    url = emulator_process()
    r = run("check", "--base-url", url, "--json", env_extra={"EMPIRIOLABS_API_KEY": KEY})
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["max_batch"] == 10
    assert (report["sparse"], report["base64"], report["matryoshka_prefix"]) == (True,) * 3
    assert report["instructions"] is True
    assert set(report["limits"]) == {"rpm", "tpm"}
    assert report["latency_ms"] >= 0
    assert report["requests"] == stats(url)["requests"]  # every request it sent, counted
    assert "under $0.0001" in r.stderr  # the cost was stated before anything was sent
    assert KEY not in r.stdout + r.stderr


def test_check_finds_a_smaller_batch_and_no_sparse(emulator_process: Any) -> None:
    url = emulator_process("--max-batch", "6", "--no-sparse")
    r = run("check", "--base-url", url, "--json", env_extra={"EMPIRIOLABS_API_KEY": KEY})
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["max_batch"] == 6
    assert report["sparse"] is False
    assert report["base64"] is True
    r = run("check", "--base-url", url, env_extra={"EMPIRIOLABS_API_KEY": KEY})
    assert "inputs per request  6" in r.stdout
    assert "sparse output       no" in r.stdout


def test_check_paces_its_probes_to_a_rate_limited_emulator(emulator_process: Any) -> None:
    """`empirio serve --rpm 50` keeps the service's per-second rule (one request a second):
    the probes are spaced by what the first answer advertises, and none is refused."""
    url = emulator_process("--rpm", "50")
    r = run("check", "--base-url", url, "--json", env_extra={"EMPIRIOLABS_API_KEY": KEY})
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["max_batch"] == 10
    assert report["limits"]["rpm"] == 50
    assert stats(url)["by_status"].get("429", 0) == 0  # spaced 1.3 s apart: never two a second


def test_check_without_a_key_or_endpoint_is_one_line() -> None:
    r = run("check")
    assert r.returncode == 2
    assert r.stderr.strip() == "empirio check: no API key: set EMPIRIOLABS_API_KEY"
    r = run("check", "--base-url", "http://127.0.0.1:9/v1", env_extra={"EMPIRIOLABS_API_KEY": KEY})
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "cannot reach http://127.0.0.1:9/v1" in r.stderr


# ---------------------------------------------------------------------- the CLI's words


def test_demo_with_a_dimension_the_model_lacks_is_one_line_before_anything() -> None:
    r = run("demo", "--dimensions", "100")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == [
        "empirio demo: --dimensions 100 is not a size the model offers: choose one of 64, 128, "
        "256, 512, 768, 1024, 1536, 2048"
    ]
    assert r.stdout == ""  # no banner: nothing started


def test_demo_with_a_wrong_key_is_one_line(emulator_process: Any) -> None:
    url = emulator_process("--api-key", "the-right-key-0123456789")
    r = run("demo", env_extra={"EMPIRIOLABS_API_KEY": KEY, "EMPIRIOLABS_API_BASE": url})
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("empirio demo: ")
    assert f"via {url} (from EMPIRIOLABS_API_BASE)" in r.stdout  # not "the real service"
    assert KEY not in r.stdout + r.stderr


def test_the_truncation_warning_names_lines_from_1_and_flags(tmp_path: Path) -> None:
    long = "word " * 9000
    out = tmp_path / "v.npy"
    r = run("embed", "--emulator", "--no-progress", "-o", str(out), stdin=f"short\n{long}\n")
    assert r.returncode == 0, r.stderr
    assert (
        "1 text exceeded the model's input limit and was truncated to 8,191 tokens: line 2 "
        in r.stderr
    )
    assert "--overflow chunk" in r.stderr
    assert "overflow='" not in r.stderr
    assert "1 texts" not in r.stderr
    assert "empirio embed: 2 texts;" in r.stderr


def test_the_output_is_checked_before_anything_is_paid_for(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    r = run("embed", "--emulator", "-o", str(folder), "--format", "npy", stdin="hello\n")
    assert r.returncode == 2
    assert "is a folder" in r.stderr
    assert "Traceback" not in r.stderr


def test_one_text_is_singular_everywhere(tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite3"
    out = tmp_path / "v.npy"
    argv = ["embed", "--emulator", "--no-progress", "--cache", str(cache), "-o", str(out)]
    r = run(*argv, stdin="hello\n")
    assert "empirio embed: 1 text (0 from the cache);" in r.stderr, r.stderr
    r = run(*argv, stdin="hello\n")
    assert "empirio embed: 1 text (1 from the cache);" in r.stderr, r.stderr
    r = run("embed", "--emulator", "--no-progress", "-o", str(out), stdin="ok\n\n")
    assert "blank line: 2" in r.stderr


def test_no_bar_frames_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    r = run("embed", "--emulator", "-o", str(tmp_path / "v.npy"), stdin="a\nb\n")
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr
    assert "it/s" not in r.stderr
    assert "text/s" not in r.stderr


# ---------------------------------------------------------------------- a first script


def test_start_if_no_key_without_the_server_extra_names_it(tmp_path: Path) -> None:
    script = tmp_path / "first.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            sys.modules["uvicorn"] = None  # as if empirio[server] were not installed
            from empirio import ConfigurationError
            from empirio.emulator import start_if_no_key
            try:
                start_if_no_key()
            except ConfigurationError as exc:
                print(exc)
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMPIRIOLABS_")}
    r = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (
        "the emulator needs uvicorn, which is not installed: pip install 'empirio[server]'"
    )


@pytest.mark.parametrize(("n", "word"), [(1, "1 text"), (2, "2 texts"), (1234, "1,234 texts")])
def test_plural(n: int, word: str) -> None:
    from empirio._core.errors import plural

    assert plural(n, "text") == word


def test_a_wait_between_retries_is_one_log_line_and_said_on_the_bar(
    emulator_process: Any, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from empirio import EmbeddingClient

    url = emulator_process("--storm-s", "1.5")  # every request answered 429 for 1.5 s
    with (
        caplog.at_level(logging.INFO, logger="empirio"),
        EmbeddingClient(api_key=KEY, base_url=url, rpm=None, tpm=None, show_progress=True) as c,
    ):
        assert c.embed(["waits, then gets through"]).dense is not None
    waits = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert waits, caplog.text
    assert "HTTP 429" in waits[0]
    assert "retrying in" in capsys.readouterr().err  # the bar said what it waited for


def test_plain_http_to_another_host_names_the_flag() -> None:
    r = run(
        "embed",
        "--base-url",
        "http://192.0.2.1:8000/v1",
        stdin="hello\n",
        env_extra={"EMPIRIOLABS_API_KEY": KEY},
    )
    assert r.returncode == 2
    assert "--allow-insecure" in r.stderr
    assert "allow_insecure=True" not in r.stderr
    assert KEY not in r.stderr
