"""The jobs: retrain (the four retraining assets) and score (forecast_score), each for one
partition or a batch of devices."""

from __future__ import annotations

import dagster as dg

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.orchestration.partitions import retrain_partitions

RETRAIN_JOB = "retrain_job"
RETRAIN_SELECTION = ["raw_readings", "feature_frame", "model_version", "promotion_decision"]
SCORE_JOB = "score_job"
SCORE_SELECTION = ["forecast_score"]


def build_retrain_job(settings: Settings) -> dg.UnresolvedAssetJobDefinition:
    # No job-level failure hook: it added a skipped-hook event per step to every successful
    # run (about 2 % of a 7-day retrain) to cover errors outside an asset body, which the
    # foreground launcher and the run-failure sensor record anyway (failures.py).
    return dg.define_asset_job(
        RETRAIN_JOB,
        selection=RETRAIN_SELECTION,
        partitions_def=retrain_partitions(settings),
        description=(
            "Retrain each device of the run for its period: read its window, build features, "
            "train and store a version, decide promotion and log the attempt."
        ),
        tags={"domain": "solar-forecasting"},
    )


def build_score_job(settings: Settings) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        SCORE_JOB, selection=SCORE_SELECTION, partitions_def=retrain_partitions(settings),
        description="Score the forecasts each device of the run served in its period, then "
                    "guard against drift.",
        tags={"domain": "solar-forecasting"})
