"""A host or `dagster dev` restart in the middle of a daemon-launched retrain.

The whole `dagster dev` process group (webserver, daemon, code server and the run's worker) is
SIGKILLed while the run trains. Nothing survives to report the run, and the new code server
cannot be asked about a worker it never started: only run monitoring's max_runtime_seconds can
end the run. Once it has, the run-failure sensor writes the `failed` record, the pointer is
where it was, and the device's queue slot is free again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from solar_ml_pipeline.config import Settings, settings_from_env
from solar_ml_pipeline.model_store.registry import ModelRegistry
from solar_ml_pipeline.orchestration.alerts import RUN_FAILURE_SENSOR
from solar_ml_pipeline.orchestration.instance import ensure_dagster_home
from solar_ml_pipeline.orchestration.jobs import RETRAIN_JOB
from solar_ml_pipeline.orchestration.partitions import partition_key, retrain_partitions
from solar_ml_pipeline.orchestration.retraining import RetrainRequest, run_config_for, run_tags
from solar_ml_pipeline.storage import open_store
from solar_ml_pipeline_tests.conftest import PERIOD, simulate_into
from solar_ml_pipeline_tests.e2e.conftest import (
    free_port,
    live_group_members,
    log_tail,
    start_dagster_dev,
    stop_process_group,
    wait_until_serving,
)
from solar_ml_pipeline_tests.e2e.dagster_api import DagsterApi, wait_until
from solar_ml_pipeline_tests.reliability.support import audit_model_store, solar_ml

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

DEVICE = "tracker01"
# random_forest on 30 days of one-minute readings trains for about 20 s on 2 cores: the kill
# lands mid-training, however late the poll notices the step has begun.
LONG_DAYS = 30
SHORT_DAYS = 1  # the first model and the retrain after the restart: seconds each
# Test-sized run monitoring. The shipped values are the dagster.yaml template's
# (max_runtime_seconds 3600, poll_interval_seconds 30); only the clock is shortened here.
# 30 s leaves the long run time to reach training before monitoring could end it, and keeps
# the short runs (well under 30 s from their start) clear of the limit.
MAX_RUNTIME_S = 30
POLL_INTERVAL_S = 5
TEST_BUDGET_S = 170  # every wait below shares it: the test ends within about 3 minutes
TRAINING_STEP = "retrain"  # the one step: read, featurise, train (long here), decide

RUN_STEPS = """
query($runId: ID!) { runOrError(runId: $runId) {
  __typename
  ... on Run { status stepStats { stepKey status } }
} }"""

SENSOR_TICKS = """
query($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) {
  __typename
  ... on Sensor { sensorState { status ticks(limit: 1) { status } } }
} }"""


class Budget:
    """One deadline for the whole test: each wait gets what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


def shorten_run_monitoring(dagster_home: Path, **values: int) -> dict[str, Any]:
    """Set run_monitoring values in the instance's dagster.yaml; returns the template's block."""
    config_path = dagster_home / "dagster.yaml"
    config = yaml.safe_load(config_path.read_text())
    shipped = dict(config.get("run_monitoring") or {})
    assert shipped.get("enabled") is True, f"the template does not enable run monitoring: {shipped}"
    config["run_monitoring"] = {**shipped, **values}
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return shipped


def step_statuses(api: DagsterApi, run_id: str) -> tuple[str, dict[str, str | None]]:
    run = api.query(RUN_STEPS, {"runId": run_id})["runOrError"]
    assert run["__typename"] == "Run", run
    return run["status"], {s["stepKey"]: s["status"] for s in run["stepStats"]}


def run_failure_sensor_has_ticked(api: DagsterApi) -> bool:
    """A run-status sensor's first tick only sets its cursor: failures before it are not seen."""
    selector = {**api.repository_selector, "sensorName": RUN_FAILURE_SENSOR}
    sensor = api.query(SENSOR_TICKS, {"selector": selector})["sensorOrError"]
    assert sensor["__typename"] == "Sensor", sensor
    return sensor["sensorState"]["status"] == "RUNNING" and bool(sensor["sensorState"]["ticks"])


def _serve(env: dict[str, str], cwd: Path, log_path: Path,
           timeout_s: float) -> tuple[subprocess.Popen, DagsterApi]:
    """`dagster dev` on a free port, serving; stopped again if it never serves."""
    port = free_port()
    api = DagsterApi(f"http://127.0.0.1:{port}")
    process = start_dagster_dev({**env, "DAGSTER_WEBSERVER_URL": api.base_url}, port, cwd,
                                log_path)
    try:
        wait_until_serving(api, process, log_path, timeout_s=timeout_s)
    except BaseException:
        stop_process_group(process)
        raise
    return process, api


def launch_retrain(api: DagsterApi, settings: Settings, days: int) -> str:
    """The run a UI launch of one device|period partition makes, with a --days window."""
    request = RetrainRequest(DEVICE, PERIOD, days)
    tags = {**retrain_partitions(settings).get_tags_for_partition_key(
        partition_key(DEVICE, PERIOD)), **run_tags(request, "test")}
    return api.launch_run(RETRAIN_JOB, tags, run_config_for(request, verbose=True))


