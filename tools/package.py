"""Build, check and try the three distributions of this repository (``./dev package``; CI).

1. Builds the wheel and the sdist of ``empirio`` (the root), ``langchain-empirio`` and
   ``llama-index-embeddings-empirio`` (``libs/``) into ``dist/`` with ``python -m build``.
2. Checks their metadata with ``twine check --strict``.
3. Installs each into a fresh virtual environment of its own, with only its own dependencies
   (our packages from ``dist/``, the rest from PyPI), and checks that nothing else came along
   (no Ray, Spark, Playwright, nor the other framework).
4. Runs the first Python block of each distribution's README that needs only that
   distribution (the repository's README leads with the two frameworks; ``empirio``'s own
   example is the tour's), in its environment, against an emulator started here
   (``EMPIRIOLABS_API_KEY``/``EMPIRIOLABS_API_BASE`` point at it).

Exit status 0 when all of it holds; the first failure is printed and ends the run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: name -> (its folder, the modules it provides, what must not be installed with it)
DISTRIBUTIONS: dict[str, tuple[Path, tuple[str, ...], tuple[str, ...]]] = {
    "empirio": (
        ROOT,
        ("empirio",),
        ("ray", "pyspark", "playwright", "langchain_core", "langchain_empirio", "llama_index"),
    ),
    "langchain-empirio": (
        ROOT / "libs" / "langchain-empirio",
        ("langchain_empirio",),
        ("ray", "pyspark", "playwright", "llama_index.core"),
    ),
    "llama-index-embeddings-empirio": (
        ROOT / "libs" / "llama-index-embeddings-empirio",
        ("llama_index.embeddings.empirio",),
        ("ray", "pyspark", "playwright", "langchain_core"),
    ),
}


def _run(*args: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], text=True, capture_output=True, **kw)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise SystemExit(
            f"package: {' '.join(map(str, args))} failed ({done.returncode}):\n"
            f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done


def _say(message: str) -> None:
    print(f"package: {message}", flush=True)


def first_example(readme: Path, absent: tuple[str, ...]) -> str:
    """The first ```python block of ``readme`` that imports none of ``absent``."""
    for block in re.findall(r"```python\n(.*?)```", readme.read_text(), re.DOTALL):
        imported = re.findall(r"^(?:from|import) ([\w.]+)", block, re.MULTILINE)
        if not any(m == a or m.startswith(a + ".") for m in imported for a in absent):
            return str(block)
    raise SystemExit(f"package: {readme} has no ```python block for this distribution alone")


def _each(work: Callable[[str], str]) -> None:
    """Run ``work`` for each distribution at once, and say what each did in their order.

    The builds and the fresh installs wait mostly on pip, PyPI and the disk, so running the
    three side by side takes about the time of the longest (it keeps CI within its budget). The
    first failure ends the run, once the others have finished.
    """
    with ThreadPoolExecutor(len(DISTRIBUTIONS)) as pool:
        said = [pool.submit(work, name) for name in DISTRIBUTIONS]
    for done in said:
        _say(done.result())


def build(dist: Path) -> None:
    shutil.rmtree(dist, ignore_errors=True)

    def one(name: str) -> str:
        started = time.monotonic()
        folder = DISTRIBUTIONS[name][0]
        _run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", dist, folder)
        return f"built {name} ({time.monotonic() - started:.0f} s)"

    _each(one)
    files = sorted(p.name for p in dist.iterdir())
    _say(f"dist/: {', '.join(files)}")
    if len(files) != 2 * len(DISTRIBUTIONS):
        raise SystemExit(f"package: expected a wheel and an sdist of each; got {files}")
    _run(sys.executable, "-m", "twine", "check", "--strict", *sorted(dist.iterdir()))
    _say("twine check --strict: passed")


def try_each(dist: Path, base_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMPIRIOLABS_", "PYTHONPATH"))}
    env.update(EMPIRIOLABS_API_KEY="sk-package-smoke-test", EMPIRIOLABS_API_BASE=base_url)

    def one(name: str) -> str:
        folder, modules, absent = DISTRIBUTIONS[name]
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"empirio-{name}-") as where:
            venv = Path(where) / "venv"
            _run(sys.executable, "-m", "venv", venv)
            python = venv / "bin" / "python"
            _run(python, "-m", "pip", "install", "--quiet", "--find-links", dist, name, env=env)
            _run(python, "-m", "pip", "check", env=env)
            probe = "import importlib.util as u\n" + "".join(
                f"assert u.find_spec({m!r}) is not None, {m!r}\n" for m in modules
            )
            for module in absent:
                probe += (
                    f"try:\n    found = u.find_spec({module!r})\nexcept ImportError:\n"
                    f"    found = None\nassert found is None, '{module} came along'\n"
                )
            _run(python, "-c", probe, env=env, cwd=where)
            example = Path(where) / "example.py"
            example.write_text(first_example(folder / "README.md", absent))
            out = _run(python, example, env=env, cwd=where, timeout=300)
        return (
            f"{name}: installed alone, its README's first example ran "
            f"({time.monotonic() - started:.0f} s): {out.stdout.strip().splitlines()[-1][:80]}"
        )

    _each(one)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", default=str(ROOT / "dist"), help="where to build (dist/)")
    parser.add_argument("--no-install", action="store_true", help="build and check only")
    args = parser.parse_args(argv)
    dist = Path(args.dist).resolve()
    build(dist)
    if not args.no_install:
        from empirio.emulator import serve

        with serve() as base_url:
            try_each(dist, base_url)
    _say("all three distributions build, install alone and run their first example")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
