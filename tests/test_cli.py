"""The command line: ``empirio embed`` and ``empirio demo`` against the emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np


def run(
    *args: str, stdin: str = "", env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EMPIRIOLABS_API_KEY"}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "empirio", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_embed_to_npy(tmp_path: Path) -> None:
    out = tmp_path / "v.npy"
    r = run(
        "embed", "--emulator", "--dimensions", "64", "-o", str(out), stdin="first\nsecond\nfirst\n"
    )
    assert r.returncode == 0, r.stderr
    m = np.load(out)
    assert m.shape == (3, 64)
    np.testing.assert_array_equal(m[0], m[2])
    assert "1 requests" in r.stderr


def test_embed_to_jsonl_with_sparse(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("the wind\n\nthe sea\n", encoding="utf-8")
    r = run(
        "embed",
        str(src),
        "--emulator",
        "--skip-blank",
        "--output-type",
        "both",
        "--dimensions",
        "128",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["index"] for row in rows] == [0, 1]
    assert len(rows[0]["embedding"]) == 128
    assert rows[0]["sparse"]


def test_embed_blank_line_fails_clearly() -> None:
    r = run("embed", "--emulator", stdin="a\n\nb\n")
    assert r.returncode == 1
    assert "positions [1]" in r.stderr


def test_embed_without_a_key_says_how_to_set_it() -> None:
    r = run("embed", "--base-url", "http://127.0.0.1:9/v1", stdin="a\n")
    assert r.returncode != 0
    assert "EMPIRIOLABS_API_KEY" in r.stderr


def test_demo_runs_on_the_emulator_without_a_key() -> None:
    r = run("demo")
    assert r.returncode == 0, r.stderr
    assert "LOCAL EMULATOR" in r.stdout
    assert "query: How do I change my password?" in r.stdout
    first_hit = r.stdout.split("query: How do I change my password?")[1].splitlines()[1]
    assert "reset your password" in first_hit
    assert "estimated $" in r.stdout


def test_a_failed_run_leaves_no_file_that_looks_finished(
    tmp_path: Path, make_emulator: Any
) -> None:
    lines = [f"line {i} of a file that runs out of credits" for i in range(60)]
    url = make_emulator(credit_tokens=400)  # enough for a few requests, not for all
    out = tmp_path / "v.npy"
    r = run(
        "embed",
        "--base-url",
        url,
        "--rpm",
        "0",
        "--max-concurrency",
        "1",
        "-o",
        str(out),
        stdin="\n".join(lines) + "\n",
        env_extra={"EMPIRIOLABS_API_KEY": "k"},
    )
    assert r.returncode == 1
    assert "Insufficient credits" in r.stderr
    assert "not written" in r.stderr
    assert "of 60 texts had been embedded" in r.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # nor a temporary file left behind


def test_a_run_killed_with_sigkill_resumes_from_the_cache_paying_only_for_the_rest(
    tmp_path: Path, make_emulator: Any
) -> None:
    import signal
    import time

    from .conftest import stats

    n, per_request, concurrency = 600, 10, 4
    lines = [f"line {i}: a sentence about subject {i % 13} and detail {i}" for i in range(n)]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    url = make_emulator(latency_ms=60)
    env = {k: v for k, v in os.environ.items() if k != "EMPIRIOLABS_API_KEY"}
    env["EMPIRIOLABS_API_KEY"] = "k"
    cache, out = tmp_path / "cache.sqlite3", tmp_path / "out.npy"
    argv = [sys.executable, "-m", "empirio", "embed", str(source), "-o", str(out)]
    argv += ["--base-url", url, "--rpm", "0", "--max-concurrency", str(concurrency)]
    argv += ["--cache", str(cache), "--no-progress"]

    first = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while stats(url)["requests"] < 25 and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    assert not out.exists()
    killed_at = stats(url)["requests"]
    assert killed_at < n // per_request  # it really was cut short

    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    total = stats(url)["requests"]
    needed = n // per_request
    assert total <= needed + concurrency  # at most the requests in flight at the kill, again
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []

    clean_url = make_emulator()
    clean = tmp_path / "clean.npy"
    argv_clean = [*argv[:5], "-o", str(clean), "--base-url", clean_url, "--rpm", "0"]
    r = subprocess.run(argv_clean, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(out), np.load(clean))
