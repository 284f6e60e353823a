import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from solar_ml_pipeline.config import InvalidDeviceId
from solar_ml_pipeline.model_store import registry as registry_module
from solar_ml_pipeline.model_store.registry import (
    ChecksumMismatch,
    CorruptMeta,
    CorruptPointer,
    InvalidVersion,
    LockTimeout,
    ModelRegistry,
    ModelStoreError,
    NoCurrentModel,
    NoPreviousVersion,
    VersionNotFound,
    atomic_write_bytes,
    atomic_write_json,
)

DEVICE = "tracker01"


def _meta(mae=0.2, partition_key="tracker01|2026-02-24", **extra):
    meta = {
        "trained_at": "2026-02-24T13:00:00Z",
        "days_used": 7,
        "rows_used": 1981,
        "features": ["hour", "power"],
        "metrics": {
            "mae": mae, "rmse": 0.4, "r2": 0.99, "train_samples": 1584, "test_samples": 397,
            "persistence_mae": 0.3, "skill": 0.33,
        },
        "model_type": "random_forest",
        "partition_key": partition_key,
    }
    meta.update(extra)
    return meta


def _version(i: int) -> str:
    return f"202602{i + 1:02d}_120000_{i:06x}"


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models")


def _save(registry, i, device=DEVICE, **meta):
    return registry.save_version(device, _version(i), {"weights": [i, i + 1]}, _meta(**meta))


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".tmp-*")]


# --- atomic files -----------------------------------------------------------------------------


def test_atomic_write_replaces_the_whole_file(tmp_path):
    target = tmp_path / "f.json"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert _temp_files(tmp_path) == []


def test_crash_before_rename_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "current_model.json"
    atomic_write_bytes(target, b"old")

    def crash(src, dst):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert _temp_files(tmp_path) == []


def test_no_overwrite_write_refuses_an_existing_file_and_keeps_it(tmp_path):
    target = tmp_path / "model.pkl"
    atomic_write_bytes(target, b"first", overwrite=False)
    with pytest.raises(FileExistsError):
        atomic_write_bytes(target, b"second", overwrite=False)
    assert target.read_bytes() == b"first"
    assert _temp_files(tmp_path) == []


