"""Batches: one Dagster run retrains many devices of one period in one warm process.

A batch is a ranged run over the device dimension (Dagster's `asset_partition_range_*` tags,
the same runs `BackfillPolicy.multi_run` makes for UI backfills), so a tick launches a few
runs instead of one per device, and each run pays one interpreter start for all its devices.
A range covers consecutive devices in the order Dagster keeps them (insertion order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg
from dagster._core.storage.tags import ASSET_RESUME_RETRY_TAG, RESUME_RETRY_TAG

from solar_ml_pipeline.config import Settings, validate_device_id
from solar_ml_pipeline.orchestration.jobs import SCORE_JOB
from solar_ml_pipeline.orchestration.partitions import (
    DEVICE_DIMENSION,
    PERIOD_DIMENSION,
    partition_key,
)
from solar_ml_pipeline.storage.run_records import attempt_id

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
PARTITION_TAG = "dagster/partition"
ASSET_NAMES = ("raw_readings", "feature_frame", "model_version", "promotion_decision")


@dataclass(frozen=True)
class PlannedAttempt:
    """One device x period attempt of a run, under the id the run log keys it by."""

    attempt_id: str
    device_id: str
    period_key: str


def device_batches(devices: Sequence[str], batch_size: int,
                   min_batches: int = 1) -> list[list[str]]:
    """Consecutive, near-equal slices of at most `batch_size` devices; at least `min_batches`
    of them (when there are that many devices) so a small fleet still fills every run slot."""
    if not devices:
        return []
    count = max(math.ceil(len(devices) / batch_size), min(len(devices), min_batches))
    size = math.ceil(len(devices) / count)
    return [list(devices[i:i + size]) for i in range(0, len(devices), size)]


def batch_run_requests(settings: Settings, devices: Sequence[str], period_key: str,
                       trigger: str, action: str = "retrain") -> list[dg.RunRequest]:
    """One request per batch of the period's devices (a single device is a plain partition);
    `action` (retrain or score) keeps the run keys of the two schedules apart."""
    requests = []
    for batch in device_batches(devices, settings.fleet_batch_size, settings.max_concurrent_runs):
        first, last = batch[0], batch[-1]
        tags = {"solar/period": period_key, "solar/trigger": trigger,
                "solar/devices": str(len(batch))}
        if len(batch) == 1:
            requests.append(dg.RunRequest(
                run_key=f"{action}:{first}:{period_key}",
                partition_key=partition_key(first, period_key),
                tags={**tags, "solar/device": first}))
        else:
            requests.append(dg.RunRequest(
                run_key=f"{action}:{period_key}:{first}..{last}",
                tags={**tags, RANGE_START_TAG: str(partition_key(first, period_key)),
                      RANGE_END_TAG: str(partition_key(last, period_key))}))
    return requests


def split_key(key: object) -> tuple[str, str]:
    """(device_id, period_key) of a device x period key, object or `device|period` string."""
    if isinstance(key, dg.MultiPartitionKey):
        parts = key.keys_by_dimension
        device, period = parts.get(DEVICE_DIMENSION), parts.get(PERIOD_DIMENSION)
    else:  # the string form: dimension values joined by "|" in dimension-name order
        pieces = str(key).split("|")
        device, period = (pieces[0], pieces[1]) if len(pieces) == 2 else (None, None)
    if not device or not period:
        raise ValueError(f"partition key {str(key)[:100]!r} is not device|period: "
                         "launch the job for device x period partitions")
    return validate_device_id(device), period


def run_partition_keys(run: dg.DagsterRun, partitions_def: dg.PartitionsDefinition,
                       instance: dg.DagsterInstance) -> list[str]:
    """The device|period keys a run targeted (one, or its range); none for other runs."""
    tags = run.tags
    if tags.get(RANGE_START_TAG) and tags.get(RANGE_END_TAG):
        key_range = dg.PartitionKeyRange(tags[RANGE_START_TAG], tags[RANGE_END_TAG])
        with dg.partition_loading_context(dynamic_partitions_store=instance):
            return [str(k) for k in partitions_def.get_partition_keys_in_range(key_range)]
    return [tags[PARTITION_TAG]] if tags.get(PARTITION_TAG) else []


def done_in_earlier_runs(instance: dg.DagsterInstance, run: dg.DagsterRun,
                         asset_keys: set[dg.AssetKey]) -> set[str]:
    """Partitions whose selected assets an earlier run of this retry chain materialised.

    Only for a retry from failure (the UI's "Re-execute from failure" or "from asset
    failure", run retries, or `solar-ml retrain --retry-failed`): it retrains the devices
    that failed, not the batch. "Re-execute all" retrains every device again.
    """
    if "true" not in (run.tags.get(RESUME_RETRY_TAG), run.tags.get(ASSET_RESUME_RETRY_TAG)):
        return set()
    done: dict[str, set[dg.AssetKey]] = {}
    run_id = run.parent_run_id
    while run_id:
        for record in instance.get_records_for_run(
                run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records:
            materialization = record.event_log_entry.asset_materialization
            if materialization is not None and materialization.partition:
                done.setdefault(materialization.partition, set()).add(materialization.asset_key)
        parent = instance.get_run_by_id(run_id)
        run_id = parent.parent_run_id if parent else None
    return {key for key, materialised in done.items() if asset_keys <= materialised}


def run_asset_keys(run: dg.DagsterRun) -> set[dg.AssetKey]:
    """The retraining assets a run makes: those of its selection, or all four; none for a
    run that selects only other assets (forecast_score), which retrains nothing."""
    if run.job_name == SCORE_JOB:
        return set()
    retraining = {dg.AssetKey(name) for name in ASSET_NAMES}
    selected = set(run.asset_selection or ())
    return selected & retraining if selected else retraining


def run_attempts(instance: dg.DagsterInstance, run: dg.DagsterRun, keys: Sequence[str],
                 asset_keys: set[dg.AssetKey]) -> list[PlannedAttempt]:
    """The attempts a run makes over `keys`: all but those an earlier run of its retry chain
    finished. The step, the failure sensor and the CLI retry name them the same way."""
    done = done_in_earlier_runs(instance, run, asset_keys)
    attempts = []
    for key in keys:
        if key in done:
            continue
        device_id, period_key = split_key(key)
        attempts.append(PlannedAttempt(
            attempt_id(run.run_id, device_id, period_key, batch=len(keys) > 1),
            device_id, period_key))
    return attempts
