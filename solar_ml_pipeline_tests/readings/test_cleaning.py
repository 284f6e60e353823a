from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from solar_ml_pipeline.readings.cleaning import CLEAN_COLUMNS, clean_readings, sensors_present
from solar_ml_pipeline.storage.base import READING_FIELDS

T0 = pd.Timestamp("2026-02-24T00:00:00Z")


def _rows(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def _at(minute: int) -> pd.Timestamp:
    return T0 + pd.Timedelta(minutes=minute)


def test_output_has_the_typed_reading_columns_and_nothing_else():
    frame = _rows({"device_id": "t1", "timestamp": _at(0), "power": 5, "unknown": "x",
                   "fan_on": True})
    clean, _ = clean_readings(frame)
    assert tuple(clean.columns) == CLEAN_COLUMNS
    assert str(clean["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert all(clean[name].dtype == np.float64 for name in READING_FIELDS)
    assert clean.loc[0, "fan_on"] == 1.0
    assert np.isnan(clean.loc[0, "lux"])  # a column the input lacks is all NaN


def test_unparseable_and_infinite_values_become_nan_but_keep_the_row():
    frame = _rows({"timestamp": _at(0), "power": "7.5", "temperature": "hot",
                   "lux": float("inf"), "humidity": "41"})
    clean, report = clean_readings(frame)
    assert report.rows_out == 1
    row = clean.iloc[0]
    assert row["power"] == 7.5 and row["humidity"] == 41.0
    assert np.isnan(row["temperature"]) and np.isnan(row["lux"])


def test_rows_without_a_valid_timestamp_are_dropped_and_counted():
    frame = _rows({"timestamp": _at(0), "power": 1.0},
                  {"timestamp": None, "power": 2.0},
                  {"timestamp": "not a time", "power": 3.0},
                  {"timestamp": "9999-01-01T00:00:00Z", "power": 4.0})
    clean, report = clean_readings(frame)
    assert clean["power"].tolist() == [1.0]
    assert report.dropped_no_timestamp == 3


@pytest.mark.parametrize("power", [None, float("nan"), float("inf"), "broken"])
def test_rows_without_a_finite_power_are_dropped_and_counted(power):
    frame = _rows({"timestamp": _at(0), "power": 1.0}, {"timestamp": _at(1), "power": power})
    clean, report = clean_readings(frame)
    assert clean["timestamp"].tolist() == [_at(0)]
    assert report.dropped_no_power == 1


def test_duplicate_timestamps_keep_the_first_row_seen():
    frame = _rows({"timestamp": _at(1), "power": 10.0},
                  {"timestamp": _at(0), "power": 20.0},
                  {"timestamp": _at(1), "power": 30.0})
    clean, report = clean_readings(frame)
    assert clean["power"].tolist() == [20.0, 10.0]
    assert report.dropped_duplicates == 1


def test_a_broken_row_does_not_hide_a_good_one_with_the_same_timestamp():
    frame = _rows({"timestamp": _at(0), "power": None}, {"timestamp": _at(0), "power": 8.0})
    clean, report = clean_readings(frame)
    assert clean["power"].tolist() == [8.0]
    assert (report.dropped_no_power, report.dropped_duplicates) == (1, 0)


def test_rows_come_out_sorted_by_time_whatever_the_input_order():
    minutes = [5, 1, 3, 0, 4, 2]
    frame = _rows(*({"timestamp": _at(m), "power": float(m)} for m in minutes))
    clean, _ = clean_readings(frame)
    assert clean["power"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert clean["timestamp"].is_monotonic_increasing


def test_timestamps_in_any_offset_or_format_become_utc():
    frame = _rows({"timestamp": "2026-02-24T05:30:00+05:30", "power": 1.0},
                  {"timestamp": "2026-02-24 00:01:00", "power": 2.0},
                  {"timestamp": datetime(2026, 2, 24, 0, 2, tzinfo=UTC), "power": 3.0})
    clean, _ = clean_readings(frame)
    assert clean["timestamp"].tolist() == [_at(0), _at(1), _at(2)]


def test_naive_datetime_column_is_read_as_utc():
    frame = pd.DataFrame({"timestamp": pd.to_datetime(["2026-02-24 00:00"]), "power": [1.0]})
    clean, _ = clean_readings(frame)
    assert clean["timestamp"].iloc[0] == _at(0)


def test_report_counts_add_up_and_name_the_window_bounds():
    frame = _rows({"timestamp": _at(2), "power": 1.0},
                  {"timestamp": _at(0), "power": 1.0},
                  {"timestamp": _at(2), "power": 9.0},
                  {"timestamp": None, "power": 1.0},
                  {"timestamp": _at(3), "power": None})
    _, report = clean_readings(frame)
    assert report.rows_in == 5 and report.rows_out == 2
    assert (report.rows_in - report.dropped_no_timestamp - report.dropped_no_power
            - report.dropped_duplicates) == report.rows_out
    assert report.first_timestamp == _at(0).to_pydatetime()
    assert report.last_timestamp == _at(2).to_pydatetime()
    metadata = report.as_metadata()
    assert metadata["dropped_duplicates"] == 1 and isinstance(metadata["rows_in"], int)
    assert metadata["first_timestamp"] == "2026-02-24T00:00:00+00:00"


def test_an_empty_window_cleans_to_an_empty_frame_without_bounds():
    clean, report = clean_readings(pd.DataFrame(columns=["timestamp", "power"]))
    assert clean.empty and tuple(clean.columns) == CLEAN_COLUMNS
    assert report.first_timestamp is None and report.last_timestamp is None
    assert "first_timestamp" not in report.as_metadata()


def test_cleaning_is_idempotent():
    frame = _rows({"timestamp": _at(1), "power": 1.0, "lux": "3"},
                  {"timestamp": _at(0), "power": 2.0, "fan_on": 0})
    once, _ = clean_readings(frame)
    twice, report = clean_readings(once)
    pd.testing.assert_frame_equal(once, twice)
    assert report.rows_in == report.rows_out


def test_sensors_present_lists_optional_sensors_with_any_value_in_the_window():
    frame = _rows({"timestamp": _at(0), "power": 1.0, "lux": None, "humidity": 40.0},
                  {"timestamp": _at(1), "power": 1.0, "lux": None, "fan_on": 0.0})
    clean, _ = clean_readings(frame)
    assert sensors_present(clean) == ["humidity", "fan_on"]