_KILL_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from solar_ml_pipeline.model_store.registry import atomic_write_bytes
    target = Path(sys.argv[1])
    blobs = [b"a" * 2_000_000, b"b" * 3_000_000]
    print("ready", flush=True)
    i = 0
    while True:
        atomic_write_bytes(target, blobs[i % 2])
        i += 1
    """
)


def test_sigkill_during_writes_never_leaves_a_torn_file_and_leftovers_are_cleaned(tmp_path):
    registry = ModelRegistry(tmp_path)
    target = tmp_path / DEVICE / "versions" / "model.pkl"
    whole = {b"a" * 2_000_000, b"b" * 3_000_000}
    atomic_write_bytes(target, b"a" * 2_000_000)
    rng = random.Random(1234)
    for _ in range(6):
        child = subprocess.Popen(
            [sys.executable, "-c", _KILL_WRITER, str(target)], stdout=subprocess.PIPE
        )
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.15))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        assert target.read_bytes() in whole
    # a killed writer's temp file: kept while it may be live, removed once stale
    (target.parent / ".tmp-model.pkl.dead").write_bytes(b"torn")
    assert registry.clean_temp_files() == []
    for leftover in _temp_files(tmp_path):
        os.utime(leftover, (time.time() - 3600, time.time() - 3600))
    assert registry.clean_temp_files()
    assert _temp_files(tmp_path) == []


def test_json_is_strict_nan_becomes_null_and_numpy_numbers_become_numbers(tmp_path):
    target = tmp_path / "meta.json"
    atomic_write_json(target, {"r2": float("nan"), "mae": np.float32(0.5), "n": np.int64(3)})
    assert json.loads(target.read_text()) == {"r2": None, "mae": 0.5, "n": 3}
    with pytest.raises(TypeError, match="JSON cannot hold"):
        atomic_write_json(target, {"model": object()})


# --- versions ---------------------------------------------------------------------------------


def test_new_version_id_is_utc_time_plus_random_suffix():
    colombo = timezone(timedelta(hours=5, minutes=30))
    version = ModelRegistry.new_version_id(datetime(2026, 2, 25, 0, 0, 0, tzinfo=colombo))
    assert version.startswith("20260224_183000_")
    assert len(version) == len("20260224_183000_") + 6
    assert ModelRegistry.new_version_id(datetime.now(UTC)) != ModelRegistry.new_version_id(
        datetime.now(UTC)
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        ModelRegistry.new_version_id(datetime(2026, 2, 24))


def test_save_version_writes_pkl_and_meta_with_sha256_and_loads_back(registry):
    stored = _save(registry, 1)
    meta = json.loads(stored.metadata_path.read_text())
    assert stored.model_path == registry.model_dir / DEVICE / "versions" / f"model_{_version(1)}.pkl"
    assert meta["sha256"] == stored.sha256 == registry_module.sha256_hex(
        stored.model_path.read_bytes()
    )
    assert meta["size_bytes"] == stored.model_path.stat().st_size
    assert (meta["device_id"], meta["version"]) == (DEVICE, _version(1))
    assert meta["model_path"] == f"{DEVICE}/versions/model_{_version(1)}.pkl"
    assert meta["days_used"] == 7
    assert registry.load_model(DEVICE, _version(1)) == {"weights": [1, 2]}
    assert registry.load_version(DEVICE, _version(1)).model == {"weights": [1, 2]}


def test_a_version_is_never_overwritten(registry):
    first = _save(registry, 1)
    before = first.model_path.read_bytes()
    with pytest.raises(ModelStoreError, match="never overwritten"):
        registry.save_version(DEVICE, _version(1), {"other": True}, _meta())
    assert first.model_path.read_bytes() == before
    assert registry.load_model(DEVICE, _version(1)) == {"weights": [1, 2]}


def test_a_meta_that_is_not_json_writes_no_file(registry):
    with pytest.raises(TypeError):
        registry.save_version(DEVICE, _version(1), {}, _meta(bad=object()))
    assert list((registry.model_dir / DEVICE / "versions").glob("model_*")) == []


class _Exploit:
    """Unpickling this writes a marker file: proves bytes were unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "unpickled"))


def test_load_model_refuses_a_tampered_file_before_unpickling(registry, tmp_path):
    stored = _save(registry, 1)
    marker = tmp_path / "marker"
    stored.model_path.write_bytes(registry_module.serialize_model(_Exploit(str(marker))))
    with pytest.raises(ChecksumMismatch, match="damaged or was replaced"):
        registry.load_model(DEVICE, _version(1))
    assert not marker.exists()


def test_list_versions_sorts_and_skips_incomplete_or_corrupt_versions(registry):
    for i in (3, 1, 2, 4):
        _save(registry, i)
    (registry.model_dir / DEVICE / "versions" / f"model_{_version(2)}_meta.json").unlink()
    (registry.model_dir / DEVICE / "versions" / f"model_{_version(3)}.pkl").unlink()
    (registry.model_dir / DEVICE / "versions" / f"model_{_version(4)}_meta.json").write_text("{")
    assert [m["version"] for m in registry.list_versions(DEVICE)] == [_version(1)]
    assert registry.list_versions("unknown") == []


def test_a_meta_naming_a_file_outside_its_version_is_refused(registry):
    stored = _save(registry, 1)
    meta = json.loads(stored.metadata_path.read_text())
    meta["model_path"] = "/etc/passwd"
    stored.metadata_path.write_text(json.dumps(meta))
    with pytest.raises(CorruptMeta, match="model file other than its own"):
        registry.load_model(DEVICE, _version(1))
    assert registry.list_versions(DEVICE) == []


