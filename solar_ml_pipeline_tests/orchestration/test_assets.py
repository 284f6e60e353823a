"""The retrain job end to end in one process, on simulated readings in the embedded store."""

import hashlib
import json
from datetime import datetime, timedelta

import dagster as dg
import pytest

from solar_ml_pipeline.orchestration.retraining import resolve_request, retrain_in_foreground
from solar_ml_pipeline_tests.conftest import PERIOD, PERIOD_START, simulate_into


def _retrain(settings, device_id, period=PERIOD, days=None):
    run_id = retrain_in_foreground(settings, resolve_request(settings, device_id, period, days))
    return run_id


@pytest.fixture
def device_with_data(settings, store):
    simulate_into(store, "tracker01", days=10)
    return "tracker01"


def test_first_retrain_stores_a_verified_version_promotes_it_and_logs_success(settings, store, device_with_data):
    run_id = _retrain(settings, device_with_data)
    record = store.get_run(run_id)
    assert record["status"] == "success", record["error"]
    assert record["promoted"] is True
    assert record["partition_key"] == f"tracker01|{PERIOD}"
    assert record["period"] == PERIOD
    assert record["rows_used"] > 1000 and record["train_samples"] > record["test_samples"] > 0
    for field in ("mae", "rmse", "r2", "persistence_mae", "skill"):
        assert isinstance(record[field], float)
    model_dir = settings.model_dir / device_with_data
    pointer = json.loads((model_dir / "current_model.json").read_text())
    assert pointer["model_path"] == f"{device_with_data}/versions/model_{record['version']}.pkl"
    pkl = settings.model_dir / pointer["model_path"]  # relative: the store serves anywhere
    assert pointer["version"] == record["version"]
    assert pkl.parent == model_dir / "versions" and pkl.name == f"model_{record['version']}.pkl"
    assert hashlib.sha256(pkl.read_bytes()).hexdigest() == pointer["sha256"]
    meta = json.loads((settings.model_dir / pointer["metadata_path"]).read_text())
    assert meta["dagster_run_id"] == run_id
    assert meta["window_end"].startswith("2026-03-10T13:00")
    assert meta["features"] == record["features"]


def _materialisation_metadata(run_id):
    with dg.DagsterInstance.get() as instance:
        events = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
        return {e.event_log_entry.dagster_event.asset_key.to_user_string():
                e.event_log_entry.dagster_event.step_materialization_data.materialization.metadata
                for e in events}


def test_materialisation_metadata_carries_float_metrics_for_the_ui(settings, store, device_with_data):
    run_id = _retrain(settings, device_with_data)
    by_asset = _materialisation_metadata(run_id)
    assert set(by_asset) == {"raw_readings", "feature_frame", "model_version", "promotion_decision"}
    model_meta = by_asset["model_version"]
    for name in ("mae", "rmse", "r2", "persistence_mae", "skill"):
        assert isinstance(model_meta[name], dg.FloatMetadataValue), name
    assert isinstance(by_asset["promotion_decision"]["promoted"], dg.BoolMetadataValue)


def test_no_data_attempt_fails_and_leaves_a_failed_record(settings, store):
    store.write_readings([])  # empty store: the window has 0 rows
    run_id = _retrain(settings, "ghost01")
    record = store.get_run(run_id)
    assert record["status"] == "failed"
    assert record["error"].startswith("No data found for training: device ghost01, window [")
    assert record["error"].endswith("): 0 rows")
    assert record["promoted"] is False
    assert not (settings.model_dir / "ghost01" / "current_model.json").exists()


def test_retrain_of_the_same_period_makes_a_new_version_and_records_the_decision(settings, store, device_with_data):
    first = store.get_run(_retrain(settings, device_with_data))
    second = store.get_run(_retrain(settings, device_with_data))
    assert second["status"] == "success"
    assert second["version"] != first["version"]
    assert second["champion_version"] == first["version"]
    assert isinstance(second["champion_mae"], float)
    assert second["decision_reason"]
    versions = list((settings.model_dir / device_with_data / "versions").glob("model_*.pkl"))
    assert len(versions) == 2


