"""Every command the docs show runs as written (issue 7, finding 8): each benchmark as its
docstring says (`.venv/bin/python bench/<name>.py`, from the repository root or anywhere
else), each `tipml` command of the README's command list, each with `--help`."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
_BENCH_LINE = re.compile(r"^\s*\.venv/bin/python (bench/[\w/]+\.py)")
_WORD = re.compile(r"^[a-z][a-z-]*(?:\|[a-z][a-z-]*)*$")


def bench_commands() -> list[str]:
    out = []
    for path in sorted((ROOT / "bench").glob("bench_*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        found = [m.group(1) for line in doc.splitlines() if (m := _BENCH_LINE.match(line))]
        assert found, f"{path.name}: the docstring shows no command"
        out.extend(found)
    return out


def tipml_commands() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Commands", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    commands: list[list[str]] = []
    for line in block.splitlines():
        words = re.split(r"\s{2,}", line.strip())[0].split()  # the description follows 2+ spaces
        if not words or words[0] != "tipml":
            continue
        path: list[str] = []
        for word in words[1:]:
            if not _WORD.match(word):
                break
            path.append(word)
        alternatives = path[-1].split("|") if path else [""]
        for alt in alternatives:
            commands.append([*path[:-1], alt] if path else [])
    assert len(commands) >= 8
    return commands


@pytest.mark.parametrize("script", bench_commands())
@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_benchmarks_run_as_their_docstrings_say(script: str, where: str, tmp_path: Path) -> None:
    cwd = ROOT if where == "root" else tmp_path
    result = subprocess.run(
        [sys.executable, str(ROOT / script) if where != "root" else script, "--help"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower()


@pytest.mark.parametrize("command", tipml_commands(), ids=lambda c: " ".join(c) or "tipml")
def test_readme_commands_exist(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tipml", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-1000:] + result.stderr[-1000:]
    assert "Usage" in result.stdout