def test_versions_for_partition_filters_by_partition_key(registry):
    _save(registry, 1, partition_key="tracker01|2026-02-23")
    _save(registry, 2, partition_key="tracker01|2026-02-24")
    _save(registry, 3, partition_key="tracker01|2026-02-24")
    found = registry.versions_for_partition(DEVICE, "tracker01|2026-02-24")
    assert [m["version"] for m in found] == [_version(2), _version(3)]


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", "x" * 65, "tracker 01"])
def test_invalid_device_ids_are_refused_at_every_entry(registry, bad):
    for call in (
        lambda: registry.save_version(bad, _version(1), {}, _meta()),
        lambda: registry.read_pointer(bad),
        lambda: registry.list_versions(bad),
        lambda: registry.promote(bad, _version(1)),
        lambda: registry.rollback(bad),
        lambda: registry.prune(3, device_id=bad),
    ):
        with pytest.raises(InvalidDeviceId):
            call()
    assert not registry.model_dir.exists() or list(registry.model_dir.iterdir()) == []


@pytest.mark.parametrize("bad", ["../../../etc/passwd", "20260224", "20260224_183000_XYZ"])
def test_malformed_versions_are_refused_before_touching_files(registry, bad):
    with pytest.raises(InvalidVersion, match="YYYYMMDD_HHMMSS"):
        registry.load_model(DEVICE, bad)
    with pytest.raises(InvalidVersion):
        registry.rollback(DEVICE, to=bad)


# --- the pointer ------------------------------------------------------------------------------


def test_promote_writes_the_original_pointer_shape_plus_sha_and_previous(registry):
    first, second = _save(registry, 1, mae=0.25), _save(registry, 2, mae=0.2)
    pointer = registry.promote(DEVICE, _version(1), reason="no current model")
    assert pointer["previous_version"] is None
    pointer = registry.promote(DEVICE, _version(2), reason="MAE better")
    on_disk = json.loads((registry.model_dir / DEVICE / "current_model.json").read_text())
    assert on_disk == pointer == registry.read_pointer(DEVICE)
    assert pointer["version"] == _version(2)
    assert pointer["model_path"] == registry.relative(second.model_path)
    assert pointer["metadata_path"] == registry.relative(second.metadata_path)
    assert pointer["sha256"] == second.sha256
    assert pointer["previous_version"] == _version(1)
    assert pointer["updated_at"].endswith("Z")
    assert datetime.fromisoformat(pointer["updated_at"])
    assert pointer["metrics"] == {
        "mae": 0.2, "rmse": 0.4, "r2": 0.99, "train_samples": 1584, "test_samples": 397,
        "persistence_mae": 0.3, "skill": 0.33,
    }
    assert pointer["model_type"] == "random_forest"
    assert pointer["features"] == ["hour", "power"]
    assert pointer["reason"] == "MAE better"
    assert first.model_path.exists()


def test_promoting_the_current_version_again_keeps_the_rollback_target(registry):
    _save(registry, 1), _save(registry, 2)
    registry.promote(DEVICE, _version(1))
    registry.promote(DEVICE, _version(2))
    assert registry.promote(DEVICE, _version(2))["previous_version"] == _version(1)


def test_promote_refuses_a_tampered_version_and_leaves_the_pointer(registry):
    _save(registry, 1)
    stored = _save(registry, 2)
    registry.promote(DEVICE, _version(1))
    stored.model_path.write_bytes(b"not the model")
    with pytest.raises(ChecksumMismatch):
        registry.promote(DEVICE, _version(2))
    assert registry.read_pointer(DEVICE)["version"] == _version(1)


def test_promote_of_an_unknown_version_is_refused(registry):
    with pytest.raises(VersionNotFound, match="model list"):
        registry.promote(DEVICE, _version(9))
    assert registry.read_pointer(DEVICE) is None


def _write_pointer(registry, **changes):
    path = registry.model_dir / DEVICE / "current_model.json"
    pointer = json.loads(path.read_text())
    pointer.update(changes)
    path.write_text(json.dumps(pointer))


