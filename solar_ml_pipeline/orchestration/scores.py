"""The `forecast_score` asset, its job and its schedule: score what served, then guard drift.

`forecast_score` of device x period P is the realised score of the forecasts served during
P (forecasting.scoring): it depends on P's `promotion_decision`, whose pointer move decided
what served. A period can be scored once its readings are in, so the score schedule runs
score_delay after each period start and scores the period that has just ended, in the same
device batches as the retrain schedule. After scoring a device the drift guard runs; a drift
is logged, recorded in the run log (kind `drift`) and POSTed to ALERT_WEBHOOK_URL.
"""


import math
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import dagster as dg

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.forecasting import scoring
from solar_ml_pipeline.forecasting.backtest import BacktestUnavailable
from solar_ml_pipeline.orchestration.alerts import post_alert, run_url
from solar_ml_pipeline.orchestration.assets import DECISION, OWNERS, partition_check
from solar_ml_pipeline.orchestration.batches import batch_run_requests, split_key
from solar_ml_pipeline.orchestration.jobs import SCORE_JOB
from solar_ml_pipeline.orchestration.partitions import (
    DEVICE_DIMENSION,
    period_bounds,
    period_cron,
    period_key_at,
    retrain_partitions,
)
from solar_ml_pipeline.orchestration.resources import ModelStoreResource, StoreResource
from solar_ml_pipeline.storage.run_records import one_line

SCORE_ASSET = "forecast_score"
# Its own group: "Materialize all" on `retraining` stays the four assets of a retrain, and
# scoring, which only makes sense for periods that have ended, is launched on its own.
SCORE_GROUP = "accountability"
SCORE_OP = "score"
SCORE_SCHEDULE = "score_schedule"
REALISED_SKILL_CHECK = "realised_skill"
# After a period ends its last forecast's target reading is due HORIZON + tolerance later;
# at least half an hour, and ten minutes past that, leaves trackers time for late readings.
MIN_SCORE_DELAY = timedelta(minutes=30)
LATE_READINGS = timedelta(minutes=10)
SHOWN_FAILURES = 5


def build_score_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    partitions_def = retrain_partitions(settings)
    spec = dg.AssetSpec(
        SCORE_ASSET, partitions_def=partitions_def, group_name=SCORE_GROUP, owners=OWNERS,
        tags={"domain": "solar-forecasting"}, skippable=True, deps=[DECISION],
        kinds={"python"}, description=(
            "The realised score of the forecasts served during the period (the model or the "
            "smart-persistence fallback that promotion_decision put in service), once its "
            "readings are in: all-hours and daylight MAE and RMSE, skill against persistence "
            "and smart persistence. Then the drift guard: a model losing to smart persistence "
            "for DRIFT_PERIODS scored periods in a row is replaced."))
    check = partition_check(
        REALISED_SKILL_CHECK, SCORE_ASSET, "The served forecasts beat both persistence and "
        "smart persistence in daylight over the period (warning).", partitions_def)

    @dg.multi_asset(
        name=SCORE_OP, specs=[spec], check_specs=[check], partitions_def=partitions_def,
        can_subset=True,  # makes the check optional: a device not scored reports none
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=settings.fleet_batch_size),
        description="Score each device of the run for its period, then apply the drift guard.",
    )
    def score(context: dg.AssetExecutionContext, store: StoreResource,
              models: ModelStoreResource) -> Iterator[Any]:
        run_log, registry = store.open(), models.registry()
        failed: list[str] = []
        for key in (str(k) for k in context.partition_keys):
            device_id, period = split_key(key)
            start, end = period_bounds(settings, period)
            try:
                record = scoring.score_period(settings, run_log, registry, device_id, period,
                                              start, end)
            except (scoring.ScoreNotReady, BacktestUnavailable) as exc:
                # Not over yet, or nothing served: nothing to score, and no failure either,
                # so "Materialize all" over the current period still succeeds.
                context.log.info(f"{key}: not scored: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - one device's failure is its own
                failed.append(f"{device_id}: {one_line(str(exc), 200)}")
                context.log.error(f"{key}: {exc}")
                continue
            yield dg.AssetMaterialization(SCORE_ASSET, partition=key,
                                          metadata=score_metadata(record))
            yield realised_skill_check(key, record)
            drift = scoring.guard_against_drift(settings, run_log, registry, device_id,
                                                dagster_run_id=context.run_id)
            if drift is not None:
                context.log.warning(f"{key}: {drift['decision_reason']}")
                _alert_drift(context, settings, drift)
        if failed:
            shown = "; ".join(failed[:SHOWN_FAILURES])
            raise dg.Failure(description=f"{len(failed)} device(s) not scored ({shown})")

    return [score]


def score_metadata(record: dict[str, Any]) -> dict[str, Any]:
    """Finite numbers as floats (the UI plots them over partitions) and what served."""
    metadata: dict[str, Any] = {
        name: float(value) for name, value in record.items()
        if name in scoring.SCORE_METRICS and isinstance(value, int | float)
        and not isinstance(value, bool) and math.isfinite(value)}
    metadata["served_by"] = dg.MetadataValue.json(record.get("served_by") or {})
    metadata["period_start"] = record["period_start"]
    return metadata


def realised_skill_check(key: str, record: dict[str, Any]) -> dg.AssetCheckEvaluation:
    skill, smart = record.get("daylight_skill"), record.get("daylight_skill_smart")
    losing = [name for name, value in (("persistence", skill), ("smart persistence", smart))
              if value is not None and value < 0]
    known = skill is not None and smart is not None
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(SCORE_ASSET), check_name=REALISED_SKILL_CHECK, partition=key,
        passed=known and not losing, severity=dg.AssetCheckSeverity.WARN,
        description=(None if known and not losing else
                     f"realised daylight skill below zero against {' and '.join(losing)}"
                     if losing else "no daylight forecast to score in this period"),
        metadata={"daylight_skill": float(skill) if skill is not None else 0.0,
                  "daylight_skill_smart": float(smart) if smart is not None else 0.0})