def test_backfill_of_an_older_period_is_recorded_but_leaves_the_pointer(settings, store, device_with_data):
    current = store.get_run(_retrain(settings, device_with_data))
    pointer_file = settings.model_dir / device_with_data / "current_model.json"
    before = pointer_file.read_text()
    backfill = store.get_run(_retrain(settings, device_with_data, period="2026-03-08", days=2))
    assert backfill["status"] == "success"
    assert backfill["promoted"] is False
    assert "backfill" in backfill["decision_reason"].lower()
    assert pointer_file.read_text() == before
    assert json.loads(before)["version"] == current["version"]


def test_training_never_sees_readings_at_or_after_the_cutoff(settings, store, device_with_data):
    run_id = _retrain(settings, device_with_data)
    record = store.get_run(run_id)
    assert record["window_end"].isoformat().startswith("2026-03-10T13:00")
    # simulate_into also writes a day after the cutoff: exactly the window's readings are used
    in_window = store.read_window(device_with_data, record["window_start"], record["window_end"])
    after = store.read_window(device_with_data, record["window_end"],
                              record["window_end"] + timedelta(days=2))
    assert len(after) > 0
    raw_rows = _materialisation_metadata(run_id)["raw_readings"]["rows"].value
    assert raw_rows == len(in_window)
    assert record["rows_used"] <= raw_rows
    # and independently of the store's own window query: the simulated grid, counted here
    from solar_ml_pipeline.readings.simulator import simulate_readings
    from solar_ml_pipeline.readings.sites import DEFAULT_SITE

    written = simulate_readings(device_with_data, start=PERIOD_START - timedelta(days=10),
                                end=PERIOD_START + timedelta(days=1), site=DEFAULT_SITE)
    stamps = written["timestamp"]
    assert raw_rows == int(((stamps >= record["window_start"]) & (stamps < record["window_end"])).sum())
    newest_seen = _check_evaluations(run_id)["fresh_readings"].metadata["latest_reading"].value
    assert datetime.fromisoformat(newest_seen) < record["window_end"]


def _check_evaluations(run_id):
    with dg.DagsterInstance.get() as instance:
        records = instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
        return {r.event_log_entry.dagster_event.event_specific_data.check_name:
                r.event_log_entry.dagster_event.event_specific_data for r in records}


def test_checks_are_recorded_per_partition(settings, store, device_with_data):
    run_id = _retrain(settings, device_with_data)
    checks = _check_evaluations(run_id)
    assert set(checks) == {"enough_rows", "fresh_readings", "positive_skill"}
    for evaluation in checks.values():
        assert evaluation.partition == f"tracker01|{PERIOD}"
    assert checks["enough_rows"].passed and checks["fresh_readings"].passed


def test_stale_readings_train_but_fail_the_freshness_warning(settings, store):
    from datetime import timedelta

    from solar_ml_pipeline_tests.conftest import PERIOD_START

    # readings stop two days before the cutoff (simulate_into adds a day after `end`)
    simulate_into(store, "stale01", end=PERIOD_START - timedelta(days=3), days=5)
    run_id = _retrain(settings, "stale01")
    assert store.get_run(run_id)["status"] == "success"
    checks = _check_evaluations(run_id)
    assert checks["fresh_readings"].passed is False
    assert checks["fresh_readings"].severity == dg.AssetCheckSeverity.WARN


def test_gate_judges_the_recorded_daylight_maes_and_promotes_only_a_model_that_beats_persistence(
        settings, store, device_with_data, monkeypatch):
    gated = settings.with_overrides(require_beat_persistence=True)
    record = store.get_run(_retrain(gated, device_with_data))
    assert record["status"] == "success"
    assert isinstance(record["daylight_mae"], float)
    beats = record["daylight_mae"] < record["daylight_persistence_mae"]
    assert record["promoted"] is beats
    pointer = json.loads((settings.model_dir / device_with_data / "current_model.json").read_text())
    # refused with no champion: the device is served by smart persistence instead
    assert pointer["version"] == (record["version"] if beats else None)
    assert pointer["serving"] == ("model" if beats else "smart_persistence")

    # the other branch, whichever this window gave: the same data, the gate's MAE pinned
    _gate(monkeypatch, challenger=LOSES if beats else BEATS, champion=LOSES if beats else None)
    other = store.get_run(_retrain(gated, device_with_data))
    assert other["promoted"] is (not beats)
    pointer = json.loads((settings.model_dir / device_with_data / "current_model.json").read_text())
    assert pointer["serving"] == ("smart_persistence" if beats else "model")


