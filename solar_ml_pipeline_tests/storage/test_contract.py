"""The storage contract (storage/base.py), run against every backend the `store` fixture gives."""

from __future__ import annotations

import math
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from solar_ml_pipeline.config import InvalidDeviceId
from solar_ml_pipeline.storage.base import READING_FIELDS, SITE_FIELDS

T0 = datetime(2026, 2, 24, 6, 0, tzinfo=UTC)
COLOMBO = timezone(timedelta(hours=5, minutes=30))


def reading(minute: int, device_id: str = "tracker01", **values: object) -> dict[str, object]:
    row: dict[str, object] = {
        "device_id": device_id,
        "timestamp": T0 + timedelta(minutes=minute),
        "power": float(minute),
    }
    row.update(values)
    return row


def full_reading(minute: int, device_id: str = "tracker01") -> dict[str, object]:
    return reading(
        minute,
        device_id,
        servo_angle=10.0,
        temperature=31.5,
        humidity=70.0,
        lux=50_000.0,
        voltage=12.1,
        current=2.0,
        fan_on=True,
    )


def minutes_of(frame: pd.DataFrame) -> list[int]:
    return [int((ts - T0) / timedelta(minutes=1)) for ts in frame["timestamp"]]


# -- readings -----------------------------------------------------------------------------


def test_write_readings_returns_how_many_were_new(store):
    assert store.write_readings([reading(m) for m in range(5)]) == 5
    assert store.write_readings([reading(m) for m in range(3, 8)]) == 3


def test_rewriting_the_same_readings_adds_nothing(store):
    rows = [full_reading(m) for m in range(10)]
    store.write_readings(rows)
    assert store.write_readings(rows) == 0
    assert store.count_readings() == 10


def test_first_write_wins_for_a_repeated_key(store):
    store.write_readings([reading(0, power=1.0)])
    assert store.write_readings([reading(0, power=2.0), reading(1, power=5.0)]) == 1
    frame = store.read_window("tracker01", T0, T0 + timedelta(hours=1))
    assert frame["power"].tolist() == [1.0, 5.0]


def test_a_key_repeated_within_one_batch_is_stored_once_with_its_first_value(store):
    assert store.write_readings([reading(0, power=1.0), reading(0, power=2.0)]) == 1
    frame = store.read_window("tracker01", T0, T0 + timedelta(hours=1))
    assert frame["power"].tolist() == [1.0]


def test_read_window_includes_start_and_excludes_end(store):
    store.write_readings([reading(m) for m in range(10)])
    frame = store.read_window("tracker01", T0 + timedelta(minutes=2), T0 + timedelta(minutes=5))
    assert minutes_of(frame) == [2, 3, 4]


def test_read_window_bounds_finer_than_a_millisecond_keep_half_open_semantics(store):
    store.write_readings([reading(m) for m in range(4)])
    start = T0 + timedelta(minutes=1, microseconds=-1)
    end = T0 + timedelta(minutes=3, microseconds=1)
    assert minutes_of(store.read_window("tracker01", start, end)) == [1, 2, 3]
    start = T0 + timedelta(minutes=1, microseconds=1)
    end = T0 + timedelta(minutes=3, microseconds=-1)
    assert minutes_of(store.read_window("tracker01", start, end)) == [2]


def test_read_window_returns_only_the_requested_device_sorted_by_time(store):
    store.write_readings([reading(m) for m in (5, 1, 3)])
    store.write_readings([reading(m, "tracker02") for m in (2, 4)])
    frame = store.read_window("tracker01", T0, T0 + timedelta(hours=1))
    assert minutes_of(frame) == [1, 3, 5]
    assert frame.index.equals(pd.RangeIndex(3))


def test_read_window_frame_has_contract_columns_and_dtypes(store):
    store.write_readings([full_reading(0), reading(1, fan_on=False)])
    frame = store.read_window("tracker01", T0, T0 + timedelta(hours=1))
    assert list(frame.columns) == ["timestamp", *READING_FIELDS]
    assert isinstance(frame["timestamp"].dtype, pd.DatetimeTZDtype)
    assert str(frame["timestamp"].dt.tz) == "UTC"
    for name in READING_FIELDS:
        assert frame[name].dtype == np.float64, name
    assert frame["fan_on"].tolist() == [1.0, 0.0]


def test_an_empty_window_still_has_the_contract_columns(store):
    frame = store.read_window("tracker01", T0, T0 + timedelta(hours=1))
    assert frame.empty
    assert list(frame.columns) == ["timestamp", *READING_FIELDS]
    assert isinstance(frame["timestamp"].dtype, pd.DatetimeTZDtype)
    assert all(frame[name].dtype == np.float64 for name in READING_FIELDS)