def _alert_drift(context: dg.AssetExecutionContext, settings: Settings,
                 drift: dict[str, Any]) -> None:
    if not settings.alert_webhook_url:
        return
    payload = {"kind": "drift", "device_id": drift["device_id"], "period": drift["period"],
               "run_id": context.run_id, "error": drift["decision_reason"],
               "run_url": run_url(context.run_id, settings.dagster_webserver_url),
               "failed_devices": [drift["device_id"]], "drift_run_id": drift["run_id"]}
    try:
        post_alert(settings.alert_webhook_url, payload)
    except Exception as exc:  # noqa: BLE001 - the drift stands whether or not the alert lands
        context.log.error(one_line(str(exc)))


def score_delay(settings: Settings) -> timedelta:
    """How long after a period ends the schedule scores it, in whole minutes."""
    epoch = datetime(2000, 1, 1)
    due = scoring.readings_in_at(settings, epoch) - epoch + LATE_READINGS
    return max(MIN_SCORE_DELAY, timedelta(minutes=math.ceil(due.total_seconds() / 60)))


def period_just_ended(settings: Settings, tick: datetime) -> str:
    """The period whose end the tick at `tick` (score_delay after a period start) follows."""
    return period_key_at(settings, tick - score_delay(settings) - timedelta(seconds=1))


def score_cron(settings: Settings) -> str:
    """The period starts' cron, score_delay later (RETRAIN_TIME moved on, modulo a day)."""
    hour, minute = settings.retrain_hour_minute
    moved = (hour * 60 + minute + int(score_delay(settings).total_seconds() // 60)) % (24 * 60)
    return period_cron(settings.with_overrides(retrain_time=f"{moved // 60:02d}:{moved % 60:02d}"))


def build_score_schedule(settings: Settings) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=SCORE_SCHEDULE, cron_schedule=score_cron(settings),
        execution_timezone=settings.timezone, job_name=SCORE_JOB,
        default_status=(dg.DefaultScheduleStatus.RUNNING if settings.retrain_enabled
                        else dg.DefaultScheduleStatus.STOPPED),
        description=(f"{int(score_delay(settings).total_seconds() // 60)} minutes after every period "
                     "start, score the period that has just ended for every known device and "
                     "apply the drift guard, in runs of up to FLEET_BATCH_SIZE devices."),
        tags={"domain": "solar-forecasting"},
    )
    def score_schedule(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest | dg.SkipReason]:
        try:
            period = period_just_ended(settings, context.scheduled_execution_time)
        except ValueError as exc:
            yield dg.SkipReason(f"no period has ended yet: {exc}")
            return
        devices = context.instance.get_dynamic_partitions(DEVICE_DIMENSION)
        if not devices:
            yield dg.SkipReason("no devices known yet: the device sensor adds them")
            return
        yield from batch_run_requests(settings, devices, period, "schedule", action="score")

    return score_schedule
