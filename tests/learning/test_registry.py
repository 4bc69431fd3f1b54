"""The registry (MLflow, SQLite by default and PostgreSQL), model cards with rollout history,
safe loading, and serving that follows the aliases: champion + shadow, hot swap under load,
refusals that keep the current model (issue 9, items 4-6)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import AUTH
from tests.learning.conftest import Traffic
from tipml.errors import ConfigError
from tipml.pipelines.dataset import DatasetSpec
from tipml.pipelines.evaluate import GateConfig
from tipml.pipelines.flows import promote_flow, train_flow
from tipml.pipelines.train import TrainParams
from tipml.registry.cards import render
from tipml.registry.store import SHA_TAG, NotFound, Registry, UnsafeModel
from tipml.serving.app import create_app
from tipml.settings import Settings

LATER = datetime.now(UTC) + timedelta(days=1)
SPEC = DatasetSpec(wait_s=600)
# these tests are about registration and serving; the gates have their own tests, and a few
# hundred held-out rows per region make the AUC gap too noisy for the default limits here
GATES = GateConfig(max_gap={"auc": 0.5, "log_loss": 0.5, "ece": 0.3})
# The second version exists to be a shadow beside the champion, whatever its quality: its
# off-policy comparison with the champion (a 5-leaf model against a 31-leaf one) depends on
# the simulated traffic, and CI once saw it confidently worse (upper bound of the difference
# -0.0028), which the OPE gate rightly refused. Here that gate is opened; the others hold.
SHADOW_GATES = replace(GATES, ope_tolerance=1.0)


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tipml", *args],
        env={
            **os.environ,
            "TIPML_DATA_DIR": str(settings.data_dir),
            **({"TIPML_MLFLOW_URI": settings.mlflow_uri} if settings.mlflow_uri else {}),
        },
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture(scope="module")
def versions(traffic: Traffic) -> dict[str, str]:
    """v1: champion; v2: a different model in shadow."""
    first = train_flow(traffic.settings, spec=SPEC, gates=GATES, as_of=LATER)
    assert first.version == "1"
    promote_flow(traffic.settings, "1", reason="first trained model beats the baseline", by="ci")
    second = train_flow(
        traffic.settings,
        spec=SPEC,
        gates=SHADOW_GATES,
        params=TrainParams(num_leaves=5, seed=11),
        as_of=LATER,
    )
    assert second.version == "2"
    return {"champion": "1", "shadow": "2"}


def _plant(registry: Registry, payload: bytes, like: str, data: str = "model.lgb") -> str:
    """A new version whose artifact is ``payload`` — registered with its true SHA-256, as an
    attacker with write access to the registry would."""
    import mlflow

    mv = registry.client.get_model_version(registry.name, like)
    folder = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=mv.source, tracking_uri=registry.uri, dst_path=tempfile.mkdtemp()
        )
    )
    (folder / "model.lgb").write_bytes(payload)
    if data != "model.lgb":  # the MLmodel names another file as the model
        mlmodel = folder / "MLmodel"
        mlmodel.write_text(mlmodel.read_text().replace("data: model.lgb", f"data: {data}"))
    mlflow.set_tracking_uri(registry.uri)
    with mlflow.start_run(experiment_id=registry._experiment_id()) as run:
        mlflow.log_artifacts(str(folder), artifact_path="model")
    planted = registry.client.create_model_version(
        registry.name,
        source=f"{run.info.artifact_uri}/model",
        run_id=run.info.run_id,
        tags={SHA_TAG: hashlib.sha256(payload).hexdigest()},
    )
    return str(planted.version)


class _Unpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))  # unpickling this creates the marker file


def test_a_registered_version_has_a_card_and_a_rollout_history(
    traffic: Traffic, versions: dict[str, str]
) -> None:
    registry = Registry.from_settings(traffic.settings)
    assert registry.aliases() == {"champion": "1", "challenger": "2", "shadow": "2"}
    card = registry.card(registry.resolve("tipml-ranker@champion"))
    assert card.version == "1"
    assert card.training_set_hash
    assert len(card.training_set_hash) == 64
    assert card.inputs[0]["source"]
    assert card.inputs[0]["dtype"] == "float64"
    assert card.metrics["auc"] > 0.5
    assert {"platform", "region", "tenure"} <= set(card.fairness)
    events = [(e.alias, e.previous, e.version, e.by) for e in card.rollout]
    assert ("champion", None, "1", "ci") in events
    assert ("shadow", "1", None, "ci") in events  # promoted out of shadow
    assert ("challenger", "1", "2", events[-1][3]) in events or any(
        e[0] == "challenger" and e[2] == "2" for e in events
    )
    text = render(card)
    for heading in ("Intended use", "Inputs", "Fairness", "Off-policy", "Limitations", "Rollout"):
        assert heading in text
    assert "first trained model beats the baseline" in text

    shown = cli(traffic.settings, "registry", "card", "tipml-ranker@champion")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("# Model card: tipml-ranker version 1")
    listed = cli(traffic.settings, "registry", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["version"]: r for r in json.loads(listed.stdout)}
    assert rows["1"]["aliases"] == ["champion"]
    assert rows["2"]["aliases"] == ["challenger", "shadow"]
    assert rows["1"]["sha256"] == card.sha256


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("registry", "card", "tipml-ranker@nope"), "alias 'nope' is not set"),
        (("registry", "card", "tipml-ranker/99"), "version '99' does not exist"),
        (("registry", "promote", "tipml-ranker", "99", "--reason", "x"), "version '99'"),
        (("registry", "promote", "tipml-ranker", "1", "--to", "prod", "--reason", "x"), "alias"),
        (("registry", "promote", "other-model", "1", "--reason", "x"), "other-model"),
    ],
)
def test_unknown_alias_or_version_names_what_exists(
    traffic: Traffic, versions: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    result = cli(traffic.settings, *args)
    assert result.returncode != 0
    assert message in result.stderr
    if "99" in args or "nope" in " ".join(args):
        assert "has versions 1 (champion), 2" in " ".join(result.stderr.split())


def test_a_pickle_is_refused_without_being_unpickled(
    traffic: Traffic, versions: dict[str, str], tmp_path: Path
) -> None:
    registry = Registry.from_settings(traffic.settings)
    marker = tmp_path / "unpickled"
    planted = _plant(registry, pickle.dumps(_Unpickled(marker)), like="1")
    with pytest.raises(UnsafeModel, match="is a pickle"):
        registry.load(planted)
    assert not marker.exists()


def test_an_mlmodel_pointing_outside_its_artifact_is_refused(
    traffic: Traffic, versions: dict[str, str]
) -> None:
    registry = Registry.from_settings(traffic.settings)
    text = registry.load("1").text
    planted = _plant(registry, text.encode(), like="1", data="../../../../etc/hostname")
    with pytest.raises(UnsafeModel, match="points outside the artifact"):
        registry.load(planted)


def test_an_artifact_changed_after_registration_is_refused(
    traffic: Traffic, versions: dict[str, str]
) -> None:
    registry = Registry.from_settings(traffic.settings)
    text = registry.load("2").text
    tampered = _plant(registry, text.encode(), like="2")  # registered with the true hash …
    mv = registry.client.get_model_version(registry.name, tampered)
    path = Path(mv.source.removeprefix("file://")) / "model.lgb"
    path.write_text(text.replace("shrinkage=", "shrinkage=9", 1))  # … then changed on disk
    with pytest.raises(UnsafeModel, match="differs from the"):
        registry.load(tampered)
    with pytest.raises(NotFound, match="has versions"):
        registry.resolve("77")


def _serving(traffic: Traffic, **overrides: Any) -> Settings:
    return traffic.settings.model_copy(
        update={"scorer": "registry", "registry_poll_s": 0.3, **overrides}
    )


SCORE = {
    "user_id": "u-1",
    "candidates": [
        {"tip_id": f"t{i}", "category": "sleep" if i % 2 else "focus"} for i in range(8)
    ],
    "profile_features": {"favorite_category": "sleep", "completion_rate": 0.5},
}


@pytest.fixture
def serving(traffic: Traffic, versions: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app(_serving(traffic))) as client:
        yield client


def test_serving_scores_with_the_champion_and_logs_the_shadow(serving: TestClient) -> None:
    r = serving.post("/score", json=SCORE, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == "tipml-ranker/1", serving.get("/readyz").json()
    ready = serving.get("/readyz").json()["components"]["registry"]
    assert ready["ok"]
    assert "scoring with tipml-ranker/1" in ready["detail"]
    assert "shadow 2" in ready["detail"]
    runtime = serving.app.state.runtime  # type: ignore[attr-defined]
    assert runtime.score_service.shadow.version == "tipml-ranker/2"


def test_promotion_under_load_swaps_within_seconds_and_fails_nothing(
    traffic: Traffic, serving: TestClient
) -> None:
    statuses: list[int] = []
    versions_seen: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            r = serving.post("/score", json=SCORE, headers=AUTH)
            statuses.append(r.status_code)
            if r.status_code == 200:
                versions_seen.append(r.json()["model_version"])

    worker = threading.Thread(target=load)
    worker.start()
    try:
        time.sleep(0.5)
        promote_flow(traffic.settings, "2", reason="shadow agreed and earned more", by="ci")
        promoted = time.monotonic()
        while time.monotonic() - promoted < 10 and (
            not versions_seen or versions_seen[-1] != "tipml-ranker/2"
        ):
            time.sleep(0.05)
        swapped_after = time.monotonic() - promoted
        time.sleep(0.3)
    finally:
        stop.set()
        worker.join()
        promote_flow(traffic.settings, "1", reason="restore for the next test", by="ci")
    assert swapped_after < 10
    assert set(statuses) == {200}
    assert versions_seen[0] == "tipml-ranker/1"
    assert versions_seen[-1] == "tipml-ranker/2"
    first_new = versions_seen.index("tipml-ranker/2")
    assert set(versions_seen[first_new:]) == {"tipml-ranker/2"}  # no flapping back


def test_a_refused_version_keeps_the_current_model_and_readyz_says_why(
    traffic: Traffic, serving: TestClient, tmp_path: Path
) -> None:
    registry = Registry.from_settings(traffic.settings)
    marker = tmp_path / "unpickled-in-serving"
    planted = _plant(registry, pickle.dumps(_Unpickled(marker)), like="1")
    promote_flow(traffic.settings, planted, reason="attack", by="mallory")
    try:
        deadline = time.monotonic() + 10
        detail = ""
        while time.monotonic() < deadline:
            detail = serving.get("/readyz").json()["components"]["registry"]["detail"]
            if "not loaded" in detail:
                break
            time.sleep(0.1)
        assert f"champion not loaded: version {planted}" in detail
        assert "pickle" in detail
        r = serving.post("/score", json=SCORE, headers=AUTH)
        assert r.status_code == 200
        assert r.json()["model_version"] == "tipml-ranker/1"
        assert not marker.exists()
    finally:
        promote_flow(traffic.settings, "1", reason="restore", by="ci")


def test_an_unreachable_registry_serves_the_baseline_unless_a_model_is_required(
    traffic: Traffic,
) -> None:
    down = "postgresql://postgres@127.0.0.1:1/nowhere"
    with TestClient(create_app(_serving(traffic, mlflow_uri=down))) as client:
        r = client.post("/score", json=SCORE, headers=AUTH)
        assert r.status_code == 200
        assert r.json()["model_version"].startswith("baseline")
        ready = client.get("/readyz").json()["components"]["registry"]
        assert "registry unreachable" in ready["detail"]
        assert "scoring with baseline" in ready["detail"]
    with pytest.raises(ConfigError, match="no champion to serve"):
        create_app(_serving(traffic, mlflow_uri=down, registry_require_model=True))


def test_shadow_report_compares_shadow_and_champion_on_logged_traffic(
    traffic: Traffic, serving: TestClient
) -> None:
    for i in range(60):
        body = {**SCORE, "user_id": f"u-{i}"}
        assert serving.post("/score", json=body, headers=AUTH).status_code == 200
    deadline = time.monotonic() + 30
    result = cli(traffic.settings, "registry", "shadow-report", "--json")
    while time.monotonic() < deadline:
        result = cli(traffic.settings, "registry", "shadow-report", "--json")
        if (
            result.returncode == 0
            and json.loads(result.stdout).get("tipml-ranker/2", {}).get("decisions", 0) >= 60
        ):
            break
        time.sleep(1)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["tipml-ranker/2"]
    assert report["decisions"] >= 60
    assert 0 <= report["top1_agreement"] <= 1
    assert -1 <= report["rank_correlation"] <= 1
    assert report["shadow"]["dr"]["ci"][0] <= report["shadow"]["dr"]["ci"][1]


def test_postgresql_backend(traffic: Traffic, versions: dict[str, str]) -> None:
    import psycopg

    db = f"tipml_test_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True
    )
    admin.cursor().execute(f"CREATE DATABASE {db}")
    try:
        uri = f"postgresql://postgres@127.0.0.1:5432/{db}"
        settings = traffic.settings.model_copy(update={"mlflow_uri": uri})
        # only the simulated traffic: later tests' /score calls got no reactions
        window = DatasetSpec(wait_s=600, end=traffic.finished)
        result = train_flow(settings, spec=window, gates=GATES, as_of=LATER)
        registry = Registry.from_settings(settings)
        assert registry.uri == uri
        assert result.version == "1"
        promote_flow(settings, "1", reason="postgres round trip", by="ci")
        assert registry.aliases()["champion"] == "1"
        assert registry.load("1").text.startswith("tree\n")
        rollout = registry.card("1").rollout
        assert [(e.alias, e.version) for e in rollout if e.reason == "postgres round trip"] == [
            ("champion", "1")
        ]
        with TestClient(create_app(_serving(traffic, mlflow_uri=uri))) as client:
            r = client.post("/score", json=SCORE, headers=AUTH)
            assert r.json()["model_version"] == "tipml-ranker/1"
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.close()
