from datetime import UTC, datetime

import dagster as dg

from solar_ml_pipeline.config import settings_from_env
from solar_ml_pipeline.orchestration.definitions import build_definitions
from solar_ml_pipeline.orchestration.partitions import DEVICE_DIMENSION
from solar_ml_pipeline.orchestration.schedules import RETRAIN_SCHEDULE


def _tick(defs, instance, when):
    schedule = defs.resolve_schedule_def(RETRAIN_SCHEDULE)
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=when,
                                        repository_def=defs.get_repository_def())
    return schedule.evaluate_tick(context)


def test_tick_at_1830_colombo_requests_the_new_period_once_per_device(settings):
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(DEVICE_DIMENSION, ["tracker02", "tracker01"])
        result = _tick(defs, instance, datetime(2026, 2, 24, 13, 0, tzinfo=UTC))
        keys = sorted(str(r.partition_key) for r in result.run_requests)
        assert keys == ["tracker01|2026-02-24", "tracker02|2026-02-24"]
        run_keys = {r.run_key for r in result.run_requests}
        assert len(run_keys) == 2
        # a re-evaluated tick produces the same run keys, so the daemon launches nothing twice
        again = _tick(defs, instance, datetime(2026, 2, 24, 13, 0, tzinfo=UTC))
        assert {r.run_key for r in again.run_requests} == run_keys


def test_tick_with_no_devices_skips_with_a_reason(settings):
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        result = _tick(defs, instance, datetime(2026, 2, 24, 13, 0, tzinfo=UTC))
        assert not result.run_requests
        assert "no devices" in result.skip_message


def test_schedule_cron_and_zone_follow_settings():
    s = settings_from_env({"RETRAIN_TIME": "06:15", "TIMEZONE": "Europe/Berlin",
                           "RETRAIN_INTERVAL_HOURS": "12"})
    schedule = build_definitions(s).resolve_schedule_def(RETRAIN_SCHEDULE)
    assert schedule.cron_schedule == "15 6,18 * * *"
    assert schedule.execution_timezone == "Europe/Berlin"


def test_retrain_enabled_false_ships_the_schedule_stopped():
    stopped = build_definitions(settings_from_env({"RETRAIN_ENABLED": "false"}))
    running = build_definitions(settings_from_env({}))
    assert stopped.resolve_schedule_def(RETRAIN_SCHEDULE).default_status == dg.DefaultScheduleStatus.STOPPED
    assert running.resolve_schedule_def(RETRAIN_SCHEDULE).default_status == dg.DefaultScheduleStatus.RUNNING
