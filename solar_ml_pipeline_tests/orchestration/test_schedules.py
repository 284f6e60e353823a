from datetime import UTC, datetime

import dagster as dg

from solar_ml_pipeline.config import settings_from_env
from solar_ml_pipeline.orchestration.batches import RANGE_END_TAG, RANGE_START_TAG
from solar_ml_pipeline.orchestration.definitions import build_definitions
from solar_ml_pipeline.orchestration.partitions import DEVICE_DIMENSION, retrain_partitions
from solar_ml_pipeline.orchestration.schedules import RETRAIN_SCHEDULE


def _tick(defs, instance, when):
    schedule = defs.resolve_schedule_def(RETRAIN_SCHEDULE)
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=when,
                                        repository_def=defs.get_repository_def())
    return schedule.evaluate_tick(context)


def test_tick_at_1830_colombo_requests_the_new_period_for_each_device_once(settings):
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


def _ranges(requests):
    return [(r.tags[RANGE_START_TAG].split("|")[0], r.tags[RANGE_END_TAG].split("|")[0])
            for r in requests]


def test_a_tick_requests_a_few_ranged_runs_that_cover_every_device_once(settings):
    settings = settings.with_overrides(fleet_batch_size=4)
    defs = build_definitions(settings)
    devices = [f"tracker{i:02d}" for i in range(10, 0, -1)]  # Dagster keeps insertion order
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(DEVICE_DIMENSION, devices)
        result = _tick(defs, instance, datetime(2026, 2, 24, 13, 0, tzinfo=UTC))
        assert _ranges(result.run_requests) == [("tracker10", "tracker07"),
                                                ("tracker06", "tracker03"),
                                                ("tracker02", "tracker01")]
        covered = []
        with dg.partition_loading_context(dynamic_partitions_store=instance):
            for request in result.run_requests:
                assert request.tags["solar/period"] == "2026-02-24"
                covered += retrain_partitions(settings).get_partition_keys_in_range(
                    dg.PartitionKeyRange(request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]))
        assert sorted(str(k) for k in covered) == sorted(f"{d}|2026-02-24" for d in devices)


def test_a_tick_over_10000_devices_stays_a_few_hundred_requests(settings):
    defs = build_definitions(settings)  # FLEET_BATCH_SIZE 50
    devices = [f"t{i:05d}" for i in range(10_000)]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(DEVICE_DIMENSION, devices)
        result = _tick(defs, instance, datetime(2026, 2, 24, 13, 0, tzinfo=UTC))
    ranges = _ranges(result.run_requests)
    assert len(ranges) == 200 and len({r.run_key for r in result.run_requests}) == 200
    positions = {d: i for i, d in enumerate(devices)}
    for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False):  # contiguous, no gaps
        assert positions[start] == positions[end] + 1
    assert ranges[0][0] == devices[0] and ranges[-1][1] == devices[-1]


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
