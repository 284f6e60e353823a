"""The one small storage interface both backends (SQLite, MongoDB) implement.

Readings are keyed by (device_id, timestamp): the first reading stored for a key wins and a
later one with the same key is ignored, so re-importing a file adds nothing.
Run records are keyed by run_id (the Dagster run id): `upsert_run` makes "exactly one record
per attempt" hold even when a failure path and a success path both write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import pandas as pd

SENSOR_FIELDS = ("servo_angle", "temperature", "humidity", "lux", "voltage", "current", "power")
READING_FIELDS = (*SENSOR_FIELDS, "fan_on")
READING_COLUMNS = ("device_id", "timestamp", *READING_FIELDS)

# Run-record fields holding datetimes (tz-aware UTC); backends must round-trip them as datetimes.
RUN_DATETIME_FIELDS = ("trained_at", "window_start", "window_end", "started_at", "finished_at")

# Site fields of a `devices` record (issue: sites); device_id is the key.
SITE_FIELDS = ("latitude", "longitude", "altitude", "capacity_w", "timezone")


class StoreUnavailable(RuntimeError):
    """The configured store cannot be reached; the message says which and how to fix it."""


class RunNotFound(KeyError):
    """No run record has that run_id."""


@dataclass(frozen=True)
class RunPage:
    total: int
    runs: list[dict[str, Any]]


class ReadingStore(Protocol):
    def write_readings(self, readings: Iterable[Mapping[str, Any]]) -> int:
        """Store readings (dicts with READING_COLUMNS; missing sensors as None).

        `timestamp` is a tz-aware datetime. Returns how many were new; existing
        (device_id, timestamp) keys are left as they are.
        """

    def read_window(self, device_id: str, start: datetime, end: datetime) -> pd.DataFrame:
        """Readings of one device with start <= timestamp < end, sorted by timestamp.

        Columns: `timestamp` (datetime64[ns, UTC]) and READING_FIELDS (float; fan_on as
        float 0/1 or NaN). A sensor the device never sent is an all-NaN column.
        """

    def latest_readings(self, device_id: str, limit: int) -> pd.DataFrame:
        """The device's `limit` newest readings, in ascending time order (same columns)."""

    def list_devices(self) -> list[str]:
        """Distinct device ids present in the readings, sorted."""

    def count_readings(self, device_id: str | None = None) -> int: ...


class RunLog(Protocol):
    def upsert_run(self, record: Mapping[str, Any]) -> None:
        """Insert the record, or merge its fields into the existing one with the same run_id."""

    def get_run(self, run_id: str) -> dict[str, Any] | None: ...

    def list_runs(
        self,
        device_id: str | None = None,
        status: str | None = None,
        promoted: bool | None = None,
        limit: int = 20,
        skip: int = 0,
    ) -> RunPage:
        """Newest first by trained_at (then run_id); total counts all matches."""

    def delete_run(self, run_id: str) -> bool:
        """True when a record was deleted, False when none had that run_id."""


class ScoreStore(Protocol):
    """Realised forecast scores (`forecast_scores`), one per device and period: JSON-plain
    records (times as ISO 8601 strings) keyed by (device_id, period); `period_start` orders."""

    def upsert_score(self, record: Mapping[str, Any]) -> None:
        """Create or replace the score of (record["device_id"], record["period"])."""

    def list_scores(self, device_id: str, since: datetime | None = None,
                    limit: int = 100) -> list[dict[str, Any]]:
        """The device's scores with period_start >= since, newest period first."""


class SiteStore(Protocol):
    def set_site(self, device_id: str, site: Mapping[str, Any]) -> None:
        """Create or replace the device's site record (SITE_FIELDS, None where unknown)."""

    def get_site(self, device_id: str) -> dict[str, Any] | None: ...

    def list_sites(self) -> list[dict[str, Any]]: ...


class Store(ReadingStore, RunLog, ScoreStore, SiteStore, Protocol):
    """Everything the pipeline needs from storage; `close()` releases connections."""

    def ping(self) -> None:
        """Raise StoreUnavailable with a one-line reason if the store cannot be used."""

    def close(self) -> None: ...
