"""``deploy/compose.yaml`` cannot be run here (no images can be pulled, no compose plugin):
what can be checked is checked — every tipml setting it sets exists, every tipml command
it runs parses, the NATS nodes route to each other, and it validates with
``docker compose config`` where that is available."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tipml.cli.app import app
from tipml.settings import Settings

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose.yaml"


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def test_every_tipml_setting_in_the_compose_file_exists() -> None:
    known = {f"TIPML_{name.upper()}" for name in Settings.model_fields}
    tipml = {n: s for n, s in _services().items() if s.get("image", "").startswith("tipml")}
    assert {"serve", "consume", "learner", "train"} <= set(tipml)
    # every process that archives or reads the archive sees the same location
    assert "archiver" in tipml["consume"]["command"]
    for name in ("consume", "train"):
        volume, path = tipml[name]["volumes"][0].split(":")
        assert (volume, path) == ("offline", tipml[name]["environment"]["TIPML_ARCHIVE_DIR"])
    for name, service in tipml.items():
        unknown = {k for k in service["environment"] if k.startswith("TIPML_")} - known
        assert not unknown, f"{name}: {unknown}"
        assert service["environment"]["TIPML_STREAM_REPLICAS"] == "3"


def test_every_tipml_command_in_the_compose_file_parses() -> None:
    runner = CliRunner()
    for name, service in _services().items():
        if not service.get("image", "").startswith("tipml"):
            continue
        argv = shlex.split(service["command"])
        assert argv[0] == "tipml", name
        # the options parse: --help after them exits 0 without running the command
        result = runner.invoke(app, [*argv[1:], "--help"])
        assert result.exit_code == 0, f"{name}: {result.output}"


def test_the_nats_nodes_route_to_each_other() -> None:
    services = _services()
    nodes = sorted(n for n in services if n.startswith("nats-"))
    assert len(nodes) == 3
    url = services["serve"]["environment"]["TIPML_NATS_URL"]
    assert url.split(",") == [f"nats://{n}:4222" for n in nodes]
    for node in nodes:
        args = shlex.split(services[node]["command"])
        routes = args[args.index("--routes") + 1].split(",")
        assert sorted(routes) == [f"nats://{n}:6222" for n in nodes if n != node]
        assert args[args.index("-n") + 1] == node


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="docker compose is not installed here",
)
def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        env={"TIPML_API_TOKENS": "a-token-of-sixteen-chars", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
