"""Batches: one run retrains many devices, each device keeps its own record, version,
promotion and partition status, and a retry from failure retrains only the failed ones."""

from __future__ import annotations

import json

import dagster as dg
import pytest
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

from solar_ml_pipeline.orchestration.batches import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    device_batches,
    run_partition_keys,
)
from solar_ml_pipeline.orchestration.definitions import build_definitions
from solar_ml_pipeline.orchestration.instance import ensure_dagster_home
from solar_ml_pipeline.orchestration.jobs import RETRAIN_JOB
from solar_ml_pipeline.orchestration.partitions import DEVICE_DIMENSION, retrain_partitions
from solar_ml_pipeline.orchestration.retraining import NothingToRetry, retry_failed_in_foreground
from solar_ml_pipeline.storage.run_records import attempt_id
from solar_ml_pipeline_tests.conftest import PERIOD, simulate_into

ASSETS = ("raw_readings", "feature_frame", "model_version", "promotion_decision")


def test_batches_are_consecutive_near_equal_slices_that_fill_every_run_slot():
    devices = [f"d{i:02d}" for i in range(10)]
    assert device_batches(devices, 4) == [devices[0:4], devices[4:8], devices[8:10]]
    assert device_batches(devices, 25, min_batches=2) == [devices[0:5], devices[5:10]]
    assert device_batches(devices[:1], 25, min_batches=2) == [devices[:1]]
    assert device_batches([], 25) == []
    for size in (1, 3, 7, 25):
        batches = device_batches(devices, size, min_batches=2)
        assert [d for batch in batches for d in batch] == devices
        assert max(len(b) for b in batches) <= size


@pytest.fixture
def fleet_env(test_env, monkeypatch):
    """Settings in the environment too: a re-execution rebuilds the job from it."""
    test_env = {**test_env, "FLEET_BATCH_SIZE": "3"}
    for name, value in test_env.items():
        monkeypatch.setenv(name, value)
    return test_env


@pytest.fixture
def fleet(fleet_env, store):
    """Three devices; the middle one has too few readings to train."""
    from solar_ml_pipeline.config import settings_from_env

    for device_id in ("tracker01", "tracker03"):
        simulate_into(store, device_id, days=3)
    simulate_into(store, "tracker02", days=0.02)
    return settings_from_env(fleet_env), ["tracker01", "tracker02", "tracker03"]


def _run_batch(settings, instance, devices, period=PERIOD):
    job = build_definitions(settings).resolve_job_def(RETRAIN_JOB)
    return job.execute_in_process(
        instance=instance, raise_on_error=False,
        tags={RANGE_START_TAG: f"{devices[0]}|{period}", RANGE_END_TAG: f"{devices[-1]}|{period}"})


def _statuses(instance, settings, asset):
    value = get_and_update_asset_status_cache_value(
        instance, dg.AssetKey(asset), retrain_partitions(settings), dynamic_partitions_loader=instance)
    parts = retrain_partitions(settings)
    return (sorted(value.deserialize_materialized_partition_subsets(parts).get_partition_keys()),
            sorted(value.deserialize_failed_partition_subsets(parts).get_partition_keys()))


def test_one_failing_device_fails_only_itself_and_the_run_names_it(fleet, store):
    settings, devices = fleet
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(DEVICE_DIMENSION, devices)
        result = _run_batch(settings, instance, devices)
        stats = instance.get_run_stats(result.run_id)
        assert not result.success
        failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
        assert failure.description.startswith("1 of 3 devices failed (tracker02: No data found")
        ok = [f"tracker01|{PERIOD}", f"tracker03|{PERIOD}"]
        assert _statuses(instance, settings, "promotion_decision") == (ok, [f"tracker02|{PERIOD}"])
        assert _statuses(instance, settings, "model_version") == (ok, [f"tracker02|{PERIOD}"])
        # the window was read, found too short and said so in its blocking check
        assert _statuses(instance, settings, "raw_readings")[0] == sorted([*ok, f"tracker02|{PERIOD}"])
        checks = {(e.partition, e.passed) for e in result.get_asset_check_evaluations()
                  if e.check_name == "enough_rows"}
        assert checks == {(f"tracker01|{PERIOD}", True), (f"tracker02|{PERIOD}", False),
                          (f"tracker03|{PERIOD}", True)}
    runs = store.list_runs(limit=10).runs
    assert len(runs) == 3
    by_device = {r["device_id"]: r for r in runs}
    assert {d: r["status"] for d, r in by_device.items()} == {
        "tracker01": "success", "tracker02": "failed", "tracker03": "success"}
    for device_id, record in by_device.items():
        assert record["run_id"] == attempt_id(result.run_id, device_id, PERIOD, batch=True)
        assert record["dagster_run_id"] == result.run_id
    # each attempt's own duration, not the batch's so far
    assert sum(r["duration_s"] for r in runs) <= stats.end_time - stats.start_time
    for device_id in ("tracker01", "tracker03"):  # each its own version and promotion
        pointer = json.loads((settings.model_dir / device_id / "current_model.json").read_text())
        assert pointer["version"] == by_device[device_id]["version"]
    assert not (settings.model_dir / "tracker02" / "current_model.json").exists()


