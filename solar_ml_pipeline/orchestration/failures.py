"""Recording failed attempts: one `failed` run-log record per run, whoever notices first.

Three paths can notice a failure: the asset itself (most errors); the launcher of a foreground
run (`retraining.retrain_in_foreground`, for errors outside an asset body such as loading an
input); and, for runs the daemon launched, the run-failure sensor (which also sees runs whose
worker died). All write through `record_failed_attempt`, which never overwrites a record the
run already has.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.orchestration.batches import (
    run_asset_keys,
    run_attempts,
    run_partition_keys,
)
from solar_ml_pipeline.orchestration.partitions import (
    InvalidPeriod,
    retrain_partitions,
    training_window,
)
from solar_ml_pipeline.storage.base import RunLog
from solar_ml_pipeline.storage.run_records import (
    STATUS_FAILED,
    base_record,
    one_line,
    write_failure,
)

RETRAIN_OP = "retrain"  # the multi-asset step that retrains a run's devices
DEVICE_TAG = "dagster/partition/device"
PERIOD_TAG = "dagster/partition/period"


def record_failed_attempt(run_log: RunLog, settings: Settings, *, run_id: str, device_id: str,
                          period_key: str, days: int | None, message: str,
                          duration_s: float | None = None,
                          dagster_run_id: str | None = None) -> bool:
    """Write the failed record unless this run already has one; True when it wrote."""
    days_used = days or settings.retrain_days
    try:
        window = training_window(settings, device_id, period_key, days_used)
        start, end = window.start, window.end
    except InvalidPeriod:
        start = end = None
    record = base_record(
        run_id=run_id, device_id=device_id, partition_key=f"{device_id}|{period_key}",
        period=period_key, window_start=start, window_end=end, days_used=days_used,
        horizon_minutes=settings.horizon_minutes, model_type=settings.model_type,
        dagster_run_id=dagster_run_id,
    )
    return write_failure(run_log, record, message, duration_s)


def record_failed_run(run_log: RunLog, settings: Settings, instance: dg.DagsterInstance,
                      run: dg.DagsterRun, message: str, duration_s: float | None) -> list[str]:
    """For a failed run, a `failed` record for each of its attempts that has none (a worker
    that died mid-batch leaves the rest unrecorded); returns the devices whose attempt failed.

    Devices an earlier run of the retry chain already retrained are not this run's attempts.
    """
    asset_keys = run_asset_keys(run)
    if not asset_keys:
        return []  # a run that retrains nothing (scoring) has no attempts to record
    keys = run_partition_keys(run, retrain_partitions(settings), instance)
    failed = []
    for attempt in run_attempts(instance, run, keys, asset_keys):
        record_failed_attempt(run_log, settings, run_id=attempt.attempt_id,
                              device_id=attempt.device_id, period_key=attempt.period_key,
                              days=days_from_run_config(run.run_config), message=message,
                              duration_s=duration_s, dagster_run_id=run.run_id)
        record = run_log.get_run(attempt.attempt_id)
        if record is not None and record.get("status") == STATUS_FAILED:
            failed.append(attempt.device_id)
    return failed


def days_from_run_config(run_config: Any) -> int | None:
    """The `--days` override a manual run carried, if any."""
    try:
        value = run_config["ops"][RETRAIN_OP]["config"]["days"]
    except (KeyError, TypeError):
        return None
    return int(value) if value else None


def _innermost_message(error: Any) -> str | None:
    """Dagster wraps user errors ("Error occurred while executing op..."); the cause says why."""
    message = None
    while error is not None:
        message = error.message
        error = error.cause
    return message


def failure_message(failure_event: dg.DagsterEvent | None,
                    step_failures: list[dg.DagsterEvent]) -> str:
    """The most specific one-line reason a run failed.

    A step's `dg.Failure` description first (the asset's own words), then the step's error,
    then the run failure's error, then the run failure event's text (e.g. a dead worker).
    """
    for event in step_failures:
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            return one_line(data.user_failure_data.description)
        if data.error is not None:
            return one_line(_innermost_message(data.error) or data.error.message)
    if failure_event is not None:
        data = failure_event.event_specific_data
        error = getattr(data, "error", None)
        if error is not None:
            return one_line(_innermost_message(error) or error.message)
        if failure_event.message:
            return one_line(failure_event.message)
    return "the run failed without an error message; see the run's logs in the Dagster UI"
