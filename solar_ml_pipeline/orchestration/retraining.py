"""Launching the retrain job for one (device, period) outside the schedule: CLI and API.

Runs go through the same asset job as the schedule and are recorded in the DAGSTER_HOME
instance, so they show in the UI beside scheduled ones.
"""

from __future__ import annotations

import functools
import logging
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import dagster as dg
from dagster._core.storage.tags import RESUME_RETRY_TAG, TAGS_TO_MAYBE_OMIT_ON_RETRY

from solar_ml_pipeline.config import Settings, validate_device_id
from solar_ml_pipeline.orchestration.batches import (
    run_asset_keys,
    run_attempts,
    run_partition_keys,
)
from solar_ml_pipeline.orchestration.failures import (
    RETRAIN_OP,
    failure_message,
    record_failed_attempt,
)
from solar_ml_pipeline.orchestration.instance import ensure_dagster_home
from solar_ml_pipeline.orchestration.jobs import RETRAIN_JOB
from solar_ml_pipeline.orchestration.partitions import (
    DEVICE_DIMENSION,
    partition_key,
    period_bounds,
    period_key_at,
    retrain_partitions,
)
from solar_ml_pipeline.storage.run_records import one_line, utc_now

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainRequest:
    device_id: str
    period_key: str
    days: int | None = None


def resolve_request(settings: Settings, device_id: str, period_key: str | None = None,
                    days: int | None = None) -> RetrainRequest:
    """Validate what the user asked for before anything is launched or written."""
    validate_device_id(device_id)
    if days is not None and days < 1:
        raise ValueError(f"invalid --days {days}: expected a whole number of days, at least 1")
    period = period_key if period_key is not None else period_key_at(settings, utc_now())
    period_bounds(settings, period)  # raises InvalidPeriod with the accepted form
    return RetrainRequest(device_id, period, days)


def run_config_for(request: RetrainRequest, verbose: bool = False) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if request.days is not None:
        config["ops"] = {RETRAIN_OP: {"config": {"days": request.days}}}
    if not verbose:
        config["loggers"] = {"console": {"config": {"log_level": "CRITICAL"}}}
    return config


def run_tags(request: RetrainRequest, trigger: str) -> dict[str, str]:
    return {"solar/device": request.device_id, "solar/period": request.period_key,
            "solar/trigger": trigger}


def add_device_partition(instance: dg.DagsterInstance, device_id: str) -> None:
    """Add the device's partition; another process adding it at the same moment is no error.

    Dagster's SQLite storage checks then inserts, so two retrains of a new device started
    together can both insert: the loser's unique-key error is harmless once the key exists.
    """
    if instance.has_dynamic_partition(DEVICE_DIMENSION, device_id):
        return
    try:
        instance.add_dynamic_partitions(DEVICE_DIMENSION, [device_id])
    except Exception:
        if not instance.has_dynamic_partition(DEVICE_DIMENSION, device_id):
            raise


@functools.lru_cache(maxsize=4)
def _retrain_job(settings: Settings) -> dg.JobDefinition:
    """Built once per process and settings: the demo, the API and benchmarks retrain many times."""
    from solar_ml_pipeline.orchestration.definitions import build_definitions

    return build_definitions(settings).resolve_job_def(RETRAIN_JOB)


def retrain_in_foreground(settings: Settings, request: RetrainRequest, *, verbose: bool = False,
                          trigger: str = "cli", run_id: str | None = None) -> str:
    """Run the retrain job for one partition in this process; returns the Dagster run id.

    The outcome (success or failure) is in the run log under that id. `run_id` chooses the
    id up front, so a caller that stops waiting (the API's 504) can still name the run.
    """
    ensure_dagster_home(settings)
    job = _retrain_job(settings)
    with dg.DagsterInstance.get() as instance:
        add_device_partition(instance, request.device_id)
        result = job.execute_in_process(
            run_config=run_config_for(request, verbose),
            instance=instance,
            partition_key=partition_key(request.device_id, request.period_key),
            tags=run_tags(request, trigger),
            raise_on_error=False,
            **({"run_id": run_id} if run_id else {}),
        )
    if not result.success:
        _record_failure(settings, request, result)
    return result.run_id


