"""A store names its files relative to MODEL_DIR, so it serves wherever it is mounted or
restored: the same store on two hosts at different paths, or a backup restored elsewhere."""

import json
import shutil

import pytest

from solar_ml_pipeline.model_store.registry import CorruptPointer, ModelRegistry
from solar_ml_pipeline.model_store.serving import ModelServer
from solar_ml_pipeline_tests.model_store.test_registry import _save

DEVICE = "tracker01"


def _promoted_store(model_dir):
    registry = ModelRegistry(model_dir)
    first, second = _save(registry, 1), _save(registry, 2)
    with registry.device_lock(DEVICE):
        registry.set_pointer(DEVICE, first.version)
        registry.set_pointer(DEVICE, second.version)
    return first.version, second.version


def test_pointer_and_meta_name_their_files_relative_to_model_dir(tmp_path):
    _, second = _promoted_store(tmp_path / "models")
    registry = ModelRegistry(tmp_path / "models")
    pointer = json.loads(registry.pointer_path(DEVICE).read_text())
    assert pointer["model_path"] == f"{DEVICE}/versions/model_{second}.pkl"
    assert pointer["metadata_path"] == f"{DEVICE}/versions/model_{second}_meta.json"
    assert registry.read_meta(DEVICE, second)["model_path"] == pointer["model_path"]


def test_a_store_copied_to_another_path_serves_and_rolls_back_there(tmp_path):
    first, second = _promoted_store(tmp_path / "host_a" / "models")
    shutil.copytree(tmp_path / "host_a", tmp_path / "host_b")
    shutil.rmtree(tmp_path / "host_a")  # nothing may still be read from the old place
    registry = ModelRegistry(tmp_path / "host_b" / "models")
    assert ModelServer(registry).load_current(DEVICE).version == second
    assert registry.rollback(DEVICE)["version"] == first
    assert ModelServer(registry).load_current(DEVICE).version == first


@pytest.mark.parametrize("named", [
    "/elsewhere/tracker01/versions/model_{other}.pkl",  # another version's file
    "/elsewhere/tracker02/versions/model_{version}.pkl",  # another device's
    "/elsewhere/tracker01/versions/../versions/model_{version}.pkl",
])
def test_an_absolute_path_must_still_name_the_pointers_own_file(tmp_path, named):
    first, second = _promoted_store(tmp_path / "models")
    registry = ModelRegistry(tmp_path / "models")
    pointer = json.loads(registry.pointer_path(DEVICE).read_text())
    pointer["model_path"] = named.format(version=second, other=first)
    registry.pointer_path(DEVICE).write_text(json.dumps(pointer))
    with pytest.raises(CorruptPointer, match="model_path"):
        registry.read_pointer(DEVICE)