# -- the smart-persistence fallback (issue 8 item 4) -------------------------------------------

LOSES, BEATS = 1e9, 0.0  # daylight MAEs: above any persistence MAE, below every one


def _gate(monkeypatch, *, challenger=None, champion=None):
    """Pin the daylight MAEs the gate judges (the challenger's, the champion's on the same
    rows); the persistence MAE stays the real one of the test window."""
    from dataclasses import replace

    from solar_ml_pipeline.forecasting import promotion, training
    real = promotion.daylight_gate_contender

    def contender(version, metrics, cutoff):
        return replace(real(version, metrics, cutoff), gate_mae=challenger)

    monkeypatch.setattr(promotion, "daylight_gate_contender", contender)
    if champion is not None:
        monkeypatch.setattr(training, "daylight_score_on", lambda *args, **kwargs: champion)


def _pointer(settings, device_id):
    from solar_ml_pipeline.model_store.registry import ModelRegistry

    return ModelRegistry(settings.model_dir).read_pointer(device_id)


def test_fallback_when_the_gate_refuses_with_no_champion_until_a_newer_challenger_passes(
        settings, store, device_with_data, monkeypatch):
    gated = settings.with_overrides(require_beat_persistence=True)
    _gate(monkeypatch, challenger=LOSES)
    refused_run = _retrain(gated, device_with_data)
    refused = store.get_run(refused_run)
    assert (refused["status"], refused["promoted"], refused["decision_rule"]) == (
        "success", False, "loses_to_persistence")
    assert refused["serving"] == "smart_persistence"
    assert "no model beats persistence, so it is served by smart persistence" in refused["decision_reason"]
    pointer = _pointer(settings, device_with_data)
    assert (pointer["serving"], pointer["version"], pointer["previous_version"]) == (
        "smart_persistence", None, None)
    assert pointer["challenger_version"] == refused["version"]
    assert pointer["daylight_mae"] == LOSES
    assert pointer["daylight_persistence_mae"] == refused["daylight_persistence_mae"]
    assert pointer["reason"] == refused["decision_reason"]
    decision = _materialisation_metadata(refused_run)["promotion_decision"]
    assert decision["serving"].value == "smart_persistence"
    assert isinstance(decision["serving_fallback"], dg.IntMetadataValue)
    assert decision["serving_fallback"].value == 1
    # nothing downstream: the decision is metadata, never a pickled output per partition
    assert not (settings.dagster_home / "storage" / "promotion_decision").exists()

    _gate(monkeypatch, challenger=BEATS)
    backfill = store.get_run(_retrain(gated, device_with_data, period="2026-03-08", days=2))
    assert (backfill["promoted"], backfill["decision_rule"]) == (False, "backfill")
    assert backfill["serving"] == "smart_persistence"
    assert _pointer(settings, device_with_data) == pointer

    passed_run = _retrain(gated, device_with_data)
    passed = store.get_run(passed_run)
    assert (passed["promoted"], passed["decision_rule"], passed["serving"]) == (
        True, "no_champion", "model")
    assert "replaces the smart-persistence fallback" in passed["decision_reason"]
    served = _pointer(settings, device_with_data)
    assert (served["serving"], served["version"]) == ("model", passed["version"])
    assert _materialisation_metadata(passed_run)["promotion_decision"]["serving_fallback"].value == 0


def test_a_refused_challenger_leaves_a_champion_that_beats_persistence_and_displaces_one_that_does_not(
        settings, store, device_with_data, monkeypatch):
    champion = store.get_run(_retrain(settings, device_with_data))  # gate off: promoted
    before = (settings.model_dir / device_with_data / "current_model.json").read_bytes()
    gated = settings.with_overrides(require_beat_persistence=True)

    _gate(monkeypatch, challenger=LOSES, champion=BEATS)
    kept = store.get_run(_retrain(gated, device_with_data))
    assert (kept["promoted"], kept["serving"], kept["champion_daylight_mae"]) == (False, "model", BEATS)
    assert f"champion {champion['version']} stays in service" in kept["decision_reason"]
    assert (settings.model_dir / device_with_data / "current_model.json").read_bytes() == before

    _gate(monkeypatch, challenger=LOSES, champion=LOSES)
    displaced_run = _retrain(gated, device_with_data)
    displaced = store.get_run(displaced_run)
    assert (displaced["promoted"], displaced["serving"]) == (False, "smart_persistence")
    assert f"champion {champion['version']} loses to persistence too" in displaced["decision_reason"]
    pointer = _pointer(settings, device_with_data)
    assert (pointer["serving"], pointer["version"]) == ("smart_persistence", None)
    assert pointer["previous_version"] == champion["version"]  # the rollback target
    assert (pointer["challenger_version"], pointer["champion_daylight_mae"]) == (
        displaced["version"], LOSES)
    metadata = _materialisation_metadata(displaced_run)["promotion_decision"]
    assert metadata["serving_fallback"].value == 1
    assert metadata["champion_daylight_mae"].value == LOSES


