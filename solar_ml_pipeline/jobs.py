"""The one retrain job: the four retraining assets of one device x period partition."""

from __future__ import annotations

import dagster as dg

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.failures import (
    DEVICE_TAG,
    PERIOD_TAG,
    days_from_run_config,
    record_failed_attempt,
)
from solar_ml_pipeline.partitions import retrain_partitions

RETRAIN_JOB = "retrain_job"
RETRAIN_SELECTION = ["raw_readings", "feature_frame", "model_version", "promotion_decision"]


def build_failure_hook(settings: Settings) -> dg.HookDefinition:
    @dg.failure_hook(name="record_failed_attempt", required_resource_keys={"store"})
    def record_failed_attempt_hook(context: dg.HookContext) -> None:
        """Covers failures outside an asset body (e.g. loading an input)."""
        run = context.instance.get_run_by_id(context.run_id)
        if run is None or DEVICE_TAG not in run.tags or PERIOD_TAG not in run.tags:
            return
        error = context.op_exception
        message = (error.description if isinstance(error, dg.Failure) and error.description
                   else str(error) if error else f"step {context.op.name} failed")
        record_failed_attempt(
            context.resources.store.open(), settings, run_id=context.run_id,
            device_id=run.tags[DEVICE_TAG], period_key=run.tags[PERIOD_TAG],
            days=days_from_run_config(run.run_config), message=message,
        )

    return record_failed_attempt_hook


def build_retrain_job(settings: Settings) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        RETRAIN_JOB,
        selection=RETRAIN_SELECTION,
        partitions_def=retrain_partitions(settings),
        description=(
            "Retrain one device for one period: read its window, build features, train and "
            "store a version, decide promotion and log the attempt."
        ),
        tags={"domain": "solar-forecasting"},
        hooks={build_failure_hook(settings)},
        # One process per run: the steps share one worker (and its warm imports) instead of
        # paying a subprocess per step; runs still isolate from each other.
        executor_def=dg.in_process_executor,
    )
