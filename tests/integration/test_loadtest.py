"""``tipml loadtest`` against a real ``tipml serve``: the traffic mix at the asked rate, counts
and latencies per route, errors by status, and a non-zero exit above the error budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import TOKEN
from tipml.net import free_port


def loadtest(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIPML_")}
    return subprocess.run(
        [sys.executable, "-m", "tipml", "loadtest", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_loadtest_drives_the_mix_at_the_rate_and_reports_each_route(served: str) -> None:
    out = loadtest(
        "--url", served, "--token", TOKEN, "--rate", "20", "--duration", "3",
        "--candidates", "30", "--generate-every", "5", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    score, generate = summary["routes"]["/score"], summary["routes"]["/generate"]
    assert score["requests"] == score["ok"] == 60  # 20/s for 3 s, every step scores
    assert generate["requests"] == generate["ok"] == 12  # steps 0, 5, …, 55
    assert score["errors"] == generate["errors"] == {}
    assert 0 < score["p50_ms"] <= score["p99_ms"] <= score["max_ms"]
    assert 10 <= score["rps"] <= 20.5  # 60 requests over the arrivals plus the last answers


def test_errors_are_counted_by_status_and_fail_the_run(served: str) -> None:
    out = loadtest(
        "--url", served, "--token", "not-the-token", "--rate", "10", "--duration", "1",
        "--generate-every", "0", "--json",
    )  # fmt: skip
    assert out.returncode == 1
    assert "error rate 100.0% above --max-error-rate 1.0%" in out.stderr
    score = json.loads(out.stdout)["routes"]["/score"]
    assert score["errors"] == {"401": 10}
    assert score["ok"] == 0
    assert score["p50_ms"] is None


def test_a_service_that_is_not_there_is_no_answer_not_a_crash() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = loadtest("--url", url, "--token", TOKEN, "--rate", "5", "--duration", "1", "--json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["routes"]["/score"]["errors"] == {"0": 5}


def test_bad_options_name_the_option() -> None:
    out = loadtest("--rate", "0", "--token", TOKEN)
    assert out.returncode == 2
    assert "--rate: must be > 0" in out.stderr
    out = loadtest("--candidates", "100000", "--token", TOKEN)
    assert out.returncode == 2
    assert "--candidates: 1 to" in out.stderr
