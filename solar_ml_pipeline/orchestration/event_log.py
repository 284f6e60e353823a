"""The embedded (SQLite) Dagster instance, with its event-log connections kept open.

Dagster's SQLite event log builds a new engine and connection for every event and closes it
after. Closing the last connection to a WAL database checkpoints it, and a new engine starts
with an empty statement cache, so each event cost 6-7 ms on this machine; a batch run writes
11 events per device, which was most of Dagster's overhead per device
(benchmarks/RESULTS.md, fleet). Here each database file keeps one engine with one pooled
connection, which brings an event to about 2 ms. Durability is Dagster's: every event still
commits on its own, `synchronous` is left at SQLite's default.

Dagster's webserver learns of a run's new events from inotify on the run's `.db` file, which
a write through an open WAL connection no longer touches; every write to a run's database
therefore touches the file's times, so the UI's live run log stays live.

Written against dagster 1.13.27 (pinned): it overrides `SqliteEventLogStorage._connect`.
"""

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
)
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._serdes import ConfigurableClassData
from sqlalchemy.pool import QueuePool

# A webserver reads many runs' logs; engines of runs not touched lately are closed.
OPEN_RUN_DATABASES = 8


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """SqliteEventLogStorage with one open connection per database file."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self._engines: OrderedDict[str, sa.engine.Engine] = OrderedDict()
        self._engines_pid = os.getpid()
        super().__init__(base_dir, inst_data=inst_data)
        # re-entrant: Dagster asks has_table inside an open index connection (wipe)
        self._db_lock = threading.RLock()

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None,  # type: ignore[override]
                          config_value: Any) -> "PooledSqliteEventLogStorage":
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> sa.engine.Engine:
        if self._engines_pid != os.getpid():  # a forked child must not share its parent's sockets
            self._engines = OrderedDict()
            self._engines_pid = os.getpid()
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        # pool_size 1 keeps one connection; Dagster's schema check opens a second at once
        engine = create_engine(self.conn_string_for_shard(shard), poolclass=QueuePool,
                               pool_size=1, max_overflow=-1,
                               connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
        self._engines[shard] = engine
        run_shards = [name for name in self._engines if name != INDEX_SHARD_NAME]
        for name in run_shards[:-OPEN_RUN_DATABASES]:
            self._engines.pop(name).dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[sa.engine.Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def has_table(self, table_name: str) -> bool:
        with self._db_lock:
            engine = self._engine(INDEX_SHARD_NAME)
            with engine.connect() as conn:
                return bool(engine.dialect.has_table(conn, table_name))

    def store_event(self, event: EventLogEntry) -> None:  # store_event_batch comes here too
        super().store_event(event)
        self._touch(event.run_id)

    def _touch(self, run_id: str) -> None:
        """Wake the run's watchers (inotify IN_ATTRIB reaches watchdog as a modification)."""
        try:
            os.utime(self.path_for_shard(run_id))
        except FileNotFoundError:
            pass

    def close_connections(self) -> None:
        with self._db_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()

    def wipe(self) -> None:
        self.close_connections()  # an open connection would keep writing to an unlinked file
        super().wipe()

    def dispose(self) -> None:
        super().dispose()
        self.close_connections()


class EmbeddedSqliteStorage(DagsterSqliteStorage):
    """Dagster's SQLite storage under `base_dir`, file for file, with the pooled event log."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self.base_dir = base_dir
        self._run_storage = SqliteRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = PooledSqliteEventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = SqliteScheduleStorage.from_local(_schedule_directory(base_dir))
        self._inst_data = inst_data
        super(DagsterSqliteStorage, self).__init__()  # DagsterStorage's, not the parent's storages

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None,  # type: ignore[override]
                          config_value: Any) -> "EmbeddedSqliteStorage":
        return cls.from_local(inst_data=inst_data, **config_value)
