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