def test_retry_from_failure_retrains_only_the_failed_devices(fleet, store):
    settings, devices = fleet
    ensure_dagster_home(settings)  # the retry opens the project's instance: run the batch there
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(DEVICE_DIMENSION, devices)
        first = _run_batch(settings, instance, devices)
    simulate_into(store, "tracker02", days=3)  # its readings arrived late
    retry_run_id, attempts = retry_failed_in_foreground(settings, first.run_id)
    assert attempts == [attempt_id(retry_run_id, "tracker02", PERIOD, batch=True)]
    assert store.get_run(attempts[0])["status"] == "success"
    assert store.list_runs(device_id="tracker01").total == 1  # not retrained again
    assert store.list_runs(device_id="tracker02").total == 2  # its failed and its retried attempt
    with dg.DagsterInstance.get() as instance:
        for asset in ASSETS:
            materialised, failed = _statuses(instance, settings, asset)
            assert materialised == [f"{d}|{PERIOD}" for d in devices] and failed == []
        retry = instance.get_run_by_id(retry_run_id)
        assert retry.parent_run_id == first.run_id
        assert run_partition_keys(retry, retrain_partitions(settings), instance) == [
            f"{d}|{PERIOD}" for d in devices]
    with pytest.raises(NothingToRetry, match="not failed"):
        retry_failed_in_foreground(settings, retry_run_id)


def test_a_subset_decides_on_the_stored_version_or_only_builds_features(fleet, store):
    settings, _ = fleet
    job = build_definitions(settings).resolve_job_def(RETRAIN_JOB)
    key = dg.MultiPartitionKey({"device": "tracker01", "period": PERIOD})
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(DEVICE_DIMENSION, ["tracker01"])
        trained = job.execute_in_process(instance=instance, partition_key=key,
                                         asset_selection=[dg.AssetKey("model_version")])
        assert trained.success and store.get_run(trained.run_id) is None  # stored, not decided
        assert not (settings.model_dir / "tracker01" / "current_model.json").exists()
        decided = job.execute_in_process(instance=instance, partition_key=key,
                                         asset_selection=[dg.AssetKey("promotion_decision")])
        assert decided.success
        record = store.get_run(decided.run_id)
        version = trained.asset_materializations_for_node("retrain")[0].metadata["version"].value
        assert record["status"] == "success" and record["version"] == version
        assert record["promoted"] is True
        features = job.execute_in_process(instance=instance, partition_key=key,
                                          asset_selection=[dg.AssetKey("feature_frame")])
        assert [m.asset_key.to_user_string()
                for m in features.asset_materializations_for_node("retrain")] == ["feature_frame"]


def test_deciding_a_partition_that_has_no_stored_version_fails_with_the_fix(fleet, store):
    settings, _ = fleet
    job = build_definitions(settings).resolve_job_def(RETRAIN_JOB)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(DEVICE_DIMENSION, ["tracker01"])
        result = job.execute_in_process(
            instance=instance, raise_on_error=False,
            partition_key=dg.MultiPartitionKey({"device": "tracker01", "period": PERIOD}),
            asset_selection=[dg.AssetKey("promotion_decision")])
    assert not result.success
    assert "materialize model_version for this partition first" in store.get_run(result.run_id)["error"]
