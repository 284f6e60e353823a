"""`solar-ml retrain --retry-failed RUN_ID`: the command-line twin of Re-execute from failure."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from solar_ml_pipeline.interfaces import cli
from solar_ml_pipeline.orchestration.batches import RANGE_END_TAG, RANGE_START_TAG
from solar_ml_pipeline.orchestration.definitions import build_definitions
from solar_ml_pipeline.orchestration.instance import ensure_dagster_home
from solar_ml_pipeline.orchestration.jobs import RETRAIN_JOB
from solar_ml_pipeline.orchestration.partitions import DEVICE_DIMENSION
from solar_ml_pipeline_tests.conftest import PERIOD, simulate_into


@pytest.fixture
def failed_batch(settings, store, test_env, monkeypatch):
    """A batch run of three devices whose middle one had too few readings, then got them."""
    for name, value in test_env.items():
        monkeypatch.setenv(name, value)
    for device_id in ("tracker01", "tracker03"):
        simulate_into(store, device_id, days=3)
    simulate_into(store, "tracker02", days=0.02)
    ensure_dagster_home(settings)
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(DEVICE_DIMENSION, ["tracker01", "tracker02", "tracker03"])
        result = build_definitions(settings).resolve_job_def(RETRAIN_JOB).execute_in_process(
            instance=instance, raise_on_error=False,
            tags={RANGE_START_TAG: f"tracker01|{PERIOD}", RANGE_END_TAG: f"tracker03|{PERIOD}"})
    assert not result.success
    return result.run_id


def test_retry_failed_retrains_only_the_failed_device_and_exits_0(failed_batch, store, capsys):
    simulate_into(store, "tracker02", days=3)
    code = cli.main(["retrain", "--retry-failed", failed_batch, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["retried_from"] == failed_batch
    assert [(a["device_id"], a["status"]) for a in out["attempts"]] == [("tracker02", "success")]
    assert store.list_runs(device_id="tracker01").total == 1


def test_retry_failed_that_fails_again_exits_1_naming_the_device(failed_batch, capsys):
    code = cli.main(["retrain", "--retry-failed", failed_batch])
    captured = capsys.readouterr()
    assert code == 1
    assert "retried 1 device(s)" in captured.out and "tracker02" in captured.out
    [line] = captured.err.strip().splitlines()
    assert line.startswith("solar-ml: error: 1 of 1 retried device(s) failed again, e.g. tracker02")


def test_retry_failed_refuses_an_unknown_run_or_one_that_did_not_fail(failed_batch, store, capsys):
    assert cli.main(["retrain", "--retry-failed", "0000-not-a-run"]) == 1
    assert "no Dagster run '0000-not-a-run'" in capsys.readouterr().err
    simulate_into(store, "tracker02", days=3)
    cli.main(["retrain", "--retry-failed", failed_batch, "--json"])
    retry_id = json.loads(capsys.readouterr().out)["run_id"]
    assert cli.main(["retrain", "--retry-failed", retry_id]) == 2
    assert "is success, not failed" in capsys.readouterr().err
    assert cli.main(["retrain", "--retry-failed", failed_batch, "--device", "tracker01"]) == 2
    assert "--retry-failed takes only a run id" in capsys.readouterr().err


def test_retrain_without_a_device_or_a_run_to_retry_exits_2(test_env, monkeypatch, capsys):
    for name, value in test_env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["retrain"]) == 2
    assert "retrain needs --device D (or --retry-failed RUN_ID)" in capsys.readouterr().err
