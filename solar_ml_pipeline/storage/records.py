"""Normalisation shared by both backends, so SQLite and MongoDB store and return the same values.

Datetimes are kept at millisecond precision (what a BSON date holds) and in UTC; a naive
datetime is taken to be UTC already, as the original system stored them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import PurePath
from typing import Any

import numpy as np
import pandas as pd

from solar_ml_pipeline.config import validate_device_id
from solar_ml_pipeline.storage.base import READING_FIELDS, RUN_DATETIME_FIELDS, SITE_FIELDS

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)
SITE_TEXT_FIELDS = ("timezone",)


def to_utc(value: object, field: str = "timestamp") -> datetime:
    """A tz-aware UTC datetime truncated to the millisecond; naive input is taken as UTC."""
    exact = _exact_utc(value, field)
    extra = exact.microsecond % 1000
    return exact.replace(microsecond=exact.microsecond - extra) if extra else exact


def _exact_utc(value: object, field: str) -> datetime:
    if type(value) is datetime and value.tzinfo is UTC:  # the common case, kept fast
        return value
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime(warn=False)
    elif isinstance(value, np.datetime64):
        value = pd.Timestamp(value).to_pydatetime(warn=False)
    elif isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{field} {value!r} is not an ISO 8601 datetime") from None
    if not isinstance(value, datetime):
        raise TypeError(f"{field} must be a datetime, got {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def to_epoch_us(value: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact, no float rounding)."""
    return (value - EPOCH) // ONE_MICROSECOND


def window_bounds(start: object, end: object) -> tuple[datetime, datetime]:
    """UTC bounds rounded up to the millisecond.

    Stored timestamps are whole milliseconds, so `ts >= ceil(start)` and `ts < ceil(end)` are
    exactly `ts >= start` and `ts < end` on every backend, whatever precision the caller used.
    """
    return _ceil_ms(start, "start"), _ceil_ms(end, "end")


def _ceil_ms(value: object, field: str) -> datetime:
    exact = _exact_utc(value, field)
    extra = exact.microsecond % 1000
    if not extra:
        return exact
    return exact + timedelta(microseconds=1000 - extra)


def to_float(value: object, field: str) -> float | None:
    """A sensor value as float, or None when absent or not finite (fan_on True -> 1.0)."""
    if type(value) is float:  # the common case, kept fast
        return value if math.isfinite(value) else None
    if value is None:
        return None
    if isinstance(value, bool | np.bool_):
        return 1.0 if value else 0.0
    if isinstance(value, numbers.Real):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{field} has a non-numeric value {value!r}") from None
    else:
        raise TypeError(f"{field} must be a number, got {type(value).__name__}")
    return number if math.isfinite(number) else None


