"""The pipeline as its users run it: real webserver, daemon and code server, driven over GraphQL.

One `dagster dev` serves the whole module (see conftest.py); the tests run in file order, and
the device without data is added last so the schedule's tick sees only the simulated fleet.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta

import pytest

from solar_ml_pipeline.orchestration.failures import DEVICE_TAG, PERIOD_TAG
from solar_ml_pipeline.orchestration.jobs import RETRAIN_JOB
from solar_ml_pipeline.orchestration.partitions import DEVICE_DIMENSION, period_key_at
from solar_ml_pipeline.orchestration.schedules import RETRAIN_SCHEDULE
from solar_ml_pipeline.storage import open_store
from solar_ml_pipeline_tests.e2e.conftest import DEVICES
from solar_ml_pipeline_tests.e2e.dagster_api import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FLOAT_METRICS = ("mae", "rmse", "r2", "persistence_mae", "skill")
RUN_TIMEOUT_S = 150


def partition_tags(device_id: str, period: str) -> dict[str, str]:
    """What the UI sets when a person launches one device x period partition."""
    return {"dagster/partition": f"{device_id}|{period}", DEVICE_TAG: device_id,
            PERIOD_TAG: period}


def wait_for_launched(api, tags: dict[str, str], count: int, timeout_s: float) -> list[dict]:
    """The runs carrying these tags once `count` of them exist (or those there at the timeout)."""
    def launched():
        runs = api.runs(tags=tags)
        return runs if len(runs) >= count else None

    return wait_until(launched, timeout_s) or api.runs(tags=tags)


def run_record(dev, run_id):
    store = open_store(dev.settings)
    try:
        return store.get_run(run_id)
    finally:
        store.close()


def test_device_sensor_adds_the_simulated_devices_and_trains_their_current_period(dagster_dev):
    api = dagster_dev.api
    known = wait_until(
        lambda: set(DEVICES) <= set(api.partition_keys("raw_readings").get(DEVICE_DIMENSION, [])),
        timeout_s=90,
    )
    assert known, f"device sensor did not add {DEVICES}:\n{dagster_dev.log_tail()}"

    discovery_runs = wait_for_launched(api, {"solar/trigger": "discovery"}, len(DEVICES), 30)
    assert sorted(r["tags"][DEVICE_TAG] for r in discovery_runs) == sorted(DEVICES)
    # the period current when the sensor ran: the schedule's period may have begun by then
    (period,) = {r["tags"][PERIOD_TAG] for r in discovery_runs}
    assert period in {period_key_at(dagster_dev.settings, dagster_dev.started_at),
                      period_key_at(dagster_dev.settings, dagster_dev.retrain_at)}
    statuses = api.wait_for_runs([r["runId"] for r in discovery_runs], RUN_TIMEOUT_S)
    assert set(statuses.values()) == {"SUCCESS"}, f"{statuses}\n{dagster_dev.log_tail()}"


def test_a_run_launched_for_a_partition_succeeds_with_float_metrics_on_its_materialisation(dagster_dev):
    api = dagster_dev.api
    period = period_key_at(dagster_dev.settings, dagster_dev.started_at - timedelta(days=1))
    run_id = api.launch_run(RETRAIN_JOB, partition_tags("tracker01", period))

    statuses = api.wait_for_runs([run_id], RUN_TIMEOUT_S)
    assert statuses[run_id] == "SUCCESS", f"{statuses}\n{dagster_dev.log_tail()}"
    (materialisation,) = api.materialization_metadata("model_version", f"tracker01|{period}")
    assert materialisation["runId"] == run_id
    for name in FLOAT_METRICS:
        entry = materialisation["entries"][name]
        assert entry["__typename"] == "FloatMetadataEntry", (name, entry)
        assert math.isfinite(entry["floatValue"]), (name, entry)
    assert materialisation["entries"]["rows_used"]["__typename"] == "IntMetadataEntry"
    record = run_record(dagster_dev, run_id)
    assert record["status"] == "success" and record["period"] == period
    assert record["mae"] == pytest.approx(materialisation["entries"]["mae"]["floatValue"])


def test_the_schedule_launches_one_run_per_device_at_the_period_start_and_all_succeed(dagster_dev):
    api = dagster_dev.api
    schedule = api.schedule_state(RETRAIN_SCHEDULE)
    assert schedule["scheduleState"]["status"] == "RUNNING", schedule
    assert schedule["executionTimezone"] == "UTC"
    new_period = period_key_at(dagster_dev.settings, dagster_dev.retrain_at)
    assert new_period == dagster_dev.retrain_at.strftime("%Y-%m-%d")

    time.sleep(max(0.0, (dagster_dev.retrain_at - datetime.now(UTC)).total_seconds()))
    scheduled = wait_for_launched(api, {"dagster/schedule_name": RETRAIN_SCHEDULE}, len(DEVICES), 90)
    assert sorted(r["tags"][DEVICE_TAG] for r in scheduled) == sorted(DEVICES), (
        f"schedule due at {dagster_dev.retrain_at} launched {scheduled}\n{dagster_dev.log_tail()}")
    assert {r["tags"][PERIOD_TAG] for r in scheduled} == {new_period}
    created = [datetime.fromtimestamp(r["creationTime"], UTC) for r in scheduled]
    assert all(dagster_dev.retrain_at <= c < dagster_dev.retrain_at + timedelta(seconds=60)
               for c in created), (dagster_dev.retrain_at, created)
    statuses = api.wait_for_runs([r["runId"] for r in scheduled], RUN_TIMEOUT_S)
    assert set(statuses.values()) == {"SUCCESS"}, f"{statuses}\n{dagster_dev.log_tail()}"


def test_a_run_for_a_device_without_data_fails_and_the_webhook_gets_the_alert(dagster_dev):
    api = dagster_dev.api
    api.add_dynamic_partition(DEVICE_DIMENSION, "ghost01")
    period = period_key_at(dagster_dev.settings, datetime.now(UTC))
    run_id = api.launch_run(RETRAIN_JOB, partition_tags("ghost01", period))

    statuses = api.wait_for_runs([run_id], RUN_TIMEOUT_S)
    assert statuses[run_id] == "FAILURE", f"{statuses}\n{dagster_dev.log_tail()}"
    alert = dagster_dev.webhook.wait_for(lambda p: p["run_id"] == run_id, timeout_s=60)
    assert alert is not None, f"no alert for {run_id}: {dagster_dev.webhook.payloads()}"
    assert alert["device_id"] == "ghost01" and alert["period"] == period
    assert alert["error"].startswith("No data found for training: device ghost01")
    assert alert["run_url"] == f"{dagster_dev.url}/runs/{run_id}"
    record = run_record(dagster_dev, run_id)
    assert record["status"] == "failed"
    assert record["error"] == alert["error"]
