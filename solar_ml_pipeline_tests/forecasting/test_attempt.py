"""One device's attempt is one plain call: no Dagster, one record, one version, one pointer."""

import subprocess
import sys
from datetime import timedelta

import pytest

from solar_ml_pipeline.forecasting.attempt import Policy, retrain_device
from solar_ml_pipeline.model_store.registry import ModelRegistry
from solar_ml_pipeline_tests.conftest import PERIOD, PERIOD_START, simulate_into


@pytest.fixture
def registry(settings):
    return ModelRegistry(settings.model_dir)


def test_a_device_retrains_promotes_and_is_recorded_in_one_call(settings, store, registry):
    simulate_into(store, "dev-1", days=8)
    record = retrain_device(settings, store, registry, "dev-1", PERIOD, PERIOD_START,
                            run_id="run-1", days=7)
    assert record["status"] == "success" and record["promoted"] is True
    assert record["partition_key"] == f"dev-1|{PERIOD}" and record["period"] == PERIOD
    assert record["window_end"] == PERIOD_START
    versions = registry.list_versions("dev-1")
    assert [v["version"] for v in versions] == [record["version"]]
    assert versions[0]["dagster_run_id"] == "run-1"
    assert registry.read_pointer("dev-1")["version"] == record["version"]
    assert [r["run_id"] for r in store.list_runs(device_id="dev-1").runs] == ["run-1"]


def test_a_device_without_readings_gets_one_failed_record_and_no_version(settings, store,
                                                                       registry):
    record = retrain_device(settings, store, registry, "dev-2", PERIOD, PERIOD_START,
                            run_id="run-2", days=7)
    assert record["status"] == "failed"
    assert record["error"].startswith("No data found for training: device dev-2")
    assert registry.list_versions("dev-2") == []
    assert registry.read_pointer("dev-2") is None


def test_a_backfill_is_stored_but_does_not_move_the_pointer(settings, store, registry):
    simulate_into(store, "dev-1", days=9)
    first = retrain_device(settings, store, registry, "dev-1", PERIOD, PERIOD_START,
                           run_id="run-new", days=7)
    older = retrain_device(settings, store, registry, "dev-1", "2026-03-09",
                           PERIOD_START - timedelta(days=1), run_id="run-old", days=7,
                           policy=Policy.from_settings(settings))
    assert older["status"] == "success" and older["promoted"] is False
    assert older["decision_rule"] == "backfill"
    assert registry.read_pointer("dev-1")["version"] == first["version"]


def test_the_attempt_module_runs_without_dagster_loaded():
    code = ("import sys; sys.modules['dagster'] = None\n"
            "import solar_ml_pipeline.forecasting.attempt\n"
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr
