"""Embedded store: one SQLite file shared by the webserver, daemon, run workers and CLI.

WAL lets readers run while one writer commits; every write takes the write lock up front
(BEGIN IMMEDIATE) and waits up to the busy timeout for it, so concurrent processes queue
instead of failing or losing a read-modify-write. Timestamps are INTEGER microseconds since
the epoch (UTC): range scans compare plain integers.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.storage.base import (
    READING_FIELDS,
    RUN_DATETIME_FIELDS,
    SITE_FIELDS,
    RunPage,
    StoreUnavailable,
)
from solar_ml_pipeline.storage.records import (
    check_page,
    chunks,
    empty_readings_frame,
    normalize_readings,
    normalize_run,
    normalize_score,
    normalize_site,
    readings_frame,
    run_from_storage,
    run_id_of,
    score_order_key,
    site_from_storage,
    to_epoch_us,
    to_utc,
    window_bounds,
)

TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
WRITE_BATCH = 10_000
# Connections a forked child inherited: kept referenced so that they are never closed (or
# finalised) in the child, which could disturb the parent's locks on the same file.
_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []


def _table(name: str) -> str:
    """A table name checked to be a plain identifier, because it is spliced into SQL."""
    if not TABLE_NAME.fullmatch(name):
        raise ValueError(f"invalid table name {name!r}: use letters, digits and _ (max 63)")
    return name


class SqliteStore:
    """Readings, run log and sites in one SQLite file (created on first use).

    One connection per store object and process, opened lazily and guarded by a lock, so
    the object is safe to share between threads and to create before a fork.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        readings_table: str = "readings_raw",
        runs_table: str = "model_runs",
        devices_table: str = "devices",
        scores_table: str = "forecast_scores",
        busy_timeout_s: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self.readings_table = _table(readings_table)
        self.runs_table = _table(runs_table)
        self.devices_table = _table(devices_table)
        self.scores_table = _table(scores_table)
        self.busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._pid = os.getpid()

    @classmethod
    def from_settings(cls, settings: Settings) -> SqliteStore:
        return cls(
            settings.sqlite_path,
            readings_table=settings.collection_readings,
            runs_table=settings.collection_model_runs,
            devices_table=settings.collection_devices,
        )

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # Pickling (e.g. into a spawned process) carries the location, never the connection.
    def __getstate__(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "readings_table": self.readings_table,
            "runs_table": self.runs_table,
            "devices_table": self.devices_table,
            "busy_timeout_s": self.busy_timeout_s,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        path = state.pop("path")
        self.__init__(path, **state)  # type: ignore[misc]

    # -- connection -------------------------------------------------------------------------

    @contextmanager
    def _session(self) -> Iterator[sqlite3.Connection]:
        self._forget_parent_connection()
        with self._lock:
            if self._conn is None:
                self._conn = self._open()
            yield self._conn

    def _forget_parent_connection(self) -> None:
        """In a forked child, leave the parent's connection (and lock) alone and start afresh."""
        if self._pid == os.getpid():
            return
        if self._conn is not None:
            _INHERITED_CONNECTIONS.append(self._conn)
        self._lock = threading.RLock()
        self._conn = None
        self._pid = os.getpid()

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except (sqlite3.Error, OSError) as exc:
            raise self._unavailable(exc) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            self._retry_while_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"))
            conn.execute("PRAGMA synchronous = NORMAL")
            self._retry_while_locked(lambda: self._create_schema(conn))
        except sqlite3.Error as exc:
            conn.close()
            raise self._unavailable(exc) from exc
        return conn

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(
            f"SQLite store at {self.path} cannot be opened: {exc}; "
            "check that SOLAR_ML_HOME is a writable local directory"
        )

    def _retry_while_locked(self, action: Any) -> None:
        """Switching to WAL can report 'locked' without waiting while another process opens."""
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                action()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        sensors = ", ".join(f"{name} REAL" for name in READING_FIELDS)
        site_columns = ", ".join(
            f"{name} {'TEXT' if name == 'timezone' else 'REAL'}" for name in SITE_FIELDS
        )
        readings, runs, devices = self.readings_table, self.runs_table, self.devices_table
        scores = self.scores_table
        statements = [
            # The primary key is the unique (device_id, timestamp) index; WITHOUT ROWID
            # clusters rows by it, so a device's window is one contiguous range scan.
            f"CREATE TABLE IF NOT EXISTS {readings} (device_id TEXT NOT NULL, "
            f"timestamp INTEGER NOT NULL, {sensors}, "
            "PRIMARY KEY (device_id, timestamp)) WITHOUT ROWID",
            f"CREATE TABLE IF NOT EXISTS {runs} (run_id TEXT PRIMARY KEY, device_id TEXT, "
            "status TEXT, promoted INTEGER, trained_at INTEGER, record TEXT NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {runs}_trained_at ON {runs} (trained_at, run_id)",
            f"CREATE INDEX IF NOT EXISTS {runs}_device_trained_at "
            f"ON {runs} (device_id, trained_at, run_id)",
            f"CREATE INDEX IF NOT EXISTS {runs}_status ON {runs} (status)",
            f"CREATE INDEX IF NOT EXISTS {runs}_promoted ON {runs} (promoted)",
            f"CREATE TABLE IF NOT EXISTS {devices} (device_id TEXT PRIMARY KEY, {site_columns})",
            # Clustered by (device_id, period_start): a device's last N periods is one scan.
            f"CREATE TABLE IF NOT EXISTS {scores} (device_id TEXT NOT NULL, "
            "period_start INTEGER NOT NULL, period TEXT NOT NULL, record TEXT NOT NULL, "
            "PRIMARY KEY (device_id, period_start, period)) WITHOUT ROWID",
            f"CREATE UNIQUE INDEX IF NOT EXISTS {scores}_device_period "
            f"ON {scores} (device_id, period)",
        ]
        with _write_transaction(conn):
            for statement in statements:
                conn.execute(statement)

    def ping(self) -> None:
        with self._session() as conn:
            try:
                conn.execute(f"SELECT 1 FROM {self.readings_table} LIMIT 1").fetchall()  # noqa: S608 - validated table name
            except sqlite3.Error as exc:
                raise self._unavailable(exc) from exc

    def close(self) -> None:
        self._forget_parent_connection()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None

    # -- readings ---------------------------------------------------------------------------

    def write_readings(self, readings: Iterable[Mapping[str, Any]]) -> int:
        rows = normalize_readings(readings)
        columns = ", ".join(("device_id", "timestamp", *READING_FIELDS))
        marks = ", ".join("?" * (2 + len(READING_FIELDS)))
        sql = f"INSERT OR IGNORE INTO {self.readings_table} ({columns}) VALUES ({marks})"  # noqa: S608 - validated table name
        added = 0
        for batch in chunks(rows, WRITE_BATCH):
            params = [(row.device_id, to_epoch_us(row.timestamp), *row.values) for row in batch]
            with self._session() as conn:
                before = conn.total_changes
                with _write_transaction(conn):
                    conn.executemany(sql, params)
                added += conn.total_changes - before
        return added

    def read_window(self, device_id: str, start: datetime, end: datetime) -> pd.DataFrame:
        low, high = window_bounds(start, end)
        sql = (
            f"SELECT timestamp, {', '.join(READING_FIELDS)} FROM {self.readings_table} "  # noqa: S608 - validated table name
            "WHERE device_id = ? AND timestamp >= ? AND timestamp < ? ORDER BY timestamp"
        )
        with self._session() as conn:
            rows = conn.execute(sql, (device_id, to_epoch_us(low), to_epoch_us(high))).fetchall()
        return _frame(rows)

    def newest_reading_us(self, device_id: str, start: datetime, end: datetime) -> int | None:
        """Epoch microseconds of the device's newest reading with start <= timestamp < end,
        None if there is none: one index probe, a cheap change detector for caches."""
        low, high = window_bounds(start, end)
        sql = (
            f"SELECT MAX(timestamp) FROM {self.readings_table} "  # noqa: S608 - validated table name
            "WHERE device_id = ? AND timestamp >= ? AND timestamp < ?"
        )
        with self._session() as conn:
            row = conn.execute(sql, (device_id, to_epoch_us(low), to_epoch_us(high))).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def latest_readings(self, device_id: str, limit: int) -> pd.DataFrame:
        sql = (
            f"SELECT timestamp, {', '.join(READING_FIELDS)} FROM {self.readings_table} "  # noqa: S608 - validated table name
            "WHERE device_id = ? ORDER BY timestamp DESC LIMIT ?"
        )
        with self._session() as conn:
            rows = conn.execute(sql, (device_id, max(int(limit), 0))).fetchall()
        rows.reverse()
        return _frame(rows)

    def list_devices(self) -> list[str]:
        # Hop from one device id to the next through the primary key instead of scanning
        # every reading: cost grows with the number of devices, not of readings.
        table = self.readings_table
        sql = (
            f"WITH RECURSIVE ids(device_id) AS (SELECT MIN(device_id) FROM {table} "  # noqa: S608 - validated table name
            f"UNION ALL SELECT (SELECT MIN(device_id) FROM {table} WHERE device_id > ids.device_id) "
            "FROM ids WHERE ids.device_id IS NOT NULL) "
            "SELECT device_id FROM ids WHERE device_id IS NOT NULL"
        )
        with self._session() as conn:
            return [row[0] for row in conn.execute(sql)]

    def count_readings(self, device_id: str | None = None) -> int:
        with self._session() as conn:
            if device_id is None:
                row = conn.execute(f"SELECT COUNT(*) FROM {self.readings_table}").fetchone()  # noqa: S608 - validated table name
            else:
                row = conn.execute(
                    f"SELECT COUNT(*) FROM {self.readings_table} WHERE device_id = ?",  # noqa: S608 - validated table name
                    (device_id,),
                ).fetchone()
        return int(row[0])

    # -- run log ----------------------------------------------------------------------------

    def upsert_run(self, record: Mapping[str, Any]) -> None:
        fields = normalize_run(record)
        run_id = fields["run_id"]
        table = self.runs_table
        with self._session() as conn, _write_transaction(conn):
            row = conn.execute(f"SELECT record FROM {table} WHERE run_id = ?", (run_id,)).fetchone()  # noqa: S608 - validated table name
            merged = {**_decode_run(row[0]), **fields} if row else fields
            conn.execute(
                f"INSERT INTO {table} (run_id, device_id, status, promoted, trained_at, record) "  # noqa: S608 - validated table name
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET "
                "device_id = excluded.device_id, status = excluded.status, "
                "promoted = excluded.promoted, trained_at = excluded.trained_at, "
                "record = excluded.record",
                _run_row(merged),
            )

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self._session() as conn:
            row = conn.execute(
                f"SELECT record FROM {self.runs_table} WHERE run_id = ?", (run_id,)  # noqa: S608 - validated table name
            ).fetchone()
        return _decode_run(row[0]) if row else None

    def list_runs(
        self,
        device_id: str | None = None,
        status: str | None = None,
        promoted: bool | None = None,
        limit: int = 20,
        skip: int = 0,
    ) -> RunPage:
        check_page(limit, skip)
        conditions: list[str] = []
        params: list[Any] = []
        if device_id is not None:
            conditions.append("device_id = ?")
            params.append(device_id)
        if status is not None:
            conditions.append("status = ?")
            params.append(status)
        if promoted is not None:
            conditions.append("promoted = ?")
            params.append(1 if promoted else 0)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        table = self.runs_table
        with self._session() as conn, _read_transaction(conn):
            total = conn.execute(f"SELECT COUNT(*) FROM {table}{where}", params).fetchone()[0]  # noqa: S608 - fixed clauses, validated table name
            rows = conn.execute(
                f"SELECT record FROM {table}{where} "  # noqa: S608 - fixed clauses, validated table name
                "ORDER BY trained_at DESC, run_id DESC LIMIT ? OFFSET ?",
                [*params, limit, skip],
            ).fetchall()
        return RunPage(total=int(total), runs=[_decode_run(row[0]) for row in rows])

    def delete_run(self, run_id: str) -> bool:
        with self._session() as conn, _write_transaction(conn):
            cursor = conn.execute(f"DELETE FROM {self.runs_table} WHERE run_id = ?", (run_id,))  # noqa: S608 - validated table name
            return cursor.rowcount > 0

    # -- forecast scores --------------------------------------------------------------------

    def upsert_score(self, record: Mapping[str, Any]) -> None:
        fields = normalize_score(record)
        table = self.scores_table
        with self._session() as conn, _write_transaction(conn):
            conn.execute(f"DELETE FROM {table} WHERE device_id = ? AND period = ?",  # noqa: S608 - validated table name
                         (fields["device_id"], fields["period"]))
            conn.execute(
                f"INSERT INTO {table} (device_id, period_start, period, record) "  # noqa: S608 - validated table name
                "VALUES (?, ?, ?, ?)",
                (fields["device_id"], score_order_key(fields), fields["period"],
                 json.dumps(fields, separators=(",", ":"))))

    def list_scores(self, device_id: str, since: datetime | None = None,
                    limit: int = 100) -> list[dict[str, Any]]:
        check_page(limit, 0)
        lower = to_epoch_us(to_utc(since, "since")) if since is not None else -(2**62)
        with self._session() as conn:
            rows = conn.execute(
                f"SELECT record FROM {self.scores_table} WHERE device_id = ? "  # noqa: S608 - validated table name
                "AND period_start >= ? ORDER BY period_start DESC, period DESC LIMIT ?",
                (device_id, lower, limit)).fetchall()
        return [json.loads(row[0]) for row in rows]

    # -- sites ------------------------------------------------------------------------------

    def set_site(self, device_id: str, site: Mapping[str, Any]) -> None:
        record = normalize_site(device_id, site)
        columns = ("device_id", *SITE_FIELDS)
        with self._session() as conn, _write_transaction(conn):
            conn.execute(
                f"INSERT OR REPLACE INTO {self.devices_table} ({', '.join(columns)}) "  # noqa: S608 - validated table name
                f"VALUES ({', '.join('?' * len(columns))})",
                [record[name] for name in columns],
            )

    def get_site(self, device_id: str) -> dict[str, Any] | None:
        with self._session() as conn:
            cursor = conn.execute(
                f"SELECT device_id, {', '.join(SITE_FIELDS)} FROM {self.devices_table} "  # noqa: S608 - validated table name
                "WHERE device_id = ?",
                (device_id,),
            )
            row = cursor.fetchone()
        return _site(row) if row else None

    def list_sites(self) -> list[dict[str, Any]]:
        with self._session() as conn:
            rows = conn.execute(
                f"SELECT device_id, {', '.join(SITE_FIELDS)} FROM {self.devices_table} "  # noqa: S608 - validated table name
                "ORDER BY device_id"
            ).fetchall()
        return [_site(row) for row in rows]


@contextmanager
def _write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """Take the write lock before reading, so a read-modify-write cannot lose an update."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@contextmanager
def _read_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One snapshot for several SELECTs (e.g. a page and its total)."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def _frame(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    if not rows:
        return empty_readings_frame()
    timestamps = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
    # NULL (None) becomes NaN in a float64 array.
    values = np.array(rows, dtype=np.float64)[:, 1:]
    return readings_frame(timestamps, values)


def _run_row(record: Mapping[str, Any]) -> tuple[Any, ...]:
    trained_at = record.get("trained_at")
    promoted = record.get("promoted")
    return (
        record["run_id"],
        _text_or_none(record.get("device_id")),
        _text_or_none(record.get("status")),
        1 if promoted is True else 0 if promoted is False else None,
        to_epoch_us(trained_at) if isinstance(trained_at, datetime) else None,
        _encode_run(record),
    )


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _encode_run(record: Mapping[str, Any]) -> str:
    run_id_of(record)
    encoded = {
        name: value.isoformat() if name in RUN_DATETIME_FIELDS and value is not None else value
        for name, value in record.items()
    }
    return json.dumps(encoded, separators=(",", ":"))


def _decode_run(text: str) -> dict[str, Any]:
    return run_from_storage(json.loads(text))


def _site(row: tuple[Any, ...]) -> dict[str, Any]:
    return site_from_storage(dict(zip(("device_id", *SITE_FIELDS), row, strict=True)))
