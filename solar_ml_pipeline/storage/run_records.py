"""The `model_runs` record: one per attempt, with the original system's fields and ours.

Built here as plain dicts so the assets, the failure hook, the failure sensor, the CLI and the
API all write and read the same shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

# Metrics beyond the original's, recorded when the frame had a site (daylight and baselines).
EXTRA_METRIC_FIELDS = (
    "rmse_skill", "smart_persistence_mae", "skill_smart", "daylight_mae",
    "daylight_persistence_mae", "daylight_skill", "daylight_skill_smart",
    "interval_coverage", "interval_width",
)
RUN_FIELDS = (
    # original system
    "run_id", "device_id", "trained_at", "days_used", "horizon_minutes", "rows_used",
    "mae", "rmse", "r2", "train_samples", "test_samples", "features", "model_path",
    "status", "error", "promoted",
    # this project
    "partition_key", "window_start", "window_end", "version", "model_type",
    "persistence_mae", "skill", "champion_version", "champion_mae", "decision_reason",
    "duration_s", "quality_flags", "usable_share", *EXTRA_METRIC_FIELDS,
)
STATUS_SUCCESS = "success"
STATUS_FAILED = "failed"
KIND_RETRAIN = "retrain"
KIND_ROLLBACK = "rollback"
KIND_DRIFT = "drift"


def utc_now() -> datetime:
    return datetime.now(UTC)


def base_record(*, run_id: str, device_id: str, partition_key: str | None, period: str | None,
                window_start: datetime | None, window_end: datetime | None,
                days_used: float | None, horizon_minutes: int, model_type: str | None,
                trained_at: datetime | None = None,
                dagster_run_id: str | None = None) -> dict[str, Any]:
    """Every field present (None until known), so a record always has the documented shape."""
    record: dict[str, Any] = dict.fromkeys(RUN_FIELDS)
    record.update(
        run_id=run_id,
        device_id=device_id,
        trained_at=trained_at or utc_now(),
        days_used=days_used,
        horizon_minutes=horizon_minutes,
        partition_key=partition_key,
        period=period,
        window_start=window_start,
        window_end=window_end,
        model_type=model_type,
        promoted=False,
        kind=KIND_RETRAIN,
        dagster_run_id=dagster_run_id or run_id,
    )
    return record


def attempt_id(dagster_run_id: str, device_id: str, period_key: str, *, batch: bool) -> str:
    """The run-log key of one attempt: the Dagster run id when the run retrains one partition
    (so `runs show` takes the id the UI shows), else run id, device and period."""
    return f"{dagster_run_id}:{device_id}:{period_key}" if batch else dagster_run_id


def failed_fields(error: str, duration_s: float | None = None) -> dict[str, Any]:
    return {"status": STATUS_FAILED, "error": one_line(error), "promoted": False,
            "duration_s": duration_s, "finished_at": utc_now()}


def write_failure(run_log: Any, record: dict[str, Any], message: str,
                  duration_s: float | None = None) -> bool:
    """Write a `failed` record unless its run already has a final one; True when it wrote.

    Whoever notices a failure first (the step, the launcher, the failure sensor) calls this,
    so an attempt never gets two records and a success is never overwritten."""
    existing = run_log.get_run(record["run_id"])
    if existing is not None and existing.get("status") in (STATUS_FAILED, STATUS_SUCCESS):
        return False
    run_log.upsert_run({**record, **failed_fields(message, duration_s)})
    return True


def one_line(message: str, limit: int = 500) -> str:
    """Errors are stored and shown as one line; tracebacks belong in the Dagster run logs."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def public_run(record: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ready copy of a record (datetimes as ISO 8601 with Z) for CLI and API output."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        out[key] = iso_z(value) if isinstance(value, datetime) else value
    return out


def iso_z(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
