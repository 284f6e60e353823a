import json

import pytest

from solar_ml_pipeline.model_store.registry import (
    ChecksumMismatch,
    CorruptPointer,
    ModelRegistry,
    NoCurrentModel,
    serialize_model,
    sha256_hex,
)
from solar_ml_pipeline.model_store.serving import ModelServer

DEVICE = "tracker01"
V1, V2 = "20260224_130000_aaaaaa", "20260225_130000_bbbbbb"


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    registry = ModelRegistry(tmp_path / "models")
    registry.save_version(DEVICE, V1, {"name": "first"}, {"metrics": {"mae": 0.3}})
    registry.save_version(DEVICE, V2, {"name": "second"}, {"metrics": {"mae": 0.2}})
    return registry


def test_load_current_serves_the_pointed_version(registry):
    registry.promote(DEVICE, V1)
    served = ModelServer(registry).load_current(DEVICE)
    assert (served.device_id, served.version, served.model) == (DEVICE, V1, {"name": "first"})
    assert served.pointer["version"] == V1


def test_a_promotion_and_a_rollback_are_served_on_the_next_call_without_restart(registry):
    server = ModelServer(registry)
    registry.promote(DEVICE, V1)
    assert server.load_current(DEVICE).model == {"name": "first"}
    registry.promote(DEVICE, V2)
    assert server.load_current(DEVICE).model == {"name": "second"}
    registry.rollback(DEVICE)
    assert server.load_current(DEVICE).version == V1


def test_an_unchanged_pointer_reuses_the_loaded_model(registry, monkeypatch):
    registry.promote(DEVICE, V1)
    server = ModelServer(registry)
    first = server.load_current(DEVICE)
    loads = []
    monkeypatch.setattr(registry, "load_model", lambda *a, **k: loads.append(a))
    second = server.load_current(DEVICE)
    assert loads == [] and second.model is first.model


def test_no_pointer_is_a_clear_error(registry):
    with pytest.raises(NoCurrentModel, match="retrain --device tracker01"):
        ModelServer(registry).load_current(DEVICE)


def test_a_corrupt_pointer_is_refused(registry):
    registry.promote(DEVICE, V1)
    pointer_path = registry.pointer_path(DEVICE)
    pointer = json.loads(pointer_path.read_text())
    pointer["model_path"] = "/etc/passwd"
    pointer_path.write_text(json.dumps(pointer))
    with pytest.raises(CorruptPointer):
        ModelServer(registry).load_current(DEVICE)


def test_a_tampered_model_file_is_refused(registry):
    registry.promote(DEVICE, V1)
    registry.model_path(DEVICE, V1).write_bytes(serialize_model({"name": "evil"}))
    with pytest.raises(ChecksumMismatch):
        ModelServer(registry).load_current(DEVICE)


def test_a_file_replaced_together_with_its_meta_is_refused_by_the_pointer_sha(registry):
    registry.promote(DEVICE, V1)
    evil = serialize_model({"name": "evil"})
    registry.model_path(DEVICE, V1).write_bytes(evil)
    meta_path = registry.metadata_path(DEVICE, V1)
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = sha256_hex(evil)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ChecksumMismatch, match="its pointer says"):
        ModelServer(registry).load_current(DEVICE)


def test_a_fallback_pointer_is_served_as_smart_persistence_with_its_reason_and_no_model(registry):
    server = ModelServer(registry)
    registry.promote(DEVICE, V1)
    assert server.load_current(DEVICE).model == {"name": "first"}
    with registry.device_lock(DEVICE):
        registry.set_fallback(DEVICE, reason="no model beats persistence in daylight")
    served = server.load_current(DEVICE)
    assert (served.serving, served.version, served.model, served.is_fallback) == (
        "smart_persistence", None, None, True)
    assert served.reason == "no model beats persistence in daylight"
    assert served.pointer["previous_version"] == V1
    assert server._cache == {}  # the displaced model is not kept in memory
    registry.rollback(DEVICE)
    assert server.load_current(DEVICE).serving == "model"
