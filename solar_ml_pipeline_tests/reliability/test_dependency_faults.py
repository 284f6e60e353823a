"""When what the pipeline depends on fails: the store, the model folder, the run log.

Each fault must end the attempt with one line naming the problem, and must never move the
pointer: the model in service stays the one that was last promoted and recorded.
"""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import time
from datetime import timedelta
from pathlib import Path

import pytest

from solar_ml_pipeline.model_store import files as files_module
from solar_ml_pipeline.model_store import versions as versions_module
from solar_ml_pipeline.model_store.registry import ModelRegistry
from solar_ml_pipeline.orchestration.failures import DEVICE_TAG, PERIOD_TAG
from solar_ml_pipeline.orchestration.jobs import RETRAIN_JOB
from solar_ml_pipeline.orchestration.partitions import period_key_at
from solar_ml_pipeline.storage import open_store
from solar_ml_pipeline.storage.sqlite import SqliteStore
from solar_ml_pipeline_tests.conftest import PERIOD
from solar_ml_pipeline_tests.e2e.conftest import dagster_dev  # noqa: F401 - its fixture: one dagster dev
from solar_ml_pipeline_tests.e2e.dagster_api import TERMINAL_STATUSES, wait_until
from solar_ml_pipeline_tests.reliability.conftest import DAYS
from solar_ml_pipeline_tests.reliability.support import (
    assert_one_line_error,
    audit_model_store,
    solar_ml,
    unused_port,
)

pytestmark = pytest.mark.slow

MONGO_FAILURE_BUDGET_S = 15


def _pointer_bytes(settings, device_id: str) -> bytes:
    return (settings.model_dir / device_id / "current_model.json").read_bytes()


def _only_run(store, device_id: str, status: str) -> dict:
    runs = store.list_runs(device_id=device_id, status=status, limit=10).runs
    assert len(runs) == 1, runs
    return runs[0]


def test_retrain_with_mongodb_unreachable_fails_within_15s_in_one_line_without_the_password(
    env_for_subprocess, settings
):
    port = unused_port()
    env = {**env_for_subprocess,
           "MONGODB_URI": f"mongodb://solar:s3cret-pw@127.0.0.1:{port}/?authSource=admin",
           "MONGODB_TIMEOUT_MS": "300"}
    started = time.monotonic()
    result = solar_ml(env, "retrain", "--device", "tracker01", "--period", PERIOD, timeout=60)
    elapsed = time.monotonic() - started
    assert_one_line_error(result, 1, f"MongoDB at 127.0.0.1:{port} is unreachable",
                          "check MONGODB_URI")
    assert elapsed < MONGO_FAILURE_BUDGET_S, f"took {elapsed:.1f}s"
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert not settings.model_dir.exists()


def test_a_model_folder_that_cannot_be_created_fails_clearly_and_leaves_a_failed_record(
    run_cli, settings, store, device_with_readings
):
    device_dir = settings.model_dir / device_with_readings
    device_dir.mkdir(parents=True)
    (device_dir / "versions").write_text("not a folder")  # root ignores chmod; this it cannot
    code, _, err = run_cli("retrain", "--device", device_with_readings, "--period", PERIOD,
                           "--days", DAYS)
    assert code == 1 and err.count("\n") == 1 and err.startswith("solar-ml: error: "), err
    assert str(device_dir / "versions") in err and "MODEL_DIR" in err
    assert "already exists" not in err
    assert not (device_dir / "current_model.json").exists()
    record = _only_run(store, device_with_readings, "failed")
    assert record["error"] in err and "\n" not in record["error"]


def test_a_full_model_folder_fails_the_retrain_without_moving_the_pointer(
    run_cli, settings, store, trained_device, monkeypatch
):
    before = _pointer_bytes(settings, trained_device)
    real_write = files_module.atomic_write_bytes

    def disk_full(path, data, **options):
        if settings.model_dir in path.parents:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, data, **options)

    # Every atomic write under MODEL_DIR: version files (versions) and pointer/JSON (files).
    for module in (versions_module, files_module):
        monkeypatch.setattr(module, "atomic_write_bytes", disk_full)
    code, _, err = run_cli("retrain", "--device", trained_device, "--period", PERIOD,
                           "--days", DAYS)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("solar-ml: error: ")
    assert "No space left on device" in err
    assert _pointer_bytes(settings, trained_device) == before
    assert "No space left on device" in _only_run(store, trained_device, "failed")["error"]
    monkeypatch.undo()
    audit_model_store(ModelRegistry(settings.model_dir), store, trained_device)


