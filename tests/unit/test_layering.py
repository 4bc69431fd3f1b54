"""The rooms import in one direction (issue 8, step 0): the domain imports nothing of tipml
but the error root; the transport (``events``) imports the domain, never features or
experiments."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[2] / "src" / "tipml"


def tipml_imports(package: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in (SRC / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tipml"):
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names if a.name.startswith("tipml"))
        out[str(path.relative_to(SRC))] = names
    return out


def test_the_domain_imports_nothing_of_ours_but_the_error_root() -> None:
    for module, names in tipml_imports("domain").items():
        outside = {n for n in names if not n.startswith("tipml.domain") and n != "tipml.errors"}
        assert outside == set(), module


def test_the_transport_does_not_import_features_or_experiments() -> None:
    for module, names in tipml_imports("events").items():
        upward = {n for n in names if n.startswith(("tipml.features", "tipml.experiments"))}
        assert upward == set(), module


def _imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
    return names


def test_only_the_registry_store_imports_mlflow() -> None:
    importers = {str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if "mlflow" in _imports_of(p)}
    assert importers == {"registry/store.py"}


def test_only_the_flows_module_imports_prefect() -> None:
    importers = {str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if "prefect" in _imports_of(p)}
    assert importers == {"pipelines/flows.py"}


def test_nothing_in_src_imports_the_notebooks() -> None:
    for path in SRC.rglob("*.py"):
        assert "notebooks" not in _imports_of(path), path
