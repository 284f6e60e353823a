"""The `forecast_score` asset, its job and schedule: per-device realised scores in the UI, a
drift that moves the pointer and fires the alert, and runs that retrain nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

from solar_ml_pipeline.config import settings_from_env
from solar_ml_pipeline.orchestration.batches import RANGE_END_TAG, RANGE_START_TAG
from solar_ml_pipeline.orchestration.definitions import build_definitions
from solar_ml_pipeline.orchestration.failures import record_failed_run
from solar_ml_pipeline.orchestration.jobs import SCORE_JOB
from solar_ml_pipeline.orchestration.partitions import DEVICE_DIMENSION
from solar_ml_pipeline.orchestration.scores import (
    REALISED_SKILL_CHECK,
    SCORE_SCHEDULE,
    period_just_ended,
    score_cron,
)
from solar_ml_pipeline.readings.simulator import simulate_readings
from solar_ml_pipeline.readings.sites import DEFAULT_SITE
from solar_ml_pipeline_tests.e2e.webhook_receiver import WebhookReceiver
from solar_ml_pipeline_tests.forecasting.test_backtest import (
    DAY,
    DEVICE,
    FIRST_CUTOFF,
    replay_retrains,
)
from solar_ml_pipeline_tests.forecasting.test_scoring import FAULT

UNSERVED = "tracker02"  # has readings, never had a model: nothing to score


def _score_run(settings, instance, devices, period):
    job = build_definitions(settings).resolve_job_def(SCORE_JOB)
    tags = ({RANGE_START_TAG: f"{devices[0]}|{period}", RANGE_END_TAG: f"{devices[-1]}|{period}"}
            if len(devices) > 1 else {"dagster/partition": f"{devices[0]}|{period}"})
    return job.execute_in_process(instance=instance, raise_on_error=False, tags=tags)


@pytest.fixture
def scored_fleet(tmp_path):
    replay = replay_retrains(tmp_path / "home", [FIRST_CUTOFF], days_after=1)
    frame = simulate_readings(UNSERVED, start=FIRST_CUTOFF, end=FIRST_CUTOFF + DAY,
                              interval_minutes=5, seed=1, site=DEFAULT_SITE)
    replay.store.write_readings(frame.to_dict("records"))
    return replay


def test_a_batch_scores_each_served_device_with_plottable_metadata_and_a_check(scored_fleet):
    settings, store = scored_fleet.settings, scored_fleet.store
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(DEVICE_DIMENSION, [DEVICE, UNSERVED])
        result = _score_run(settings, instance, [DEVICE, UNSERVED], "2026-03-01")
        assert result.success
        (materialization,) = result.asset_materializations_for_node("score")
        assert materialization.partition == f"{DEVICE}|2026-03-01"
        metadata = materialization.metadata
        for name in ("daylight_mae", "daylight_skill", "daylight_skill_smart", "rmse"):
            assert isinstance(metadata[name].value, float)
        (check,) = result.get_asset_check_evaluations()
        assert (check.check_name, check.partition) == (REALISED_SKILL_CHECK, f"{DEVICE}|2026-03-01")
        assert check.passed == (metadata["daylight_skill"].value >= 0
                                and metadata["daylight_skill_smart"].value >= 0)
        # a run that retrains nothing leaves no retrain records, even when it failed
        run = instance.get_run_by_id(result.run_id)
        assert record_failed_run(store, settings, instance, run, "boom", 1.0) == []
    assert [s["period"] for s in store.list_scores(DEVICE)] == ["2026-03-01"]
    assert store.list_scores(UNSERVED) == []
    assert store.list_runs().total == 1  # the retrain's own record only


def test_the_current_period_is_not_scored_and_the_run_still_succeeds(scored_fleet):
    now_period = datetime.now(UTC).strftime("%Y-%m-%d")
    settings = scored_fleet.settings
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(DEVICE_DIMENSION, [DEVICE])
        result = _score_run(settings, instance, [DEVICE], now_period)
        assert result.success
        assert result.asset_materializations_for_node("score") == []
    assert scored_fleet.store.list_scores(DEVICE) == []


def test_a_drift_found_by_the_score_runs_moves_the_device_and_fires_the_alert(tmp_path,
                                                                          monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    replay = replay_retrains(tmp_path / "home", [FIRST_CUTOFF - DAY, FIRST_CUTOFF],
                             days_after=8, lost_string_from=FAULT)
    with WebhookReceiver() as receiver, dg.instance_for_test() as instance:
        settings = replay.settings.with_overrides(alert_webhook_url=receiver.url)
        instance.add_dynamic_partitions(DEVICE_DIMENSION, [DEVICE])
        for day in range(7):
            period = (FIRST_CUTOFF + day * DAY).strftime("%Y-%m-%d")
            assert _score_run(settings, instance, [DEVICE], period).success
        (alert,) = receiver.payloads()
    assert (alert["kind"], alert["device_id"]) == ("drift", DEVICE)
    assert alert["error"].startswith("drift: ")
    drift = replay.store.get_run(alert["drift_run_id"])
    assert drift["kind"] == "drift" and drift["period"] == alert["period"]
    assert replay.registry.pointer_history(DEVICE)[-1]["move"] == "drift"


def test_the_score_schedule_follows_each_period_start_and_scores_the_period_just_ended():
    settings = settings_from_env({"PERIODS_START": "2026-01-01"})
    assert score_cron(settings) == "0 19 * * *"  # 18:30 period starts, 30 minutes later
    tick = datetime(2026, 3, 2, 13, 30, tzinfo=UTC)  # 19:00 Asia/Colombo
    assert period_just_ended(settings, tick) == "2026-03-01"
    hourly = settings_from_env({"PERIODS_START": "2026-01-01", "HORIZON_MINUTES": "60"})
    assert score_cron(hourly) == "52 19 * * *"  # 60 min + 12 min tolerance + 10 late, from 18:30
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(DEVICE_DIMENSION, ["a", "b", "c"])
        defs = build_definitions(settings)
        schedule = defs.resolve_schedule_def(SCORE_SCHEDULE)
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=tick,
                                            repository_def=defs.get_repository_def())
        requests = list(schedule.evaluate_tick(context).run_requests)
    assert [r.run_key for r in requests] == ["score:2026-03-01:a..b", "score:c:2026-03-01"]