@pytest.mark.parametrize(
    "changes",
    [
        {"model_path": "/etc/passwd"},
        {"model_path": "../../../etc/passwd"},
        {"model_path": f"../other/versions/model_{_version(1)}.pkl"},
        {"metadata_path": "/tmp/evil_meta.json"},
        {"model_path": f"tracker01/versions/model_{_version(2)}.pkl"},
        {"version": "../../x"},
        {"sha256": "abc"},
        {"previous_version": "../x"},
        {"device_id": "tracker02"},
    ],
)
def test_a_pointer_naming_anything_but_its_own_version_files_is_refused(registry, changes):
    _save(registry, 1), _save(registry, 2)
    registry.promote(DEVICE, _version(1))
    _write_pointer(registry, **changes)
    with pytest.raises(CorruptPointer, match="rollback --device tracker01 --to VERSION"):
        registry.read_pointer(DEVICE)


def test_a_relative_pointer_path_inside_model_dir_is_accepted(registry):
    _save(registry, 1)
    registry.promote(DEVICE, _version(1))
    _write_pointer(registry, model_path=f"tracker01/versions/model_{_version(1)}.pkl")
    assert registry.read_pointer(DEVICE)["version"] == _version(1)


def test_read_pointer_is_none_without_pointer_and_refuses_garbage(registry):
    assert registry.read_pointer(DEVICE) is None
    path = registry.model_dir / DEVICE / "current_model.json"
    path.parent.mkdir(parents=True)
    for garbage in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        path.write_bytes(garbage)
        with pytest.raises(CorruptPointer):
            registry.read_pointer(DEVICE)


def test_the_pointer_only_moves_under_the_device_lock(registry):
    _save(registry, 1)
    meta = registry.read_meta(DEVICE, _version(1))
    with pytest.raises(RuntimeError, match="device_lock"):
        registry._write_pointer(DEVICE, meta, None, None, move="promotion", run_id=None)
    with pytest.raises(RuntimeError, match="device_lock"):
        registry.set_pointer(DEVICE, _version(1))
    assert registry.read_pointer(DEVICE) is None
    with registry.device_lock(DEVICE):
        assert registry.set_pointer(DEVICE, _version(1))["version"] == _version(1)
        assert registry.promote(DEVICE, _version(1))["version"] == _version(1)  # reentrant


# --- rollback ---------------------------------------------------------------------------------


def test_rollback_moves_to_previous_and_twice_rolls_forward(registry):
    for i in (1, 2, 3):
        _save(registry, i)
        registry.promote(DEVICE, _version(i))
    back = registry.rollback(DEVICE)
    assert (back["version"], back["previous_version"]) == (_version(2), _version(3))
    assert back["sha256"] == registry.read_meta(DEVICE, _version(2))["sha256"]
    forward = registry.rollback(DEVICE)
    assert (forward["version"], forward["previous_version"]) == (_version(3), _version(2))
    named = registry.rollback(DEVICE, to=_version(1))
    assert (named["version"], named["previous_version"]) == (_version(1), _version(3))
    assert registry.read_pointer(DEVICE) == named


def test_rollback_errors_name_the_problem_and_the_fix(registry):
    with pytest.raises(NoCurrentModel, match="retrain --device tracker01"):
        registry.rollback(DEVICE)
    _save(registry, 1)
    registry.promote(DEVICE, _version(1))
    with pytest.raises(NoPreviousVersion, match="--to VERSION"):
        registry.rollback(DEVICE)
    with pytest.raises(VersionNotFound, match="model list --device tracker01"):
        registry.rollback(DEVICE, to=_version(7))
    with pytest.raises(ModelStoreError, match="already current"):
        registry.rollback(DEVICE, to=_version(1))
    assert registry.read_pointer(DEVICE)["version"] == _version(1)


def test_rollback_refuses_a_tampered_target(registry):
    first = _save(registry, 1)
    _save(registry, 2)
    registry.promote(DEVICE, _version(1))
    registry.promote(DEVICE, _version(2))
    first.model_path.write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch):
        registry.rollback(DEVICE)
    assert registry.read_pointer(DEVICE)["version"] == _version(2)