def test_a_daemon_restart_mid_run_marks_the_run_failed_with_one_failed_record_and_frees_its_slot(
    env_for_subprocess, tmp_path
):
    budget = Budget(TEST_BUDGET_S)
    env = {**env_for_subprocess,
           "DAGSTER_HOME": str((tmp_path / "dagster_home").absolute()),
           "MODEL_TYPE": "random_forest",
           "RETRAIN_ENABLED": "false",  # no scheduled run competes for the device's slot
           "PYTHONUNBUFFERED": "1",
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    settings = settings_from_env(env)
    home = ensure_dagster_home(settings)
    shipped = shorten_run_monitoring(home, max_runtime_seconds=MAX_RUNTIME_S,
                                     poll_interval_seconds=POLL_INTERVAL_S)
    assert shipped["max_runtime_seconds"] > MAX_RUNTIME_S

    store = open_store(settings)
    try:
        simulate_into(store, DEVICE, days=LONG_DAYS + 1)
    finally:
        store.close()
    # The model in service before the restart; this also makes the device a known partition,
    # so the discovery sensor launches nothing of its own.
    first = solar_ml(env, "retrain", "--device", DEVICE, "--period", PERIOD,
                     "--days", str(SHORT_DAYS), timeout=budget.left())
    assert first.returncode == 0, first.stdout + first.stderr
    registry = ModelRegistry(settings.model_dir)
    pointer_before = registry.pointer_path(DEVICE).read_bytes()
    versions_before = [m["version"] for m in registry.list_versions(DEVICE)]

    log_path = tmp_path / "dagster_dev.log"
    process = None
    try:
        process, api = _serve(env, tmp_path, log_path, budget.left())
        run_id = launch_retrain(api, settings, LONG_DAYS)

        training = wait_until(
            lambda: step_statuses(api, run_id)[1].get(TRAINING_STEP) == "IN_PROGRESS",
            budget.left(), 0.2)
        assert training, f"{step_statuses(api, run_id)}\n{log_tail(log_path)}"
        assert wait_until(lambda: run_failure_sensor_has_ticked(api), budget.left()), (
            log_tail(log_path))

        group = process.pid
        os.killpg(group, signal.SIGKILL)  # a host or `dagster dev` restart, daemon and worker too
        process.wait(timeout=10)
        wait_until(lambda: not live_group_members(group), 10, 0.2)
        assert not live_group_members(group), "a process of dagster dev survived SIGKILL"

        with dg.DagsterInstance.from_config(str(home)) as instance:
            killed = instance.get_run_by_id(run_id)
            steps = {s.step_key: s.status and s.status.value
                     for s in instance.get_run_step_stats(run_id)}
        assert killed.status == dg.DagsterRunStatus.STARTED, killed.status
        assert steps.get(TRAINING_STEP) == "IN_PROGRESS", steps  # killed mid-step, never ended
        assert registry.pointer_path(DEVICE).read_bytes() == pointer_before
        assert [m["version"] for m in registry.list_versions(DEVICE)] == versions_before

        process, api = _serve(env, tmp_path, log_path, budget.left())
        # Queued at once: it waits behind the dead run's slot until run monitoring ends that run.
        retry_id = launch_retrain(api, settings, SHORT_DAYS)

        statuses = api.wait_for_runs([run_id, retry_id], timeout_s=budget.left())
        assert statuses == {run_id: "FAILURE", retry_id: "SUCCESS"}, (
            f"{statuses}\n{log_tail(log_path)}")
        with dg.DagsterInstance.from_config(str(home)) as instance:
            failed_at = instance.get_run_record_by_id(run_id).end_time
            retry_started_at = instance.get_run_record_by_id(retry_id).start_time
        assert retry_started_at >= failed_at, "the retry ran beside a run that held the slot"

        store = open_store(settings)
        try:
            record = wait_until(
                lambda: (r := store.get_run(run_id)) and r["status"] == "failed" and r,
                budget.left())
            assert record, f"no failed record for run {run_id}\n{log_tail(log_path)}"
            of_the_run = [r for r in store.list_runs(device_id=DEVICE, limit=50).runs
                          if r["run_id"] == run_id]
            assert len(of_the_run) == 1, of_the_run
            # says why: run monitoring's limit, not only that Dagster "forcibly" failed it
            assert f"exceeding maximum runtime of {MAX_RUNTIME_S} seconds" in record["error"], (
                record["error"])
            assert "\n" not in record["error"]
            assert (record["device_id"], record["period"], record["days_used"]) == (
                DEVICE, PERIOD, LONG_DAYS)
            retry = store.get_run(retry_id)
            assert retry is not None and retry["status"] == "success", retry
            # the pointer moves only if the retry promoted its own version
            in_service = retry["version"] if retry["promoted"] else versions_before[-1]
            assert registry.read_pointer(DEVICE)["version"] == in_service
            assert audit_model_store(registry, store, DEVICE) == sorted(
                [*versions_before, retry["version"]])
        finally:
            store.close()
    finally:
        if process is not None:
            survivors = stop_process_group(process)
            assert not survivors, f"processes of dagster dev survived teardown: {survivors}"
