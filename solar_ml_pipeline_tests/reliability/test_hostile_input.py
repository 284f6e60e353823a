"""Hostile and broken input, from the file a user imports to the rows a model trains on.

The importer's own tests cover its rules row by row and JSON lines by property. Here: the
real `solar-ml import` on broken files (exit code, one stderr line, nothing written), CSV by
property, the feature builder by property, and the training cutoff through the store window.

Duplicate rule, everywhere: the first reading stored for a (device, timestamp) wins; within
one frame, the first row with a finite power wins.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from solar_ml_pipeline.config import settings_from_env
from solar_ml_pipeline.forecasting.features import TARGET, build_feature_frame
from solar_ml_pipeline.orchestration.partitions import training_window
from solar_ml_pipeline.readings.cleaning import clean_readings
from solar_ml_pipeline.readings.importer import (
    LINE_TOO_LONG,
    NO_POWER,
    NOT_AN_OBJECT,
    TIMESTAMP_OUT_OF_RANGE,
    clean_reading,
    import_file,
)
from solar_ml_pipeline.readings.sites import DEFAULT_SITE, site_for_device
from solar_ml_pipeline.storage.sqlite import SqliteStore
from solar_ml_pipeline_tests.conftest import PERIOD, PERIOD_START
from solar_ml_pipeline_tests.reliability.conftest import DAYS
from solar_ml_pipeline_tests.reliability.support import assert_one_line_error, solar_ml

T0 = datetime(2026, 3, 1, 6, 0, tzinfo=UTC)
NOW = datetime(2026, 3, 10, tzinfo=UTC)
EPOCH_START = datetime(1970, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)
TEN_MB = 10 * 1024 * 1024


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def jsonl(*rows: object) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def row(minute: int, power: object = 100.0, **fields: object) -> dict[str, object]:
    return {"device_id": "tracker01", "timestamp": iso(T0 + timedelta(minutes=minute)),
            "power": power, **fields}


# --- through the CLI: counted clean-up, or one line and nothing written ---------------------------

HOSTILE_ROWS = jsonl(
    row(0, 10.0, temperature="hot", lux=float("nan"), humidity=float("inf")),
    row(1, "abc"),                                   # power not a number
    row(2, float("nan")),
    row(3, float("-inf")),
    row(4, -5.0),                                    # night offset: stored as 0.0
    row(5, -800.0),                                  # not an offset: skipped
    {**row(6), "timestamp": "1970-01-01T00:00:00Z"},
    {**row(7), "timestamp": "2100-01-01T00:00:00Z"},
    row(0, 99.0),                                    # same timestamp, other value: first wins
) + b"[1, 2, 3]\n" + b'{"junk": "' + b"x" * TEN_MB + b'"}\n' + jsonl(row(8, 20.0))

CSV_ROWS = (b"device_id,timestamp,power,temperature\n"
            b"tracker01,2026-03-01T06:00:00Z,10,n/a\n"
            b"tracker01,2026-03-01T06:01:00Z,inf,20\n"
            b"tracker01,1970-01-01T00:00:00Z,5,20\n"
            b"tracker01,2026-03-01T06:00:00Z,77,20\n"
            b"tracker01,2026-03-01T06:02:00Z,-3,NaN\n")


BROKEN_FILES = [
    ("no-header.csv", b"tracker01,2026-03-01T06:00:00Z,12.5\n", "not a CSV header"),
    ("not-objects.jsonl", b"\"text\"\n[1, 2]\n", "line 1 is not a JSON object"),
    # the suggested conversion must not redirect onto the file itself (the shell empties it)
    ("array.jsonl", b'[{"device_id": "tracker01"}]\n', "> array-lines.jsonl"),
    ("garbage.jsonl", bytes(range(256)) * 16, "not UTF-8 text"),
    ("garbage.csv", b"\x00\x01\x02\xff\xfe" * 100, "not UTF-8 text"),
    ("ten-mb-line.jsonl", b'{"junk": "' + b"x" * TEN_MB + b'"}\n' + jsonl(row(0)),
     "longer than"),
    ("missing.jsonl", None, "no such file"),
]


@pytest.mark.parametrize("name, content, fragment", BROKEN_FILES,
                         ids=[case[0] for case in BROKEN_FILES])
def test_a_broken_file_fails_the_import_command_with_exit_2_one_line_and_nothing_written(
    env_for_subprocess, settings, tmp_path, name, content, fragment
):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    result = solar_ml(env_for_subprocess, "import", str(path), timeout=60)
    assert_one_line_error(result, 2, fragment)
    assert result.stdout == ""
    assert not settings.sqlite_path.exists()  # not even an empty store was created


@pytest.mark.parametrize("name, content, added, skipped, stored", [
    ("empty.jsonl", b"", 0, {}, {}),
    ("blank.csv", b"\n\n", 0, {}, {}),
    ("hostile.jsonl", HOSTILE_ROWS, 3,
     {NO_POWER: 4, TIMESTAMP_OUT_OF_RANGE: 2, NOT_AN_OBJECT: 1, LINE_TOO_LONG: 1},
     {0: 10.0, 4: 0.0, 8: 20.0}),
    ("hostile.csv", CSV_ROWS, 2, {NO_POWER: 1, TIMESTAMP_OUT_OF_RANGE: 1}, {0: 10.0, 2: 0.0}),
], ids=["empty", "blank", "hostile-jsonl", "hostile-csv"])
def test_hostile_rows_are_counted_by_the_import_command_and_only_clean_readings_stored(
    env_for_subprocess, store, tmp_path, name, content, added, skipped, stored
):
    path = tmp_path / name
    path.write_bytes(content)
    result = solar_ml(env_for_subprocess, "import", str(path), "--json", timeout=60)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    report = json.loads(result.stdout)
    assert (report["added"], report["skipped"]) == (added, skipped)
    assert report["rows_read"] == added + report["already_present"] + report["skipped_total"]
    frame = store.read_window("tracker01", EPOCH_START, FAR_FUTURE)
    by_minute = {int((stamp - T0).total_seconds() // 60): power
                 for stamp, power in zip(frame["timestamp"], frame["power"], strict=True)}
    assert by_minute == stored
    assert not np.isinf(frame.drop(columns="timestamp").to_numpy()).any()


# --- CSV by property -----------------------------------------------------------------------------

# Any text a cell can hold without quoting: no delimiter, quote, line break or NUL.
CELL = st.text(alphabet=st.characters(blacklist_characters=',"\r\n\x00',
                                      blacklist_categories=["Cs"]), max_size=8)
NUMBER = st.one_of(
    st.floats(min_value=-100, max_value=2e6, allow_nan=False).map(repr),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e999", "-0", "", "n/a"]), CELL,
)
STAMP = st.one_of(
    st.integers(min_value=0, max_value=30).map(lambda m: iso(T0 + timedelta(minutes=m))),
    st.sampled_from(["1970-01-01T00:00:00Z", "2100-01-01T00:00:00Z", "1e12", "0", "",
                     "2026-02-30T00:00:00Z", "garbage", "2026-03-01 06:05:00+05:30"]),
    CELL,
)
DEVICE = st.sampled_from(["t1", "t2", "t1", "../x", "", "a b", "x" * 65])
CSV_ROW = st.tuples(DEVICE, STAMP, NUMBER, NUMBER).map(",".join)


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(CSV_ROW, max_size=25))
def test_any_csv_rows_store_only_valid_readings_first_one_wins_and_a_reimport_adds_nothing(
    lines,
):
    content = "device_id,timestamp,power,temperature\n" + "\n".join(lines) + "\n"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "readings.csv"
        path.write_text(content, encoding="utf-8")
        store = SqliteStore(Path(folder) / "solar_ml.db")
        try:
            report = import_file(store, path, now=NOW)
            data_rows = sum(1 for line in lines if line.strip())
            assert report.rows_read == data_rows
            assert report.rows_read == report.added + report.already_present + report.skipped_total
            assert store.count_readings() == report.added
            first: dict[tuple[str, datetime], float] = {}
            for line in lines:
                cells = dict(zip(("device_id", "timestamp", "power", "temperature"),
                                 line.split(","), strict=True))
                reading = clean_reading(cells, latest=NOW + timedelta(days=1))
                if isinstance(reading, dict):
                    first.setdefault((reading["device_id"], reading["timestamp"]),
                                     reading["power"])
            for device_id in store.list_devices():
                frame = store.read_window(device_id, EPOCH_START, FAR_FUTURE)
                assert frame["power"].between(0, 1e6).all()
                assert frame["timestamp"].between(datetime(2000, 1, 1, tzinfo=UTC),
                                                  NOW + timedelta(days=1)).all()
                for stamp, power in zip(frame["timestamp"], frame["power"], strict=True):
                    assert first[(device_id, stamp.to_pydatetime())] == power
            assert len(first) == report.added
            again = import_file(store, path, now=NOW)
            assert again.added == 0 and store.count_readings() == report.added
        finally:
            store.close()


# --- the feature builder by property -------------------------------------------------------------

GRID_MINUTES = 120


def _represent(moment: datetime, form: int) -> object:
    """One instant, as the many shapes a raw frame may carry it in."""
    if form == 0:
        return iso(moment)
    if form == 1:
        return moment.astimezone(ZoneInfo("Asia/Colombo")).isoformat()
    if form == 2:
        return moment
    return pd.Timestamp(moment)


INSTANT = st.one_of(
    st.integers(min_value=0, max_value=GRID_MINUTES).map(lambda m: T0 + timedelta(minutes=m)),
    st.sampled_from([EPOCH_START, FAR_FUTURE]),
)
TIMESTAMP_CELL = st.one_of(
    st.tuples(INSTANT, st.integers(0, 3)).map(lambda pair: (pair[0], _represent(*pair))),
    st.sampled_from(["garbage", "", None, float("nan"), "2026-13-01T00:00:00Z"]).map(
        lambda bad: (None, bad)),
)
FINITE = st.floats(min_value=-1000, max_value=1e6, allow_nan=False)
VALUE_CELL = st.one_of(
    FINITE.map(lambda value: (value, value)),
    FINITE.map(lambda value: (value, repr(value))),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), None, "abc", "inf", ""]).map(
        lambda bad: (None, bad)),
)
RAW_ROW = st.tuples(TIMESTAMP_CELL, VALUE_CELL, VALUE_CELL, VALUE_CELL)


def _raw_frame(rows) -> pd.DataFrame:
    return pd.DataFrame({
        "timestamp": pd.Series([r[0][1] for r in rows], dtype=object),
        "power": pd.Series([r[1][1] for r in rows], dtype=object),
        "lux": pd.Series([r[2][1] for r in rows], dtype=object),
        "temperature": pd.Series([r[3][1] for r in rows], dtype=object),
        "device_id": "tracker01",
    })


def _expected_power(rows) -> dict[pd.Timestamp, float]:
    """Per instant, the power of the first row with a timestamp and a finite power."""
    expected: dict[pd.Timestamp, float] = {}
    for (moment, _), (power, _), _, _ in rows:
        if moment is not None and power is not None:
            expected.setdefault(pd.Timestamp(moment), power)
    return dict(sorted(expected.items()))


@hypothesis_settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(RAW_ROW, max_size=40), feature_set=st.sampled_from(["original", "solar"]))
def test_any_raw_frame_builds_features_one_row_per_instant_first_wins_and_no_infinity(
    rows, feature_set
):
    frame = _raw_frame(rows)
    expected = _expected_power(rows)
    built = build_feature_frame(frame, horizon_minutes=15, timezone="Asia/Colombo",
                                feature_set=feature_set, with_target=False, site=DEFAULT_SITE)
    out = built.frame
    assert list(out["timestamp"]) == list(expected)
    assert out["power"].tolist() == list(expected.values())
    numeric = out.drop(columns="timestamp").to_numpy(dtype="float64")
    assert not np.isinf(numeric).any()

    trained = build_feature_frame(frame, horizon_minutes=15, timezone="Asia/Colombo",
                                  feature_set=feature_set, with_target=True, site=DEFAULT_SITE)
    target = trained.frame
    assert set(target["timestamp"]) <= set(expected)
    assert np.isfinite(target[TARGET]).all()
    for stamp, value in zip(target["timestamp"], target[TARGET], strict=True):
        ahead = [power for moment, power in expected.items()
                 if stamp < moment and abs(moment - stamp - timedelta(minutes=15))
                 <= timedelta(minutes=3)]
        assert value in ahead


# --- the training cutoff ---------------------------------------------------------------------------

SENTINEL = 50_000.0  # no reading before the cutoff comes near it, nor any mean of them
BEFORE = st.integers(min_value=-3 * 24 * 60, max_value=-1)
AFTER = st.one_of(st.integers(min_value=0, max_value=2 * 24 * 60),
                  st.sampled_from([60 * 24 * 365 * 70, 0, 1]))


def _cutoff_columns(frame: pd.DataFrame) -> list[str]:
    return [name for name in frame.columns
            if name == TARGET or name == "power" or name.startswith(("rolling_mean_power",
                                                                       "power_lag"))]


@hypothesis_settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=st.lists(BEFORE, min_size=1, max_size=300, unique=True),
       after=st.lists(AFTER, max_size=50, unique=True),
       early=st.booleans(), feature_set=st.sampled_from(["original", "solar"]))
def test_readings_at_or_after_the_cutoff_never_reach_the_training_frame(
    before, after, early, feature_set
):
    window = training_window(settings_from_env({}), "tracker01", PERIOD, days=int(DAYS))
    cutoff = window.end
    readings = [{"device_id": "tracker01", "timestamp": cutoff + timedelta(minutes=m),
                 "power": float(abs(m) % 900)} for m in before]
    readings += [{"device_id": "tracker01", "timestamp": cutoff + timedelta(minutes=m),
                  "power": SENTINEL + i} for i, m in enumerate(after)]
    if early:  # another writer left a reading at the epoch: older than any window
        readings.append({"device_id": "tracker01", "timestamp": EPOCH_START, "power": SENTINEL})
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteStore(Path(folder) / "solar_ml.db")
        try:
            store.write_readings(readings)
            raw = store.read_window("tracker01", window.start, window.end)
        finally:
            store.close()
    # a reading at the cutoff itself has no target, so the frame alone would not show it
    assert (raw["timestamp"] < cutoff).all() and not (raw["power"] >= SENTINEL).any()
    built = build_feature_frame(raw, horizon_minutes=15, timezone="Asia/Colombo",
                                feature_set=feature_set, with_target=True, site=DEFAULT_SITE)
    out = built.frame
    assert (out["timestamp"] < cutoff).all() and (out["timestamp"] >= window.start).all()
    values = out[_cutoff_columns(out)].to_numpy(dtype="float64")
    assert not (values >= SENTINEL).any()


@pytest.mark.slow
def test_a_retrain_trains_on_exactly_its_window_whatever_lies_after_the_cutoff(
    run_cli, settings, store, device_with_readings
):
    # between the simulated minutes, so none is a duplicate the store would ignore
    after = [{"device_id": device_with_readings, "timestamp": moment, "power": SENTINEL}
             for moment in (PERIOD_START + timedelta(seconds=1),
                            PERIOD_START + timedelta(minutes=7, seconds=30),
                            FAR_FUTURE, datetime(2262, 4, 1, tzinfo=UTC))]
    store.write_readings(after)
    code, out, err = run_cli("retrain", "--device", device_with_readings, "--period", PERIOD,
                             "--days", DAYS, "--json")
    assert code == 0, out + err
    record = json.loads(out)
    window = training_window(settings, device_with_readings, PERIOD, days=int(DAYS))
    assert record["window_end"] == iso(window.end) == iso(PERIOD_START)
    clean, _ = clean_readings(store.read_window(device_with_readings, window.start, window.end))
    expected = build_feature_frame(clean, horizon_minutes=settings.horizon_minutes,
                                   timezone=settings.timezone, feature_set=settings.feature_set,
                                   site=site_for_device(store, settings, device_with_readings))
    assert record["rows_used"] == len(expected.frame)
    assert record["train_samples"] + record["test_samples"] == len(expected.frame)