def test_rollback_to_a_named_version_repairs_a_corrupt_pointer(registry):
    _save(registry, 1)
    (registry.model_dir / DEVICE / "current_model.json").write_text("{torn")
    with pytest.raises(CorruptPointer):
        registry.rollback(DEVICE)
    repaired = registry.rollback(DEVICE, to=_version(1))
    assert repaired["version"] == _version(1) and repaired["previous_version"] is None


# --- prune ------------------------------------------------------------------------------------


def test_prune_keeps_newest_n_plus_current_and_previous_and_reports_freed_bytes(registry):
    for i in range(1, 8):
        _save(registry, i)
    registry.promote(DEVICE, _version(1))
    registry.promote(DEVICE, _version(2))  # current 2, previous 1: both old
    versions_dir = registry.model_dir / DEVICE / "versions"
    doomed = [_version(i) for i in (3, 4, 5)]
    expected_bytes = sum(
        (versions_dir / name).stat().st_size
        for v in doomed for name in (f"model_{v}.pkl", f"model_{v}_meta.json")
    )
    before = sorted(p.name for p in versions_dir.iterdir())

    dry = registry.prune(2, dry_run=True)
    assert sorted(p.name for p in versions_dir.iterdir()) == before
    assert dry.devices[0].removed == doomed and dry.freed_bytes == expected_bytes

    report = registry.prune(2)
    assert report.devices[0].removed == doomed
    assert report.freed_bytes == expected_bytes and report.removed_count == 3
    remaining = [m["version"] for m in registry.list_versions(DEVICE)]
    assert remaining == [_version(i) for i in (1, 2, 6, 7)]
    assert registry.load_model(DEVICE, _version(1)) == {"weights": [1, 2]}
    assert json.loads(json.dumps(report.to_dict()))["freed_bytes"] == expected_bytes


def test_prune_runs_per_device_and_for_one_device_only(registry):
    for i in range(1, 4):
        _save(registry, i)
        _save(registry, i, device="tracker02")
    report = registry.prune(1, device_id="tracker02")
    assert [d.device_id for d in report.devices] == ["tracker02"]
    assert len(registry.list_versions(DEVICE)) == 3
    assert len(registry.list_versions("tracker02")) == 1
    assert [d.device_id for d in registry.prune(1).devices] == ["tracker01", "tracker02"]
    assert len(registry.list_versions(DEVICE)) == 1


def test_prune_leaves_young_incomplete_versions_and_removes_stale_ones(registry):
    for i in (1, 2, 3):
        _save(registry, i)
    versions_dir = registry.model_dir / DEVICE / "versions"
    (versions_dir / f"model_{_version(1)}_meta.json").unlink()  # a save in progress, or stale
    report = registry.prune(5)
    assert report.removed_count == 0 and (versions_dir / f"model_{_version(1)}.pkl").exists()
    old = time.time() - 3600
    os.utime(versions_dir / f"model_{_version(1)}.pkl", (old, old))
    report = registry.prune(5)
    assert report.devices[0].removed == [_version(1)]
    assert not (versions_dir / f"model_{_version(1)}.pkl").exists()


def test_prune_removes_stale_temp_files_but_not_a_live_writers(registry):
    _save(registry, 1)
    versions_dir = registry.model_dir / DEVICE / "versions"
    stale, live = versions_dir / ".tmp-model_a.pkl.1", versions_dir / ".tmp-model_b.pkl.2"
    stale.write_bytes(b"x")
    live.write_bytes(b"y")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    assert registry.prune(5, dry_run=True).temp_files_removed == 0 and stale.exists()
    assert registry.prune(5).temp_files_removed == 1
    assert not stale.exists() and live.exists()


