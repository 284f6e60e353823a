"""Operator actions shared by the CLI and the HTTP API, so each is written once.

Each function validates its input first (InvalidRequest, InvalidDeviceId, InvalidPeriod,
InvalidVersion: the CLI exits 2, the API answers 422), then does the work and returns a
JSON-ready dict in the original system's shape (datetimes as ISO 8601 with Z, no NaN).
"Not found" is UnknownRun, NoCurrentModel or VersionNotFound (CLI exit 1, API 404).
"""

from __future__ import annotations

import math
import os
import re
import sys
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from solar_ml_pipeline.config import Settings, validate_device_id
from solar_ml_pipeline.model_store.registry import (
    FALLBACK_FIGURES,
    SERVING_FALLBACK,
    SERVING_MODEL,
    ModelRegistry,
    ModelStoreError,
    is_fallback,
    serving_of,
    validate_version,
)
from solar_ml_pipeline.storage import Store, StoreUnavailable
from solar_ml_pipeline.storage.run_records import (
    KIND_ROLLBACK,
    STATUS_FAILED,
    STATUS_SUCCESS,
    base_record,
    iso_z,
    public_run,
    utc_now,
)

RUN_STATUSES = (STATUS_SUCCESS, STATUS_FAILED)
DEFAULT_LIMIT = 20
MAX_LIMIT = 500
# Dagster run ids are UUIDs; records imported from the original system may use other ids.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
# The daemon launches a queued run through the code location of this name in its workspace:
# `dagster dev -m solar_ml_pipeline.definitions` (and `solar-ml ui`) name it after the module.
DEFINITIONS_MODULE = "solar_ml_pipeline.definitions"
CODE_LOCATION = DEFINITIONS_MODULE


class InvalidRequest(ValueError):
    """Input outside what an operation accepts; the message names the field and the fix."""


class UnknownRun(LookupError):
    """No run record has that run id."""

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0]) if self.args else "unknown run"


class RetrainFailed(RuntimeError):
    """The retrain job ended without leaving its run-log record."""


# --- JSON -------------------------------------------------------------------------------------


