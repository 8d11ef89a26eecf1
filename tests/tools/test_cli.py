"""The command line: ``empirio embed`` and ``empirio demo`` against the emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ..conftest import run_cli

run = run_cli


def test_embed_to_npy(tmp_path: Path) -> None:
    out = tmp_path / "v.npy"
    r = run(
        "embed", "--emulator", "--dimensions", "64", "-o", str(out), stdin="first\nsecond\nfirst\n"
    )
    assert r.returncode == 0, r.stderr
    m = np.load(out)
    assert m.shape == (3, 64)
    np.testing.assert_array_equal(m[0], m[2])
    assert "1 request," in r.stderr


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
    assert [row["index"] for row in rows] == [1, 3]  # line numbers, from 1, kept when skipping
    assert len(rows[0]["embedding"]) == 128
    assert rows[0]["sparse"]
    # float32 digits: each printed number reads back as exactly the float32 it came from
    text = r.stdout.splitlines()[0]
    first = text.split('"embedding": [')[1].split(",")[0]
    assert len(first.lstrip("-").lstrip("0.")) <= 9


def test_embed_blank_line_fails_clearly() -> None:
    r = run("embed", "--emulator", stdin="a\n\nb\n")
    assert r.returncode == 1
    assert "blank line: 2" in r.stderr
    assert "Traceback" not in r.stderr


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
    # The password document, in whichever language the emulator's vectors rank first.
    assert any(p in first_hit for p in ("reset your password", "mot de passe", "パスワード"))
    # With empirio[semantic] (part of dev), a German question finds an answer in another
    # language, and the banner names the stand-in model.
    assert "Universal Sentence Encoder" in r.stdout
    assert "not text-embedding-v4" in r.stdout
    assert "asked in German, found in" in r.stdout
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

    from ..conftest import stats

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


def test_version_and_help_on_every_option() -> None:
    from empirio import __version__

    r = run("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"empirio {__version__}"
    for command in ("embed", "serve"):
        text = run(command, "--help").stdout
        import re

        # every option line is followed by help text (argparse puts it on the same line or next)
        options = re.findall(r"^  (-[-\w, ]+?)(?:\s{2,}(\S.*))?$", text, re.M)
        assert options
        bare = [o for o, h in options if not h]
        for o in bare:
            assert re.search(re.escape(o) + r".*\n\s{20,}\S", text), f"{command} {o} has no help"


@pytest.mark.parametrize(
    ("args", "stdin", "status", "message"),
    [
        (("embed", "/no/such/file.txt", "--emulator"), "", 2, "no such file"),
        (("embed", "/tmp", "--emulator"), "", 2, "is a folder"),
        (("embed", "--emulator", "-o", "out.csv"), "a\n", 2, "cannot tell the format"),
        (("embed", "--emulator", "-o", "/no/such/dir/out.npy"), "a\n", 2, "does not exist"),
        (("embed", "--emulator", "--rpm", "-1"), "a\n", 2, "--rpm must be"),
        (("embed", "--emulator", "--dimensions", "100"), "a\n", 2, "choose one of"),
        (("embed",), "a\n", 2, "set EMPIRIOLABS_API_KEY"),
        (("serve", "--port", "99999"), "", 2, "--port must be 0 to 65535"),
        (("serve", "--rpm", "-1"), "", 2, "rpm must be at least 1"),
        (("serve", "--fail-rate", "2"), "", 2, "--fail-rate must be"),
    ],
)
def test_errors_are_one_line_with_exit_codes(
    args: tuple[str, ...], stdin: str, status: int, message: str, tmp_path: Path
) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "empirio", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "EMPIRIOLABS_API_KEY"},
    )
    assert r.returncode == status, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_non_utf8_input_is_named_with_its_line(tmp_path: Path) -> None:
    src = tmp_path / "latin1.txt"
    src.write_bytes("caf\u00e9\nna\u00efve\n".encode("latin-1"))
    r = run("embed", str(src), "--emulator")
    assert r.returncode == 2
    assert "not UTF-8 text (line 1" in r.stderr


def test_lines_split_at_newline_only(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("one\fstill one\ntwo\x85two\nthree\u2028three\r\nfour\n", encoding="utf-8")
    out = tmp_path / "v.npy"
    r = run("embed", str(src), "--emulator", "-o", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert np.load(out).shape == (4, 1024)


def test_a_busy_port_is_one_line() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        r = run("serve", "--port", str(port))
    assert r.returncode == 1
    assert "cannot listen" in r.stderr
    assert "Traceback" not in r.stderr


def test_emulator_runs_are_not_paced_and_ctrl_c_exits_130(tmp_path: Path) -> None:
    import signal
    import time

    lines = "\n".join(f"line {i}" for i in range(2000)) + "\n"
    src = tmp_path / "in.txt"
    src.write_text(lines, encoding="utf-8")
    out = tmp_path / "v.npy"
    r = run("embed", str(src), "--emulator", "-o", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "200 requests" in r.stderr  # 2,000 lines, all sent (paced at 50 RPM: four minutes)
    # Ctrl-C: a real account's pace (the emulator told to have one) and an interrupt.
    env = {k: v for k, v in os.environ.items() if k != "EMPIRIOLABS_API_KEY"}
    env["EMPIRIOLABS_API_KEY"] = "k"
    from empirio.emulator import EmulatorConfig, serve

    from ..conftest import stats

    with serve(config=EmulatorConfig(rpm=60)) as url:
        argv = [sys.executable, "-m", "empirio", "embed", str(src), "--base-url", url]
        argv += ["-o", str(out.with_suffix(".b.npy")), "--no-progress"]
        proc = subprocess.Popen(
            argv,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
            # A test run started in the background (CI scripts do this) inherits SIGINT as
            # ignored, and so would the child: give it the disposition a terminal gives.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + 60
            while stats(url)["requests"] < 2 and time.monotonic() < deadline:
                time.sleep(0.05)  # interrupt a run under way, not the interpreter starting
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("import langchain_empirio", "pip install langchain-empirio"),
        ("import llama_index.embeddings.empirio", "pip install llama-index-embeddings-empirio"),
        ("from empirio.cli import main; raise SystemExit(main(['serve']))", "empirio[server]"),
        ("from empirio.cli import main; raise SystemExit(main(['demo']))", "empirio[server"),
    ],
    ids=["langchain", "llamaindex", "serve", "demo"],
)
def test_a_missing_extra_is_named(code: str, message: str) -> None:
    # The extras' packages made unimportable, as in an environment without them.
    blocked = "langchain_core llama_index.core uvicorn orjson langchain_qdrant".split()
    stub = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
    r = subprocess.run(
        [sys.executable, "-c", stub + code], capture_output=True, text=True, timeout=120
    )
    assert r.returncode != 0
    assert message in r.stderr


@pytest.fixture
def full_disk(tmp_path: Path) -> Any:
    """A folder on a 256 KiB tmpfs: writes past that fail with ENOSPC, as on a full disk."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            raise RuntimeError(f"cannot mount a tmpfs: {mounted.stderr!r}")
        pytest.skip("needs root to mount a small tmpfs")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize("ext", ["npy", "jsonl"])