def lenient_float(value: object) -> float:
    """Read side: whatever an older writer left in the database, as float or NaN."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return number


class ReadingRow:
    """One validated reading: device id, UTC timestamp and values in READING_FIELDS order."""

    __slots__ = ("device_id", "timestamp", "values")

    def __init__(self, device_id: str, timestamp: datetime, values: tuple[float | None, ...]):
        self.device_id = device_id
        self.timestamp = timestamp
        self.values = values


def normalize_readings(readings: Iterable[Mapping[str, Any]]) -> list[ReadingRow]:
    """Validate and convert raw reading dicts; extra fields are ignored."""
    valid_ids: set[str] = set()
    rows: list[ReadingRow] = []
    for reading in readings:
        device_id = reading.get("device_id")
        if device_id not in valid_ids:
            valid_ids.add(validate_device_id(device_id))
        timestamp = reading.get("timestamp")
        if timestamp is None:
            raise ValueError(f"a reading of device {device_id} has no timestamp")
        rows.append(
            ReadingRow(
                device_id,  # type: ignore[arg-type]
                to_utc(timestamp),
                tuple([to_float(reading.get(name), name) for name in READING_FIELDS]),
            )
        )
    return rows


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for offset in range(0, len(items), size):
        yield items[offset : offset + size]


def readings_frame(timestamps_us: np.ndarray, values: np.ndarray) -> pd.DataFrame:
    """The readings DataFrame contract: `timestamp` (datetime64[ns, UTC]) then READING_FIELDS."""
    timestamps = pd.to_datetime(np.asarray(timestamps_us, dtype=np.int64), unit="us", utc=True)
    frame = pd.DataFrame({"timestamp": timestamps.astype("datetime64[ns, UTC]")})
    values = np.asarray(values, dtype=np.float64).reshape(len(frame), len(READING_FIELDS))
    for position, name in enumerate(READING_FIELDS):
        frame[name] = values[:, position]
    return frame


def empty_readings_frame() -> pd.DataFrame:
    return readings_frame(np.empty(0, dtype=np.int64), np.empty((0, len(READING_FIELDS))))


def run_id_of(record: Mapping[str, Any]) -> str:
    run_id = record.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"a run record needs a non-empty string run_id, got {run_id!r}")
    return run_id


def normalize_run(record: Mapping[str, Any]) -> dict[str, Any]:
    """A run record both backends can store identically.

    RUN_DATETIME_FIELDS become UTC datetimes; other values become JSON-native (numpy scalars
    to Python numbers, paths to str, tuples to lists, other datetimes to ISO strings).
    """
    run_id_of(record)
    normalized: dict[str, Any] = {}
    for name, value in record.items():
        if name == "_id":
            continue
        if name in RUN_DATETIME_FIELDS and value is not None:
            normalized[name] = to_utc(value, name)
        else:
            normalized[name] = _json_native(value, name)
    return normalized


def _json_native(value: Any, field: str) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, datetime | pd.Timestamp):
        return to_utc(value, field).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): _json_native(item, field) for key, item in value.items()}
    if isinstance(value, list | tuple | np.ndarray | pd.Index | pd.Series):
        return [_json_native(item, field) for item in list(value)]
    raise TypeError(f"run record field {field} holds a {type(value).__name__}, which cannot be stored")


def run_from_storage(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A stored run record as callers get it: no `_id`, datetime fields tz-aware UTC."""
    record = {name: value for name, value in stored.items() if name != "_id"}
    for name in RUN_DATETIME_FIELDS:
        value = record.get(name)
        if value is not None:
            record[name] = to_utc(value, name)
    return record


def normalize_site(device_id: str, site: Mapping[str, Any]) -> dict[str, Any]:
    """device_id plus every SITE_FIELD (None where unknown); unknown fields are refused."""
    validate_device_id(device_id)
    unknown = sorted(set(site) - set(SITE_FIELDS) - {"device_id"})
    if unknown:
        raise ValueError(
            f"unknown site field(s) {', '.join(unknown)}: expected {', '.join(SITE_FIELDS)}"
        )
    if site.get("device_id", device_id) != device_id:
        raise ValueError(f"site record names device {site['device_id']!r}, not {device_id!r}")
    record: dict[str, Any] = {"device_id": device_id}
    for name in SITE_FIELDS:
        value = site.get(name)
        if name in SITE_TEXT_FIELDS:
            if value is not None and not isinstance(value, str):
                raise TypeError(f"site field {name} must be text, got {type(value).__name__}")
            record[name] = value
        else:
            record[name] = to_float(value, name)
    return record


def site_from_storage(stored: Mapping[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {"device_id": stored["device_id"]}
    for name in SITE_FIELDS:
        record[name] = stored.get(name)
    return record


def check_page(limit: int, skip: int) -> None:
    """Both backends refuse the same out-of-range pages with the same message."""
    if limit < 0 or skip < 0:
        raise ValueError(f"limit and skip must be 0 or more, got limit={limit} skip={skip}")


def normalize_score(record: Mapping[str, Any]) -> dict[str, Any]:
    """A forecast score as stored: its key checked, `period_start` an ISO 8601 UTC string,
    every value JSON-plain (non-finite floats as None)."""
    device_id = validate_device_id(record.get("device_id"))
    period = record.get("period")
    if not isinstance(period, str) or not period:
        raise ValueError("a forecast score needs its period key")
    out: dict[str, Any] = {}
    for name, value in record.items():
        if isinstance(value, datetime | pd.Timestamp):
            value = to_utc(value, name).isoformat().replace("+00:00", "Z")
        elif isinstance(value, float | np.floating):
            value = float(value) if math.isfinite(value) else None
        elif isinstance(value, np.integer):
            value = int(value)
        out[name] = value
    out["device_id"] = device_id
    to_utc(out.get("period_start"), "period_start")  # present and a time
    return out


def score_order_key(record: Mapping[str, Any]) -> int:
    return to_epoch_us(to_utc(record["period_start"], "period_start"))
