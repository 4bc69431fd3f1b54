from __future__ import annotations

from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from tests.conftest import AUTH, make_settings
from tipml.domain.decisions import CANDIDATE_FIELDS, decode_decision
from tipml.serving.app import create_app


def body(n: int = 3, **extra: Any) -> dict[str, Any]:
    cats = ["sleep", "focus", "movement", "stress"]
    return {
        "user_id": "u-1",
        "candidates": [{"tip_id": f"t{i}", "category": cats[i % 4]} for i in range(n)],
        **extra,
    }


def test_ranks_all_candidates_sorted_with_greedy_propensities(client: TestClient) -> None:
    resp = client.post(
        "/score", json=body(4, profile_features={"favorite_category": "focus"}), headers=AUTH
    )
    assert resp.status_code == 200
    data = resp.json()
    assert data["policy"] == "greedy"
    assert data["model_version"].startswith("baseline")
    results = data["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4]
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert results[0]["tip_id"] == "t1"  # the favourite category wins when all else is equal
    assert [r["propensity"] for r in results] == [1.0, 0.0, 0.0, 0.0]
    assert {r["tip_id"] for r in results} == {"t0", "t1", "t2", "t3"}


def test_k_limits_results_and_ids_are_unique(client: TestClient) -> None:
    first = client.post("/score", json=body(10, k=3), headers=AUTH).json()
    second = client.post("/score", json=body(10, k=3), headers=AUTH).json()
    assert len(first["results"]) == 3
    assert first["score_id"] != second["score_id"]
    big_k = client.post("/score", json=body(2, k=50), headers=AUTH).json()
    assert len(big_k["results"]) == 2


def test_local_time_from_context_and_timezone_changes_hour_match(client: TestClient) -> None:
    profile = {"preferred_hour": 8, "timezone": "Asia/Tokyo"}
    at_8_tokyo = {"ts": "2026-11-26T23:00:00Z"}  # 08:00 in Tokyo
    at_20_tokyo = {"ts": "2026-11-27T11:00:00Z"}  # 20:00 in Tokyo
    one = body(1, profile_features=profile)
    morning = client.post("/score", json={**one, "context": at_8_tokyo}, headers=AUTH).json()
    evening = client.post("/score", json={**one, "context": at_20_tokyo}, headers=AUTH).json()
    assert morning["results"][0]["score"] > evening["results"][0]["score"]


def err(resp: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    data: dict[str, Any] = resp.json()
    assert set(data) <= {"error", "detail", "field", "request_id"}
    assert data["error"]
    assert data["detail"]
    assert "Traceback" not in data["detail"]
    if field is not None:
        assert data.get("field") == field, data
        assert field in data["detail"]
    return data


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"user_id": "u", "candidates": []}, "candidates"),
        ({"user_id": "u"}, "candidates"),
        ({"candidates": [{"tip_id": "a"}]}, "user_id"),
        ({"user_id": "u", "candidates": "tips"}, "candidates"),
        ({"user_id": "u", "candidates": [{"tip_id": 12}]}, "candidates.0.tip_id"),
        ({"user_id": "u", "candidates": [{"category": "sleep"}]}, "candidates.0.tip_id"),
        ({"user_id": "u", "candidates": [{"tip_id": "a", "source": "web"}]}, "candidates.0.source"),
        ({"user_id": "u", "candidates": [{"tip_id": "a"}], "k": 0}, "k"),
        ({"user_id": "u", "candidates": [{"tip_id": "a"}], "k": "two"}, "k"),
        (
            {"user_id": "u", "candidates": [{"tip_id": "a"}], "context": {"ts": "yesterday"}},
            "context.ts",
        ),
        ({"user_id": "u", "candidates": [{"tip_id": "a"}], "surprise": 1}, "surprise"),
        (
            {"user_id": "u", "candidates": [{"tip_id": "a"}], "profile_features": [1]},
            "profile_features",
        ),
    ],
)
def test_bad_input_is_422_naming_the_field(
    client: TestClient, payload: dict[str, Any], field: str
) -> None:
    err(client.post("/score", json=payload, headers=AUTH), 422, field)


