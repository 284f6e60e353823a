"""The retrain schedule: at every period start, one run per known device."""


from collections.abc import Iterator

import dagster as dg

from solar_ml_pipeline.config import Settings, is_valid_device_id
from solar_ml_pipeline.orchestration.jobs import RETRAIN_JOB
from solar_ml_pipeline.orchestration.partitions import (
    DEVICE_DIMENSION,
    partition_key,
    period_cron,
    period_key_at,
)

RETRAIN_SCHEDULE = "retrain_schedule"


def run_key(device_id: str, period_key: str) -> str:
    """One launch per (device, period), however often a tick is evaluated."""
    return f"retrain:{device_id}:{period_key}"


def build_retrain_schedule(settings: Settings) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=RETRAIN_SCHEDULE,
        cron_schedule=period_cron(settings),
        execution_timezone=settings.timezone,
        job_name=RETRAIN_JOB,
        default_status=(dg.DefaultScheduleStatus.RUNNING if settings.retrain_enabled
                        else dg.DefaultScheduleStatus.STOPPED),
        description=(
            f"At every period start ({settings.retrain_time} {settings.timezone}, every "
            f"{settings.retrain_interval_hours} h) retrain every known device for the period "
            "that has just begun."
        ),
        tags={"domain": "solar-forecasting"},
    )
    def retrain_schedule(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest | dg.SkipReason]:
        period = period_key_at(settings, context.scheduled_execution_time)
        devices = [d for d in context.instance.get_dynamic_partitions(DEVICE_DIMENSION)
                   if is_valid_device_id(d)]
        if not devices:
            yield dg.SkipReason("no devices known yet: the device sensor adds them from the readings store")
            return
        for device_id in sorted(devices):
            yield dg.RunRequest(
                run_key=run_key(device_id, period),
                partition_key=partition_key(device_id, period),
                tags={"solar/device": device_id, "solar/period": period, "solar/trigger": "schedule"},
            )

    return retrain_schedule
