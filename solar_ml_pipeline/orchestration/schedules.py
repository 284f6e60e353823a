"""The retrain schedule: at every period start, a few batch runs cover every known device."""


from collections.abc import Iterator

import dagster as dg

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.orchestration.batches import batch_run_requests
from solar_ml_pipeline.orchestration.jobs import RETRAIN_JOB
from solar_ml_pipeline.orchestration.partitions import (
    DEVICE_DIMENSION,
    period_cron,
    period_key_at,
)

RETRAIN_SCHEDULE = "retrain_schedule"


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
            f"that has just begun, in runs of up to {settings.fleet_batch_size} devices "
            "(FLEET_BATCH_SIZE)."
        ),
        tags={"domain": "solar-forecasting"},
    )
    def retrain_schedule(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest | dg.SkipReason]:
        period = period_key_at(settings, context.scheduled_execution_time)
        # Dagster's own order (insertion): a batch is a range of consecutive devices in it.
        devices = context.instance.get_dynamic_partitions(DEVICE_DIMENSION)
        if not devices:
            yield dg.SkipReason("no devices known yet: the device sensor adds them from the readings store")
            return
        yield from batch_run_requests(settings, devices, period, "schedule")

    return retrain_schedule
