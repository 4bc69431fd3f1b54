"""The learning loop as Prefect flows (issue 9, item 7): ``tipml-train`` and ``tipml-promote``
run in process with their task runs recorded by Prefect; a failed gate fails the flow run with
the gate's one-line reason; ``tipml train --serve --interval-s`` registers a scheduled
deployment on a real Prefect server and its scheduled run trains and registers a model."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.learning.conftest import Traffic
from tipml.net import free_port
from tipml.pipelines.dataset import DatasetSpec
from tipml.pipelines.evaluate import GateConfig
from tipml.pipelines.flows import deployment, promote_flow, train_flow
from tipml.registry.store import Registry

LATER = datetime.now(UTC) + timedelta(days=1)
SPEC = DatasetSpec(wait_s=600)
GATES = GateConfig(max_gap={"auc": 0.5, "log_loss": 0.5, "ece": 0.3})
GATES_JSON = '{"max_gap": {"auc": 0.5, "log_loss": 0.5, "ece": 0.3}}'
TASKS = {"compact-archive", "build-training-set", "train-and-evaluate", "register-challenger"}


async def _runs(flow_run_id: Any) -> tuple[Any, list[Any]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return run, tasks


def test_train_and_promote_run_as_prefect_flows(traffic: Traffic) -> None:
    state = train_flow(traffic.settings, spec=SPEC, gates=GATES, as_of=LATER, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.version == "1"
    assert result.aliases == {"challenger": "1", "shadow": "1"}
    run, tasks = asyncio.run(_runs(state.state_details.flow_run_id))
    assert run.state.is_completed()
    assert {t.name.rsplit("-", 1)[0] for t in tasks} == TASKS
    assert all(t.state.is_completed() for t in tasks)

    moved = promote_flow(traffic.settings, "1", reason="flows test", by="ci")
    assert moved == {"alias": "champion", "version": "1", "previous": None}
    assert Registry.from_settings(traffic.settings).aliases() == {
        "challenger": "1",
        "champion": "1",
    }


def test_a_failed_gate_fails_the_flow_run_with_its_reason(traffic: Traffic) -> None:
    before = [v.version for v in Registry.from_settings(traffic.settings).versions()]
    state = train_flow(
        traffic.settings,
        spec=SPEC,
        gates=GateConfig(min_auc=0.99),
        as_of=LATER,
        return_state=True,
    )
    assert state.is_failed()
    assert "not registered: auc = 0." in (state.message or "")
    assert [v.version for v in Registry.from_settings(traffic.settings).versions()] == before


def test_the_deployment_carries_its_schedule_and_json_parameters() -> None:
    spec = DatasetSpec(start=datetime(2026, 11, 1, tzinfo=UTC), wait_s=900)
    from tipml.cli.learn import deployment_parameters

    parameters = deployment_parameters(spec, True, False, {"min_auc": 0.6})
    dep = deployment(name="nightly", cron="0 3 * * *", interval_s=None, parameters=parameters)
    assert dep.name == "nightly"
    assert [s.schedule.cron for s in dep.schedules] == ["0 3 * * *"]
    assert DatasetSpec.from_dict(dep.parameters["spec"]) == spec
    assert dep.parameters["shadow"] is False
    assert GateConfig.from_dict(dep.parameters["gates"]).min_auc == 0.6


def _prefect_server(home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env["DO_NOT_TRACK"] = "1"
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    return subprocess.Popen(
        [*command, "--port", str(port)],
        # the scheduler service creates a deployment's runs; every 5 s instead of 60 here
        env={
            **env,
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _api(api: str, path: str, body: dict[str, Any] | None = None) -> Any:
    r = httpx.post(f"{api}{path}", json=body or {}, timeout=10)
    r.raise_for_status()
    return r.json()


def test_serve_registers_a_scheduled_deployment_whose_runs_train(
    traffic: Traffic, tmp_path: Path
) -> None:
    """The documented deployment command against a real Prefect server: the server schedules
    the nightly runs, and a run of the deployment trains on the decision log and registers
    the next version."""
    port = free_port()
    server = _prefect_server(tmp_path / "prefect-server", port)
    api = f"http://127.0.0.1:{port}/api"
    serve = None
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"{api}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(healthy, 180, "the Prefect server")
        known = {v.version for v in Registry.from_settings(traffic.settings).versions()}
        command = [
            sys.executable, "-m", "tipml", "train", "--serve", "--cron", "0 3 * * *",
            "--wait-s", "600", "--deployment", "ci", "--no-shadow", "--gates", GATES_JSON,
        ]  # fmt: skip
        env = {
            **os.environ,
            "PREFECT_API_URL": api,
            "TIPML_DATA_DIR": str(traffic.settings.data_dir),
        }
        serve = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def deployed() -> Any:
            return next((d for d in _api(api, "/deployments/filter") if d["name"] == "ci"), None)

        ci = _wait(deployed, 120, "the deployment")
        assert ci["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
        assert ci["parameters"]["shadow"] is False
        assert DatasetSpec.from_dict(ci["parameters"]["spec"]).wait_s == 600

        def scheduled() -> list[Any]:
            runs = _api(api, "/flow_runs/filter", {"deployments": {"id": {"any_": [ci["id"]]}}})
            return [r for r in runs if r["state"]["type"] == "SCHEDULED"]

        nightly = _wait(scheduled, 120, "the server to schedule the nightly runs")
        assert {r["expected_start_time"][11:16] for r in nightly} == {"03:00"}

        # what `prefect deployment run tipml-train/ci --param as_of=…` does: the served runner
        # picks it up (as_of: the simulated decisions' reaction waits have passed)
        run = _api(
            api,
            f"/deployments/{ci['id']}/create_flow_run",
            {"parameters": {"as_of": LATER.isoformat()}},
        )

        def finished() -> Any:
            state = httpx.get(f"{api}/flow_runs/{run['id']}", timeout=10).json()["state"]
            return state if state["type"] in {"COMPLETED", "FAILED", "CRASHED"} else None

        state = _wait(finished, 300, "the deployment's run")
        assert state["type"] == "COMPLETED", state["message"]
        made = {v.version for v in Registry.from_settings(traffic.settings).versions()} - known
        assert len(made) == 1
        assert Registry.from_settings(traffic.settings).aliases()["challenger"] in made
    finally:
        for proc in (serve, server):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
