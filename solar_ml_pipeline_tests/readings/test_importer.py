from __future__ import annotations

import gzip
import json
import math
import random
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solar_ml_pipeline.config import InvalidDeviceId
from solar_ml_pipeline.readings.importer import (
    INVALID_DEVICE_ID,
    LINE_TOO_LONG,
    MALFORMED_CSV_ROW,
    NO_DEVICE_ID,
    NO_POWER,
    NO_TIMESTAMP,
    NOT_AN_OBJECT,
    NOT_JSON,
    TIMESTAMP_OUT_OF_RANGE,
    ImportFileError,
    clean_reading,
    import_file,
    parse_flag,
    parse_number,
    parse_timestamp,
)
from solar_ml_pipeline.readings.simulator import simulate_readings
from solar_ml_pipeline.storage.sqlite import SqliteStore
from solar_ml_pipeline_tests.storage.mongomock_client import mongomock_store

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T0 = datetime(2026, 2, 20, 6, 0, tzinfo=UTC)
ALL_TIME = (datetime(1999, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


@pytest.fixture
def store(tmp_path):
    opened = SqliteStore(tmp_path / "solar_ml.db")
    yield opened
    opened.close()


@pytest.fixture(params=["sqlite", "mongomock"])
def any_store(request, tmp_path):
    """Both backends, for the promises that depend on the store: idempotence, first wins.

    mongomock upserts are quadratic in the collection size: keep its files small.
    """
    opened = SqliteStore(tmp_path / "solar_ml.db") if request.param == "sqlite" else mongomock_store()
    yield opened
    opened.close()


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def reading(minute: int, power: object = 100.0, **fields: object) -> dict[str, object]:
    stamp = (T0 + timedelta(minutes=minute)).isoformat().replace("+00:00", "Z")
    return {"device_id": "tracker-1", "timestamp": stamp, "power": power, **fields}


# -- the acceptance file ------------------------------------------------------------


def test_messy_jsonl_stores_each_unique_reading_once_and_a_reimport_adds_nothing(
    any_store, tmp_path
):
    store = any_store
    frame = simulate_readings("tracker-1", start=T0, end=T0 + timedelta(hours=2), seed=5)
    rows = [
        {**record, "timestamp": record["timestamp"].isoformat(), "firmware": "2.1.0"}
        for record in frame.drop(columns="fan_on").to_dict("records")
    ]
    rows = [row for index, row in enumerate(rows) if index % 17 != 3]  # extra gaps
    unique = len(rows)
    rows[10]["temperature"] = None
    rows[11]["humidity"] = "n/a"
    rows[12]["lux"] = "n/a"
    duplicates = [{**rows[i], "power": 999.0} for i in range(0, 40, 4)]
    shuffled = rows + duplicates
    random.Random(1).shuffle(shuffled)
    # First occurrence in file order wins, whichever copy that is.
    first_power = {}
    for row in shuffled:
        first_power.setdefault(row["timestamp"], row["power"])
    path = write_jsonl(tmp_path / "readings.jsonl", shuffled)

    report = import_file(store, path, now=NOW)

    assert (report.rows_read, report.added, report.already_present) == (
        len(shuffled), unique, len(duplicates),
    )
    assert report.skipped == {}
    stored = store.read_window("tracker-1", *ALL_TIME)
    assert len(stored) == unique
    by_time = stored.set_index(stored["timestamp"].map(lambda stamp: stamp.isoformat()))
    assert [by_time.loc[stamp, "power"] for stamp in by_time.index] == [
        first_power[stamp] for stamp in by_time.index
    ]
    assert math.isnan(by_time.loc[rows[10]["timestamp"], "temperature"])
    assert math.isnan(by_time.loc[rows[11]["timestamp"], "humidity"])
    assert by_time.loc[rows[11]["timestamp"], "temperature"] == rows[11]["temperature"]

    again = import_file(store, path, now=NOW)
    assert (again.added, again.already_present) == (0, len(shuffled))
    assert store.count_readings() == unique


def test_csv_with_bom_crlf_semicolons_and_columns_in_any_order_is_imported(store, tmp_path):
    path = tmp_path / "export.csv"
    path.write_bytes(
        b"\xef\xbb\xbfPower; Timestamp ;device_id;fan_on;temperature\r\n"
        b"12.5;2026-02-20T06:00:00Z;tracker-1;on;31.2\r\n"
        b"13.0;2026-02-20 06:01:00;tracker-1;0;n/a\r\n"
        b"n/a;2026-02-20T06:02:00Z;tracker-1;1;30\r\n"
    )
    report = import_file(store, path, now=NOW)
    assert (report.file_format, report.added, report.skipped) == ("csv", 2, {NO_POWER: 1})
    stored = store.read_window("tracker-1", *ALL_TIME)
    assert stored["power"].tolist() == [12.5, 13.0]
    assert stored["fan_on"].tolist() == [1.0, 0.0]
    assert stored["temperature"].iloc[0] == 31.2 and math.isnan(stored["temperature"].iloc[1])
    assert stored["timestamp"].iloc[1] == T0 + timedelta(minutes=1)  # naive means UTC


def test_device_option_sets_the_id_of_every_row_including_rows_without_one(store, tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [
        reading(0), reading(1, device_id="other"), {**reading(2), "device_id": None},
        reading(3, device_id="../bad"),
    ])
    report = import_file(store, path, device_id="tracker-7", now=NOW)
    assert (report.added, report.skipped) == (4, {})
    assert store.list_devices() == ["tracker-7"]


def test_rows_without_or_with_an_invalid_device_id_are_skipped_and_counted(store, tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [
        reading(0), {**reading(1), "device_id": None}, {k: v for k, v in reading(2).items()
                                                         if k != "device_id"},
        reading(3, device_id="../x"), reading(4, device_id=42), reading(5, device_id="a" * 65),
    ])
    report = import_file(store, path, now=NOW)
    assert report.added == 1
    assert report.skipped == {NO_DEVICE_ID: 2, INVALID_DEVICE_ID: 3}
    assert store.list_devices() == ["tracker-1"]


@pytest.mark.parametrize("bad", ["../x", "", "a/b", "x" * 65, "dev ice"])
def test_an_invalid_device_option_is_refused_before_anything_is_written(store, tmp_path, bad):
    path = write_jsonl(tmp_path / "r.jsonl", [reading(minute) for minute in range(5)])
    with pytest.raises(InvalidDeviceId, match="invalid device id") as caught:
        import_file(store, path, device_id=bad, now=NOW)
    assert "\n" not in str(caught.value)
    assert store.count_readings() == 0


def test_the_first_reading_of_a_key_wins_against_the_store_too(any_store, tmp_path):
    store = any_store
    import_file(store, write_jsonl(tmp_path / "a.jsonl", [reading(0, power=1.0)]), now=NOW)
    report = import_file(
        store, write_jsonl(tmp_path / "b.jsonl", [reading(0, power=2.0), reading(1)]), now=NOW
    )
    assert (report.added, report.already_present) == (1, 1)
    assert store.read_window("tracker-1", *ALL_TIME)["power"].tolist() == [1.0, 100.0]


class CountingStore:
    """The real store, recording the size of every write, to see the import stream."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.writes: list[int] = []

    def write_readings(self, readings):
        readings = list(readings)
        self.writes.append(len(readings))
        return self.inner.write_readings(readings)


def test_a_file_is_written_in_batches_with_duplicates_across_batches_counted(store, tmp_path):
    rows = [reading(minute % 8) for minute in range(20)]  # 8 unique, 12 repeats
    counting = CountingStore(store)
    report = import_file(counting, write_jsonl(tmp_path / "r.jsonl", rows), batch_size=3, now=NOW)
    assert max(counting.writes) <= 3 and len(counting.writes) >= 3
    assert (report.rows_read, report.added, report.already_present) == (20, 8, 12)
    assert store.count_readings() == 8


def test_summary_and_dict_say_what_was_added_and_why_rows_were_skipped(store, tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [
        reading(0), reading(0), reading(1, power="n/a"), reading(2, power=None),
        {**reading(3), "timestamp": "yesterday"},
    ])
    report = import_file(store, path, now=NOW)
    assert report.summary().splitlines()[0] == (
        "added 1, already present 1, skipped 3 (no valid power: 2, no valid timestamp: 1)"
    )
    assert str(path) in report.summary()
    assert report.as_dict() == {
        "path": str(path), "format": "jsonl", "device_id": None, "rows_read": 5, "added": 1,
        "already_present": 1, "skipped_total": 3,
        "skipped": {NO_POWER: 2, NO_TIMESTAMP: 1},
    }
    json.dumps(report.as_dict())


# -- one value at a time --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-02-20T06:00:00Z", T0),
        ("2026-02-20T11:30:00+05:30", T0),
        ("2026-02-20T06:00:00", T0),  # naive is UTC
        ("2026-02-20 06:00:00.123456", T0 + timedelta(milliseconds=123)),  # kept to the ms
        (T0.timestamp(), T0),  # epoch seconds
        (int(T0.timestamp() * 1000), T0),  # epoch milliseconds
        (str(int(T0.timestamp())), T0),  # epoch seconds as CSV text
        ({"$date": "2026-02-20T06:00:00Z"}, T0),  # mongoexport
        ({"$date": {"$numberLong": str(int(T0.timestamp() * 1000))}}, T0),
        ("20/02/2026 06:00", None),
        ("n/a", None),
        ("", None),
        (None, None),
        (True, None),
        (math.nan, None),
        (math.inf, None),
        (1e300, None),
        ("0001-01-01T00:00:00+05:00", None),
        ([2026, 2, 20], None),
    ],
)
def test_timestamps_parse_from_iso_text_and_epoch_numbers(raw, expected):
    assert parse_timestamp(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (12.5, 12.5), (3, 3.0), ("12.5", 12.5), (" -1e2 ", -100.0),
        ({"$numberDouble": "1.5"}, 1.5), (None, None), ("n/a", None), ("", None),
        ("NaN", None), ("inf", None), (math.nan, None), (-math.inf, None), (True, None),
        ("12,5", None), ([1], None), ({"value": 1}, None), (10**400, None),
    ],
)
def test_numbers_must_be_finite_and_anything_else_is_missing(raw, expected):
    assert parse_number(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (True, True), (False, False), (1, True), (0, False), ("on", True), ("OFF", False),
        ("true", True), ("False", False), ("1", True), ("0", False), ("yes", True),
        (2, None), ("maybe", None), (None, None), (math.nan, None),
    ],
)
def test_fan_on_accepts_booleans_bits_and_words(raw, expected):
    assert parse_flag(raw) is expected


@pytest.mark.parametrize(
    ("power", "expected"),
    [
        (250.0, 250.0),
        (-0.4, 0.0),  # night-time sensor offset is stored as 0
        (-50.0, 0.0),
        (-51.0, NO_POWER),  # too negative to be an offset
        (2e6, NO_POWER),  # no single tracker makes megawatts
        ("n/a", NO_POWER),
        (None, NO_POWER),
        (math.nan, NO_POWER),
        (math.inf, NO_POWER),
        ("abc", NO_POWER),
        (False, NO_POWER),
    ],
)
def test_power_is_required_finite_and_small_negatives_become_zero(power, expected):
    result = clean_reading(reading(0, power=power), latest=NOW)
    assert (result if isinstance(result, str) else result["power"]) == expected


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("1970-01-01T00:00:00Z", TIMESTAMP_OUT_OF_RANGE),
        (0, TIMESTAMP_OUT_OF_RANGE),
        ("1999-12-31T23:59:59Z", TIMESTAMP_OUT_OF_RANGE),
        ((NOW + timedelta(days=1, seconds=1)).isoformat(), TIMESTAMP_OUT_OF_RANGE),
        ("2100-01-01T00:00:00Z", TIMESTAMP_OUT_OF_RANGE),
        ((NOW + timedelta(hours=12)).isoformat(), None),  # clocks a few hours ahead are fine
        ("2000-01-01T00:00:00Z", None),
        ("soon", NO_TIMESTAMP),
    ],
)
def test_timestamps_before_2000_or_after_tomorrow_are_skipped(timestamp, expected):
    result = clean_reading({**reading(0), "timestamp": timestamp}, latest=NOW + timedelta(days=1))
    assert (result if isinstance(result, str) else None) == expected


def test_unparseable_sensor_values_become_missing_and_the_row_is_kept():
    result = clean_reading(
        reading(0, temperature="n/a", humidity=None, lux=math.nan, voltage=math.inf,
                current="3.2", servo_angle={"deg": 4}, fan_on="sometimes", extra=[1, 2]),
        latest=NOW,
    )
    assert isinstance(result, dict)
    assert result["current"] == 3.2 and result["power"] == 100.0
    for name in ("temperature", "humidity", "lux", "voltage", "servo_angle", "fan_on"):
        assert result[name] is None
    assert "extra" not in result


# -- hostile files --------------------------------------------------------------------------

GOOD = json.dumps(reading(0)).encode() + b"\n"
GOOD2 = json.dumps(reading(1)).encode() + b"\n"
TEN_MB = b'{"device_id": "tracker-1", "junk": "' + b"x" * (10 * 1024 * 1024) + b'"}\n'


@pytest.mark.parametrize(
    ("name", "content", "error"),
    [
        ("empty.jsonl", b"", None),
        ("blank.csv", b"\n  \n\r\n", None),
        ("no-header.csv", b"tracker-1,2026-02-20T06:00:00Z,12.5\n", "not a CSV header"),
        ("no-power.csv", b"device_id,timestamp,lux\ntracker-1,2026-02-20T06:00:00Z,1\n",
         "no power column"),
        ("no-device.csv", b"timestamp,power\n2026-02-20T06:00:00Z,1\n", "pass --device"),
        ("numbers.jsonl", b"1\n2\n3\n", "line 1 is not a JSON object"),
        ("pretty.json", b'{\n  "device_id": "tracker-1"\n}\n', "line 1 is not valid JSON"),
        ("array.json", b'[{"device_id": "tracker-1"}]', "JSON array"),
        ("garbage.jsonl", bytes(range(256)) * 40, "not UTF-8 text"),
        ("utf16.csv", "timestamp,power\n".encode("utf-16"), "not UTF-8 text"),
        ("zipped.jsonl", gzip.compress(GOOD), "compressed"),
        ("huge.jsonl", TEN_MB, "longer than"),
        ("huge.csv", b"device_id,timestamp,power" + b",x" * (6 * 1024 * 1024), "longer than"),
        ("mystery.dat", b"hello world\nthis is not data\n", "cannot tell the format"),
    ],
)
def test_a_broken_file_is_refused_with_one_line_and_nothing_written(
    store, tmp_path, name, content, error
):
    path = tmp_path / name
    path.write_bytes(content)
    if error is None:
        report = import_file(store, path, now=NOW)
        assert (report.rows_read, report.added, report.skipped_total) == (0, 0, 0)
    else:
        with pytest.raises(ImportFileError, match=error) as caught:
            import_file(store, path, now=NOW)
        assert "\n" not in str(caught.value) and len(str(caught.value)) < 300
    assert store.count_readings() == 0


@pytest.mark.parametrize(
    ("name", "content", "skipped"),
    [
        ("mixed.jsonl", GOOD + b"[1, 2]\n\"text\"\nnull\n{broken\n" + GOOD2,
         {NOT_AN_OBJECT: 3, NOT_JSON: 1}),
        ("long-line.jsonl", GOOD + TEN_MB + GOOD2, {LINE_TOO_LONG: 1}),
        ("binary-tail.jsonl", GOOD + GOOD2 + b"\x00\xff\xfe garbage \x80\n" * 3, {NOT_JSON: 3}),
        ("deep.jsonl", GOOD + b"[" * 200_000 + b"\n" + GOOD2, {NOT_JSON: 1}),
        ("big-int.jsonl", GOOD + b'{"power": ' + b"9" * 5000 + b"}\n" + GOOD2, {NOT_JSON: 1}),
        ("types.jsonl", GOOD + GOOD2 + json.dumps(reading(2, power=[1])).encode() + b"\n"
         + b'{"device_id": "tracker-1", "timestamp": "2026-02-20T06:03:00Z", "power": NaN}\n'
         + b'{"device_id": "tracker-1", "timestamp": "2026-02-20T06:04:00Z", "power": -Infinity}\n'
         + json.dumps(reading(5, power=-800)).encode() + b"\n"
         + json.dumps({**reading(6), "timestamp": 0}).encode() + b"\n",
         {NO_POWER: 4, TIMESTAMP_OUT_OF_RANGE: 1}),
        ("rows.csv", b"device_id,timestamp,power\ntracker-1,2026-02-20T06:00:00Z,1\n"
         b"tracker-1,\"2026-02-20T06:01:00Z,2\n"  # a stray quote swallows only its own line
         b"tracker-1,2026-02-20T06:02:00Z\n"
         b"tracker-1,2026-02-20T06:03:00Z,nan\n"
         b"tracker-1," + b"z" * 200_000 + b",3\n"
         b"tracker-1,2026-02-20T06:04:00Z,4,extra,columns\n",
         {NO_TIMESTAMP: 1, NO_POWER: 2, MALFORMED_CSV_ROW: 1}),
    ],
)
def test_bad_lines_inside_a_file_are_skipped_counted_and_the_rest_imported(
    store, tmp_path, name, content, skipped
):
    path = tmp_path / name
    path.write_bytes(content)
    report = import_file(store, path, now=NOW)
    assert report.skipped == skipped
    assert report.added == 2
    assert report.rows_read == report.added + report.already_present + report.skipped_total
    assert store.count_readings() == 2


def test_a_missing_file_or_a_directory_is_one_line_error(store, tmp_path):
    for path in (tmp_path / "absent.jsonl", tmp_path):
        with pytest.raises(ImportFileError, match="cannot read") as caught:
            import_file(store, path, now=NOW)
        assert "\n" not in str(caught.value)


def test_unknown_extensions_are_sniffed_from_the_content(store, tmp_path):
    jsonl = tmp_path / "readings.txt"
    jsonl.write_bytes(GOOD)
    csv_file = tmp_path / "readings"
    csv_file.write_bytes(b"device_id\ttimestamp\tpower\ntracker-1\t2026-02-20T06:01:00Z\t5\n")
    assert import_file(store, jsonl, now=NOW).file_format == "jsonl"
    assert import_file(store, csv_file, now=NOW).file_format == "csv"
    assert store.count_readings() == 2


# -- property: whatever the content, a clean error or only valid rows -----------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=3),
    max_leaves=6,
)
valid_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2026, 3, 1))
timestamps = st.one_of(
    valid_times.map(lambda stamp: stamp.isoformat() + "Z"),
    valid_times.map(lambda stamp: stamp.replace(tzinfo=UTC).timestamp()),
    st.datetimes(min_value=datetime(1960, 1, 1), max_value=datetime(2200, 1, 1)).map(
        datetime.isoformat
    ),
    st.integers(min_value=-(10**13), max_value=10**13),
    json_values,
)
powers = st.one_of(st.floats(min_value=-100, max_value=2e6), json_values,
                   st.sampled_from(["n/a", "12.5", "-0.0", "1e999", "NaN"]))
device_ids = st.one_of(st.sampled_from(["t1", "t2"]), st.sampled_from(["../x", "", " t1 "]),
                       json_values)
other_fields = {
    "temperature": json_values, "fan_on": json_values, "lux": json_values,
    "firmware": json_values,
}
plausible_readings = st.fixed_dictionaries(
    {"device_id": device_ids, "timestamp": timestamps, "power": powers}, optional=other_fields
)
any_objects = st.fixed_dictionaries(
    {}, optional={"device_id": device_ids, "timestamp": timestamps, "power": powers, **other_fields}
)
plausible_lines = plausible_readings.map(lambda row: json.dumps(row).encode())
lines = st.one_of(
    plausible_lines,
    plausible_lines,
    any_objects.map(lambda row: json.dumps(row).encode()),
    st.text(max_size=40).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.binary(max_size=40),
    json_values.map(lambda value: json.dumps(value).encode()),
)
json_lines_files = st.tuples(st.one_of(plausible_lines, lines), st.lists(lines, max_size=12)).map(
    lambda parts: b"\n".join([parts[0], *parts[1]])
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=json_lines_files,
       device=st.sampled_from([None, None, "t9"]))
def test_any_json_lines_content_gives_a_clean_error_or_only_valid_rows(content, device):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "readings.jsonl"
        path.write_bytes(content)
        store = SqliteStore(Path(folder) / "solar_ml.db")
        try:
            try:
                report = import_file(store, path, device_id=device, now=NOW)
            except ImportFileError as error:
                assert "\n" not in str(error)
                assert store.count_readings() == 0
                return
            assert report.rows_read == (
                report.added + report.already_present + report.skipped_total
            )
            assert store.count_readings() == report.added
            kept = 0
            for device_id in store.list_devices():
                assert device_id == device or device is None
                stored = store.read_window(
                    device_id, datetime(2000, 1, 1, tzinfo=UTC), NOW + timedelta(days=1, seconds=1)
                )
                assert np.isfinite(stored["power"]).all() and (stored["power"] >= 0).all()
                kept += len(stored)
            assert kept == report.added  # no row outside [2000, now + 1 day]
        finally:
            store.close()


@settings(max_examples=60, deadline=None)
@given(content=st.binary(max_size=200), suffix=st.sampled_from([".csv", ".jsonl", ".dat"]))
def test_any_bytes_under_any_name_give_a_clean_error_or_a_report(content, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"file{suffix}"
        path.write_bytes(content)
        store = SqliteStore(Path(folder) / "solar_ml.db")
        try:
            import_file(store, path, now=NOW)
        except ImportFileError as error:
            assert "\n" not in str(error)
            assert store.count_readings() == 0
        finally:
            store.close()