def test_prune_skips_a_device_whose_pointer_is_unreadable(registry):
    for i in (1, 2, 3):
        _save(registry, i)
    (registry.model_dir / DEVICE / "current_model.json").write_text("{")
    report = registry.prune(1)
    assert report.devices[0].removed == [] and "pointer unreadable" in report.devices[0].skipped_reason
    assert len(registry.list_versions(DEVICE)) == 3


def test_prune_refuses_keep_below_one(registry):
    with pytest.raises(ValueError, match="at least 1"):
        registry.prune(0)


# --- the device lock --------------------------------------------------------------------------


def _try_lock(model_dir: str, queue) -> None:
    registry = ModelRegistry(Path(model_dir))
    try:
        with registry.device_lock(DEVICE, timeout_s=0.3):
            queue.put("acquired")
    except LockTimeout as exc:
        queue.put(f"timeout: {exc}")


def test_device_lock_excludes_a_second_process_until_released(registry):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    with registry.device_lock(DEVICE):
        child = ctx.Process(target=_try_lock, args=(str(registry.model_dir), queue))
        child.start()
        outcome = queue.get(timeout=30)
        child.join(timeout=30)
    assert outcome.startswith("timeout: device tracker01 is locked")
    child = ctx.Process(target=_try_lock, args=(str(registry.model_dir), queue))
    child.start()
    assert queue.get(timeout=30) == "acquired"
    child.join(timeout=30)


def test_device_lock_excludes_another_thread_and_other_devices_stay_free(registry):
    outcome = {}

    def other_thread():
        try:
            with registry.device_lock(DEVICE, timeout_s=0.2):
                outcome[DEVICE] = "acquired"
        except LockTimeout:
            outcome[DEVICE] = "timeout"
        with registry.device_lock("tracker02", timeout_s=0.2):
            outcome["tracker02"] = "acquired"

    with registry.device_lock(DEVICE):
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(timeout=10)
    assert outcome == {DEVICE: "timeout", "tracker02": "acquired"}


# --- the smart-persistence fallback pointer ---------------------------------------------------

FIGURES = {"daylight_mae": 31.0, "daylight_persistence_mae": 30.0, "champion_daylight_mae": 32.5}


def _fallback(registry, challenger=None, reason="no model beats persistence", **kwargs):
    with registry.device_lock(DEVICE):
        return registry.set_fallback(DEVICE, reason=reason, challenger_version=challenger,
                                     figures=FIGURES, **kwargs)


def test_a_fallback_pointer_names_no_version_keeps_the_displaced_model_and_reads_back(registry):
    _save(registry, 1)
    registry.promote(DEVICE, _version(1))
    pointer = _fallback(registry, challenger=_version(2), cutoff="2026-02-25T13:00:00Z")
    assert pointer == registry.read_pointer(DEVICE)
    assert (pointer["serving"], pointer["version"], pointer["previous_version"]) == (
        "smart_persistence", None, _version(1))
    assert (pointer["challenger_version"], pointer["cutoff"]) == (_version(2), "2026-02-25T13:00:00Z")
    assert {name: pointer[name] for name in FIGURES} == FIGURES
    assert pointer["reason"] == "no model beats persistence" and pointer["updated_at"].endswith("Z")
    assert "model_path" not in pointer and "sha256" not in pointer
    assert registry_module.is_fallback(pointer)


def test_a_second_fallback_keeps_the_model_the_first_one_displaced(registry):
    _save(registry, 1)
    registry.promote(DEVICE, _version(1))
    _fallback(registry)
    assert _fallback(registry, reason="still nothing beats it")["previous_version"] == _version(1)


def test_a_fallback_is_only_written_under_the_device_lock(registry):
    with pytest.raises(RuntimeError, match="device_lock"):
        registry.set_fallback(DEVICE, reason="no model beats persistence")
    assert registry.read_pointer(DEVICE) is None


def test_model_pointers_say_they_serve_a_model_and_old_pointers_without_the_field_still_read(
        registry):
    _save(registry, 1)
    pointer = registry.promote(DEVICE, _version(1))
    assert pointer["serving"] == "model" and not registry_module.is_fallback(pointer)
    old = {k: v for k, v in pointer.items() if k != "serving"}
    atomic_write_json(registry.pointer_path(DEVICE), old)
    assert registry.read_pointer(DEVICE) == old