def test_duplicate_tip_ids_name_the_duplicate(client: TestClient) -> None:
    payload = {"user_id": "u", "candidates": [{"tip_id": "a"}, {"tip_id": "b"}, {"tip_id": "a"}]}
    data = err(client.post("/score", json=payload, headers=AUTH), 422, "candidates.2.tip_id")
    assert "'a'" in data["detail"]
    assert "candidates.0" in data["detail"]


def test_too_many_candidates(tmp_path: Any, gateway_file: Any) -> None:
    settings = make_settings(tmp_path, max_candidates=5, gateway_config=gateway_file("ok"))
    with TestClient(create_app(settings)) as c:
        assert c.post("/score", json=body(5), headers=AUTH).status_code == 200
        data = err(c.post("/score", json=body(6), headers=AUTH), 422, "candidates")
        assert "at most 5" in data["detail"]


@pytest.mark.parametrize(
    ("features", "field"),
    [
        ({"completion_rate": "high"}, "profile_features.completion_rate"),
        ({"completion_rate": 1.5}, "profile_features.completion_rate"),
        ({"preferred_hour": 24}, "profile_features.preferred_hour"),
        ({"preferred_hour": 7.5}, "profile_features.preferred_hour"),
        ({"tip_volume_7d": -1}, "profile_features.tip_volume_7d"),
        ({"favorite_category": "gardening"}, "profile_features.favorite_category"),
        ({"timezone": "Mars/Olympus"}, "profile_features.timezone"),
        ({"notifications_enabled": 1}, "profile_features.notifications_enabled"),
    ],
)
def test_bad_profile_feature_is_422_naming_it(
    client: TestClient, features: dict[str, Any], field: str
) -> None:
    data = err(
        client.post("/score", json=body(2, profile_features=features), headers=AUTH), 422, field
    )
    assert data["error"] == "invalid_profile_feature"


def test_unknown_profile_features_are_ignored_and_counted(client: TestClient) -> None:
    features = {"completion_rate": 0.5, "brand_new_feature": 3, "another one!": True}
    resp = client.post("/score", json=body(2, profile_features=features), headers=AUTH)
    assert resp.status_code == 200
    metrics = client.get("/metrics").text
    assert 'tipml_unknown_profile_features_total{feature="brand_new_feature"} 1.0' in metrics
    assert 'tipml_unknown_profile_features_total{feature="_invalid_name"} 1.0' in metrics


def test_missing_and_null_profile_features_are_treated_as_missing(client: TestClient) -> None:
    a = client.post("/score", json=body(2, profile_features=None), headers=AUTH)
    b = client.post("/score", json=body(2, profile_features={"preferred_hour": None}), headers=AUTH)
    assert a.status_code == b.status_code == 200
    assert [r["score"] for r in a.json()["results"]] == [r["score"] for r in b.json()["results"]]


def test_malformed_json_is_422(client: TestClient) -> None:
    resp = client.post(
        "/score", content=b'{"user_id": ', headers={**AUTH, "content-type": "application/json"}
    )
    data = err(resp, 422, "body")
    assert "JSON" in data["detail"]


def test_body_size_limit(tmp_path: Any, gateway_file: Any) -> None:
    settings = make_settings(tmp_path, max_body_bytes=2048, gateway_config=gateway_file("ok"))
    with TestClient(create_app(settings)) as c:
        data = err(c.post("/score", json=body(200), headers=AUTH), 413)
        assert data["error"] == "payload_too_large"

        def chunks() -> Any:  # no content-length: the limit is enforced while streaming
            for _ in range(10):
                yield b" " * 512

        streamed = c.post(
            "/score", content=chunks(), headers={**AUTH, "content-type": "application/json"}
        )
        assert streamed.status_code == 413
        assert streamed.json()["error"] == "payload_too_large"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-wrong-token"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer"},
    ],
)
def test_auth_required(client: TestClient, headers: dict[str, str]) -> None:
    data = err(client.post("/score", json=body(2), headers=headers), 401, "authorization")
    assert data["error"] == "unauthorized"
    err(client.post("/generate", json={"user_id": "u"}, headers=headers), 401)