def test_missing_and_non_finite_sensors_read_back_as_nan(store):
    store.write_readings(
        [reading(0, lux=None, temperature=float("nan")), reading(1, humidity=55.0)]
    )
    frame = store.read_window("tracker01", T0, T0 + timedelta(hours=1))
    assert frame["lux"].isna().all()
    assert frame["temperature"].isna().all()
    assert frame["fan_on"].isna().all()
    assert math.isnan(frame["humidity"][0]) and frame["humidity"][1] == 55.0
    assert frame["power"].tolist() == [0.0, 1.0]


def test_numeric_strings_and_numpy_values_are_stored_as_floats(store):
    store.write_readings([reading(0, lux="1200.5", voltage=np.float32(12.5), current=np.int64(3))])
    frame = store.read_window("tracker01", T0, T0 + timedelta(hours=1))
    assert frame[["lux", "voltage", "current"]].iloc[0].tolist() == [1200.5, 12.5, 3.0]


def test_a_non_utc_timestamp_is_stored_as_the_same_instant_in_utc(store):
    local = datetime(2026, 2, 24, 11, 30, tzinfo=COLOMBO)  # 06:00 UTC
    store.write_readings([{"device_id": "tracker01", "timestamp": local, "power": 7.0}])
    frame = store.read_window("tracker01", T0, T0 + timedelta(minutes=1))
    assert frame["timestamp"].tolist() == [pd.Timestamp("2026-02-24T06:00:00Z")]
    assert frame["timestamp"][0].to_pydatetime() == local
    # the same instant written in UTC is a duplicate
    assert store.write_readings([reading(0)]) == 0


def test_timestamps_keep_millisecond_precision_and_drop_finer_digits(store):
    stamp = T0 + timedelta(seconds=1, milliseconds=234)
    store.write_readings([{"device_id": "tracker01", "timestamp": stamp, "power": 1.0}])
    store.write_readings([{"device_id": "tracker01", "timestamp": stamp + timedelta(microseconds=999)}])
    fine = T0 + timedelta(seconds=2, microseconds=5678)
    store.write_readings([{"device_id": "tracker01", "timestamp": fine, "power": 2.0}])
    frame = store.read_window("tracker01", T0, T0 + timedelta(minutes=1))
    assert frame["timestamp"].tolist() == [
        pd.Timestamp(stamp),
        pd.Timestamp(T0 + timedelta(seconds=2, milliseconds=5)),
    ]
    assert frame["power"].tolist() == [1.0, 2.0]


def test_an_invalid_device_id_is_refused_before_anything_is_written(store):
    with pytest.raises(InvalidDeviceId):
        store.write_readings([reading(0), reading(1, "../x")])
    assert store.count_readings() == 0


def test_a_reading_without_timestamp_is_refused(store):
    with pytest.raises(ValueError, match="timestamp"):
        store.write_readings([{"device_id": "tracker01", "power": 1.0}])


def test_list_devices_gives_each_device_once_sorted(store):
    assert store.list_devices() == []
    store.write_readings([reading(m, device) for m in range(3) for device in ("b-2", "a_1", "C3")])
    assert store.list_devices() == ["C3", "a_1", "b-2"]


def test_count_readings_counts_all_or_one_device(store):
    store.write_readings([reading(m) for m in range(4)] + [reading(m, "tracker02") for m in range(2)])
    assert store.count_readings() == 6
    assert store.count_readings("tracker01") == 4
    assert store.count_readings("tracker02") == 2
    assert store.count_readings("nobody") == 0


def test_latest_readings_are_the_newest_in_ascending_order(store):
    store.write_readings([reading(m) for m in (4, 0, 2, 3, 1)])
    store.write_readings([reading(9, "tracker02")])
    frame = store.latest_readings("tracker01", 3)
    assert minutes_of(frame) == [2, 3, 4]
    assert frame.index.equals(pd.RangeIndex(3))
    assert list(frame.columns) == ["timestamp", *READING_FIELDS]
    assert minutes_of(store.latest_readings("tracker01", 50)) == [0, 1, 2, 3, 4]
    assert store.latest_readings("tracker01", 0).empty
    assert store.latest_readings("nobody", 3).empty


def test_writes_larger_than_one_batch_are_counted_across_batches(store, monkeypatch):
    monkeypatch.setattr(sys.modules[type(store).__module__], "WRITE_BATCH", 7)
    rows = [reading(m) for m in range(30)]
    assert store.write_readings(rows[:10]) == 10
    assert store.write_readings(rows) == 20
    assert store.write_readings(rows[-10:] + [reading(99)]) == 1
    assert store.count_readings("tracker01") == 31


# -- run log ------------------------------------------------------------------------------


