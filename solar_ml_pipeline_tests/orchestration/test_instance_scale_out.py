"""The instance on PostgreSQL with the Celery run launcher, as `dagster.yaml` ships it, against
a throwaway PostgreSQL and Redis on loopback."""

import dagster as dg
import pytest

from solar_ml_pipeline.orchestration.instance import InstanceMismatch, ensure_dagster_home
from solar_ml_pipeline_tests.servers import postgres_server, redis_server

pytest.importorskip("dagster_postgres")
pytest.importorskip("dagster_celery")


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as server:
        yield server


@pytest.fixture
def redis(tmp_path):
    with redis_server(tmp_path) as server:
        yield server


def test_with_dagster_pg_url_and_a_broker_the_instance_is_postgres_with_celery_runs(
        settings, postgres, redis, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    for name in ("DAGSTER_PG_URL", "CELERY_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = settings.with_overrides(dagster_pg_url=postgres.url, celery_broker_url=redis.url)
    home = ensure_dagster_home(settings)
    text = (home / "dagster.yaml").read_text()
    assert postgres.url not in text and redis.url not in text  # read from the environment
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.get_ref().storage).__name__ == "PooledPostgresStorage"
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.run_launcher).__name__ == "CeleryRunLauncher"
        assert instance.run_launcher.broker == redis.url
        instance.add_dynamic_partitions("device", ["tracker01"])
    with dg.DagsterInstance.from_config(str(home)) as again:  # another host's view
        assert again.get_dynamic_partitions("device") == ["tracker01"]


def test_a_sqlite_dagster_yaml_is_refused_once_dagster_pg_url_is_set(settings, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = ensure_dagster_home(settings)
    with pytest.raises(InstanceMismatch, match="DAGSTER_PG_URL is set but .*dagster.yaml was "
                                               "written without it: delete that file"):
        ensure_dagster_home(settings.with_overrides(
            dagster_pg_url="postgresql://postgres@127.0.0.1:1/solar_ml"))
    assert "postgres" not in (home / "dagster.yaml").read_text()


def _sessions(url: str) -> int:
    """Sessions PostgreSQL has accepted for the database so far (a new backend each)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select pg_stat_clear_snapshot()"))
            return int(conn.execute(sa.text(
                "select sessions from pg_stat_database where datname = current_database()"
            )).scalar())
    finally:
        engine.dispose()


def test_a_runs_events_reuse_one_postgres_session_instead_of_one_each(
        settings, postgres, monkeypatch):
    from solar_ml_pipeline_tests.orchestration.test_event_log import materialization

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    home = ensure_dagster_home(settings.with_overrides(dagster_pg_url=postgres.url))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.event_log_storage.store_event(materialization("run-pg", "t0"))  # pool warm
        before = _sessions(postgres.url)
        for index in range(1, 31):
            instance.event_log_storage.store_event(materialization("run-pg", f"t{index}"))
        opened = _sessions(postgres.url) - before - 1  # the count's own session
        assert len(instance.all_logs("run-pg")) == 31
    assert opened <= 2, f"30 events opened {opened} PostgreSQL sessions"


def test_a_forked_process_opens_its_own_postgres_connection(settings, postgres, monkeypatch):
    import os

    from solar_ml_pipeline_tests.orchestration.test_event_log import materialization

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    home = ensure_dagster_home(settings.with_overrides(dagster_pg_url=postgres.url))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        storage.store_event(materialization("run-fork", "parent"))
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through its exit status
            try:
                storage.store_event(materialization("run-fork", "child"))
                os._exit(0)
            except BaseException:  # noqa: BLE001
                os._exit(1)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        storage.store_event(materialization("run-fork", "parent-again"))  # its connection intact
        partitions = {e.dagster_event.partition for e in instance.all_logs("run-fork")}
    assert partitions == {"parent|2026-03-10", "child|2026-03-10", "parent-again|2026-03-10"}


def test_a_postgresql_restart_between_two_events_costs_a_reconnect_not_an_error(
        settings, postgres, monkeypatch):
    from solar_ml_pipeline_tests.orchestration.test_event_log import materialization

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    home = ensure_dagster_home(settings.with_overrides(dagster_pg_url=postgres.url))
    with dg.DagsterInstance.from_config(str(home)) as instance:  # a daemon, up for days
        instance.event_log_storage.store_event(materialization("run-restart", "before"))
        postgres.stop()
        postgres.start()
        instance.event_log_storage.store_event(materialization("run-restart", "after"))
        partitions = [e.dagster_event.partition for e in instance.all_logs("run-restart")]
    assert partitions == ["before|2026-03-10", "after|2026-03-10"]