def test_a_run_log_that_stops_accepting_writes_fails_the_retrain_without_moving_the_pointer(
    run_cli, settings, store, trained_device, monkeypatch
):
    before = _pointer_bytes(settings, trained_device)
    runs_before = store.list_runs(device_id=trained_device).total

    def read_only(self, record):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(SqliteStore, "upsert_run", read_only)
    code, _, err = run_cli("retrain", "--device", trained_device, "--period", PERIOD,
                           "--days", DAYS)
    monkeypatch.undo()
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("solar-ml: error: ")
    # the new version may be stored, but a model whose attempt is not in the run log never serves
    assert _pointer_bytes(settings, trained_device) == before
    assert store.list_runs(device_id=trained_device).total == runs_before
    versions = audit_model_store(ModelRegistry(settings.model_dir), store, trained_device)
    assert len(versions) == 2


def test_a_store_that_cannot_be_opened_fails_the_retrain_before_anything_moves(
    env_for_subprocess, tmp_path
):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the store's folder should be")
    models = ModelRegistry(tmp_path / "models")
    models.save_version("tracker01", "20260310_130000_abcdef", {"weights": [1]},
                        {"partition_key": f"tracker01|{PERIOD}"})
    models.promote("tracker01", "20260310_130000_abcdef")
    before = models.pointer_path("tracker01").read_bytes()
    env = {**env_for_subprocess, "SOLAR_ML_HOME": str(blocker / "home"),
           "MODEL_DIR": str(models.model_dir), "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    result = solar_ml(env, "retrain", "--device", "tracker01", "--period", PERIOD)
    assert_one_line_error(result, 1, "cannot be opened", "SOLAR_ML_HOME")
    assert models.pointer_path("tracker01").read_bytes() == before
    assert [m["version"] for m in models.list_versions("tracker01")] == ["20260310_130000_abcdef"]


# --- a run whose worker dies: the real webserver, daemon and code server -------------------------


def _run_worker_pid(group: int, run_id: str) -> int | None:
    """The worker of a run: the parent of the `tail` capturing that run's compute logs."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        _state, ppid, pgrp = text[text.rindex(")") + 2:].split()[:3]
        if int(pgrp) == group and cmdline.startswith("tail ") and f"/{run_id}/" in cmdline:
            return int(ppid)
    return None


@pytest.mark.e2e
def test_a_run_whose_worker_dies_mid_run_is_marked_failed_with_a_failed_record_and_an_alert(
    dagster_dev,  # noqa: F811 - the e2e fixture imported above
):
    api, settings = dagster_dev.api, dagster_dev.settings
    discovery = wait_until(
        lambda: (runs := api.runs(tags={"solar/trigger": "discovery"})) and len(runs) == 2
        and all(r["status"] in TERMINAL_STATUSES for r in runs) and runs,
        timeout_s=300)
    assert discovery, f"the discovery runs did not finish:\n{dagster_dev.log_tail()}"
    registry = ModelRegistry(settings.model_dir)
    pointer = registry.pointer_path("tracker01")
    pointer_before = pointer.read_bytes() if pointer.exists() else None  # the gate may refuse

    period = period_key_at(settings, dagster_dev.started_at - timedelta(days=2))
    run_id = api.launch_run(RETRAIN_JOB, {
        "dagster/partition": f"tracker01|{period}", DEVICE_TAG: "tracker01",
        PERIOD_TAG: period})
    worker = wait_until(lambda: _run_worker_pid(dagster_dev.process.pid, run_id), 240, 0.1)
    assert worker, f"run {run_id} never started a worker:\n{dagster_dev.log_tail()}"
    os.kill(worker, signal.SIGKILL)  # what a host or daemon restart does to a run in flight

    statuses = api.wait_for_runs([run_id], timeout_s=180)
    assert statuses[run_id] == "FAILURE", f"{statuses}\n{dagster_dev.log_tail()}"
    alert = dagster_dev.webhook.wait_for(lambda p: p["run_id"] == run_id, timeout_s=120)
    assert alert is not None, dagster_dev.webhook.payloads()
    store = open_store(settings)
    try:
        record = store.get_run(run_id)
        assert record is not None and record["status"] == "failed", record
        assert record["error"] == alert["error"] and "\n" not in record["error"]
        assert (record["device_id"], record["period"]) == ("tracker01", period)
        assert (pointer.read_bytes() if pointer.exists() else None) == pointer_before
        audit_model_store(registry, store, "tracker01")
    finally:
        store.close()