def test_a_refused_challenger_displaces_a_champion_that_can_no_longer_be_served(
        settings, store, device_with_data, monkeypatch):
    champion = store.get_run(_retrain(settings, device_with_data))  # gate off: promoted
    pointer = _pointer(settings, device_with_data)
    (settings.model_dir / pointer["model_path"]).write_bytes(b"damaged on disk")
    gated = settings.with_overrides(require_beat_persistence=True)

    _gate(monkeypatch, challenger=LOSES)
    refused = store.get_run(_retrain(gated, device_with_data))
    assert (refused["promoted"], refused["serving"]) == (False, "smart_persistence")
    assert f"champion {champion['version']} cannot be served" in refused["decision_reason"]
    fallback = _pointer(settings, device_with_data)
    assert (fallback["serving"], fallback["version"]) == ("smart_persistence", None)
    assert fallback["previous_version"] == champion["version"]


def test_a_challenger_that_beats_persistence_replaces_a_champion_that_does_not_even_if_worse(
        settings, store, device_with_data, monkeypatch):
    from dataclasses import replace

    from solar_ml_pipeline.forecasting import promotion, training
    _retrain(settings, device_with_data)  # gate off: promoted
    gated = settings.with_overrides(require_beat_persistence=True)
    real = promotion.daylight_gate_contender
    monkeypatch.setattr(promotion, "daylight_gate_contender", lambda *args: replace(
        real(*args), gate_mae=BEATS, mae=1e6))  # passes the gate, far worse on all hours

    monkeypatch.setattr(training, "daylight_score_on", lambda *args, **kwargs: LOSES)
    replaced = store.get_run(_retrain(gated, device_with_data))
    assert (replaced["promoted"], replaced["decision_rule"], replaced["serving"]) == (
        True, "champion_loses_to_persistence", "model")
    assert _pointer(settings, device_with_data)["version"] == replaced["version"]

    monkeypatch.setattr(training, "daylight_score_on", lambda *args, **kwargs: BEATS)
    kept = store.get_run(_retrain(gated, device_with_data))
    assert (kept["promoted"], kept["decision_rule"]) == (False, "worse")
    assert _pointer(settings, device_with_data)["version"] == replaced["version"]


def test_a_window_too_flagged_to_train_fails_enough_rows_with_the_reason_and_counts(settings, store):
    from solar_ml_pipeline.readings.simulator import Fault, simulate_readings

    # the power sensor dies at 0 W one night: every daylight reading after it is stuck
    dead = simulate_readings("tracker01", start=PERIOD_START - timedelta(days=8), end=PERIOD_START,
                             faults=[Fault("stuck", PERIOD_START - timedelta(days=6, hours=22))])
    store.write_readings(dead.to_dict("records"))
    run_id = _retrain(settings, "tracker01")
    record = store.get_run(run_id)
    assert record["status"] == "failed" and "below MIN_USABLE_SHARE 50 %" in record["error"]
    check = _check_evaluations(run_id)["enough_rows"]
    assert check.passed is False and check.description == record["error"]
    assert check.metadata["min_usable_share"].value == 0.5
    raw = _materialisation_metadata(run_id)["raw_readings"]
    for metadata in (check.metadata, raw):
        assert isinstance(metadata["quality_stuck"], dg.IntMetadataValue)
        assert metadata["quality_stuck"].value == record["quality_flags"]["stuck"] > 1000
        assert metadata["usable_share"].value == record["usable_share"]
        assert metadata["daylight_usable_share"].value < 0.5  # a healthy first day, then none
    assert set(_materialisation_metadata(run_id)) == {"raw_readings"}
