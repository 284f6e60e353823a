"""The PostgreSQL Dagster instance (DAGSTER_PG_URL), with one open connection per storage.

dagster-postgres holds connections open only inside the webserver; everywhere else (the
daemon, every run on a Celery worker) each storage call opens a new connection, which
PostgreSQL serves with a new forked backend. A batch run writes 11 events per device, so
PostgreSQL spent 0.24 core-seconds per device retrained on 53 new sessions, 70 % of what the
worker itself spent (benchmarks/RESULTS.md, scale-out). Here every process keeps the pool
the webserver uses (one connection per storage, recycled hourly), without its statement
timeout and with a liveness check on checkout, so a run's events reuse one session and a
PostgreSQL restart costs a reconnect, not an error.

Written against dagster-postgres 0.29.27 (pinned): it replaces the storages' `_engine`, as
their own `optimize_for_webserver` does.
"""

import os
from typing import Any

import sqlalchemy as sa
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import (
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
)

POOL_RECYCLE_S = 3600  # the webserver's default
MAX_OVERFLOW = 10  # a storage opens a second connection at once only for short metadata reads


def _checked_on_checkout(engine: sa.engine.Engine) -> None:
    """Every checkout is the parent's connection after a fork, or dead after a PostgreSQL
    restart: replace it (SQLAlchemy's checkout-event recipes; its `pool_pre_ping` would ping
    before the fork check, on the parent's socket)."""

    @sa.event.listens_for(engine, "connect")
    def _remember_pid(dbapi_connection: Any, record: Any) -> None:
        record.info["pid"] = os.getpid()

    @sa.event.listens_for(engine, "checkout")
    def _check(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if record.info.get("pid") != os.getpid():
            record.dbapi_connection = proxy.dbapi_connection = None  # never closed from here
            raise sa.exc.DisconnectionError("the connection was made in another process")
        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except Exception as exc:  # psycopg2's OperationalError or InterfaceError
            raise sa.exc.DisconnectionError(f"the pooled connection is gone: {exc}") from exc


class PooledPostgresStorage(DagsterPostgresStorage):
    """DagsterPostgresStorage whose run, event and schedule storages keep one connection."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True,
                 inst_data: ConfigurableClassData | None = None,
                 token_provider: Any = None) -> None:
        super().__init__(postgres_url, should_autocreate_tables, inst_data=inst_data,
                         token_provider=token_provider)
        for storage in (self._run_storage, self._event_log_storage, self._schedule_storage):
            dropped = storage._engine  # noqa: SLF001 - the engine dagster-postgres opened
            options = dropped.url.query.get("options")
            storage._engine = create_pg_engine(  # noqa: SLF001 - as optimize_for_webserver does
                postgres_url, token_provider, isolation_level="AUTOCOMMIT", pool_size=1,
                max_overflow=MAX_OVERFLOW, pool_recycle=POOL_RECYCLE_S,
                **({"connect_args": {"options": options}} if options else {}))
            dropped.dispose()
            _checked_on_checkout(storage._engine)  # noqa: SLF001 - the engine just made

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None,  # type: ignore[override]
                          config_value: Any) -> "PooledPostgresStorage":
        return cls(postgres_url=pg_url_from_config(config_value),
                   should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                   inst_data=inst_data,
                   token_provider=get_token_provider_from_config(config_value))