def json_ready(value: Any) -> Any:
    """Datetimes as ISO 8601 with Z, NaN/inf as None: what both the CLI and the API print."""
    if isinstance(value, datetime):
        return iso_z(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _run_out(record: Mapping[str, Any]) -> dict[str, Any]:
    return json_ready(public_run(record))


# --- run log ----------------------------------------------------------------------------------


def validate_run_id(run_id: object) -> str:
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        raise InvalidRequest(
            f"invalid run id {repr(run_id)[:80]}: expected the run_id shown by `solar-ml runs list`"
        )
    return run_id


def validate_page(limit: int, skip: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"invalid limit {limit!r}: expected 1 to {MAX_LIMIT}")
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
        raise InvalidRequest(f"invalid skip {skip!r}: expected 0 or more")


def list_runs(store: Store, *, device_id: str | None = None, status: str | None = None,
              promoted: bool | None = None, limit: int = DEFAULT_LIMIT,
              skip: int = 0) -> dict[str, Any]:
    """`{"total", "runs"}` newest first, as the original GET /api/ml/runs."""
    if device_id is not None:
        validate_device_id(device_id)
    if status is not None and status not in RUN_STATUSES:
        raise InvalidRequest(f"invalid status {status!r}: expected {' or '.join(RUN_STATUSES)}")
    validate_page(limit, skip)
    page = store.list_runs(device_id=device_id, status=status, promoted=promoted,
                           limit=limit, skip=skip)
    return {"total": page.total, "runs": [_run_out(r) for r in page.runs]}


def show_run(store: Store, run_id: str) -> dict[str, Any]:
    validate_run_id(run_id)
    record = store.get_run(run_id)
    if record is None:
        raise UnknownRun(f"no run with id {run_id!r}: see `solar-ml runs list`")
    return _run_out(record)


def delete_run(store: Store, run_id: str) -> dict[str, Any]:
    """Deletes the run-log record only; the model version and the Dagster run stay."""
    validate_run_id(run_id)
    if not store.delete_run(run_id):
        raise UnknownRun(f"no run with id {run_id!r}, nothing deleted: see `solar-ml runs list`")
    return {"success": True, "message": f"Run {run_id} deleted", "run_id": run_id}


# --- models -----------------------------------------------------------------------------------


def registry_for(settings: Settings) -> ModelRegistry:
    return ModelRegistry(settings.model_dir, lock_url=settings.dagster_pg_url)


POINTER_EXTRAS = ("previous_version", "sha256", "metadata_path", "model_type", "feature_set",
                  "features", "trained_at", "partition_key", "horizon_minutes", "reason",
                  "cold_start", "trained_on")


def current_model(settings: Settings, device_id: str) -> dict[str, Any]:
    """The original GET /api/ml/model/current shape, plus the pointer's other fields.

    `serving` says what forecasts for the device: "model", "smart_persistence" (no model
    beats persistence: `model_exists` false, `reason` why, the gate's figures) or None.
    """
    validate_device_id(device_id)
    registry = registry_for(settings)
    pointer = registry.read_pointer(device_id)
    if pointer is None:
        return {"model_exists": False, "device_id": device_id, "serving": None, "version": None,
                "updated_at": None, "model_path": None, "metrics": None}
    if is_fallback(pointer):
        fallback = {"model_exists": False, "device_id": device_id, "serving": SERVING_FALLBACK,
                    "version": None, "updated_at": pointer["updated_at"], "model_path": None,
                    "metrics": None, "reason": pointer["reason"],
                    "previous_version": pointer.get("previous_version"),
                    "challenger_version": pointer.get("challenger_version"),
                    "cutoff": pointer.get("cutoff")}
        fallback.update({name: pointer.get(name) for name in FALLBACK_FIGURES})
        return json_ready(fallback)
    shown: dict[str, Any] = {
        "model_exists": True,
        "device_id": device_id,
        "serving": SERVING_MODEL,
        "version": pointer["version"],
        "updated_at": pointer.get("updated_at"),
        "model_path": str(registry.model_path(device_id, pointer["version"])),  # on this host
        "metrics": pointer.get("metrics") or {},
    }
    shown.update({name: pointer.get(name) for name in POINTER_EXTRAS})
    return json_ready(shown)


def list_models(settings: Settings, device_id: str) -> dict[str, Any]:
    """Every complete version of a device, newest first, marking current and previous."""
    validate_device_id(device_id)
    registry = registry_for(settings)
    pointer = registry.read_pointer(device_id)
    current = pointer["version"] if pointer else None  # None too on smart persistence
    previous = pointer.get("previous_version") if pointer else None
    versions = []
    for meta in reversed(registry.list_versions(device_id)):
        metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
        versions.append({
            "version": meta["version"],
            "trained_at": meta.get("trained_at"),
            "period": meta.get("period"),
            "partition_key": meta.get("partition_key"),
            "model_type": meta.get("model_type"),
            "rows_used": meta.get("rows_used"),
            "metrics": metrics,
            "size_bytes": meta.get("size_bytes"),
            "sha256": meta.get("sha256"),
            "current": meta["version"] == current,
            "previous": meta["version"] == previous,
        })
    serving = serving_of(pointer)
    return json_ready({"device_id": device_id, "serving": serving, "current_version": current,
                       "previous_version": previous, "versions": versions})


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def rollback_record(settings: Settings, device_id: str, pointer: Mapping[str, Any],
                    meta: Mapping[str, Any], replaced: str | None,
                    run_id: str) -> dict[str, Any]:
    """The run-log entry of a rollback: who serves now, with that version's own metrics.

    `replaced`: what served before (a version, or SERVING_FALLBACK)."""
    metrics = pointer.get("metrics") or {}
    record = base_record(
        run_id=run_id, device_id=device_id, partition_key=None, period=None,
        window_start=_parse_time(meta.get("window_start")),
        window_end=_parse_time(meta.get("window_end")),
        days_used=meta.get("days_used"),
        horizon_minutes=int(meta.get("horizon_minutes") or settings.horizon_minutes),
        model_type=meta.get("model_type"), trained_at=utc_now(),
    )
    record.update(
        kind=KIND_ROLLBACK, status=STATUS_SUCCESS, error=None, promoted=True,
        version=pointer["version"],
        model_path=str(registry_for(settings).model_path(device_id, pointer["version"])),
        rows_used=meta.get("rows_used"), features=meta.get("features"),
        mae=metrics.get("mae"), rmse=metrics.get("rmse"), r2=metrics.get("r2"),
        train_samples=metrics.get("train_samples"), test_samples=metrics.get("test_samples"),
        persistence_mae=metrics.get("persistence_mae"), skill=metrics.get("skill"),
        champion_version=None if replaced == SERVING_FALLBACK else replaced,
        decision_reason=f"Rollback by operator: {replaced} -> {pointer['version']}",
        serving=SERVING_MODEL,
        duration_s=0.0, finished_at=utc_now(),
    )
    return record


def rollback_model(settings: Settings, store: Store, device_id: str,
                   to: str | None = None) -> dict[str, Any]:
    """Move the pointer back (or to `to`), sha256-verified under the device lock, and log it.

    As with promotion, a pointer move stands only once the run log holds it: if the record
    cannot be written, the pointer is moved back (still under the lock) and the error raised.
    From a smart-persistence fallback, the model it displaced serves again.
    """
    validate_device_id(device_id)
    if to is not None:
        validate_version(to)
    store.ping()  # the usual outage is refused before anything moves
    registry = registry_for(settings)
    with registry.device_lock(device_id):  # reentrant: rollback() takes it too
        try:
            before = registry.read_pointer(device_id)
        except ModelStoreError:
            before = None  # a corrupt pointer: rollback(to=...) repairs it, or says why not
        run_id = str(uuid.uuid4())
        pointer = registry.rollback(device_id, to, run_id=run_id)
        replaced = SERVING_FALLBACK if is_fallback(before) else pointer.get("previous_version")
        record = rollback_record(settings, device_id, pointer,
                                 registry.read_meta(device_id, pointer["version"]), replaced,
                                 run_id)
        try:
            store.upsert_run(record)
        except Exception as exc:
            if before is None:  # a repaired pointer: there is nothing sound to go back to
                raise StoreUnavailable(
                    f"{device_id} now serves {pointer['version']}, but the run log could not "
                    f"record the rollback ({exc})"
                ) from exc
            # The pointer as it was, previous version included: a second rollback to undo
            # the first would make the version just left the rollback target.
            registry.restore_pointer(device_id, before)
            raise StoreUnavailable(
                f"rollback of {device_id} to {pointer['version']} undone: the run log could not "
                f"record it ({exc}); retry when the store is back"
            ) from exc
    return json_ready({
        "success": True, "device_id": device_id, "version": pointer["version"],
        "previous_version": pointer.get("previous_version"),
        "replaced": replaced,
        "updated_at": pointer.get("updated_at"), "run_id": record["run_id"],
    })


def prune_models(settings: Settings, *, keep: int | None = None, dry_run: bool = False,
                 device_id: str | None = None) -> dict[str, Any]:
    """Retention per device: newest `keep` (default KEEP_VERSIONS) plus current and previous."""
    keep = settings.keep_versions if keep is None else keep
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise InvalidRequest(f"invalid keep {keep!r}: expected a whole number, at least 1")
    if device_id is not None:
        validate_device_id(device_id)
    report = registry_for(settings).prune(keep, dry_run=dry_run, device_id=device_id)
    return json_ready(report.to_dict())


# --- retraining -------------------------------------------------------------------------------


def retrain_dry_run(settings: Settings, store: Store, request: Any) -> dict[str, Any]:
    """What `retrain` would do, and whether it can: no model, no run record, no Dagster write.

    `ready` is False (with `problem`) when the window lacks MIN_TRAINING_ROWS clean rows.
    """
    from solar_ml_pipeline.forecasting.attempt import no_data_message
    from solar_ml_pipeline.orchestration.partitions import training_window
    from solar_ml_pipeline.readings.cleaning import clean_readings

    window = training_window(settings, request.device_id, request.period_key, request.days)
    problem = None
    if settings.backend == "sqlite" and not settings.sqlite_path.exists():
        rows = 0  # opening the store would create it: a dry run writes nothing
        problem = (f"the SQLite store {settings.sqlite_path} does not exist yet: add readings "
                   "with `solar-ml simulate` or `solar-ml import` (or check SOLAR_ML_HOME)")
    else:
        store.ping()
        clean, _ = clean_readings(store.read_window(request.device_id, window.start, window.end))
        rows = len(clean)
        if rows < settings.min_training_rows:
            problem = no_data_message(request.device_id, window.start, window.end, rows)
    serving = None
    try:
        pointer = registry_for(settings).read_pointer(request.device_id)
        current = pointer["version"] if pointer else None
        serving = serving_of(pointer)
    except Exception as exc:  # noqa: BLE001 - a broken pointer is reported, not fatal to a dry run
        current = f"unreadable: {exc}"
    return json_ready({
        "dry_run": True, "ready": problem is None, "problem": problem,
        "device_id": request.device_id, "period": request.period_key,
        "window_start": window.start, "window_end": window.end,
        "days": request.days or settings.retrain_days, "rows": rows,
        "min_training_rows": settings.min_training_rows, "model_type": settings.model_type,
        "feature_set": settings.feature_set, "horizon_minutes": settings.horizon_minutes,
        "backend": settings.backend, "model_dir": settings.model_dir,
        "current_version": current, "serving": serving,
    })


def retrain_now(settings: Settings, store: Store, request: Any, *, verbose: bool = False,
                trigger: str = "cli", run_id: str | None = None) -> dict[str, Any]:
    """Run the retrain job in this process and return its run record (success or failed);
    `run_id` names the run before it starts (see retrain_in_foreground)."""
    from solar_ml_pipeline.orchestration.retraining import retrain_in_foreground

    store.ping()
    run_id = retrain_in_foreground(settings, request, verbose=verbose, trigger=trigger,
                                   run_id=run_id)
    record = store.get_run(run_id)
    if record is None:
        raise RetrainFailed(f"retrain run {run_id} ended without a run-log record; "
                            "see the run in the Dagster UI")
    return _run_out(record)


def retry_failed(settings: Settings, store: Store, run_id: str, *,
                 verbose: bool = False) -> dict[str, Any]:
    """Retry the failed devices of a failed run in this process; their run records."""
    from solar_ml_pipeline.orchestration.retraining import (
        DagsterRunNotFound,
        NothingToRetry,
        retry_failed_in_foreground,
    )

    store.ping()
    try:
        new_run_id, attempt_ids = retry_failed_in_foreground(settings, run_id, verbose=verbose)
    except NothingToRetry as exc:
        raise InvalidRequest(str(exc)) from None
    except DagsterRunNotFound as exc:
        raise UnknownRun(str(exc)) from None
    records = [store.get_run(attempt) for attempt in attempt_ids]
    return {"run_id": new_run_id, "retried_from": run_id,
            "attempts": [_run_out(r) for r in records if r is not None]}


def queue_retrain(settings: Settings, store: Store, request: Any, *,
                  trigger: str = "cli") -> dict[str, Any]:
    """Queue the retrain run on the Dagster instance; the daemon's run queue launches it.

    The run is built as the UI would build it (remote job origin in the CODE_LOCATION code
    location, partition tags), so the daemon's QueuedRunCoordinator applies the concurrency
    limits and launches it through the code location of the same name in its workspace.
    """
    import dagster as dg
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

    from solar_ml_pipeline.orchestration.instance import ensure_dagster_home
    from solar_ml_pipeline.orchestration.jobs import RETRAIN_JOB
    from solar_ml_pipeline.orchestration.partitions import partition_key, retrain_partitions
    from solar_ml_pipeline.orchestration.retraining import (
        add_device_partition,
        run_config_for,
        run_tags,
    )

    store.ping()
    ensure_dagster_home(settings)
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name=DEFINITIONS_MODULE,
                             working_directory=os.getcwd()),
        location_name=CODE_LOCATION,
    )
    key = partition_key(request.device_id, request.period_key)
    run_config = run_config_for(request, verbose=True)  # the daemon's run keeps full logs
    with dg.DagsterInstance.get() as instance:
        add_device_partition(instance, request.device_id)
        with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as context:
            workspace = context.create_request_context()
            location = workspace.get_code_location(CODE_LOCATION)
            repo = next(r for r in location.get_repositories().values() if r.has_job(RETRAIN_JOB))
            job = repo.get_full_job(RETRAIN_JOB)
            tags = {**job.tags, **retrain_partitions(settings).get_tags_for_partition_key(key),
                    **run_tags(request, trigger)}
            plan = location.get_execution_plan(job, run_config, step_keys_to_execute=None,
                                               known_state=None, instance=instance)
            snapshot = plan.execution_plan_snapshot
            run = instance.create_run(
                job_name=RETRAIN_JOB, run_id=None, run_config=run_config, status=None,
                tags=tags, root_run_id=None, parent_run_id=None,
                step_keys_to_execute=snapshot.step_keys_to_execute,
                execution_plan_snapshot=snapshot, job_snapshot=job.job_snapshot,
                parent_job_snapshot=job.parent_job_snapshot, asset_selection=None,
                asset_check_selection=None, resolved_op_selection=job.resolved_op_selection,
                op_selection=None, remote_job_origin=job.get_remote_origin(),
                job_code_origin=job.get_python_origin(), asset_graph=repo.asset_graph,
            )
            submitted = instance.submit_run(run.run_id, workspace)
    return {"run_id": submitted.run_id, "status": submitted.status.value,
            "device_id": request.device_id, "period": request.period_key,
            "days": request.days or settings.retrain_days}


# --- health -----------------------------------------------------------------------------------


def health(settings: Settings, store: Store) -> dict[str, Any]:
    store.ping()
    return {"status": "ok", "store": settings.backend}