def run(run_id: str, trained_minute: int | None, **fields: object) -> dict[str, object]:
    record: dict[str, object] = {"run_id": run_id, "device_id": "tracker01", "status": "success"}
    if trained_minute is not None:
        record["trained_at"] = T0 + timedelta(minutes=trained_minute)
    record.update(fields)
    return record


def test_upsert_run_inserts_then_merges_fields_into_the_same_record(store):
    store.upsert_run(run("r1", 0, status="running", mae=None, features=["hour", "lux"]))
    store.upsert_run({"run_id": "r1", "status": "success", "mae": 0.25, "promoted": True})
    assert store.get_run("r1") == {
        "run_id": "r1",
        "device_id": "tracker01",
        "trained_at": T0,
        "status": "success",
        "mae": 0.25,
        "features": ["hour", "lux"],
        "promoted": True,
    }
    assert store.list_runs().total == 1


def test_get_run_of_an_unknown_id_is_none(store):
    assert store.get_run("no-such-run") is None


def test_run_values_round_trip_as_json_native_types(store):
    record = run(
        "r1",
        0,
        mae=np.float64(0.125),
        rows_used=np.int64(1981),
        promoted=np.bool_(False),
        error=None,
        features=("hour", "minute"),
        model_path=Path("ml_models/tracker01/v1.pkl"),
        nested={"a": [1, 2.5, None]},
    )
    store.upsert_run(record)
    stored = store.get_run("r1")
    assert stored["mae"] == 0.125 and type(stored["mae"]) is float
    assert stored["rows_used"] == 1981 and type(stored["rows_used"]) is int
    assert stored["promoted"] is False
    assert stored["error"] is None
    assert stored["features"] == ["hour", "minute"]
    assert stored["model_path"] == "ml_models/tracker01/v1.pkl"
    assert stored["nested"] == {"a": [1, 2.5, None]}
    assert "_id" not in stored


def test_run_datetime_fields_round_trip_as_utc_datetimes(store):
    local_start = datetime(2026, 2, 17, 5, 30, tzinfo=COLOMBO)
    store.upsert_run(
        run(
            "r1",
            None,
            trained_at=datetime(2026, 2, 24, 18, 30, 0, 123456, tzinfo=UTC),
            window_start=local_start,
            window_end=datetime(2026, 2, 24, 0, 0),  # naive: taken as UTC
            started_at=None,
        )
    )
    stored = store.get_run("r1")
    assert stored["trained_at"] == datetime(2026, 2, 24, 18, 30, 0, 123000, tzinfo=UTC)
    assert stored["window_start"] == local_start
    assert stored["window_end"] == datetime(2026, 2, 24, tzinfo=UTC)
    assert stored["started_at"] is None
    for name in ("trained_at", "window_start", "window_end"):
        assert stored[name].utcoffset() == timedelta(0), name
    listed = store.list_runs().runs[0]
    assert listed["window_start"] == local_start and listed["window_start"].utcoffset() == timedelta(0)


def test_a_run_record_without_run_id_is_refused(store):
    with pytest.raises(ValueError, match="run_id"):
        store.upsert_run({"device_id": "tracker01"})


def test_list_runs_is_newest_first_then_by_run_id(store):
    store.upsert_run(run("a", 10))
    store.upsert_run(run("b", 30))
    store.upsert_run(run("c", 20))
    store.upsert_run(run("d", 20))
    store.upsert_run(run("e", None))  # no trained_at yet: last
    page = store.list_runs()
    assert [record["run_id"] for record in page.runs] == ["b", "d", "c", "a", "e"]
    assert page.total == 5


def test_list_runs_filters_by_device_status_and_promotion(store):
    store.upsert_run(run("r1", 1, promoted=True))
    store.upsert_run(run("r2", 2, promoted=False))
    store.upsert_run(run("r3", 3, status="failed", error="no data", promoted=False))
    store.upsert_run(run("r4", 4, device_id="tracker02", promoted=True))
    store.upsert_run(run("r5", 5))  # promotion not decided

    def ids(**filters):
        return [record["run_id"] for record in store.list_runs(**filters).runs]

    assert ids(device_id="tracker02") == ["r4"]
    assert ids(status="failed") == ["r3"]
    assert ids(promoted=True) == ["r4", "r1"]
    assert ids(promoted=False) == ["r3", "r2"]
    assert ids(device_id="tracker01", status="success", promoted=True) == ["r1"]
    assert ids(device_id="nobody") == []


