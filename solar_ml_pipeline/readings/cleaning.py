"""Cleaning a window of raw readings into the one shape features are built from.

Readings arrive duplicated, out of order, with values missing or unparseable. Cleaning makes
them typed (timestamp: datetime64[ns, UTC]; every sensor: float64, NaN when unknown), keeps
only rows with a timestamp and a finite power, one row per timestamp, in time order, and
counts what it dropped so a run can show it.

Duplicate rule: of the rows sharing a timestamp, the first one in input order is kept, the
same rule the stores apply ("the first reading stored for a key wins"). Rows dropped for a
missing timestamp or power are dropped before deduplication, so a broken row never hides a
good one with the same timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from solar_ml_pipeline.storage.base import READING_FIELDS

CLEAN_COLUMNS = ("timestamp", *READING_FIELDS)
OPTIONAL_SENSORS = tuple(name for name in READING_FIELDS if name != "power")

_NS_MIN = pd.Timestamp.min.tz_localize("UTC")
_NS_MAX = pd.Timestamp.max.tz_localize("UTC")


@dataclass(frozen=True)
class CleaningReport:
    rows_in: int
    rows_out: int
    dropped_no_timestamp: int
    dropped_no_power: int
    dropped_duplicates: int
    first_timestamp: datetime | None
    last_timestamp: datetime | None

    def as_metadata(self) -> dict[str, Any]:
        """Counts as ints, bounds as ISO strings; a bound is left out when the window is empty."""
        metadata: dict[str, Any] = {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "dropped_no_timestamp": self.dropped_no_timestamp,
            "dropped_no_power": self.dropped_no_power,
            "dropped_duplicates": self.dropped_duplicates,
        }
        if self.first_timestamp is not None:
            metadata["first_timestamp"] = self.first_timestamp.isoformat()
        if self.last_timestamp is not None:
            metadata["last_timestamp"] = self.last_timestamp.isoformat()
        return metadata


def _timestamps(values: pd.Series) -> pd.Series:
    """UTC nanosecond timestamps; unparseable or out-of-range values become NaT."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        parsed = values.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(values.dtype):
        parsed = values.dt.tz_localize("UTC")
    else:
        # `mixed`: each string is parsed on its own, so one odd format does not void the rest.
        parsed = pd.to_datetime(values, utc=True, errors="coerce", format="mixed")
    in_range = (parsed >= _NS_MIN) & (parsed <= _NS_MAX)
    return parsed.where(in_range).astype("datetime64[ns, UTC]")


def _numbers(values: pd.Series) -> np.ndarray:
    """float64 with NaN for anything not a finite number; typed columns (what the stores
    return) skip the parsing, a tenth of a cold forecast."""
    if values.dtype.kind in "biuf":
        numeric = values.to_numpy(dtype="float64")
    else:
        numeric = pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()
    return np.where(np.isfinite(numeric), numeric, np.nan)


def clean_readings(frame: pd.DataFrame) -> tuple[pd.DataFrame, CleaningReport]:
    """Typed, deduplicated, time-sorted readings with `timestamp` + READING_FIELDS columns.

    Extra columns (device_id, unknown fields) are dropped; a missing sensor column becomes
    all NaN; inf becomes NaN.
    """
    rows_in = len(frame)
    index = pd.RangeIndex(rows_in)
    columns: dict[str, pd.Series | np.ndarray] = {}
    if "timestamp" in frame.columns:
        columns["timestamp"] = _timestamps(frame["timestamp"].reset_index(drop=True))
    else:
        columns["timestamp"] = pd.Series(pd.NaT, index=index, dtype="datetime64[ns, UTC]")
    for name in READING_FIELDS:
        if name in frame.columns:
            columns[name] = _numbers(frame[name])  # positional: the frame's index is dropped
        else:
            columns[name] = pd.Series(np.nan, index=index, dtype="float64")
    typed = pd.DataFrame(columns, index=index)

    has_timestamp = typed["timestamp"].notna()
    dropped_no_timestamp = int((~has_timestamp).sum())
    typed = typed[has_timestamp]

    has_power = typed["power"].notna()
    dropped_no_power = int((~has_power).sum())
    typed = typed[has_power]

    duplicated = typed["timestamp"].duplicated(keep="first")
    dropped_duplicates = int(duplicated.sum())
    typed = typed[~duplicated]

    clean = typed.sort_values("timestamp", kind="mergesort").reset_index(drop=True)
    report = CleaningReport(
        rows_in=rows_in,
        rows_out=len(clean),
        dropped_no_timestamp=dropped_no_timestamp,
        dropped_no_power=dropped_no_power,
        dropped_duplicates=dropped_duplicates,
        first_timestamp=clean["timestamp"].iloc[0].to_pydatetime(warn=False) if len(clean) else None,
        last_timestamp=clean["timestamp"].iloc[-1].to_pydatetime(warn=False) if len(clean) else None,
    )
    return clean, report


def sensors_present(frame: pd.DataFrame) -> list[str]:
    """Optional sensors (all but power) with at least one value in this cleaned window."""
    return [
        name for name in OPTIONAL_SENSORS
        if name in frame.columns and bool(frame[name].notna().any())
    ]
