"""The DAGSTER_HOME the project writes: Dagster reads back the queue and monitoring it asks for."""

import dagster as dg

from solar_ml_pipeline.orchestration.instance import ensure_dagster_home


def test_the_written_instance_queues_runs_with_the_configured_limits(settings, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    settings = settings.with_overrides(max_concurrent_runs=3)
    home = ensure_dagster_home(settings)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        coordinator = instance.run_coordinator
        assert isinstance(coordinator, dg.QueuedRunCoordinator)
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 3
        assert queue.tag_concurrency_limits == [{
            "key": "dagster/partition/device", "value": {"applyLimitPerUniqueValue": True},
            "limit": 1}]
        # a freed slot is refilled within a second, not Dagster's default five
        assert coordinator._dequeue_interval_seconds == 1  # noqa: SLF001 - no public getter
        monitoring = instance.run_monitoring_settings
        # the limit that frees a device whose run died with its daemon (test_daemon_restart)
        assert monitoring["enabled"] is True and monitoring["max_runtime_seconds"] == 3600


def test_an_edited_dagster_yaml_is_never_overwritten(settings, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = ensure_dagster_home(settings)
    edited = (home / "dagster.yaml").read_text().replace("max_concurrent_runs: 2",
                                                         "max_concurrent_runs: 7")
    (home / "dagster.yaml").write_text(edited)
    ensure_dagster_home(settings.with_overrides(max_concurrent_runs=2))
    assert "max_concurrent_runs: 7" in (home / "dagster.yaml").read_text()