def test_a_full_disk_is_one_line_and_what_was_paid_for_is_kept(
    tmp_path: Path, full_disk: Path, ext: str
) -> None:
    lines = "".join(f"line number {i} of a long input\n" for i in range(300))
    cache = tmp_path / "c.sqlite3"
    out = full_disk / f"v.{ext}"
    flags = ["embed", "--emulator", "--no-progress", "-o", str(out)]
    r = run(*flags, "--cache", str(cache), stdin=lines)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # no traceback, no "Bus error"
    assert "No space left on device" in r.stderr
    assert "run again to resume" in r.stderr
    assert not out.exists()
    # What was paid for is in the cache: a rerun to a roomy place sends nothing.
    roomy = tmp_path / f"v.{ext}"
    again = run(
        "embed", "--emulator", "--no-progress", "-o", str(roomy), "--cache", str(cache), stdin=lines
    )
    assert again.returncode == 0, again.stderr
    assert "0 requests" in again.stderr
    # Without a cache, the unfinished file is kept and named.
    r = run(*flags, stdin=lines)
    assert r.returncode == 1
    assert f"{out}.incomplete" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_closed_pipe_is_one_line() -> None:
    lines = "".join(f"piped line {i}\n" for i in range(300))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "empirio",
            "embed",
            "--emulator",
            "--no-progress",
            "--format",
            "jsonl",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "EMPIRIOLABS_API_KEY"},
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdin.write(lines.encode())
    proc.stdin.close()
    proc.stdout.read(100)
    proc.stdout.close()  # as `| head -c 100` does
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err
    assert "the output pipe closed" in err
