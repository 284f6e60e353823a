"""Import readings from a CSV or JSON-lines file into the readings store.

Rules (each one line, so a user can predict what an import does):

- Format: `.csv` is CSV with a header line; `.jsonl`, `.ndjson` and `.json` are JSON lines
  (one object per line; mongoexport's `{"$date": ...}` and `{"$numberDouble": ...}` are
  understood). Any other name is sniffed: a first line starting with `{` is JSON lines,
  a header naming `timestamp` is CSV. A JSON array is refused with the command to convert it.
- File-level problems are judged on the first line, before anything is written, and raise
  ImportFileError with one line: compressed or binary (NUL bytes, not UTF-8), a JSON array,
  a CSV header without `timestamp` or `power` (or without `device_id` and no --device), a
  first line that is not a JSON object or is longer than MAX_LINE_BYTES. An empty file is
  not an error: the report says 0 rows.
- Line-level problems after the first line (bad JSON or bytes, a non-object, a line over
  MAX_LINE_BYTES, a malformed CSV row) skip that line and are counted; the rest is imported,
  as a crashed logger's half-written line must not cost the whole file.
- device id: `device_id=` (the CLI's --device) replaces every row's id and is validated
  before the file is opened. Otherwise a row without an id, or with one outside
  `^[A-Za-z0-9_-]{1,64}$`, is skipped and counted.
- timestamp: ISO 8601 (naive means UTC) or epoch seconds; a number of 1e11 or more is epoch
  milliseconds. Kept to the millisecond. Unparseable -> skipped; before 2000-01-01 or more
  than one day after now -> skipped as out of range.
- power: must be a finite number from -50 W to 1 MW, else the row is skipped; a negative
  value in that range is a night-time sensor offset and is stored as 0.0.
- other sensors: anything unparseable (null, "n/a", text, NaN, inf) becomes missing and the
  row is kept. fan_on accepts true/false, 1/0, "on"/"off", "yes"/"no". Extra fields are
  ignored.
- duplicates: the first reading for a (device_id, timestamp) wins, in the file and against
  the store, so importing a file twice adds nothing the second time.
- streaming: the file is read line by line (lines capped at MAX_LINE_BYTES) and written in
  batches, so its size does not matter. If the store fails mid-file, batches already written
  stay; importing again completes the file without duplicating anything.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import numbers
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from solar_ml_pipeline.config import is_valid_device_id, validate_device_id
from solar_ml_pipeline.storage.base import SENSOR_FIELDS, ReadingStore

MAX_LINE_BYTES = 1024 * 1024
SNIFF_BYTES = 64 * 1024
EARLIEST_TIMESTAMP = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE_TOLERANCE = timedelta(days=1)
EPOCH_MILLISECONDS_FROM = 1e11  # as seconds that is year 5138; as milliseconds, 1973
NIGHT_OFFSET_LIMIT_W = 50.0
MAX_POWER_W = 1e6
CSV_DELIMITERS = (",", ";", "\t", "|")
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")
OPTIONAL_FIELDS = tuple(name for name in SENSOR_FIELDS if name != "power")

NO_TIMESTAMP = "no valid timestamp"
TIMESTAMP_OUT_OF_RANGE = "timestamp out of range"
NO_POWER = "no valid power"
NO_DEVICE_ID = "no device id"
INVALID_DEVICE_ID = "invalid device id"
NOT_JSON = "not valid JSON"
NOT_AN_OBJECT = "not a JSON object"
LINE_TOO_LONG = "line too long"
MALFORMED_CSV_ROW = "malformed CSV row"

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_TRUE = frozenset(("true", "1", "on", "yes"))
_FALSE = frozenset(("false", "0", "off", "no"))
_EXTENDED_NUMBER_KEYS = ("$numberDouble", "$numberInt", "$numberLong", "$numberDecimal")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ImportFileError(ValueError):
    """The file as a whole cannot be imported; nothing was written. One line for the user."""


@dataclass
class ImportReport:
    path: str
    file_format: str
    device_id: str | None = None
    rows_read: int = 0
    added: int = 0
    already_present: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def skip(self, reason: str) -> None:
        self.rows_read += 1
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.file_format,
            "device_id": self.device_id,
            "rows_read": self.rows_read,
            "added": self.added,
            "already_present": self.already_present,
            "skipped_total": self.skipped_total,
            "skipped": dict(sorted(self.skipped.items(), key=lambda item: (-item[1], item[0]))),
        }

    def summary(self) -> str:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in self.as_dict()["skipped"].items())
        counts = (
            f"added {self.added}, already present {self.already_present}, "
            f"skipped {self.skipped_total}" + (f" ({reasons})" if reasons else "")
        )
        return f"{counts}\nread {self.rows_read} rows from {self.path} ({self.file_format})"


def import_file(
    store: ReadingStore,
    path: Path | str,
    *,
    device_id: str | None = None,
    batch_size: int = 5000,
    now: datetime | None = None,
) -> ImportReport:
    """Import one CSV or JSON-lines file; see the module notes for every rule."""
    if device_id is not None:
        validate_device_id(device_id)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid: expected 1 or more")
    latest = (now or datetime.now(UTC)) + FUTURE_TOLERANCE
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return _import_stream(store, path, handle, device_id, batch_size, latest)
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror or exc}") from None


def _import_stream(
    store: ReadingStore, path: Path, handle: IO[bytes], device_id: str | None,
    batch_size: int, latest: datetime,
) -> ImportReport:
    head = handle.read(SNIFF_BYTES)
    handle.seek(0)
    _check_text(path, head)
    file_format = _file_format(path, head)
    report = _Import(store, ImportReport(str(path), file_format, device_id), batch_size)
    lines = _lines(handle)
    first = _first_line(lines, path)
    if first is None:
        return report.finish()
    if file_format == "csv":
        rows = _csv_rows(first, lines, path, device_id, report.report)
    else:
        rows = _json_rows(first, lines, path, report.report)
    for raw in rows:
        reading = clean_reading(raw, device_id=device_id, latest=latest)
        if isinstance(reading, str):
            report.report.skip(reading)
        else:
            report.add(reading)
    return report.finish()


class _Import:
    """Collects clean readings into batches, drops in-batch duplicates, writes, counts."""

    def __init__(self, store: ReadingStore, report: ImportReport, batch_size: int) -> None:
        self.store = store
        self.report = report
        self.batch_size = batch_size
        self.batch: dict[tuple[str, datetime], dict[str, Any]] = {}

    def add(self, reading: dict[str, Any]) -> None:
        self.report.rows_read += 1
        key = (reading["device_id"], reading["timestamp"])
        if key in self.batch:
            self.report.already_present += 1
            return
        self.batch[key] = reading
        if len(self.batch) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        offered = len(self.batch)
        added = self.store.write_readings(list(self.batch.values()))
        self.batch = {}
        self.report.added += added
        self.report.already_present += offered - added

    def finish(self) -> ImportReport:
        self.flush()
        return self.report


# -- one row --------------------------------------------------------------------------------


def clean_reading(
    raw: Mapping[str, Any], *, device_id: str | None = None, latest: datetime | None = None
) -> dict[str, Any] | str:
    """A storable reading from one parsed row, or the reason it is skipped.

    `device_id`, when given, replaces the row's own; `latest` is the newest timestamp
    accepted (default: one day after now).
    """
    if device_id is None:
        device_id = raw.get("device_id")
        if isinstance(device_id, str):
            device_id = device_id.strip()
        if device_id is None or device_id == "":
            return NO_DEVICE_ID
        if not is_valid_device_id(device_id):
            return INVALID_DEVICE_ID
    timestamp = parse_timestamp(raw.get("timestamp"))
    if timestamp is None:
        return NO_TIMESTAMP
    if latest is None:
        latest = datetime.now(UTC) + FUTURE_TOLERANCE
    if not EARLIEST_TIMESTAMP <= timestamp <= latest:
        return TIMESTAMP_OUT_OF_RANGE
    power = parse_power(raw.get("power"))
    if power is None:
        return NO_POWER
    reading: dict[str, Any] = {"device_id": device_id, "timestamp": timestamp, "power": power}
    for name in OPTIONAL_FIELDS:
        reading[name] = parse_number(raw.get(name))
    reading["fan_on"] = parse_flag(raw.get("fan_on"))
    return reading


def parse_number(value: object) -> float | None:
    """A finite float, or None for anything else (null, "n/a", NaN, inf, bools, objects)."""
    if type(value) is float:  # the common case first: numbers.Real checks are slow
        return value if math.isfinite(value) else None
    if isinstance(value, dict) and len(value) == 1:
        key, inner = next(iter(value.items()))
        if key in _EXTENDED_NUMBER_KEYS:
            return parse_number(inner if isinstance(inner, str) else None)
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        try:
            number = float(value)
        except OverflowError:
            return None
    elif isinstance(value, str):
        text = value.strip()
        if not _NUMBER.fullmatch(text):
            return None
        number = float(text)
    else:
        return None
    return number if math.isfinite(number) else None


def parse_power(value: object) -> float | None:
    """Power in watts, or None when unusable; small negatives (night offset) become 0.0."""
    power = parse_number(value)
    if power is None or not -NIGHT_OFFSET_LIMIT_W <= power <= MAX_POWER_W:
        return None
    return max(power, 0.0)


def parse_flag(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    number = parse_number(value)
    if number == 1.0:
        return True
    if number == 0.0:
        return False
    return None


def parse_timestamp(value: object) -> datetime | None:
    """A UTC datetime (millisecond precision) from ISO 8601 text or epoch s/ms, else None."""
    if isinstance(value, dict) and len(value) == 1 and "$date" in value:
        inner = value["$date"]
        if isinstance(inner, dict):
            inner = parse_number(inner)
        if isinstance(inner, numbers.Real) and not isinstance(inner, bool):
            return _from_epoch(float(inner) / 1000.0)  # extended JSON dates are milliseconds
        return parse_timestamp(inner) if isinstance(inner, str) else None
    if isinstance(value, datetime):
        stamp = value
    elif isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text):
            return _from_epoch_number(float(text))
        try:
            stamp = datetime.fromisoformat(text)
        except ValueError:
            return None
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            return _from_epoch_number(float(value))
        except OverflowError:
            return None
    else:
        return None
    try:
        stamp = stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)
    except OverflowError:  # e.g. year 1 with a positive offset
        return None
    return stamp.replace(microsecond=stamp.microsecond // 1000 * 1000)


def _from_epoch_number(number: float) -> datetime | None:
    if not math.isfinite(number):
        return None
    seconds = number / 1000.0 if abs(number) >= EPOCH_MILLISECONDS_FROM else number
    return _from_epoch(seconds)


def _from_epoch(seconds: float) -> datetime | None:
    if not math.isfinite(seconds) or abs(seconds) > 1e11:
        return None
    milliseconds = math.floor(seconds * 1000.0 + 0.5)
    try:
        return _EPOCH + timedelta(milliseconds=milliseconds)
    except OverflowError:
        return None


# -- file format ----------------------------------------------------------------------------


def _check_text(path: Path, head: bytes) -> None:
    """Refuse a binary file by its first line; damaged lines later are skipped one by one."""
    if head.startswith(b"\x1f\x8b") or head.startswith(b"PK\x03\x04"):
        raise ImportFileError(f"{path} is compressed: decompress it first (e.g. gunzip or unzip)")
    first_line = head.lstrip(b"\r\n").split(b"\n", 1)[0]
    try:
        codecs.getincrementaldecoder("utf-8-sig")().decode(first_line, final=False)
    except UnicodeDecodeError:
        ok = False
    else:
        ok = b"\x00" not in first_line
    if not ok:
        raise ImportFileError(
            f"{path} is not UTF-8 text (binary data or another encoding): "
            "export the readings as UTF-8 CSV or JSON lines"
        )


def _file_format(path: Path, head: bytes) -> str:
    suffix = path.suffix.lower()
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if start.startswith(b"["):
        # never suggest a redirection onto the input itself: the shell would empty it first
        converted = f"{path.stem}{'-lines' if suffix == '.jsonl' else ''}.jsonl"
        raise ImportFileError(
            f"{path} holds a JSON array: convert it to JSON lines, "
            f"e.g. jq -c '.[]' {path.name} > {converted}"
        )
    if suffix == ".csv":
        return "csv"
    if suffix in JSON_LINES_SUFFIXES:
        return "jsonl"
    if start.startswith(b"{"):
        return "jsonl"
    first_line = start.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    if _csv_delimiter(first_line) is not None:
        return "csv"
    if not start:
        return "empty"
    raise ImportFileError(
        f"cannot tell the format of {path}: expected CSV with a header line or JSON lines; "
        "name it .csv or .jsonl"
    )


@dataclass
class _Line:
    number: int
    text: str | None  # None: longer than MAX_LINE_BYTES (its bytes were discarded)


def _lines(handle: IO[bytes]) -> Iterator[_Line]:
    """Non-blank lines, decoded leniently, never holding more than MAX_LINE_BYTES."""
    number = 0
    while True:
        chunk = handle.readline(MAX_LINE_BYTES + 1)
        if not chunk:
            return
        number += 1
        if len(chunk) > MAX_LINE_BYTES and not chunk.endswith(b"\n"):
            while chunk and not chunk.endswith(b"\n"):
                chunk = handle.readline(MAX_LINE_BYTES)
            yield _Line(number, None)
            continue
        if number == 1:
            chunk = chunk.removeprefix(b"\xef\xbb\xbf")
        text = chunk.decode("utf-8", errors="replace").strip()
        if text:
            yield _Line(number, text)


def _first_line(lines: Iterator[_Line], path: Path) -> _Line | None:
    first = next(lines, None)
    if first is not None and first.text is None:
        raise ImportFileError(
            f"{path}: line {first.number} is longer than {MAX_LINE_BYTES} bytes: "
            "expected one reading per line (CSV or JSON lines)"
        )
    return first


def _json_rows(
    first: _Line, lines: Iterator[_Line], path: Path, report: ImportReport
) -> Iterator[Mapping[str, Any]]:
    row = _json_object(first.text or "")
    if isinstance(row, str):
        raise ImportFileError(
            f"{path}: line {first.number} is {row}: expected JSON lines, one object per line "
            'such as {"device_id": "tracker-1", "timestamp": "2026-01-01T06:00:00Z", "power": 12.5}'
        )
    yield row
    for line in lines:
        if line.text is None:
            report.skip(LINE_TOO_LONG)
            continue
        row = _json_object(line.text)
        if isinstance(row, str):
            report.skip(row)
        else:
            yield row


def _json_object(text: str) -> dict[str, Any] | str:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return NOT_JSON
    return value if isinstance(value, dict) else NOT_AN_OBJECT


def _csv_rows(
    header_line: _Line, lines: Iterator[_Line], path: Path, device_id: str | None,
    report: ImportReport,
) -> Iterator[Mapping[str, Any]]:
    delimiter = _csv_delimiter(header_line.text or "")
    if delimiter is None:
        raise ImportFileError(
            f"{path}: the first line is not a CSV header naming timestamp and power: "
            "add a header line such as device_id,timestamp,power,temperature"
        )
    header = [name.strip().lower() for name in _split_csv(header_line.text or "", delimiter) or []]
    if "power" not in header:
        raise ImportFileError(f"{path}: the CSV header has no power column: add one (watts)")
    if device_id is None and "device_id" not in header:
        raise ImportFileError(
            f"{path}: the CSV header has no device_id column: add one or pass --device D"
        )
    columns = {name: header.index(name) for name in set(header)}
    for line in lines:
        if line.text is None:
            report.skip(LINE_TOO_LONG)
            continue
        fields = _split_csv(line.text, delimiter)
        if fields is None:
            report.skip(MALFORMED_CSV_ROW)
            continue
        yield {name: fields[i] if i < len(fields) else None for name, i in columns.items()}


def _csv_delimiter(header: str) -> str | None:
    """The delimiter that makes the header name a `timestamp` column, if any does."""
    for delimiter in CSV_DELIMITERS:
        fields = _split_csv(header, delimiter)
        if fields and "timestamp" in (name.strip().lower() for name in fields):
            return delimiter
    return None


def _split_csv(line: str, delimiter: str) -> list[str] | None:
    # One physical line at a time: readings never hold newlines, and a stray quote must not
    # swallow the lines after it.
    try:
        return next(csv.reader([line], delimiter=delimiter), [])
    except csv.Error:
        return None
