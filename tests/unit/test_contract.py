"""Both sides of the recommender contract stay in step."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tipml.cli.serve import openapi_document
from tipml.features.profile_schema import PROFILE_FEATURES

CLIENT = Path(__file__).parents[2] / "clients" / "typescript"
_ENTRY = re.compile(
    r'^\s*\{\s*name:\s*"(?P<name>\w+)",\s*dtype:\s*"(?P<dtype>\w+)"(?P<rest>.*)\},?\s*$'
)


def _number(rest: str, key: str) -> float | None:
    match = re.search(rf"\b{key}:\s*(-?[\d.]+)", rest)
    return float(match.group(1)) if match else None


def test_committed_openapi_document_matches_the_app() -> None:
    committed = json.loads((CLIENT / "openapi.json").read_text())
    assert committed == openapi_document(), (
        "the API changed: run `tipml openapi` and commit clients/typescript/openapi.json"
    )


def test_typescript_registry_mirrors_the_profile_schema() -> None:
    source = (CLIENT / "src" / "profile" / "registry.ts").read_text()
    entries = {m["name"]: m for m in map(_ENTRY.match, source.splitlines()) if m}
    assert set(entries) == {f.name for f in PROFILE_FEATURES}
    for feature in PROFILE_FEATURES:
        entry = entries[feature.name]
        assert entry["dtype"] == feature.dtype, feature.name
        assert _number(entry["rest"], "min") == feature.min, feature.name
        assert _number(entry["rest"], "max") == feature.max, feature.name
        assert ("choices:" in entry["rest"]) == (feature.choices is not None), feature.name