def test_promoting_over_a_fallback_keeps_the_displaced_model_as_the_rollback_target(registry):
    _save(registry, 1), _save(registry, 2)
    registry.promote(DEVICE, _version(1))
    _fallback(registry)
    pointer = registry.promote(DEVICE, _version(2))
    assert (pointer["serving"], pointer["version"], pointer["previous_version"]) == (
        "model", _version(2), _version(1))


def test_rollback_from_a_fallback_serves_the_displaced_model_again(registry):
    _save(registry, 1)
    registry.promote(DEVICE, _version(1))
    _fallback(registry)
    pointer = registry.rollback(DEVICE)
    assert (pointer["serving"], pointer["version"], pointer["previous_version"]) == (
        "model", _version(1), None)
    assert registry.read_pointer(DEVICE) == pointer


def test_rollback_from_a_fallback_with_no_model_before_it_names_the_fix(registry):
    _save(registry, 1)
    before = _fallback(registry)
    with pytest.raises(NoPreviousVersion, match="served by smart persistence.*--to VERSION"):
        registry.rollback(DEVICE)
    assert registry.read_pointer(DEVICE) == before
    assert registry.rollback(DEVICE, to=_version(1))["version"] == _version(1)


def test_prune_keeps_the_model_a_fallback_displaced(registry):
    for i in range(1, 6):
        _save(registry, i)
    registry.promote(DEVICE, _version(1))
    _fallback(registry)
    report = registry.prune(1)
    assert report.devices[0].removed == [_version(i) for i in (2, 3, 4)]
    assert [m["version"] for m in registry.list_versions(DEVICE)] == [_version(1), _version(5)]


@pytest.mark.parametrize("changes, problem", [
    ({"version": "20260224_130000_aaaaaa"}, "fallback but names a version"),
    ({"model_path": "/etc/passwd"}, "fallback but names model_path"),
    ({"sha256": "0" * 64}, "fallback but names sha256"),
    ({"reason": ""}, "without a reason"),
    ({"reason": None}, "without a reason"),
    ({"updated_at": None}, "without updated_at"),
    ({"previous_version": "../../etc"}, "previous_version is not a version id"),
    ({"challenger_version": "latest"}, "challenger_version is not a version id"),
    ({"daylight_mae": "low"}, "daylight_mae is not a number"),
    ({"cutoff": 5}, "cutoff is not a time"),
    ({"device_id": "tracker02"}, "belongs to device 'tracker02'"),
    ({"serving": "magic"}, "serving 'magic' is not one of model, smart_persistence"),
])
def test_read_pointer_refuses_a_malformed_fallback_pointer(registry, changes, problem):
    pointer = _fallback(registry)
    atomic_write_json(registry.pointer_path(DEVICE), {**pointer, **changes})
    with pytest.raises(CorruptPointer, match=problem):
        registry.read_pointer(DEVICE)


def test_a_model_pointer_without_a_version_is_not_a_fallback(registry):
    _save(registry, 1)
    pointer = registry.promote(DEVICE, _version(1))
    atomic_write_json(registry.pointer_path(DEVICE), {**pointer, "version": None})
    with pytest.raises(CorruptPointer, match="names no valid version"):
        registry.read_pointer(DEVICE)


def test_restore_pointer_puts_back_a_fallback_read_earlier(registry):
    _save(registry, 1)
    registry.promote(DEVICE, _version(1))
    fallback = _fallback(registry)
    registry.rollback(DEVICE)
    assert registry.restore_pointer(DEVICE, fallback) == registry.read_pointer(DEVICE) == fallback
    with pytest.raises(CorruptPointer, match="without a reason"):
        registry.restore_pointer(DEVICE, {**fallback, "reason": " "})
    assert registry.read_pointer(DEVICE) == fallback
