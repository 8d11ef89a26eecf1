"""The layers hold: ``empirio/_core`` is pure, and the sync and async shells mirror each other.

``_core`` decides; ``_io`` reads the clock, sleeps, sends and stores (see ARCHITECTURE.md). A
module of ``_core`` that imported httpx, a thread, a socket or an ``_io`` module would make the
pure core untestable without one; these tests name the module and the import that broke it.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import re
from pathlib import Path

import pytest

from empirio._io.aio import AsyncShell
from empirio._io.sync import SyncShell

CORE = Path(__file__).resolve().parents[2] / "empirio" / "_core"
#: What a pure module must not import: the network, threads, event loops, processes, files
#: kept open (sqlite3), and the I/O layer itself.
FORBIDDEN = {
    "httpx",
    "httpcore",
    "sqlite3",
    "threading",
    "asyncio",
    "socket",
    "subprocess",
    "concurrent",
    "multiprocessing",
    "redis",
    "empirio._io",
}
#: Allowed exceptions, each with its reason.
ALLOWED = {
    # dense_rows() yields the interpreter between rows of a large conversion so that a paced
    # sender on another thread keeps its schedule; it neither waits nor reads the clock.
    ("result.py", "time.sleep(0)"),
}


def _imports(tree: ast.AST, package: str) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against empirio._core
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.append(f"{base}.{node.module}" if node.module else base)
            else:
                names.append(node.module or "")
    return names


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_modules_import_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = [
        name
        for name in _imports(tree, "empirio._core")
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    ]
    assert not bad, f"empirio/_core/{path.name} imports {bad}: I/O belongs in empirio/_io"
    sleeps = {
        (path.name, ast.unparse(node))
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("time.sleep", "sleep")
    }
    assert sleeps <= ALLOWED, f"empirio/_core/{path.name} sleeps: {sleeps - ALLOWED}"


def test_the_layer_check_finds_a_forbidden_import() -> None:
    tree = ast.parse("import threading\nfrom .._io.budget import LocalBudget\nfrom . import x\n")
    assert _imports(tree, "empirio._core") == ["threading", "empirio._io.budget", "empirio._core"]


def _mirror_source(cls: type, name: str) -> list[str]:
    """A method's lines with ``async``/``await`` and the async spellings made sync, comments
    left out (each shell says why in its own words)."""
    source = inspect.getsource(getattr(cls, name))
    source = re.sub(r"\basync (def|for|with)\b", r"\1", source)
    source = re.sub(r"\bawait ", "", source)
    source = source.replace("AsyncIterator", "Iterator")
    lines = (re.sub(r"\s+# .*$|^\s*#.*$", "", line).strip() for line in source.splitlines())
    return [line for line in lines if line]


@pytest.mark.parametrize("name", ["run", "_do", "_drive_all", "stream", "drive", "_stored"])
def test_the_sync_and_async_shells_mirror_each_other(name: str) -> None:
    """httpx's twins are 96 % alike once ``async``/``await`` are stripped; ours must stay over
    90 %, so that a fix to one shell is seen to be missing from the other."""
    sync, aio = _mirror_source(SyncShell, name), _mirror_source(AsyncShell, name)
    ratio = difflib.SequenceMatcher(None, sync, aio).ratio()
    assert ratio >= 0.9, f"SyncShell.{name} and AsyncShell.{name} are {ratio:.0%} alike:\n" + (
        "\n".join(difflib.unified_diff(sync, aio, "sync", "async", lineterm=""))
    )


def test_every_core_module_has_its_tests() -> None:
    here = Path(__file__).parent
    untested = [
        p.name
        for p in CORE.glob("*.py")
        if p.stem != "__init__" and not (here / f"test_{p.name}").exists()
    ]
    assert not untested, f"empirio/_core modules without tests/core/test_<module>.py: {untested}"


def test_the_core_and_the_client_import_no_adapter() -> None:
    """The core is what the adapters build on: it must never need them (the demo, which shows
    both, lives with the apps in empirio/apps)."""
    root = CORE.parent
    modules = [*CORE.glob("*.py"), *(root / "_io").glob("*.py"), root / "client.py"]
    for path in modules:
        package = "empirio." + ".".join(path.relative_to(root).parent.parts)
        names = _imports(ast.parse(path.read_text(encoding="utf-8")), package.rstrip("."))
        adapters = [
            n for n in names if n.split(".")[0] in ("langchain_empirio", "llamaindex_empirio")
        ]
        assert not adapters, f"{path.relative_to(root.parent)} imports {adapters}"
