"""/readyz tells the truth about every component it depends on (issue 7, finding 9)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_settings
from tipml.features import feast_store
from tipml.serving.app import create_app


def _ready(client: TestClient, timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get("/readyz").json()
        if "online_store" in body["components"] and "starting" not in str(
            body["components"]["online_store"]
        ):
            return body
        time.sleep(0.05)
    return body


def test_readyz_reports_an_unavailable_feast_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Unreachable:
        def __init__(self, settings: Any) -> None:
            raise ConnectionError("redis at 127.0.0.1:1 refused the connection")

    monkeypatch.setattr(feast_store, "FeastOnlineStore", Unreachable)
    settings = make_settings(tmp_path, local_llm="off", online_store="feast", feast_online="redis")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        body = _ready(client)
        store = body["components"]["online_store"]
        assert store["ok"] is False
        assert "refused the connection" in store["detail"]
        assert client.get("/readyz").status_code == 503


def test_readyz_reports_the_decision_log_and_the_tip_view(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, local_llm="off")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 20
        components: dict[str, Any] = {}
        while time.monotonic() < deadline:
            components = client.get("/readyz").json()["components"]
            if components.get("tip_view", {}).get("ok"):
                break
            time.sleep(0.05)
        assert components["tip_view"]["ok"], components
        assert components["decision_log"]["ok"], components
        assert "published" in components["decision_log"]["detail"]
