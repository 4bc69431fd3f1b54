"""The OpenAPI document is the contract: schemathesis, every check, 100 examples per operation,
against a real ``tipml serve`` (uvicorn, the real app, a real nats-server, LiteLLM in front of
the stub provider). 0 failures: nothing the document allows is refused, nothing it forbids is
accepted, no 5xx, every response matches its documented status, media type and schema."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import TOKEN

ROOT = Path(__file__).parents[2]


def test_the_service_keeps_its_openapi_contract(served: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.contract.st_hooks",
        "PYTHONPATH": str(ROOT),
        "NO_COLOR": "1",
    }
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{served}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "100",
            "--seed",
            "20261128",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path / "report"),
        ],
        env=env,
        cwd=tmp_path,  # schemathesis keeps a cache in its working directory
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    summary = result.stdout[-6000:]
    assert result.returncode == 0, summary
    assert "5 passed" in summary or "passed" in summary
