"""The management HTTP API through a real uvicorn server on a free loopback port (in a thread
of this process, so the one foreground retrain shares the test's warm imports)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import dagster as dg
import httpx
import pytest
import uvicorn

from solar_ml_pipeline.config import Settings, settings_from_env
from solar_ml_pipeline.interfaces import operations
from solar_ml_pipeline.interfaces.api import create_app
from solar_ml_pipeline.storage import open_store
from solar_ml_pipeline.storage.run_records import utc_now
from solar_ml_pipeline_tests.conftest import PERIOD, simulate_into
from solar_ml_pipeline_tests.interfaces.test_operations import (
    FALLBACK_REASON,
    put_on_fallback,
    run_record,
    save_constant_version,
    write_recent_readings,
)

TOKEN = "s3cret-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """uvicorn on 127.0.0.1:<free port>; logs propagate so a test can read them."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_config=None, log_level="info"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("api_home")
    env = {"SOLAR_ML_HOME": str(root / "home"), "MODEL_TYPE": "hist_gradient_boosting",
           "PERIODS_START": "2026-01-01"}
    store = open_store(settings_from_env(env))
    simulate_into(store, "t1", interval_minutes=5)
    store.close()
    return env


@pytest.fixture(scope="module")
def settings_with_token(home) -> Settings:
    return settings_from_env({**home, "API_TOKEN": TOKEN})


@pytest.fixture(scope="module")
def api(settings_with_token) -> Iterator[str]:
    with serving(settings_with_token) as url:
        yield url


@pytest.fixture(scope="module")
def client(api) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def api_store(settings_with_token):
    store = open_store(settings_with_token)
    yield store
    store.close()


@pytest.fixture(scope="module")
def foreground_retrain(client) -> httpx.Response:
    """One real retrain, end to end over HTTP; several tests read what it left."""
    return client.post("/api/ml/retrain", headers=AUTH,
                       json={"device_id": "t1", "period": PERIOD, "days": 7, "background": False})


def test_health_is_ok_when_the_store_answers(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "store": "sqlite"}


def test_an_unreachable_store_is_503_on_health_and_on_reads(tmp_path):
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where SOLAR_ML_HOME should be a directory")
    settings = settings_from_env({"SOLAR_ML_HOME": str(blocker)})
    with serving(settings) as url:
        health = httpx.get(f"{url}/healthz")
        runs = httpx.get(f"{url}/api/ml/runs")
    assert health.status_code == 503 and health.json()["status"] == "unavailable"
    assert runs.status_code == 503 and "SOLAR_ML_HOME" in runs.json()["detail"]


def test_foreground_retrain_waits_and_returns_the_run_record(foreground_retrain, client):
    assert foreground_retrain.status_code == 200, foreground_retrain.text
    record = foreground_retrain.json()
    assert (record["success"], record["background"], record["status"]) == (True, False, "success")
    assert (record["device_id"], record["period"], record["days_used"]) == ("t1", PERIOD, 7)
    assert record["promoted"] is True and record["trained_at"].endswith("Z")
    shown = client.get(f"/api/ml/runs/{record['run_id']}").json()
    assert shown["version"] == record["version"] and shown["mae"] == record["mae"]
    current = client.get("/api/ml/model/current", params={"device_id": "t1"}).json()
    assert current["model_exists"] is True and current["version"] == record["version"]
    assert {"mae", "rmse", "r2"} <= set(current["metrics"])
    history = client.get("/api/ml/model/history", params={"device_id": "t1"}).json()
    newest = history["moves"][0]
    assert (newest["move"], newest["version"], newest["run_id"]) == (
        "promotion", record["version"], record["run_id"])


def test_background_retrain_is_queued_for_the_daemon(client, settings_with_token):
    response = client.post("/api/ml/retrain", headers=AUTH,
                           json={"device_id": "t1", "period": PERIOD})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["success"], body["background"], body["message"]) == (
        True, True, "Retraining started in background")
    with dg.DagsterInstance.from_config(str(settings_with_token.dagster_home)) as instance:
        run = instance.get_run_by_id(body["run_id"])
    assert run.status == dg.DagsterRunStatus.QUEUED
    assert run.tags["dagster/partition"] == f"t1|{PERIOD}"
    assert run.tags["solar/trigger"] == "api"
    assert run.remote_job_origin.location_name == operations.CODE_LOCATION


def test_writes_without_the_right_bearer_token_are_401(client):
    body = {"device_id": "t1", "background": False}
    assert client.post("/api/ml/retrain", json=body).status_code == 401
    for header in (f"Bearer wrong-{TOKEN}", f"Basic {TOKEN}"):
        response = client.post("/api/ml/retrain", json=body, headers={"Authorization": header})
        assert response.status_code == 401
        assert TOKEN not in response.text
    assert client.delete("/api/ml/runs/anything").status_code == 401


def test_writes_are_refused_with_403_while_api_token_is_unset(home):
    with serving(settings_from_env(home)) as url:
        retrain = httpx.post(f"{url}/api/ml/retrain", json={"device_id": "t1"}, headers=AUTH)
        delete = httpx.delete(f"{url}/api/ml/runs/anything", headers=AUTH)
        read = httpx.get(f"{url}/api/ml/runs")
    assert retrain.status_code == delete.status_code == 403
    assert "set API_TOKEN" in retrain.json()["detail"]
    assert read.status_code == 200