def test_request_id_echoed_or_generated(client: TestClient) -> None:
    given = client.post("/score", json=body(2), headers={**AUTH, "X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = client.get("/healthz")
    assert len(made.headers["x-request-id"]) == 32
    hostile = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert hostile.headers["x-request-id"] != "bad id\twith spaces"
    assert client.post("/score", json={}, headers=AUTH).headers["x-request-id"]


def test_unknown_route_is_json_404(client: TestClient) -> None:
    data = err(client.get("/nope"), 404)
    assert data["error"] == "not_found"
    assert client.get("/score").status_code == 405


def _stage_counts(metrics: str) -> dict[str, float]:
    prefix = 'tipml_score_stage_seconds_count{stage="'
    return {
        line[len(prefix) :].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(prefix)
    }


def test_every_score_stage_is_timed_once_per_request(client: TestClient) -> None:
    from tipml.serving.metrics import SCORE_STAGES

    for _ in range(3):
        assert client.post("/score", json=body(5), headers=AUTH).status_code == 200
    assert client.post("/score", json={"user_id": "u"}, headers=AUTH).status_code == 422
    counts = _stage_counts(client.get("/metrics").text)
    # a refused body reaches no stage: only the three answered requests are timed
    assert counts == dict.fromkeys(SCORE_STAGES, 3.0)


def test_metrics_stay_this_process_s_when_feast_sets_the_multiprocess_variable(
    client: TestClient, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importing Feast sets ``PROMETHEUS_MULTIPROC_DIR`` in the process (feast/metrics.py);
    ``/metrics`` of a single process must still report its own counters (it read the empty
    multi-process directory instead: a full test run's page lost ``/score``'s counters)."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    body = {"user_id": "u-m", "candidates": [{"tip_id": "a"}, {"tip_id": "b"}]}
    assert client.post("/score", json=body, headers=AUTH).status_code == 200
    page = client.get("/metrics").text
    assert 'tipml_http_requests_total{method="POST",route="/score",status="200"} 1.0' in page


def test_score_answered_at_the_edge_keeps_the_contract_of_the_framework_path(
    client: TestClient,
) -> None:
    """A JSON POST to ``/score`` is answered by the middleware's fast route; the framework's
    route still answers what it declines. Same answers either way: the ranking, the
    errors of the app's own handlers, the request id, the route's metrics."""
    fast = client.post("/score", json=body(3), headers={**AUTH, "X-Request-ID": "fast-1"})
    assert fast.status_code == 200
    assert fast.headers["x-request-id"] == "fast-1"
    assert fast.headers["content-type"] == "application/json"
    assert int(fast.headers["content-length"]) == len(fast.content)
    assert [r["rank"] for r in fast.json()["results"]] == [1, 2, 3]
    # a chunked body (no content-length) is buffered by the middleware, then answered
    chunked = client.post(
        "/score",
        content=iter([b'{"user_id": "u-1", "candidates": ', b'[{"tip_id": "a"}]}']),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert chunked.status_code == 200
    assert chunked.json()["results"][0]["tip_id"] == "a"
    # errors: the same bodies as the framework's path, with the request id
    refused = client.post("/score", json={"user_id": "u"}, headers={**AUTH, "X-Request-ID": "r-2"})
    data = err(refused, 422, "candidates")
    assert data["request_id"] == "r-2"
    assert refused.headers["x-request-id"] == "r-2"
    err(client.post("/score", json=body(2)), 401, "authorization")
    err(client.post("/score", content=b"{", headers=AUTH), 422, "body")
    # declined (not JSON): the framework's route answers, as before
    declined = client.post(
        "/score", content=b"user_id=u", headers={**AUTH, "Content-Type": "text/plain"}
    )
    assert declined.status_code == 422
    # generated request ids: 32 hex characters, never repeated
    made = {client.post("/score", json=body(1), headers=AUTH).headers["x-request-id"]}
    made.add(client.post("/score", json=body(1), headers=AUTH).headers["x-request-id"])
    assert len(made) == 2
    assert all(len(r) == 32 and int(r, 16) >= 0 for r in made)
    page = client.get("/metrics").text
    assert 'tipml_http_requests_total{method="POST",route="/score",status="200"} 4.0' in page
    assert 'tipml_http_requests_total{method="POST",route="/score",status="422"} 3.0' in page
    assert 'tipml_http_requests_total{method="POST",route="/score",status="401"} 1.0' in page


def test_a_failing_decision_record_is_logged_and_the_answer_stands(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The decision record runs after the answer is sent: its failure (a bug, never a client
    mistake) is logged with the route; the client already has its 200."""
    service = client.app.state.runtime.score_service  # type: ignore[attr-defined]

    class Broken:
        def new_id(self, kind: str) -> str:
            return "d1"

        def record(self, kind: str, decision_id: str, payload: dict[str, Any]) -> None:
            raise RuntimeError("sink broken")

    service.decisions = Broken()
    with caplog.at_level("ERROR", logger="tipml.serving"):
        resp = client.post("/score", json=body(2), headers=AUTH)
    assert resp.status_code == 200
    assert len(resp.json()["results"]) == 2
    failed = [r for r in caplog.records if r.getMessage() == "after-response work failed"]
    assert len(failed) == 1
    assert failed[0].exc_info is not None
    assert "sink broken" in str(failed[0].exc_info[1])


def test_candidate_defaults_reach_the_decision_log(client: TestClient) -> None:
    """Candidates arrive as typed dicts (ADR 0018): what a candidate leaves out gets the
    contract's defaults — no category, no tags, source ``curated`` — in the decision log."""
    service = client.app.state.runtime.score_service  # type: ignore[attr-defined]
    logged: list[dict[str, Any]] = []

    class Capture:
        def new_id(self, kind: str) -> str:
            return f"d{len(logged)}"

        def record(self, kind: str, decision_id: str, payload: dict[str, Any]) -> None:
            logged.append(payload)

    service.decisions = Capture()
    full = {"tip_id": "b", "category": "sleep", "tags": ["evening"], "source": "generated"}
    resp = client.post(
        "/score", json={"user_id": "u-d", "candidates": [{"tip_id": "a"}, full]}, headers=AUTH
    )
    assert resp.status_code == 200
    (logged_decision,) = logged
    assert list(logged_decision["candidates"]) == list(CANDIDATE_FIELDS)  # logged as columns
    decision = decode_decision(orjson.dumps(logged_decision))  # as every reader reads it
    got = {c["tip_id"]: (c["category"], c["tags"], c["source"]) for c in decision["candidates"]}
    assert got == {"a": (None, [], "curated"), "b": ("sleep", ["evening"], "generated")}
    # a candidate that is not an object is refused by name
    bad = client.post("/score", json={"user_id": "u", "candidates": ["a"]}, headers=AUTH)
    assert err(bad, 422, "candidates.0")["detail"].startswith("candidates.0: ")


def test_generated_request_ids_are_unique_across_a_fork() -> None:
    """Ids come from a per-process random prefix and a counter: a forked child (a worker
    started by fork) draws its own prefix, so two processes never hand out the same id."""
    import os

    from tipml.serving.middleware import _request_ids

    first = _request_ids.next()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, _request_ids.next().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    second = _request_ids.next()
    assert child[:16] != first[:16]
    assert second[:16] == first[:16]
    assert int(second[16:], 16) == int(first[16:], 16) + 1
    assert len({first, child, second}) == 3


def _lag(metrics: str, suffix: str) -> float:
    name = f"tipml_event_loop_lag_seconds_{suffix}"
    return next(float(ln.rsplit(" ", 1)[1]) for ln in metrics.splitlines() if ln.startswith(name))


def test_a_stalled_event_loop_shows_in_the_loop_lag_metric(client: TestClient) -> None:
    """A callback that holds the app's loop for 80 ms delays every request behind it, and no
    request's own clock sees that wait: ``tipml_event_loop_lag_seconds`` does."""
    import time

    page = client.get("/metrics").text
    slow_before = _lag(page, "count") - _lag(page, 'bucket{le="0.05"}')
    assert client.portal is not None
    client.portal.call(time.sleep, 0.08)  # runs on the app's loop thread, holding it
    time.sleep(0.1)  # the watch wakes (late) and observes
    page = client.get("/metrics").text
    slow = _lag(page, "count") - _lag(page, 'bucket{le="0.05"}')
    assert slow - slow_before >= 1, "the 80 ms stall is not in the histogram"
    assert _lag(page, "sum") >= 0.06
