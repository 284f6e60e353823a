"""Integrity and access: what reaches pickle, the file system, partitions and the API writes.

A pickle that would create a marker file stands in for an attacker's payload: the marker
existing afterwards means bytes were unpickled that should not have been.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from solar_ml_pipeline.config import settings_from_env
from solar_ml_pipeline.model_store.registry import (
    ChecksumMismatch,
    ModelRegistry,
    ModelStoreError,
    serialize_model,
    sha256_hex,
)
from solar_ml_pipeline.model_store.serving import ModelServer
from solar_ml_pipeline.orchestration.definitions import build_definitions
from solar_ml_pipeline.orchestration.resources import StoreResource
from solar_ml_pipeline.orchestration.sensors import DEVICE_SENSOR
from solar_ml_pipeline_tests.conftest import PERIOD
from solar_ml_pipeline_tests.interfaces.test_operations import (
    save_constant_version,
    write_recent_readings,
)
from solar_ml_pipeline_tests.reliability.conftest import DAYS
from solar_ml_pipeline_tests.reliability.support import (
    CLI,
    assert_one_line_error,
    solar_ml,
    unused_port,
)

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "solar_ml_pipeline"
DEVICE = "tracker01"
BAD_DEVICE_IDS = ("../etc", "..", "a/b", "tracker 01", "", "x" * 65, "t|1", "tracker01\n",
                  "C:\\x", "ünï")


class Payload:
    """Unpickling this writes a marker file: proof that bytes reached pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def payload_bytes(marker: Path) -> bytes:
    return serialize_model(Payload(marker))


def rewrite_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.fixture
def registry(settings) -> ModelRegistry:
    return ModelRegistry(settings.model_dir)


@pytest.fixture
def served_device(registry, store) -> str:
    """A device serving a constant model, with readings recent enough to predict from."""
    save_constant_version(registry, DEVICE, 111.0, 1)
    save_constant_version(registry, DEVICE, 222.0, 2)
    write_recent_readings(store, DEVICE, datetime.now(UTC) - timedelta(minutes=1))
    return DEVICE


# --- unpickling only after the sha256 matches ---------------------------------------------------


@pytest.mark.parametrize("also_rewrite_meta", [False, True], ids=["pkl", "pkl-and-meta"])
def test_a_replaced_model_file_is_refused_before_unpickling_by_the_loader_and_predict(
    registry, served_device, env_for_subprocess, run_cli, tmp_path, also_rewrite_meta
):
    code, out, _ = run_cli("predict", "--device", served_device)
    assert code == 0 and "power 222.0" in out  # the intact model serves
    version = registry.read_pointer(served_device)["version"]
    marker = tmp_path / "unpickled.marker"
    payload = payload_bytes(marker)
    registry.model_path(served_device, version).write_bytes(payload)
    if also_rewrite_meta:  # the meta agrees with the payload: only the pointer's sha256 does not
        rewrite_json(registry.metadata_path(served_device, version), sha256=sha256_hex(payload),
                     size_bytes=len(payload))

    with pytest.raises(ChecksumMismatch, match="damaged or was replaced"):
        ModelServer(registry).load_current(served_device)
    result = solar_ml(env_for_subprocess, "predict", "--device", served_device)
    assert_one_line_error(result, 1, "damaged or was replaced", "rollback --device tracker01")
    code, out, _ = run_cli("model", "current", "--device", served_device)
    assert code == 0 and version in out  # reads the pointer only, never the model
    assert not marker.exists()


def test_a_champion_replaced_with_its_meta_is_never_unpickled_and_the_next_retrain_replaces_it(
    run_cli, settings, store, trained_device, tmp_path
):
    registry = ModelRegistry(settings.model_dir)
    champion = registry.read_pointer(trained_device)["version"]
    marker = tmp_path / "unpickled.marker"
    payload = payload_bytes(marker)
    registry.model_path(trained_device, champion).write_bytes(payload)
    rewrite_json(registry.metadata_path(trained_device, champion), sha256=sha256_hex(payload),
                 size_bytes=len(payload))

    code, out, err = run_cli("retrain", "--device", trained_device, "--period", PERIOD,
                             "--days", DAYS, "--json")
    assert not marker.exists()
    assert code == 0, out + err
    record = json.loads(out)
    assert record["promoted"] is True and record["champion_version"] == champion
    assert "damaged or was replaced" in record["decision_reason"]
    assert registry.read_pointer(trained_device)["version"] == record["version"] != champion
    assert ModelServer(registry).load_current(trained_device).version == record["version"]


# --- paths must stay inside MODEL_DIR -----------------------------------------------------------


