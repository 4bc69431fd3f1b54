"""The ``tipml`` command as a user runs it: real subprocesses, real ports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import GatewayFile
from tipml.serving.prompts import VERSIONS
from tipml.testing.stub_llm import free_port


def run(
    args: list[str], env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tipml", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIPML_")}
    env.pop("DEFAULT_PROMPT_VERSION", None)
    env["TIPML_DATA_DIR"] = str(tmp_path / "data")
    env["COLUMNS"] = "200"
    return env


def test_serve_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    result = run(["serve", "--port", str(free_port())], clean_env(tmp_path), timeout=60)
    assert result.returncode == 2
    assert "TIPML_API_TOKENS" in result.stderr
    assert "Traceback" not in result.stderr


def test_prompts_list_shows_versions_and_hashes(tmp_path: Path) -> None:
    result = run(["prompts", "list"], clean_env(tmp_path), timeout=60)
    assert result.returncode == 0
    for key, version in VERSIONS.items():
        assert key in result.stdout
        assert version.content_hash[:16] in result.stdout


def test_demo_starts_the_service_and_drives_it(tmp_path: Path, gateway_file: GatewayFile) -> None:
    env = clean_env(tmp_path)
    env["TIPML_GATEWAY_CONFIG"] = str(gateway_file("ok"))
    result = run(
        [
            "demo",
            "--duration",
            "3",
            "--min-generations",
            "0",
            "--port",
            str(free_port()),
            "--users",
            "20",
            "--no-learn",  # the learning loop is tested in tests/learning
        ],
        env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    score_row = re.search(r"/score\s*│\s*(\d+)\s*│\s*(\d+)", out)
    generate_row = re.search(r"/generate\s*│\s*(\d+)\s*│\s*(\d+)", out)
    assert score_row, out
    assert generate_row, out
    assert int(score_row.group(1)) > 10
    assert int(score_row.group(2)) == 0  # no errors
    assert int(generate_row.group(1)) > 0
    assert "fallback rate: 0%" in out
    assert "Take a short walk outside after lunch today." in out  # the stub LLM's tips
    assert "expected reward of the top-ranked tip" in out
    assert (tmp_path / "data" / "serve.log").exists()
    # the events went through the bus and the consumers
    assert "dead letters: 0" in out
    published = int(re.search(r"events published: (\d+)", out).group(1))  # type: ignore[union-attr]
    assert published > 10
    # the simulator publishes keyed signals: its one partition's consumer took them (ADR 0019)
    assert re.search(r"signals-features-p0\s*│\s*lag 0, processed [1-9]", out), out
    assert re.search(r"feedback-rewards\s*│\s*lag 0, processed [1-9]", out), out
    # both packaged experiments ran and the report counted their exposures
    assert "experiments report" in out, out
    ab = re.search(r"prompt-version \(ab, prompt_version\)", out)
    assert ab, out
    rows = re.findall(r"^│ (v[123]|holdout)\s*│\s*(\d+)\s*│", out, re.MULTILINE)
    assert sum(int(n) for _, n in rows) > 0, out
    assert "prompt-bandit traffic by prompt version" in out, out
    assert list((tmp_path / "data" / "offline" / "signals").glob("date=*/part-*.parquet"))