def _record_failure(settings: Settings, request: RetrainRequest,
                    result: dg.ExecuteInProcessResult) -> None:
    """The failed record for an error no asset body caught (e.g. loading an input); a run the
    asset already recorded keeps its record. No daemon sensor sees in-process runs."""
    from solar_ml_pipeline.storage import open_store

    events = result.all_events
    run_failure = next((e for e in events if e.event_type == dg.DagsterEventType.RUN_FAILURE),
                       None)
    message = failure_message(run_failure, [e for e in events if e.is_step_failure])
    try:
        with closing(open_store(settings)) as store:
            record_failed_attempt(store, settings, run_id=result.run_id,
                                  device_id=request.device_id, period_key=request.period_key,
                                  days=request.days, message=message)
    except Exception as exc:  # noqa: BLE001 - the run failed either way; say that, not this
        logger.warning(f"could not record the failed attempt of run {result.run_id}: "
                       f"{one_line(str(exc))}")



class NothingToRetry(ValueError):
    """The run named for a retry is not a failed retrain run."""


class DagsterRunNotFound(LookupError):
    """The Dagster instance holds no run with that id."""


def retrain_job_from_env() -> dg.JobDefinition:
    """The retrain job as a re-execution reconstructs it (settings from the environment)."""
    from solar_ml_pipeline.config import load_settings

    return _retrain_job(load_settings())


def retry_tags(parent: dg.DagsterRun, trigger: str) -> dict[str, str]:
    """The parent's tags (its partition or device range), marked as a retry from failure."""
    kept = {k: v for k, v in parent.tags.items() if k not in TAGS_TO_MAYBE_OMIT_ON_RETRY}
    return {**kept, RESUME_RETRY_TAG: "true", "solar/trigger": trigger}


def failed_run(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun:
    run = instance.get_run_by_id(run_id)
    if run is None:
        raise DagsterRunNotFound(f"no Dagster run {run_id!r} in this Dagster instance: "
                             "give the id of a failed run (solar-ml runs list --status failed)")
    if run.job_name not in (RETRAIN_JOB, "__ASSET_JOB"):
        raise NothingToRetry(f"run {run_id} is a run of {run.job_name}, not a retrain run")
    if run.status != dg.DagsterRunStatus.FAILURE:
        raise NothingToRetry(f"run {run_id} is {run.status.value.lower()}, not failed: "
                             "only a failed run has devices to retry")
    return run


def retry_failed_in_foreground(settings: Settings, run_id: str, *,
                               verbose: bool = False) -> tuple[str, list[str]]:
    """Re-execute a failed run from failure in this process, as the UI's "Re-execute from
    failure" does: only its devices that did not finish retrain. Returns the new run id and
    the run-log ids of the attempts it made."""
    ensure_dagster_home(settings)
    with dg.DagsterInstance.get() as instance:
        parent = failed_run(instance, run_id)
        run_config = dict(parent.run_config or {})
        if not verbose:
            run_config["loggers"] = {"console": {"config": {"log_level": "CRITICAL"}}}
        result = dg.execute_job(
            dg.reconstructable(retrain_job_from_env), instance=instance, run_config=run_config,
            tags=retry_tags(parent, "cli-retry"),
            reexecution_options=dg.ReexecutionOptions.from_failure(run_id, instance),
        )
        retry = instance.get_run_by_id(result.run_id)
        keys = run_partition_keys(retry, retrain_partitions(settings), instance)
        attempts = run_attempts(instance, retry, keys, run_asset_keys(retry))
    return result.run_id, [attempt.attempt_id for attempt in attempts]