def _pointer_leads_outside(registry, device, version, outside, payload):
    outside.write_bytes(payload)
    rewrite_json(registry.pointer_path(device), model_path=str(outside),
                 sha256=sha256_hex(payload))


def _meta_leads_outside(registry, device, version, outside, payload):
    outside.write_bytes(payload)
    rewrite_json(registry.metadata_path(device, version), model_path=str(outside),
                 sha256=sha256_hex(payload))


def _pkl_links_outside(registry, device, version, outside, payload):
    """Every sha256 agrees with the payload: only the confinement check stands in the way."""
    outside.write_bytes(payload)
    path = registry.model_path(device, version)
    path.unlink()
    path.symlink_to(outside)
    rewrite_json(registry.metadata_path(device, version), sha256=sha256_hex(payload))
    rewrite_json(registry.pointer_path(device), sha256=sha256_hex(payload))


@pytest.mark.parametrize("escape, message", [
    (_pointer_leads_outside, "model_path"),
    (_meta_leads_outside, "names a model file other than its own"),
    (_pkl_links_outside, "leads outside"),
], ids=["pointer", "meta", "symlink"])
def test_files_leading_outside_model_dir_are_refused_without_unpickling(
    registry, served_device, run_cli, tmp_path, escape, message
):
    version = registry.read_pointer(served_device)["version"]
    marker = tmp_path / "unpickled.marker"
    escape(registry, served_device, version, tmp_path / "outside.pkl", payload_bytes(marker))
    code, _, err = run_cli("predict", "--device", served_device)
    assert code == 1 and err.count("\n") == 1 and message in err, err
    with pytest.raises(ModelStoreError, match=re.escape(message)):
        ModelServer(registry).load_current(served_device)
    assert not marker.exists()


# --- device ids at every entry ------------------------------------------------------------------

DEVICE_COMMANDS = {
    "simulate": ["simulate", "--device", "{id}", "--days", "1"],
    "import": ["import", "{file}", "--device", "{id}"],
    "retrain": ["retrain", "--device", "{id}"],
    "retrain --dry-run": ["retrain", "--device", "{id}", "--dry-run"],
    "retrain --background": ["retrain", "--device", "{id}", "--background"],
    "model current": ["model", "current", "--device", "{id}"],
    "model list": ["model", "list", "--device", "{id}"],
    "model rollback": ["model", "rollback", "--device", "{id}"],
    "model prune": ["model", "prune", "--device", "{id}"],
    "predict": ["predict", "--device", "{id}"],
    "runs list": ["runs", "list", "--device", "{id}"],
}


@pytest.mark.parametrize("command", sorted(DEVICE_COMMANDS))
def test_every_command_taking_a_device_refuses_invalid_ids_with_exit_2_and_creates_nothing(
    run_cli, settings, tmp_path, command
):
    readings = tmp_path / "readings.csv"
    readings.write_text("timestamp,power\n2026-03-01T06:00:00Z,10\n")
    for bad in BAD_DEVICE_IDS:
        argv = [part.format(id=bad, file=readings) for part in DEVICE_COMMANDS[command]]
        code, out, err = run_cli(*argv)
        assert (code, out) == (2, ""), (bad, code, out, err)
        assert err.count("\n") == 1 and err.startswith("solar-ml: error: invalid device id"), err
    assert not settings.solar_ml_home.exists()  # no store, no model folder, no dagster home


@pytest.mark.parametrize("method, path, kwargs", [
    ("get", "/api/ml/predict", {"params": {"device_id": "{id}"}}),
    ("get", "/api/ml/model/current", {"params": {"device_id": "{id}"}}),
    ("get", "/api/ml/runs", {"params": {"device_id": "{id}"}}),
    ("post", "/api/ml/retrain", {"json": {"device_id": "{id}", "background": False}}),
], ids=["predict", "model-current", "runs", "retrain"])
def test_every_api_endpoint_taking_a_device_refuses_invalid_ids_with_422_and_creates_nothing(
    test_env, method, path, kwargs
):
    from fastapi.testclient import TestClient

    from solar_ml_pipeline.interfaces.api import create_app

    token = secrets.token_hex(16)
    settings = settings_from_env({**test_env, "API_TOKEN": token})
    with TestClient(create_app(settings)) as client:
        for bad in BAD_DEVICE_IDS:
            filled = json.loads(json.dumps(kwargs).replace('"{id}"', json.dumps(bad)))
            response = getattr(client, method)(
                path, headers={"Authorization": f"Bearer {token}"}, **filled)
            assert response.status_code == 422, (bad, response.text)
            assert "invalid device id" in response.json()["detail"], response.text
    assert not settings.model_dir.exists()


