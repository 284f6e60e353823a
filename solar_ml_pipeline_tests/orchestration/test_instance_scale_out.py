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
