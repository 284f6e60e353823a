"""Operator actions shared by the CLI and the API: run log paging, models, rollback, prune,
predict and the retrain dry run. In-process and fast: models are tiny constant forecasters
stored through the real registry, so no test here trains."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sklearn.dummy import DummyRegressor

from solar_ml_pipeline.config import InvalidDeviceId
from solar_ml_pipeline.forecasting.prediction import PredictionUnavailable, predict_latest
from solar_ml_pipeline.forecasting.training import ForecastModel
from solar_ml_pipeline.interfaces import accountability, operations
from solar_ml_pipeline.model_store.registry import (
    ChecksumMismatch,
    ModelRegistry,
    NoCurrentModel,
    NoPreviousVersion,
    VersionNotFound,
)
from solar_ml_pipeline.model_store.serving import ModelServer
from solar_ml_pipeline.orchestration.partitions import training_window
from solar_ml_pipeline.orchestration.retraining import resolve_request
from solar_ml_pipeline.storage import StoreUnavailable
from solar_ml_pipeline.storage.run_records import KIND_ROLLBACK, base_record
from solar_ml_pipeline_tests.conftest import PERIOD, simulate_into

NOW = datetime(2026, 3, 12, 6, 0, tzinfo=UTC)  # 11:30 in Colombo: the sun is up


# --- helpers shared with test_cli and test_api ------------------------------------------------


def constant_model(value: float) -> ForecastModel:
    """A real ForecastModel whose forecast is `value`: which version served is then visible."""
    estimator = DummyRegressor(strategy="constant", constant=value)
    estimator.fit(np.zeros((2, 1)), [value, value])
    return ForecastModel(estimator=estimator, features=["power"], horizon_minutes=15,
                         model_type="constant", feature_set="original",
                         trained_at=datetime(2026, 3, 1, tzinfo=UTC), timezone="Asia/Colombo")


def save_constant_version(registry: ModelRegistry, device_id: str, value: float, day: int,
                          *, promote: bool = True) -> str:
    """A complete version trained "on" 2026-03-`day`; promoted unless told otherwise."""
    trained_at = datetime(2026, 3, day, 13, 0, tzinfo=UTC)
    version = registry.new_version_id(trained_at)
    registry.save_version(device_id, version, constant_model(value), {
        "trained_at": trained_at.isoformat().replace("+00:00", "Z"),
        "metrics": {"mae": value, "rmse": value * 2, "r2": 0.5, "skill": 0.1},
        "model_type": "constant", "features": ["power"], "horizon_minutes": 15,
        "period": f"2026-03-{day:02d}", "rows_used": 100, "days_used": 7,
    })
    if promote:
        registry.promote(device_id, version)
    return version


FALLBACK_REASON = "Not promoted: no model beats persistence in daylight"


def put_on_fallback(registry: ModelRegistry, device_id: str,
                    reason: str = FALLBACK_REASON) -> dict:
    """The pointer promotion writes when no model of the device beats persistence."""
    with registry.device_lock(device_id):
        return registry.set_fallback(device_id, reason=reason, figures={
            "daylight_mae": 31.0, "daylight_persistence_mae": 30.0})


def write_recent_readings(store, device_id: str, newest: datetime, minutes: int = 60) -> None:
    """One power reading a minute up to `newest` (no other sensors)."""
    store.write_readings([
        {"device_id": device_id, "timestamp": newest - timedelta(minutes=i),
         "power": 200.0 - i, "servo_angle": None, "temperature": None, "humidity": None,
         "lux": None, "voltage": None, "current": None, "fan_on": None}
        for i in range(minutes)
    ])


def run_record(device_id: str, trained_at: datetime, *, status: str = "success",
               promoted: bool = False) -> dict:
    record = base_record(run_id=str(uuid.uuid4()), device_id=device_id, partition_key=None,
                         period=None, window_start=None, window_end=None, days_used=7,
                         horizon_minutes=15, model_type="constant", trained_at=trained_at)
    record.update(status=status, promoted=promoted, mae=1.0)
    return record


@pytest.fixture
def registry(settings) -> ModelRegistry:
    return operations.registry_for(settings)


# --- run log ----------------------------------------------------------------------------------


@pytest.fixture
def logged_runs(store) -> list[dict]:
    """9 runs of `pg` (every third failed, every second promoted) and 2 of `other`."""
    records = []
    for i in range(9):
        records.append(run_record("pg", NOW - timedelta(hours=i),
                                  status="failed" if i % 3 == 2 else "success",
                                  promoted=i % 2 == 0 and i % 3 != 2))
    records += [run_record("other", NOW - timedelta(minutes=30 + i)) for i in range(2)]
    for record in records:
        store.upsert_run(record)
    return records


def test_pages_cover_every_run_once_newest_first_with_the_total(store, logged_runs):
    seen = []
    for skip in (0, 4, 8):
        page = operations.list_runs(store, device_id="pg", limit=4, skip=skip)
        assert page["total"] == 9
        seen += page["runs"]
    assert [r["run_id"] for r in seen] == [r["run_id"] for r in logged_runs[:9]]
    times = [r["trained_at"] for r in seen]
    assert times == sorted(times, reverse=True) and all(t.endswith("Z") for t in times)


def test_filters_by_device_status_and_promoted_and_count_only_matches(store, logged_runs):
    everything = operations.list_runs(store, limit=50)
    assert everything["total"] == 11
    failed = operations.list_runs(store, device_id="pg", status="failed")
    assert failed["total"] == 3 and {r["status"] for r in failed["runs"]} == {"failed"}
    promoted = operations.list_runs(store, device_id="pg", promoted=True)
    expected = sum(1 for r in logged_runs if r["device_id"] == "pg" and r["promoted"])
    assert promoted["total"] == expected and all(r["promoted"] for r in promoted["runs"])
    assert operations.list_runs(store, device_id="nobody") == {"total": 0, "runs": []}


@pytest.mark.parametrize("kwargs, message", [
    ({"limit": 0}, "invalid limit 0"),
    ({"limit": operations.MAX_LIMIT + 1}, "invalid limit"),
    ({"skip": -1}, "invalid skip -1"),
    ({"status": "done"}, "expected success or failed"),
])
def test_bad_paging_or_filters_are_refused_with_the_reason(store, kwargs, message):
    with pytest.raises(operations.InvalidRequest, match=message):
        operations.list_runs(store, **kwargs)


def test_a_bad_device_id_is_refused_before_the_store_is_asked(store):
    with pytest.raises(InvalidDeviceId):
        operations.list_runs(store, device_id="../etc")


def test_show_and_delete_a_run_and_unknown_ids_delete_nothing(store, logged_runs):
    target = logged_runs[0]["run_id"]
    assert operations.show_run(store, target)["run_id"] == target
    with pytest.raises(operations.UnknownRun, match="no run with id 'missing'"):
        operations.delete_run(store, "missing")
    assert operations.list_runs(store)["total"] == 11
    assert operations.delete_run(store, target)["success"] is True
    with pytest.raises(operations.UnknownRun):
        operations.show_run(store, target)
    assert operations.list_runs(store)["total"] == 10
    with pytest.raises(operations.InvalidRequest):
        operations.show_run(store, "has spaces")


# --- models -----------------------------------------------------------------------------------


def test_current_model_has_the_original_shape_with_or_without_a_model(settings, registry):
    assert operations.current_model(settings, "t1") == {
        "model_exists": False, "device_id": "t1", "serving": None, "version": None,
        "updated_at": None, "model_path": None, "metrics": None,
    }
    first = save_constant_version(registry, "t1", 3.0, 1)
    second = save_constant_version(registry, "t1", 2.0, 2)
    shown = operations.current_model(settings, "t1")
    assert shown["model_exists"] is True
    assert (shown["version"], shown["previous_version"]) == (second, first)
    assert shown["model_path"].endswith(f"model_{second}.pkl")
    assert {"mae": 2.0, "rmse": 4.0, "r2": 0.5}.items() <= shown["metrics"].items()
    assert shown["updated_at"].endswith("Z") and shown["serving"] == "model"


def test_current_model_on_smart_persistence_says_so_why_and_what_it_displaced(settings,
                                                                                registry):
    first = save_constant_version(registry, "t1", 3.0, 1)
    put_on_fallback(registry, "t1")
    shown = operations.current_model(settings, "t1")
    assert (shown["model_exists"], shown["serving"], shown["version"]) == (
        False, "smart_persistence", None)
    assert (shown["reason"], shown["previous_version"]) == (FALLBACK_REASON, first)
    assert (shown["daylight_mae"], shown["daylight_persistence_mae"]) == (31.0, 30.0)
    assert shown["updated_at"].endswith("Z") and shown["model_path"] is None
    listing = operations.list_models(settings, "t1")
    assert (listing["serving"], listing["current_version"], listing["previous_version"]) == (
        "smart_persistence", None, first)
    assert [(v["current"], v["previous"]) for v in listing["versions"]] == [(False, True)]


def test_model_list_is_newest_first_and_marks_current_and_previous(settings, registry):
    versions = [save_constant_version(registry, "t1", 1.0 + day, day) for day in (1, 2, 3)]
    registry.rollback("t1")  # current: day 2, previous: day 3
    listing = operations.list_models(settings, "t1")
    assert [v["version"] for v in listing["versions"]] == versions[::-1]
    marks = {v["version"]: (v["current"], v["previous"]) for v in listing["versions"]}
    assert marks == {versions[2]: (False, True), versions[1]: (True, False),
                     versions[0]: (False, False)}
    assert (listing["current_version"], listing["previous_version"]) == (versions[1], versions[2])


def test_rollback_moves_the_pointer_back_and_forward_and_logs_each_move(settings, store,
                                                                          registry):
    first = save_constant_version(registry, "t1", 3.0, 1)
    second = save_constant_version(registry, "t1", 2.0, 2)
    before = datetime.now(UTC)
    back = operations.rollback_model(settings, store, "t1")
    assert (back["version"], back["previous_version"]) == (first, second)
    assert registry.read_pointer("t1")["version"] == first
    forward = operations.rollback_model(settings, store, "t1")
    assert (forward["version"], forward["previous_version"]) == (second, first)

    logged = operations.list_runs(store, device_id="t1")
    assert [r["run_id"] for r in logged["runs"]] == [forward["run_id"], back["run_id"]]
    record = logged["runs"][1]
    assert uuid.UUID(record["run_id"])
    assert (record["kind"], record["status"], record["promoted"]) == (KIND_ROLLBACK, "success",
                                                                      True)
    assert (record["device_id"], record["version"], record["champion_version"]) == (
        "t1", first, second)
    assert record["mae"] == 3.0
    trained_at = datetime.fromisoformat(record["trained_at"].replace("Z", "+00:00"))
    assert before - timedelta(seconds=1) <= trained_at <= datetime.now(UTC)


def test_rollback_to_a_named_version(settings, store, registry):
    first = save_constant_version(registry, "t1", 3.0, 1)
    save_constant_version(registry, "t1", 2.0, 2)
    third = save_constant_version(registry, "t1", 1.0, 3)
    result = operations.rollback_model(settings, store, "t1", to=first)
    assert (result["version"], result["previous_version"]) == (first, third)


def test_a_refused_rollback_leaves_the_pointer_and_the_run_log_untouched(settings, store,
                                                                           registry):
    with pytest.raises(NoCurrentModel, match="nothing to roll back"):
        operations.rollback_model(settings, store, "t1")
    first = save_constant_version(registry, "t1", 3.0, 1)
    second = save_constant_version(registry, "t1", 2.0, 2)
    registry.model_path("t1", first).write_bytes(b"tampered")
    pointer = registry.read_pointer("t1")
    with pytest.raises(ChecksumMismatch):
        operations.rollback_model(settings, store, "t1")
    with pytest.raises(VersionNotFound):
        operations.rollback_model(settings, store, "t1", to="20990101_000000_abcdef")
    assert registry.read_pointer("t1") == pointer and pointer["version"] == second
    assert operations.list_runs(store)["total"] == 0


def test_a_rollback_the_run_log_cannot_record_is_undone(settings, store, registry,
                                                         monkeypatch):
    first = save_constant_version(registry, "t1", 3.0, 1)
    second = save_constant_version(registry, "t1", 2.0, 2)
    third = save_constant_version(registry, "t1", 1.0, 3)
    before = registry.read_pointer("t1")
    assert (before["version"], before["previous_version"]) == (third, second)

    def refuse(record):
        raise OSError("disk full")

    monkeypatch.setattr(store, "upsert_run", refuse)
    for target in (None, first):
        with pytest.raises(StoreUnavailable, match="undone: the run log could not record it"):
            operations.rollback_model(settings, store, "t1", to=target)
        after = registry.read_pointer("t1")
        # the rollback target survives too, so prune keeps it
        assert (after["version"], after["previous_version"]) == (third, second)


def test_rollback_from_smart_persistence_serves_the_displaced_model_and_logs_it(settings, store,
                                                                              registry):
    first = save_constant_version(registry, "t1", 3.0, 1)
    put_on_fallback(registry, "t1")
    result = operations.rollback_model(settings, store, "t1")
    assert (result["version"], result["replaced"]) == (first, "smart_persistence")
    assert operations.current_model(settings, "t1")["serving"] == "model"
    record = operations.list_runs(store, device_id="t1")["runs"][0]
    assert (record["kind"], record["version"], record["champion_version"]) == (
        KIND_ROLLBACK, first, None)
    assert record["decision_reason"] == f"Rollback by operator: smart_persistence -> {first}"


def test_a_rollback_from_smart_persistence_the_run_log_cannot_record_restores_the_fallback(
        settings, store, registry, monkeypatch):
    save_constant_version(registry, "t1", 3.0, 1)
    fallback = put_on_fallback(registry, "t1")

    def refuse(record):
        raise OSError("disk full")

    monkeypatch.setattr(store, "upsert_run", refuse)
    with pytest.raises(StoreUnavailable, match="undone: the run log could not record it"):
        operations.rollback_model(settings, store, "t1")
    assert registry.read_pointer("t1") == fallback


def test_rollback_from_smart_persistence_with_no_model_before_it_names_the_fix(settings, store,
                                                                            registry):
    version = save_constant_version(registry, "t1", 3.0, 1, promote=False)
    put_on_fallback(registry, "t1")
    with pytest.raises(NoPreviousVersion, match="served by smart persistence"):
        operations.rollback_model(settings, store, "t1")
    assert operations.list_runs(store)["total"] == 0
    assert operations.rollback_model(settings, store, "t1", to=version)["version"] == version


def test_prune_keeps_current_previous_and_newest_and_dry_run_deletes_nothing(settings,
                                                                               registry):
    versions = [save_constant_version(registry, "t1", float(day), day) for day in range(1, 6)]
    registry.rollback("t1", to=versions[0])  # current: oldest, previous: newest
    registry.rollback("t1", to=versions[1])  # current: 2nd oldest, previous: oldest
    sizes = {v: registry.model_path("t1", v).stat().st_size
             + registry.metadata_path("t1", v).stat().st_size for v in versions}

    planned = operations.prune_models(settings, keep=1, dry_run=True)
    assert sorted(planned["devices"][0]["removed"]) == versions[2:4]
    assert planned["freed_bytes"] == sizes[versions[2]] + sizes[versions[3]]
    assert [v["version"] for v in operations.list_models(settings, "t1")["versions"]] == \
        versions[::-1]

    done = operations.prune_models(settings, keep=1)
    assert done["freed_bytes"] == planned["freed_bytes"] and done["removed_count"] == 2
    left = {v["version"] for v in operations.list_models(settings, "t1")["versions"]}
    assert left == {versions[0], versions[1], versions[4]}
    assert operations.current_model(settings, "t1")["version"] == versions[1]


def test_prune_defaults_to_keep_versions_and_refuses_keep_below_one(settings, registry):
    save_constant_version(registry, "t1", 1.0, 1)
    assert operations.prune_models(settings)["keep"] == settings.keep_versions
    with pytest.raises(operations.InvalidRequest, match="invalid keep 0"):
        operations.prune_models(settings, keep=0)


# --- predict ----------------------------------------------------------------------------------


def test_predict_serves_the_current_version_and_picks_up_a_promotion(settings, store, registry):
    first = save_constant_version(registry, "t1", 111.0, 1)
    second = save_constant_version(registry, "t1", 222.0, 2, promote=False)
    write_recent_readings(store, "t1", NOW - timedelta(minutes=2))
    server = ModelServer(registry)

    forecast = predict_latest(settings, store, server, "t1", now=NOW)
    assert (forecast["version"], forecast["predicted_power"]) == (first, 111.0)
    assert forecast["serving"] == "model"
    assert forecast["based_on"] == "2026-03-12T05:58:00Z"
    assert forecast["forecast_for"] == "2026-03-12T06:13:00Z"
    assert forecast["current_power"] == 200.0 and forecast["readings_used"] == 60

    registry.promote("t1", second)  # same server object: no restart
    forecast = predict_latest(settings, store, server, "t1", now=NOW)
    assert (forecast["version"], forecast["predicted_power"]) == (second, 222.0)


def test_predict_refuses_without_a_model_or_without_recent_readings(settings, store, registry):
    server = ModelServer(registry)
    with pytest.raises(NoCurrentModel, match="retrain --device t1"):
        predict_latest(settings, store, server, "t1", now=NOW)
    save_constant_version(registry, "t1", 1.0, 1)
    with pytest.raises(PredictionUnavailable, match="t1 has no readings"):
        predict_latest(settings, store, server, "t1", now=NOW)
    write_recent_readings(store, "t1", NOW - timedelta(minutes=40))
    with pytest.raises(PredictionUnavailable,
                       match=re.escape("newest is from 2026-03-12T05:20:00Z, more than the "
                                       "15-minute horizon")):
        predict_latest(settings, store, server, "t1", now=NOW)


# --- retrain dry run --------------------------------------------------------------------------


def test_dry_run_counts_the_window_and_writes_nothing(settings, store):
    simulate_into(store, "t1", interval_minutes=5)
    request = resolve_request(settings, "t1", PERIOD)
    plan = operations.retrain_dry_run(settings, store, request)
    window = training_window(settings, "t1", PERIOD)
    expected_rows = len(store.read_window("t1", window.start, window.end))
    assert plan["ready"] is True and plan["problem"] is None
    assert (plan["rows"], plan["period"], plan["days"]) == (expected_rows, PERIOD, settings.retrain_days)
    assert plan["window_end"] == "2026-03-10T13:00:00Z" and plan["current_version"] is None
    assert plan["serving"] is None
    assert not settings.dagster_home.exists() and not settings.model_dir.exists()
    assert store.list_runs().total == 0


def test_dry_run_reports_too_few_rows_and_a_missing_store_without_creating_it(settings, store):
    request = resolve_request(settings, "t1", PERIOD, days=1)
    missing = operations.retrain_dry_run(settings, store, request)
    assert missing["ready"] is False and "does not exist yet" in missing["problem"]
    assert not settings.sqlite_path.exists()
    simulate_into(store, "t1", days=0.01, interval_minutes=5)
    short = operations.retrain_dry_run(settings, store, request)
    assert short["ready"] is False
    assert short["problem"].startswith("No data found for training: device t1, window")


def test_history_names_every_move_newest_first_with_the_rollback_run_id(settings, store,
                                                                        registry):
    assert accountability.model_history(settings, "t1") == {"device_id": "t1", "total": 0,
                                                         "moves": []}
    first = save_constant_version(registry, "t1", 3.0, 1)
    second = save_constant_version(registry, "t1", 2.0, 2)
    put_on_fallback(registry, "t1")
    rolled = operations.rollback_model(settings, store, "t1")
    history = accountability.model_history(settings, "t1")
    assert [(m["move"], m["version"], m["replaced"]) for m in history["moves"]] == [
        ("rollback", second, "smart_persistence"), ("fallback", None, second),
        ("promotion", second, first), ("promotion", first, None)]
    assert history["moves"][0]["run_id"] == rolled["run_id"]
    assert history["moves"][1]["reason"] == FALLBACK_REASON