def test_invalid_ids_found_in_the_readings_store_are_skipped_logged_and_never_become_partitions(
    settings, store, capfd
):
    store.write_readings([{"device_id": "tracker02", "power": 10.0,
                           "timestamp": datetime(2026, 3, 1, 6, tzinfo=UTC)}])
    hostile = ["../../etc", "..", "", "a/b", "x" * 65, "bad|id", "tracker 03"]
    with sqlite3.connect(settings.sqlite_path) as conn:  # another system, not our validation
        conn.executemany("INSERT INTO readings_raw (device_id, timestamp, power) VALUES (?, 1, 1)",
                         [(device_id,) for device_id in hostile])
    assert set(hostile) <= set(store.list_devices())
    defs = build_definitions(settings)
    sensor = defs.resolve_sensor_def(DEVICE_SENSOR)
    capfd.readouterr()
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(
            instance=instance, repository_def=defs.get_repository_def(),
            resources={"store": StoreResource.from_settings(settings)})
        result = sensor(context)
    added = [key for request in result.dynamic_partitions_requests for key in request.partition_keys]
    assert added == ["tracker02"]
    assert [str(r.partition_key).split("|")[0] for r in result.run_requests] == ["tracker02"]
    assert f"WARNING - skipped {len(hostile)} invalid device id(s)" in capfd.readouterr().err
    assert not settings.model_dir.exists()


# --- API writes and the token -------------------------------------------------------------------


def _request(url: str, method: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps({"device_id": DEVICE, "background": False}).encode() if method == "POST" else None
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _wait_for_health(base: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if _request(f"{base}/healthz", "GET")[0] == 200:
                return
        except OSError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


@pytest.mark.slow
def test_the_api_server_process_needs_the_token_and_never_prints_or_stores_it(
    env_for_subprocess, settings, store, tmp_path
):
    token, wrong = f"tok-{secrets.token_hex(16)}", f"tok-{secrets.token_hex(16)}"
    for run_id in ("kept-run", "deleted-run"):
        store.upsert_run({"run_id": run_id, "device_id": DEVICE, "status": "success",
                          "trained_at": datetime(2026, 3, 1, tzinfo=UTC)})
    port = unused_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "api.log"
    with log.open("wb") as output:
        server = subprocess.Popen([*CLI, "api", "--port", str(port)], stdout=output,
                                  stderr=subprocess.STDOUT,
                                  env={**env_for_subprocess, "API_TOKEN": token})
    try:
        _wait_for_health(base, server, log)
        answers = [
            _request(f"{base}/api/ml/retrain", "POST"),
            _request(f"{base}/api/ml/retrain", "POST", wrong),
            _request(f"{base}/api/ml/runs/kept-run", "DELETE", wrong),
            _request(f"{base}/api/ml/runs/kept-run", "DELETE", ""),
            _request(f"{base}/api/ml/runs/deleted-run", "DELETE", token),
            _request(f"{base}/api/ml/runs/no-such-run", "DELETE", token),
            _request(f"{base}/api/ml/runs", "GET", token),
        ]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert [status for status, _ in answers] == [401, 401, 401, 401, 200, 404, 200]
    assert store.get_run("kept-run") is not None and store.get_run("deleted-run") is None
    server_output = log.read_text()
    assert "DELETE /api/ml/runs/deleted-run" in server_output  # the access log was captured
    stored = b"".join(path.read_bytes() for path in settings.solar_ml_home.rglob("*")
                      if path.is_file())
    for secret in (token, wrong):
        assert secret not in server_output
        assert all(secret not in text for _, text in answers)
        assert secret.encode() not in stored


# --- static security checks ---------------------------------------------------------------------


def test_ruff_security_rules_find_nothing_in_the_package():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "S",
         "--output-format", "concise", str(PACKAGE)],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


NOQA = re.compile(r"#\s*noqa\b(?P<rest>.*)$")
JUSTIFIED = re.compile(r":\s*(?P<codes>[A-Z]+[0-9]+(?:\s*,\s*[A-Z]+[0-9]+)*)\s+-\s+\S.{4,}")


def test_every_noqa_in_the_package_names_its_rules_and_says_why():
    for unjustified in ("x = 1  # noqa", "x = 1  # noqa: S301", "x = 1  # noqa: S301 -"):
        assert not JUSTIFIED.match(NOQA.search(unjustified).group("rest"))
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if match := NOQA.search(line):
                found.append((f"{path.relative_to(REPO)}:{number}: {line.strip()}",
                              JUSTIFIED.match(match.group("rest"))))
    unjustified = [where for where, justified in found if not justified]
    assert not unjustified, "noqa without `# noqa: CODE - reason`:\n" + "\n".join(unjustified)
