"""MLflow and Prefect report usage over the internet by default; tipml turns both off before
importing them (nothing in the project reaches the internet). Checked in a fresh interpreter
with the CI markers removed — both libraries also stay quiet in CI on their own, which would
hide a regression here."""

from __future__ import annotations

import os
import subprocess
import sys

CI_MARKERS = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "TF_BUILD", "JENKINS_URL")


def _run(code: str) -> str:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in CI_MARKERS and not k.startswith(("MLFLOW_", "PREFECT_", "DO_NOT_TRACK"))
    }
    env.pop("PYTEST_CURRENT_TEST", None)  # MLflow treats a pytest run as testing
    env.pop("PYTEST_VERSION", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_mlflow_telemetry_is_off_once_the_registry_is_built(tmp_path: object) -> None:
    code = f"""
from pathlib import Path
from tipml.registry.store import Registry
Registry("sqlite:///{tmp_path}/m.db", Path("{tmp_path}"))
from mlflow.telemetry.utils import is_telemetry_disabled
print(is_telemetry_disabled())
"""
    assert _run(code) == "True"


def test_prefect_usage_reports_are_off_once_the_flows_are_imported(tmp_path: object) -> None:
    code = f"""
import os
os.environ["TIPML_DATA_DIR"] = "{tmp_path}"
import tipml.pipelines.flows
from prefect._internal.analytics.enabled import is_telemetry_enabled
from prefect.settings import get_current_settings
print(is_telemetry_enabled(), get_current_settings().server.analytics_enabled)
"""
    assert _run(code) == "False False"