def test_runs_page_with_limit_and_skip_and_filter_by_device(client, api_store):
    records = [run_record("pg", utc_now() - timedelta(hours=i)) for i in range(5)]
    for record in records:
        api_store.upsert_run(record)
    pages = [client.get("/api/ml/runs", params={"device_id": "pg", "limit": 2, "skip": skip})
             for skip in (0, 2, 4)]
    assert [p.json()["total"] for p in pages] == [5, 5, 5]
    ids = [run["run_id"] for p in pages for run in p.json()["runs"]]
    assert ids == [r["run_id"] for r in records]
    assert len(client.get("/api/ml/runs").json()["runs"]) <= operations.DEFAULT_LIMIT


def test_unknown_runs_are_404_and_a_delete_removes_only_its_record(client, api_store):
    assert client.get("/api/ml/runs/no-such-run").status_code == 404
    assert client.delete("/api/ml/runs/no-such-run", headers=AUTH).status_code == 404
    record = run_record("del", utc_now())
    api_store.upsert_run(record)
    deleted = client.delete(f"/api/ml/runs/{record['run_id']}", headers=AUTH)
    assert deleted.status_code == 200 and deleted.json()["success"] is True
    assert client.get(f"/api/ml/runs/{record['run_id']}").status_code == 404


@pytest.mark.parametrize("method, path, kwargs, reason", [
    ("get", "/api/ml/runs", {"params": {"device_id": "../etc"}}, "invalid device id"),
    ("get", "/api/ml/runs", {"params": {"limit": 0}}, "greater than or equal to 1"),
    ("get", "/api/ml/runs", {"params": {"limit": operations.MAX_LIMIT + 1}}, "less than"),
    ("get", "/api/ml/runs", {"params": {"status": "done"}}, "expected success or failed"),
    ("get", "/api/ml/model/current", {"params": {"device_id": "a b"}}, "invalid device id"),
    ("get", "/api/ml/model/current", {}, "device_id"),
    ("post", "/api/ml/retrain", {"json": {"device_id": "t1", "period": "yesterday"}},
     "invalid period"),
    ("post", "/api/ml/retrain", {"json": {"device_id": "t1", "days": 0}}, "greater than"),
    ("post", "/api/ml/retrain", {"json": {"device_id": "bad/id"}}, "invalid device id"),
])
def test_invalid_input_is_422_with_the_reason(client, method, path, kwargs, reason):
    response = getattr(client, method)(path, headers=AUTH, **kwargs)
    assert response.status_code == 422
    assert reason in response.text


def test_model_current_without_a_model_says_so(client):
    response = client.get("/api/ml/model/current", params={"device_id": "nomodel"})
    assert response.status_code == 200
    assert response.json()["model_exists"] is False


def test_predict_serves_the_current_model_and_follows_a_rollback(client, settings_with_token,
                                                                 api_store):
    registry = operations.registry_for(settings_with_token)
    first = save_constant_version(registry, "pr", 111.0, 1)
    second = save_constant_version(registry, "pr", 222.0, 2)
    write_recent_readings(api_store, "pr", utc_now() - timedelta(minutes=1))
    forecast = client.get("/api/ml/predict", params={"device_id": "pr"})
    assert forecast.status_code == 200, forecast.text
    assert (forecast.json()["version"], forecast.json()["predicted_power"]) == (second, 222.0)
    operations.rollback_model(settings_with_token, api_store, "pr")
    forecast = client.get("/api/ml/predict", params={"device_id": "pr"}).json()
    assert (forecast["version"], forecast["predicted_power"]) == (first, 111.0)


def test_a_device_on_smart_persistence_is_reported_by_model_current_and_predict(
        client, settings_with_token, api_store):
    registry = operations.registry_for(settings_with_token)
    displaced = save_constant_version(registry, "fb", 111.0, 1)
    put_on_fallback(registry, "fb")
    write_recent_readings(api_store, "fb", utc_now() - timedelta(minutes=1))
    current = client.get("/api/ml/model/current", params={"device_id": "fb"})
    assert current.status_code == 200, current.text
    shown = current.json()
    assert (shown["model_exists"], shown["serving"], shown["version"]) == (
        False, "smart_persistence", None)
    assert (shown["reason"], shown["previous_version"]) == (FALLBACK_REASON, displaced)
    forecast = client.get("/api/ml/predict", params={"device_id": "fb"})
    assert forecast.status_code == 200, forecast.text
    served = forecast.json()
    assert (served["serving"], served["version"], served["reason"]) == (
        "smart_persistence", None, FALLBACK_REASON)
    assert isinstance(served["predicted_power"], float) and served["predicted_power"] != 111.0


def test_predict_is_404_without_a_model_and_409_without_recent_readings(
        client, settings_with_token, foreground_retrain):
    missing = client.get("/api/ml/predict", params={"device_id": "nomodel"})
    assert missing.status_code == 404 and "no current model" in missing.json()["detail"]
    stale = client.get("/api/ml/predict", params={"device_id": "t1"})  # readings end in March
    assert stale.status_code == 409 and "no recent readings" in stale.json()["detail"]


def test_openapi_docs_are_served(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/ml/retrain", "/api/ml/runs", "/api/ml/runs/{run_id}", "/api/ml/model/current",
            "/api/ml/predict", "/healthz"} <= set(paths)


def test_the_token_appears_in_no_log_record_or_error(client, api_store, caplog,
                                                     foreground_retrain):
    caplog.set_level(logging.INFO)
    client.get("/api/ml/runs", headers=AUTH)
    client.delete("/api/ml/runs/no-such-run", headers=AUTH)
    client.post("/api/ml/retrain", json={"device_id": "t1"},
                headers={"Authorization": f"Bearer {TOKEN}x"})
    assert "/api/ml/runs" in caplog.text  # the access log is captured
    assert TOKEN not in caplog.text
    every_record = json.dumps(operations.list_runs(api_store, limit=operations.MAX_LIMIT))
    assert TOKEN not in every_record and TOKEN not in foreground_retrain.text
