from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from solar_ml_pipeline.model_store.registry import ModelCandidate, ModelRegistry, StoredVersion
from solar_ml_pipeline.orchestration.io_managers import VersionedModelIOManager, partition_parts

DEVICE = "tracker01"
PARTITION = dg.MultiPartitionKey({"device": DEVICE, "period": "2026-02-24"})
test_partitions = dg.MultiPartitionsDefinition(
    {
        "device": dg.DynamicPartitionsDefinition(name="device"),
        "period": dg.StaticPartitionsDefinition(["2026-02-23", "2026-02-24"]),
    }
)


@dg.asset(partitions_def=test_partitions, io_manager_key="model_io_manager")
def model_version(context: dg.AssetExecutionContext) -> ModelCandidate:
    device, period = partition_parts(context)
    return ModelCandidate(
        device_id=device,
        version=ModelRegistry.new_version_id(datetime.now(UTC)),
        model={"device": device, "period": period, "run": context.run_id},
        meta={"trained_at": datetime.now(UTC).isoformat(), "metrics": {"mae": 0.2}},
    )


@dg.asset(partitions_def=test_partitions)
def promotion_decision(model_version: StoredVersion) -> dict:
    return {"version": model_version.version, "unpickled": model_version.model,
            "sha256": model_version.sha256, "model_path": model_version.model_path}


@dg.asset(partitions_def=test_partitions, io_manager_key="model_io_manager")
def wrong_device_model(context: dg.AssetExecutionContext) -> ModelCandidate:
    return ModelCandidate("tracker02", ModelRegistry.new_version_id(datetime.now(UTC)), {}, {})


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("device", [DEVICE, "tracker02"])
        yield instance


def _materialize(instance, model_dir, selection=None, assets=None, raise_on_error=True):
    return dg.materialize(
        assets or [model_version, promotion_decision],
        partition_key=PARTITION,
        instance=instance,
        resources={"model_io_manager": VersionedModelIOManager(model_dir=str(model_dir))},
        selection=selection,
        raise_on_error=raise_on_error,
    )


def test_a_run_stores_a_version_and_downstream_loads_that_same_version(instance, tmp_path):
    registry = ModelRegistry(tmp_path)
    # a newer version of the same partition from another run must not be picked
    registry.save_version(
        DEVICE, "29991231_235959_ffffff", {"other": True},
        {"partition_key": str(PARTITION), "dagster_run_id": "another-run"},
    )
    result = _materialize(instance, tmp_path)

    decision = result.output_for_node("promotion_decision")
    [meta] = [m for m in registry.list_versions(DEVICE) if m["dagster_run_id"] == result.run_id]
    assert decision["version"] == meta["version"]
    assert decision["sha256"] == meta["sha256"]
    # handed over verified but not unpickled: promotion needs only the stored metrics
    assert decision["unpickled"] is None
    assert registry.load_model(DEVICE, decision["version"], expected_sha256=decision["sha256"]) == {
        "device": DEVICE, "period": "2026-02-24", "run": result.run_id}
    assert meta["partition_key"] == str(PARTITION) == "tracker01|2026-02-24"
    assert registry.read_pointer(DEVICE) is None  # storing never promotes

    [materialization] = result.asset_materializations_for_node("model_version")
    metadata = materialization.metadata
    assert metadata["version"].value == meta["version"]
    assert metadata["model_path"] == dg.MetadataValue.path(meta["model_path"])
    assert metadata["sha256"].value == meta["sha256"]
    assert metadata["size_bytes"].value == meta["size_bytes"]


def test_a_run_without_the_model_step_loads_the_partitions_newest_version(instance, tmp_path):
    first = _materialize(instance, tmp_path).output_for_node("promotion_decision")
    second = _materialize(instance, tmp_path, selection=[promotion_decision])
    assert second.output_for_node("promotion_decision") == first


def test_loading_a_partition_without_versions_fails_with_the_fix(instance, tmp_path):
    with pytest.raises(Exception, match="materialize model_version for this partition first"):
        _materialize(instance, tmp_path, selection=[promotion_decision])


def test_a_version_whose_file_was_altered_is_refused_before_promotion_sees_it(instance, tmp_path):
    _materialize(instance, tmp_path)
    [meta] = ModelRegistry(tmp_path).list_versions(DEVICE)
    Path(meta["model_path"]).write_bytes(b"not the stored model")
    with pytest.raises(Exception, match="damaged or was replaced"):
        _materialize(instance, tmp_path, selection=[promotion_decision])


def test_a_model_for_another_device_than_the_partition_is_refused(instance, tmp_path):
    result = _materialize(instance, tmp_path, assets=[wrong_device_model], raise_on_error=False)
    assert not result.success
    error = result.failure_data_for_node("wrong_device_model").error
    assert "return the model of the partition's device tracker01" in str(error)
    assert ModelRegistry(tmp_path).list_versions("tracker02") == []


def test_partition_parts_reads_multi_keys_and_their_string_form():
    assert partition_parts(dg.build_asset_context(partition_key=PARTITION)) == (
        DEVICE, "2026-02-24",
    )
    assert partition_parts(dg.build_asset_context(partition_key="tracker01|2026-02-24")) == (
        DEVICE, "2026-02-24",
    )
    with pytest.raises(ValueError, match=r"is not device\|period"):
        partition_parts(dg.build_asset_context(partition_key="2026-02-24"))
    with pytest.raises(ValueError, match="without a partition"):
        partition_parts(dg.build_asset_context())
