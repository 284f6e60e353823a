"""Every way the Dagster UI launches work, over GraphQL against a real webserver and daemon.

The fleet: five trackers in batches of two; tracker02 starts with an hour of readings, so
the discovery batch holding it fails for it alone. The tests run in file order: discovery,
the retry of that device, then a backfill over two periods, one partition from an asset
page, asset subsets and the job's launchpad.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from solar_ml_pipeline.orchestration.batches import RANGE_END_TAG, RANGE_START_TAG
from solar_ml_pipeline.orchestration.failures import DEVICE_TAG, PERIOD_TAG
from solar_ml_pipeline.orchestration.jobs import RETRAIN_JOB
from solar_ml_pipeline.orchestration.partitions import period_key_at
from solar_ml_pipeline.storage import open_store
from solar_ml_pipeline_tests.conftest import simulate_into
from solar_ml_pipeline_tests.e2e.conftest import running_dagster_dev
from solar_ml_pipeline_tests.e2e.dagster_api import ASSET_JOB, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FLEET = ("tracker01", "tracker02", "tracker03", "tracker04", "tracker05")
THIN = "tracker02"
ASSETS = ["raw_readings", "feature_frame", "model_version", "promotion_decision"]
RUN_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def fleet_dev(tmp_path_factory):
    devices = {device_id: 6.0 for device_id in FLEET} | {THIN: 0.04}
    with running_dagster_dev(tmp_path_factory.mktemp("launch_paths"), devices, extra_env={
            "FLEET_BATCH_SIZE": "2", "RETRAIN_ENABLED": "false", "RETRAIN_DAYS": "3"}) as dev:
        yield dev


def records(dev, device_id):
    store = open_store(dev.settings)
    try:
        return store.list_runs(device_id=device_id, limit=100).runs
    finally:
        store.close()


def partition_tags(device_id: str, period: str) -> dict[str, str]:
    """What the UI sets when a person launches one device x period partition."""
    return {"dagster/partition": f"{device_id}|{period}", DEVICE_TAG: device_id,
            PERIOD_TAG: period}


def assert_succeeded(dev, run_ids):
    statuses = dev.api.wait_for_runs(run_ids, RUN_TIMEOUT_S)
    assert set(statuses.values()) == {"SUCCESS"}, f"{statuses}\n{dev.log_tail()}"


def test_discovery_retrains_the_fleet_in_batches_and_fails_only_the_thin_device(fleet_dev):
    api = fleet_dev.api
    runs = wait_until(lambda: (lambda r: r if len(r) >= 3 else None)(
        api.runs(tags={"solar/trigger": "discovery"})), 120) or []
    assert len(runs) == 3, f"{runs}\n{fleet_dev.log_tail()}"
    ranges = sorted((r["tags"].get(RANGE_START_TAG, r["tags"].get("dagster/partition")),
                     r["tags"].get(RANGE_END_TAG)) for r in runs)
    period = runs[0]["tags"]["solar/period"]
    assert ranges == [(f"tracker01|{period}", f"tracker02|{period}"),
                      (f"tracker03|{period}", f"tracker04|{period}"),
                      (f"tracker05|{period}", None)]
    statuses = api.wait_for_runs([r["runId"] for r in runs], RUN_TIMEOUT_S)
    batch_with_thin = next(r["runId"] for r in runs
                           if r["tags"].get(RANGE_START_TAG) == f"tracker01|{period}")
    assert statuses.pop(batch_with_thin) == "FAILURE", fleet_dev.log_tail()
    assert set(statuses.values()) == {"SUCCESS"}, f"{statuses}\n{fleet_dev.log_tail()}"

    [thin] = records(fleet_dev, THIN)
    assert thin["status"] == "failed" and thin["error"].startswith("No data found for training")
    assert thin["dagster_run_id"] == batch_with_thin
    for device_id in set(FLEET) - {THIN}:
        [record] = records(fleet_dev, device_id)
        assert record["status"] == "success" and record["version"]
    # the UI's partition counts: the thin device's later assets failed, the rest materialised
    for asset in ("feature_frame", "model_version", "promotion_decision"):
        stats = api.partition_stats(asset)
        assert (stats["numMaterialized"], stats["numFailed"]) == (4, 1), (asset, stats)
    assert api.partition_stats("raw_readings")["numFailed"] == 0  # read, and found too short
    alert = fleet_dev.webhook.wait_for(lambda p: p["run_id"] == batch_with_thin, timeout_s=60)
    assert alert is not None and alert["failed_devices"] == [THIN], fleet_dev.webhook.payloads()
    assert alert["error"].startswith("1 of 2 devices failed (tracker02: No data found")


def test_re_execute_from_failure_retrains_only_the_device_that_failed(fleet_dev):
    api = fleet_dev.api
    [failed] = [r for r in api.runs(tags={"solar/trigger": "discovery"}) if r["status"] == "FAILURE"]
    store = open_store(fleet_dev.settings)
    try:
        simulate_into(store, THIN, end=fleet_dev.started_at, days=6, interval_minutes=5)
    finally:
        store.close()
    retry = api.reexecute(failed["runId"])
    assert_succeeded(fleet_dev, [retry])
    assert len(records(fleet_dev, "tracker01")) == 1  # its attempt in the batch stands
    latest = records(fleet_dev, THIN)[0]
    assert latest["status"] == "success" and latest["dagster_run_id"] == retry
    assert api.partition_stats("promotion_decision")["numFailed"] == 0


def test_materialize_all_as_a_backfill_over_devices_and_two_periods_succeeds(fleet_dev):
    api = fleet_dev.api
    now = datetime.now(UTC)
    periods = [period_key_at(fleet_dev.settings, now - timedelta(days=1)),
               period_key_at(fleet_dev.settings, now)]
    partitions = [f"{d}|{p}" for d in FLEET for p in periods]
    backfill = api.launch_backfill(ASSETS, partitions)
    assert api.wait_for_backfill(backfill, 2 * RUN_TIMEOUT_S) in ("COMPLETED", "COMPLETED_SUCCESS")
    runs = api.runs(tags={"dagster/backfill": backfill})
    assert runs and {r["status"] for r in runs} == {"SUCCESS"}, f"{runs}\n{fleet_dev.log_tail()}"
    assert len(runs) < len(partitions)  # ranged runs, not one per partition
    for device_id in FLEET:
        attempts = [r for r in records(fleet_dev, device_id)
                    if r["dagster_run_id"] in {run["runId"] for run in runs}]
        assert sorted(r["period"] for r in attempts) == periods
        assert {r["status"] for r in attempts} == {"success"}
    for partition in partitions:
        assert api.materialization_metadata("promotion_decision", partition)


def test_one_partition_from_an_asset_page_runs_on_the_implicit_asset_job(fleet_dev):
    period = period_key_at(fleet_dev.settings, datetime.now(UTC))
    run_id = fleet_dev.api.launch_run(ASSET_JOB, partition_tags("tracker03", period),
                                      assets=ASSETS)
    assert_succeeded(fleet_dev, [run_id])
    assert records(fleet_dev, "tracker03")[0]["run_id"] == run_id


def test_a_subset_of_the_assets_runs_alone(fleet_dev):
    api = fleet_dev.api
    period = period_key_at(fleet_dev.settings, datetime.now(UTC))
    features = api.launch_run(ASSET_JOB, partition_tags("tracker04", period),
                              assets=["feature_frame"])
    decision = api.launch_run(ASSET_JOB, partition_tags("tracker05", period),
                              assets=["promotion_decision"])
    assert_succeeded(fleet_dev, [features, decision])
    [made] = api.materialization_metadata("feature_frame", f"tracker04|{period}")[:1]
    assert made["runId"] == features
    assert not [m for m in api.materialization_metadata("model_version", f"tracker04|{period}")
                if m["runId"] == features]
    # a decision alone judges the newest stored version: the record carries its trained_at
    [decided] = [r for r in records(fleet_dev, "tracker05") if r["run_id"] == decision]
    assert decided["status"] == "success" and decided["version"]


def test_the_retrain_job_launchpad_takes_its_config(fleet_dev):
    period = period_key_at(fleet_dev.settings, datetime.now(UTC))
    run_id = fleet_dev.api.launch_run(RETRAIN_JOB, partition_tags("tracker01", period),
                                      run_config={"ops": {"retrain": {"config": {"days": 2}}}})
    assert_succeeded(fleet_dev, [run_id])
    record = records(fleet_dev, "tracker01")[0]
    assert record["run_id"] == run_id and record["days_used"] == 2