def test_list_runs_pages_with_skip_and_limit_and_counts_every_match(store):
    for minute in range(7):
        store.upsert_run(run(f"r{minute}", minute))
    store.upsert_run(run("other", 99, device_id="tracker02"))
    page = store.list_runs(device_id="tracker01", limit=3, skip=2)
    assert [record["run_id"] for record in page.runs] == ["r4", "r3", "r2"]
    assert page.total == 7
    assert [r["run_id"] for r in store.list_runs(device_id="tracker01", skip=6).runs] == ["r0"]
    assert store.list_runs(device_id="tracker01", skip=10).runs == []
    empty = store.list_runs(limit=0)
    assert empty.runs == [] and empty.total == 8


def test_list_runs_refuses_negative_paging(store):
    with pytest.raises(ValueError, match="limit and skip"):
        store.list_runs(limit=-1)


def test_delete_run_says_whether_a_record_was_deleted(store):
    store.upsert_run(run("r1", 0))
    assert store.delete_run("r1") is True
    assert store.get_run("r1") is None
    assert store.delete_run("r1") is False


# -- sites --------------------------------------------------------------------------------


def test_site_is_set_read_and_listed_with_every_field(store):
    store.set_site("tracker02", {"latitude": 7.29, "longitude": 80.63, "timezone": "Asia/Colombo"})
    store.set_site("tracker01", {"latitude": 6.9271, "longitude": 79.8612, "altitude": 8,
                                 "capacity_w": 400, "timezone": "Asia/Colombo"})
    assert store.get_site("tracker02") == {
        "device_id": "tracker02",
        "latitude": 7.29,
        "longitude": 80.63,
        "altitude": None,
        "capacity_w": None,
        "timezone": "Asia/Colombo",
    }
    sites = store.list_sites()
    assert [site["device_id"] for site in sites] == ["tracker01", "tracker02"]
    assert sites[0]["capacity_w"] == 400.0 and sites[0]["altitude"] == 8.0
    assert set(sites[0]) == {"device_id", *SITE_FIELDS}


def test_setting_a_site_again_replaces_the_whole_record(store):
    store.set_site("tracker01", {"latitude": 1.0, "longitude": 2.0, "capacity_w": 300.0})
    store.set_site("tracker01", {"latitude": 3.0})
    assert store.get_site("tracker01") == {
        "device_id": "tracker01",
        "latitude": 3.0,
        "longitude": None,
        "altitude": None,
        "capacity_w": None,
        "timezone": None,
    }
    assert len(store.list_sites()) == 1


def test_get_site_of_an_unknown_device_is_none(store):
    assert store.get_site("tracker09") is None
    assert store.list_sites() == []


def test_a_site_with_an_unknown_field_or_bad_device_id_is_refused(store):
    with pytest.raises(ValueError, match="unknown site field"):
        store.set_site("tracker01", {"lat": 1.0})
    with pytest.raises(InvalidDeviceId):
        store.set_site("bad id", {"latitude": 1.0})
    assert store.list_sites() == []


def test_ping_succeeds_on_a_reachable_store(store):
    store.ping()


# --- forecast scores ---------------------------------------------------------------------------

def score(period_day: int, device_id: str = "tracker01", **fields: object) -> dict[str, object]:
    start = datetime(2026, 3, period_day, 13, 0, tzinfo=UTC)
    return {"device_id": device_id, "period": f"2026-03-{period_day:02d}",
            "period_start": start, "period_end": start + timedelta(days=1),
            "daylight_skill": 0.1, **fields}


def test_a_score_is_one_record_per_device_and_period_and_a_rescore_replaces_it(store):
    store.upsert_score(score(3, daylight_skill=0.2, rows_scored=10))
    store.upsert_score(score(3, daylight_skill=-0.1))
    (only,) = store.list_scores("tracker01")
    assert (only["period"], only["daylight_skill"]) == ("2026-03-03", -0.1)
    assert "rows_scored" not in only  # replaced, not merged: a rescore is a new judgement
    assert only["period_start"] == "2026-03-03T13:00:00Z"


def test_scores_list_newest_period_first_per_device_since_a_time(store):
    for day in (1, 5, 3):
        store.upsert_score(score(day))
    store.upsert_score(score(4, device_id="tracker02"))
    assert [s["period"] for s in store.list_scores("tracker01")] == [
        "2026-03-05", "2026-03-03", "2026-03-01"]
    since = datetime(2026, 3, 3, 13, 0, tzinfo=UTC)
    assert [s["period"] for s in store.list_scores("tracker01", since=since, limit=1)] == [
        "2026-03-05"]
    assert [s["period"] for s in store.list_scores("tracker02")] == ["2026-03-04"]


def test_score_values_are_stored_json_plain(store):
    store.upsert_score(score(2, daylight_skill=float("nan"), rows=np.int64(7),
                             served_by={"20260301_120000_000001": 5}))
    (stored,) = store.list_scores("tracker01")
    assert stored["daylight_skill"] is None and stored["rows"] == 7
    assert stored["served_by"] == {"20260301_120000_000001": 5}
