"""The IO manager that stores `model_version` outputs as immutable versions in the model store.

Storing never moves the pointer: only promotion does. Loading hands the downstream step the
version this run produced, sha256-verified but not unpickled: promotion judges it by its
stored metrics, so reading a forest of tens of MB back into memory would buy nothing (a step
that needs the estimator loads it with `registry.load_model(..., expected_sha256=...)`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import dagster as dg

from solar_ml_pipeline.config import validate_device_id
from solar_ml_pipeline.forecasting.attempt import store_candidate
from solar_ml_pipeline.model_store.registry import (
    ModelCandidate,
    ModelRegistry,
    StoredVersion,
    VersionNotFound,
)

DEVICE_DIMENSION = "device"
PERIOD_DIMENSION = "period"


def partition_parts(context: object) -> tuple[str, str]:
    """(device_id, period_key) of a device x period run; any context with `partition_key`."""
    if not getattr(context, "has_partition_key", False):
        raise ValueError(
            "this step runs without a partition: launch it for one device|period partition"
        )
    key = context.partition_key  # type: ignore[attr-defined]
    if isinstance(key, dg.MultiPartitionKey):
        parts = key.keys_by_dimension
        device, period = parts.get(DEVICE_DIMENSION), parts.get(PERIOD_DIMENSION)
    else:  # the string form: dimension values joined by "|" in dimension-name order
        pieces = str(key).split("|")
        device, period = (pieces[0], pieces[1]) if len(pieces) == 2 else (None, None)
    if not device or not period:
        raise ValueError(
            f"partition key {str(key)[:100]!r} is not device|period: "
            "launch the job for one device and one period"
        )
    return validate_device_id(device), period


def _source_run_id(context: dg.InputContext) -> str | None:
    """The run that produced the upstream output (the parent run on a re-execution)."""
    for get in (lambda: context.upstream_output.run_id, lambda: context.step_context.run_id):
        try:
            run_id = get()
        except Exception:  # noqa: S112 - absent on contexts built outside a run; try the next
            continue
        if run_id:
            return run_id
    return None


class VersionedModelIOManager(dg.ConfigurableIOManager):
    """Each output becomes a new version under MODEL_DIR; inputs get the run's own version
    (a StoredVersion whose `model` is None)."""

    model_dir: str

    def registry(self) -> ModelRegistry:
        return ModelRegistry(Path(self.model_dir))

    def handle_output(self, context: dg.OutputContext, obj: ModelCandidate) -> None:
        if not isinstance(obj, ModelCandidate):
            raise TypeError(
                f"{context.asset_key.to_user_string() if context.has_asset_key else 'output'} "
                f"returned {type(obj).__name__}: return a ModelCandidate to store a model version"
            )
        if context.has_partition_key:
            device, _ = partition_parts(context)
            if device != obj.device_id:
                raise ValueError(
                    f"model for device {obj.device_id} returned in partition {context.partition_key}"
                    f": return the model of the partition's device {device}"
                )
            obj = replace(obj, meta={"partition_key": str(context.partition_key), **obj.meta})
        stored = store_candidate(self.registry(), obj, context.run_id)
        context.add_output_metadata(
            {
                "version": stored.version,
                "model_path": dg.MetadataValue.path(str(stored.model_path)),
                "sha256": stored.sha256,
                "size_bytes": int(stored.meta["size_bytes"]),
            }
        )

    def load_input(self, context: dg.InputContext) -> StoredVersion:
        device, _ = partition_parts(context)
        partition_key = str(context.partition_key)
        registry = self.registry()
        metas = registry.versions_for_partition(device, partition_key)
        if not metas:
            raise VersionNotFound(
                f"no stored model version for partition {partition_key}: "
                "materialize model_version for this partition first"
            )
        run_id = _source_run_id(context)
        same_run = [m for m in metas if run_id and m.get("dagster_run_id") == run_id]
        chosen = (same_run or metas)[-1]
        if not same_run:
            context.log.info(
                f"no version of {partition_key} from run {run_id}; using the newest, "
                f"{chosen['version']}"
            )
        meta = registry.verify_version(device, chosen["version"])
        return StoredVersion(
            device, chosen["version"], registry.model_path(device, chosen["version"]),
            registry.metadata_path(device, chosen["version"]), meta["sha256"], meta,
        )
