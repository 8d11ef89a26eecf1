"""Three distributions from one repository: their metadata agree with each other. (Building
them, installing each alone and running its README's first example is ``./dev package``, which
CI runs beside the tests: it needs PyPI, which tests never reach.)"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
LIBS = {
    "langchain-empirio": ("langchain_empirio",),
    "llama-index-embeddings-empirio": ("llama_index/embeddings/empirio", "llamaindex_empirio"),
}


def project(folder: Path) -> dict[str, object]:
    data = tomllib.loads((folder / "pyproject.toml").read_text())
    return dict(data["project"])


def requirement(reqs: object, name: str) -> Requirement:
    assert isinstance(reqs, list)
    found = [Requirement(r) for r in reqs if Requirement(r).name == name]
    assert found, f"{name} is not required"
    return found[0]


@pytest.mark.parametrize("name", sorted(LIBS))
def test_each_framework_package_stands_on_the_core_it_ships_with(name: str) -> None:
    core, lib = project(ROOT), project(ROOT / "libs" / name)
    assert lib["name"] == name
    assert (ROOT / "libs" / name / "README.md").is_file()
    for module in LIBS[name]:
        assert (ROOT / "libs" / name / module / "__init__.py").is_file()
    # The framework package accepts this core, and the core's extra accepts this package.
    assert str(core["version"]) in requirement(lib["dependencies"], "empirio").specifier
    extras = core["optional-dependencies"]
    assert isinstance(extras, dict)
    extra = {"langchain-empirio": "langchain", "llama-index-embeddings-empirio": "llamaindex"}
    assert str(lib["version"]) in requirement(extras[extra[name]], name).specifier


def test_llamahub_finds_the_conventional_import_path() -> None:
    data = tomllib.loads((ROOT / "libs/llama-index-embeddings-empirio/pyproject.toml").read_text())
    assert data["tool"]["llamahub"]["import_path"] == "llama_index.embeddings.empirio"
    import llama_index.embeddings.empirio as conventional
    import llamaindex_empirio

    assert conventional.EmpirioEmbedding is llamaindex_empirio.EmpirioEmbedding


def test_the_core_distribution_ships_no_adapter() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["tool"]["setuptools"]["packages"]["find"]["include"] == ["empirio*"]
    for name in ("langchain_empirio", "llamaindex_empirio", "llama_index"):
        assert not (ROOT / name).exists(), f"{name} belongs in libs/"
