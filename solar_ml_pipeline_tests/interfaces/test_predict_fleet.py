"""The fleet forecast from the command line (`predict --all`) and the API
(`/api/ml/predict/fleet`), and `solar-ml api --workers 2` serving a promotion on the next
request whichever worker answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient

from solar_ml_pipeline.interfaces import cli, operations
from solar_ml_pipeline.interfaces.api import create_app
from solar_ml_pipeline.storage.run_records import utc_now
from solar_ml_pipeline_tests.interfaces.test_api import free_port
from solar_ml_pipeline_tests.interfaces.test_cli import CLI
from solar_ml_pipeline_tests.interfaces.test_operations import (
    put_on_fallback,
    save_constant_version,
    write_recent_readings,
)


@pytest.fixture
def fleet(settings, store, test_env, monkeypatch):
    """a: a model, b: smart persistence, c: readings 40 minutes old, d: readings, no model."""
    for name, value in test_env.items():
        monkeypatch.setenv(name, value)
    registry = operations.registry_for(settings)
    now = utc_now()
    save_constant_version(registry, "a", 111.0, 1)
    write_recent_readings(store, "a", now - timedelta(minutes=1))
    put_on_fallback(registry, "b")
    write_recent_readings(store, "b", now - timedelta(minutes=1))
    save_constant_version(registry, "c", 333.0, 1)
    write_recent_readings(store, "c", now - timedelta(minutes=40))
    write_recent_readings(store, "d", now - timedelta(minutes=1))
    return registry


def test_predict_all_lists_every_device_with_readings_and_pages(fleet, capsys):
    assert cli.main(["predict", "--all", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert (answer["total"], answer["limit"], answer["skip"]) == (4, 1000, 0)
    assert [(f["device_id"], f["serving"], f["predicted_power"] if f["device_id"] == "a"
             else None) for f in answer["forecasts"]] == [
        ("a", "model", 111.0), ("b", "smart_persistence", None)]
    assert [(u["device_id"], u["kind"]) for u in answer["unavailable"]] == [
        ("c", "no_recent_readings"), ("d", "no_model")]

    assert cli.main(["predict", "--all", "--limit", "2", "--skip", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("b: power ") and "smart persistence, no model" in lines[0]
    assert lines[1].startswith("c: no forecast (no_recent_readings): no recent readings")
    assert lines[2] == "1 forecast(s), 1 device(s) without one; devices 2-3 of 4 with readings"


def test_predict_needs_device_or_all_and_pages_only_all(fleet, capsys):
    with pytest.raises(SystemExit) as neither:
        cli.main(["predict"])
    assert neither.value.code == 2
    assert cli.main(["predict", "--device", "a", "--limit", "2"]) == 2
    assert "page `predict --all`" in capsys.readouterr().err
    assert cli.main(["predict", "--all", "--limit", "10001"]) == 2


def test_the_fleet_route_pages_and_matches_the_single_device_route(fleet, settings):
    with TestClient(create_app(settings)) as client:
        page = client.get("/api/ml/predict/fleet")
        assert page.status_code == 200, page.text
        body = page.json()
        assert (body["total"], body["limit"], body["skip"]) == (4, 1000, 0)
        assert [f["device_id"] for f in body["forecasts"]] == ["a", "b"]
        assert [u["device_id"] for u in body["unavailable"]] == ["c", "d"]
        single = client.get("/api/ml/predict", params={"device_id": "a"}).json()
        assert {**single, "generated_at": None} == {**body["forecasts"][0], "generated_at": None}
        second = client.get("/api/ml/predict/fleet", params={"limit": 1, "skip": 3}).json()
        assert (second["forecasts"], [u["device_id"] for u in second["unavailable"]]) == ([], ["d"])
        assert client.get("/api/ml/predict/fleet", params={"limit": 0}).status_code == 422
        # A promotion is served by the next request, cache or not.
        newer = save_constant_version(fleet, "a", 222.0, 2)
        again = client.get("/api/ml/predict/fleet", params={"limit": 1}).json()["forecasts"][0]
        assert (again["version"], again["predicted_power"]) == (newer, 222.0)


def test_two_api_workers_serve_a_promotion_and_a_rollback_on_the_next_request(
        fleet, env_for_subprocess):
    port = free_port()
    process = subprocess.Popen([*CLI, "api", "--port", str(port), "--workers", "2", "--json"],
                               env=env_for_subprocess, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        assert json.loads(process.stdout.readline())["workers"] == 2
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/ml/predict", params={"device_id": "a"},
                             timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.1)

        def served() -> set[float]:
            with httpx.Client(base_url=url, timeout=5) as client:  # new connections: both workers
                return {client.get("/api/ml/predict", params={"device_id": "a"},
                                   headers={"Connection": "close"}).json()["predicted_power"]
                        for _ in range(20)}

        assert served() == {111.0}
        save_constant_version(fleet, "a", 222.0, 2)
        assert served() == {222.0}
        fleet.rollback("a")
        assert served() == {111.0}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
