"""Everything Dagster loads, built from Settings: assets, jobs, schedules, sensors, resources."""

from __future__ import annotations

import dagster as dg

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.orchestration.alerts import build_run_failure_sensor
from solar_ml_pipeline.orchestration.assets import build_assets
from solar_ml_pipeline.orchestration.jobs import build_retrain_job, build_score_job
from solar_ml_pipeline.orchestration.resources import (
    ModelStoreResource,
    RetrainPolicy,
    StoreResource,
)
from solar_ml_pipeline.orchestration.schedules import build_retrain_schedule
from solar_ml_pipeline.orchestration.scores import build_score_assets, build_score_schedule
from solar_ml_pipeline.orchestration.sensors import build_device_sensor


def build_definitions(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=[*build_assets(settings), *build_score_assets(settings)],
        jobs=[build_retrain_job(settings), build_score_job(settings)],
        schedules=[build_retrain_schedule(settings), build_score_schedule(settings)],
        sensors=[build_device_sensor(settings), build_run_failure_sensor(settings)],
        resources={
            "store": StoreResource.from_settings(settings),
            "models": ModelStoreResource.from_settings(settings),
            "policy": RetrainPolicy.from_settings(settings),
        },
        # Every job, the implicit one behind the UI's Materialize buttons included, runs its
        # one retrain step in the run's own process: a subprocess per step would only add an
        # interpreter start, and there are no intermediates to hand between processes.
        executor=dg.in_process_executor,
    )

