"""The PostgreSQL Dagster instance (DAGSTER_PG_URL), with one open connection per storage.

dagster-postgres holds connections open only inside the webserver; everywhere else (the
daemon, every run on a Celery worker) each storage call opens a new connection, which
PostgreSQL serves with a new forked backend. A batch run writes 11 events per device, so
PostgreSQL spent 0.24 core-seconds per device retrained on 53 new sessions, 70 % of what the
worker itself spent (benchmarks/RESULTS.md, scale-out). Here every process keeps Dagster's
own webserver pool (one connection per storage, recycled hourly) without its statement
timeout, so a run's events reuse one session.

Written against dagster-postgres 0.29.27 (pinned): it calls the storages'
`optimize_for_webserver`, the switch the webserver itself uses.
"""

import os
from typing import Any

import sqlalchemy as sa
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

POOL_RECYCLE_S = 3600  # the webserver's default
MAX_OVERFLOW = 10  # a storage opens a second connection at once only for short metadata reads
NO_STATEMENT_TIMEOUT = 0  # a run's writes must not be cut off as a webserver query would be


def _drop_connections_from_another_process(engine: sa.engine.Engine) -> None:
    """A connection made before a fork belongs to the parent (SQLAlchemy's recipe)."""

    @sa.event.listens_for(engine, "connect")
    def _remember_pid(dbapi_connection: Any, record: Any) -> None:
        record.info["pid"] = os.getpid()

    @sa.event.listens_for(engine, "checkout")
    def _check_pid(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if record.info.get("pid") != os.getpid():
            record.dbapi_connection = proxy.dbapi_connection = None
            raise sa.exc.DisconnectionError("connection was made in another process")


class PooledPostgresStorage(DagsterPostgresStorage):
    """DagsterPostgresStorage whose run, event and schedule storages keep one connection."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True,
                 inst_data: ConfigurableClassData | None = None,
                 token_provider: Any = None) -> None:
        super().__init__(postgres_url, should_autocreate_tables, inst_data=inst_data,
                         token_provider=token_provider)
        for storage in self._storages():
            storage.optimize_for_webserver(statement_timeout=NO_STATEMENT_TIMEOUT,
                                           pool_recycle=POOL_RECYCLE_S,
                                           max_overflow=MAX_OVERFLOW)
            _drop_connections_from_another_process(storage._engine)  # noqa: SLF001

    def _storages(self) -> tuple[Any, ...]:
        return (self._run_storage, self._event_log_storage, self._schedule_storage)

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None,  # type: ignore[override]
                          config_value: Any) -> "PooledPostgresStorage":
        return cls(postgres_url=pg_url_from_config(config_value),
                   should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                   inst_data=inst_data,
                   token_provider=get_token_provider_from_config(config_value))

