"""The versioned model store: immutable version files, a per-device pointer, rollback, retention.

```
$MODEL_DIR/<device_id>/versions/model_<version>.pkl
$MODEL_DIR/<device_id>/versions/model_<version>_meta.json
$MODEL_DIR/<device_id>/current_model.json          the pointer
$MODEL_DIR/<device_id>/.lock                       serialises pointer moves and pruning
```

Promises kept here, so every caller (IO manager, promotion, CLI, API, serving) gets them:
- every file is written atomically (temp + fsync + rename + folder fsync): a crash leaves the
  old or the new file, never a torn one; a version file is never overwritten;
- a version is complete only when its meta exists beside its pkl (pkl written first, meta
  last; pruning deletes the meta first), so a half-written or half-pruned version is ignored;
- bytes are unpickled only after their sha256 matches the meta (and the pointer, when serving);
- a pointer or meta naming a file other than its own version's, inside this device's
  `versions/` folder, is refused (no path traversal, no symlink escape);
- the pointer only moves under the device's lock, after the target's sha256 is verified;
- a pointer is one of two kinds (`serving`): "model" names a version to serve (pointers
  written before the field existed are model pointers), "smart_persistence" says that no
  model of the device beats persistence, so serving falls back to smart persistence; it
  names no version (`version` null) but keeps the displaced model as `previous_version`.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import math
import os
import pickle
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from solar_ml_pipeline.config import is_valid_device_id, validate_device_id

POINTER_NAME = "current_model.json"
VERSIONS_DIR = "versions"
LOCK_NAME = ".lock"
TEMP_PREFIX = ".tmp-"
PICKLE_PROTOCOL = 5
# A temp file or half-saved version younger than this may belong to a writer still running.
STALE_AGE_S = 15 * 60
DEFAULT_LOCK_TIMEOUT_S = 120.0
VERSION_PATTERN = re.compile(r"^\d{8}_\d{6}(?:_[0-9a-f]{6})?$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
CORE_METRICS = ("mae", "rmse", "r2", "train_samples", "test_samples")
# Meta fields copied into the pointer so `model current` can answer without a second read.
POINTER_COPIED_FIELDS = (
    "model_type", "feature_set", "features", "trained_at", "partition_key",
    "window_start", "window_end", "cutoff", "horizon_minutes",
)
SERVING_MODEL = "model"
SERVING_FALLBACK = "smart_persistence"
SERVING_KINDS = (SERVING_MODEL, SERVING_FALLBACK)
# What a fallback pointer records of the decision that wrote it (numbers or null): the
# challenger's persistence-gate figures, and the displaced champion's on the same rows.
FALLBACK_FIGURES = ("daylight_mae", "daylight_persistence_mae", "champion_daylight_mae")
# Fields only a model pointer has: a fallback pointer naming a file is not a fallback.
MODEL_POINTER_FIELDS = ("model_path", "metadata_path", "sha256")


class ModelStoreError(Exception):
    """A model store problem the user can act on; the message is one line naming the fix."""


class NoCurrentModel(ModelStoreError):
    """The device has no pointer yet."""


class CorruptPointer(ModelStoreError):
    """The pointer does not parse, or names files that are not its own version's."""


class CorruptMeta(ModelStoreError):
    """A version's meta does not parse, or names files that are not its own."""


class ChecksumMismatch(ModelStoreError):
    """A model file's bytes do not match the sha256 recorded for them."""


class VersionNotFound(ModelStoreError):
    """The version does not exist (or is incomplete) for that device."""


class InvalidVersion(ModelStoreError, ValueError):
    """A version id that is not `YYYYMMDD_HHMMSS_xxxxxx`; it becomes part of a file name."""


class NoPreviousVersion(ModelStoreError):
    """A rollback without `to` on a pointer that records no previous version."""


class UnsafePath(ModelStoreError):
    """A version file that is a link leading outside the device's versions folder."""


class LockTimeout(ModelStoreError):
    """Another process held the device lock for longer than the timeout."""


@dataclass(frozen=True)
class ModelCandidate:
    """What the model_version asset returns; the IO manager stores it as a new version."""

    device_id: str
    version: str
    model: Any
    meta: dict[str, Any]


@dataclass(frozen=True)
class StoredVersion:
    device_id: str
    version: str
    model_path: Path
    metadata_path: Path
    sha256: str
    meta: dict[str, Any]
    model: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class DevicePrune:
    device_id: str
    kept: list[str]
    removed: list[str]
    freed_bytes: int
    skipped_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id, "kept": self.kept, "removed": self.removed,
            "freed_bytes": self.freed_bytes, "skipped_reason": self.skipped_reason,
        }


@dataclass(frozen=True)
class PruneReport:
    keep: int
    dry_run: bool
    devices: list[DevicePrune]
    temp_files_removed: int = 0

    @property
    def freed_bytes(self) -> int:
        return sum(d.freed_bytes for d in self.devices)

    @property
    def removed_count(self) -> int:
        return sum(len(d.removed) for d in self.devices)

    def to_dict(self) -> dict[str, Any]:
        return {
            "keep": self.keep, "dry_run": self.dry_run, "freed_bytes": self.freed_bytes,
            "removed_count": self.removed_count, "temp_files_removed": self.temp_files_removed,
            "devices": [d.to_dict() for d in self.devices],
        }


# --- serialisation: one place, so a compression choice changes only these two ---------------


def serialize_model(model: object) -> bytes:
    return pickle.dumps(model, protocol=PICKLE_PROTOCOL)


# Versions pickled by the first release name its flat modules; they still load after the move.
MOVED_MODULES = {
    "solar_ml_pipeline.training": "solar_ml_pipeline.forecasting.training",
    "solar_ml_pipeline.features": "solar_ml_pipeline.forecasting.features",
    "solar_ml_pipeline.solar": "solar_ml_pipeline.forecasting.solar",
    "solar_ml_pipeline.simulator": "solar_ml_pipeline.readings.simulator",
}


class _MovedModulesUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(MOVED_MODULES.get(module, module), name)


def deserialize_model(data: bytes) -> object:
    # Callers pass only bytes whose sha256 matched the meta written when we pickled them.
    return _MovedModulesUnpickler(io.BytesIO(data)).load()  # noqa: S301 - sha256 verified


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


# --- atomic files -----------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write `path` so that a crash at any instant leaves the old file or the new one.

    overwrite=False links the finished temp file into place, which fails if the target exists,
    so an existing file is never replaced even by a concurrent writer (FileExistsError).
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(6)}"
    # O_EXCL: never follow or reuse someone else's file; mode 0o666 lets the umask decide.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temp, path)
        else:
            os.link(temp, path)
            os.unlink(temp)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)


def _jsonable(value: Any, where: str) -> Any:
    """Strict JSON: numpy scalars become numbers, NaN and inf become null (JSON has neither)."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return _jsonable(tolist(), where)
    raise TypeError(
        f"{where} has a {type(value).__name__}, which JSON cannot hold: "
        "convert it to str, int, float, list or dict"
    )


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(_jsonable(obj, "value"), indent=2, allow_nan=False) + "\n").encode()


def atomic_write_json(path: Path, obj: Any, *, overwrite: bool = True) -> None:
    atomic_write_bytes(path, json_bytes(obj), overwrite=overwrite)


# --- versions and the pointer -----------------------------------------------------------------


def validate_version(version: object) -> str:
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise InvalidVersion(
            f"invalid model version {repr(version)[:80]}: expected YYYYMMDD_HHMMSS_xxxxxx "
            "(see `solar-ml model list --device D`)"
        )
    return version


def _utc_now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def serving_of(pointer: dict[str, Any] | None) -> str | None:
    """What a pointer says serves the device; pointers written before the field are model
    pointers; None without a pointer."""
    return None if pointer is None else pointer.get("serving", SERVING_MODEL)


def is_fallback(pointer: dict[str, Any] | None) -> bool:
    """True for a pointer saying the device is served by smart persistence, not a model."""
    return serving_of(pointer) == SERVING_FALLBACK


def _is_version(value: object) -> bool:
    return isinstance(value, str) and bool(VERSION_PATTERN.fullmatch(value))


def _previous_after(current: dict[str, Any] | None, new_version: str | None) -> str | None:
    """The rollback target once `new_version` (None: smart persistence) serves: the model
    serving before it (for a fallback, the model it displaced); re-promoting the current
    version keeps its own."""
    if current is None:
        return None
    if is_fallback(current) or current["version"] == new_version:
        previous = current.get("previous_version")
        return None if previous == new_version else previous
    return current["version"]


def pointer_metrics(meta: dict[str, Any]) -> dict[str, Any]:
    """The original pointer's metrics (mae, rmse, r2, samples) plus every other numeric metric."""
    nested = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    metrics: dict[str, Any] = {}
    for name in CORE_METRICS:
        value = nested.get(name, meta.get(name))
        if _is_number(value):
            metrics[name] = value
    for name, value in nested.items():
        if name not in metrics and _is_number(value):
            metrics[name] = value
    return metrics


_held_locks = threading.local()


def _held() -> dict[str, int]:
    if not hasattr(_held_locks, "depths"):
        _held_locks.depths = {}
    return _held_locks.depths


class ModelRegistry:
    """Versioned model files and current-model pointers under one MODEL_DIR."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = Path(model_dir).expanduser().resolve()

    # paths

    def device_dir(self, device_id: str) -> Path:
        return self.model_dir / validate_device_id(device_id)

    def versions_dir(self, device_id: str) -> Path:
        return self.device_dir(device_id) / VERSIONS_DIR

    def pointer_path(self, device_id: str) -> Path:
        return self.device_dir(device_id) / POINTER_NAME

    def model_path(self, device_id: str, version: str) -> Path:
        return self.versions_dir(device_id) / f"model_{validate_version(version)}.pkl"

    def metadata_path(self, device_id: str, version: str) -> Path:
        return self.versions_dir(device_id) / f"model_{validate_version(version)}_meta.json"

    def _confined(self, device_id: str, path: Path) -> Path:
        """The path, if it (after symlinks) stays inside the device's versions folder."""
        resolved = path.resolve()
        if not resolved.is_relative_to(self.versions_dir(device_id).resolve()):
            raise UnsafePath(
                f"{path} leads outside {self.versions_dir(device_id)}: remove that link"
            )
        return resolved

    def _names_expected(self, raw: object, expected: Path) -> bool:
        if not isinstance(raw, str) or not raw:
            return False
        named = Path(raw)
        if not named.is_absolute():
            named = self.model_dir / named
        return named.resolve() == expected.resolve()

    # devices and versions

    def list_devices(self) -> list[str]:
        """Device folders under MODEL_DIR; folders whose names are not device ids are ignored."""
        if not self.model_dir.is_dir():
            return []
        return sorted(
            entry.name for entry in self.model_dir.iterdir()
            if entry.is_dir() and is_valid_device_id(entry.name)
        )

    @staticmethod
    def new_version_id(trained_at: datetime) -> str:
        """UTC training time plus a random suffix: sorts by time, unique across concurrent runs."""
        if trained_at.tzinfo is None:
            raise ValueError("trained_at must be timezone-aware: pass datetime.now(UTC)")
        stamp = trained_at.astimezone(UTC).strftime("%Y%m%d_%H%M%S")
        return f"{stamp}_{secrets.token_hex(3)}"

    def save_version(
        self, device_id: str, version: str, model: object, meta: dict[str, Any]
    ) -> StoredVersion:
        """Store a new immutable version: the pkl first, then its meta (which completes it).

        Also removes temp files a crashed earlier save left behind (once they are stale).
        """
        device_id = validate_device_id(device_id)
        model_path = self.model_path(device_id, version)
        metadata_path = self.metadata_path(device_id, version)
        # Created here, not in the write below: there a FileExistsError means "version exists".
        folder = self.versions_dir(device_id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelStoreError(
                f"cannot create the model folder {folder}: {exc.strerror or exc}: "
                "make MODEL_DIR a writable directory"
            ) from None
        self.clean_temp_files(device_id)
        data = serialize_model(model)
        full_meta = dict(meta)
        full_meta.update(
            device_id=device_id, version=version, model_path=str(model_path),
            metadata_path=str(metadata_path), sha256=sha256_hex(data), size_bytes=len(data),
        )
        meta_data = json_bytes(full_meta)  # fails on a bad meta before any file is written
        try:
            atomic_write_bytes(model_path, data, overwrite=False)
            atomic_write_bytes(metadata_path, meta_data, overwrite=False)
        except FileExistsError:
            raise ModelStoreError(
                f"model version {version} of device {device_id} already exists and is never "
                "overwritten: store it under a new version id (ModelRegistry.new_version_id)"
            ) from None
        return StoredVersion(
            device_id, version, model_path, metadata_path, full_meta["sha256"],
            json.loads(meta_data), model,
        )

    def read_meta(self, device_id: str, version: str) -> dict[str, Any]:
        device_id = validate_device_id(device_id)
        path = self.metadata_path(device_id, version)
        try:
            meta = json.loads(self._confined(device_id, path).read_bytes())
        except FileNotFoundError:
            raise VersionNotFound(
                f"model version {version} of device {device_id} not found: "
                f"see `solar-ml model list --device {device_id}`"
            ) from None
        except (ValueError, UnicodeDecodeError):
            raise CorruptMeta(
                f"{path} is not valid JSON: restore it or prune the version"
            ) from None
        problem = self._meta_problem(device_id, version, meta)
        if problem:
            raise CorruptMeta(f"{path} {problem}: restore it or prune the version")
        return meta

    def _meta_problem(self, device_id: str, version: str, meta: object) -> str | None:
        if not isinstance(meta, dict):
            return "is not a JSON object"
        if meta.get("device_id") != device_id or meta.get("version") != version:
            return f"describes {meta.get('device_id')!r}/{meta.get('version')!r}, not its own file"
        if not self._names_expected(meta.get("model_path"), self.model_path(device_id, version)):
            return "names a model file other than its own"
        if not self._names_expected(
            meta.get("metadata_path"), self.metadata_path(device_id, version)
        ):
            return "names a metadata file other than its own"
        if not isinstance(meta.get("sha256"), str) or not SHA256_PATTERN.fullmatch(meta["sha256"]):
            return "has no valid sha256"
        return None

    def _version_files(self, device_id: str) -> dict[str, set[str]]:
        """version -> {"pkl", "meta"} for every file in the versions folder, complete or not."""
        found: dict[str, set[str]] = {}
        folder = self.versions_dir(device_id)
        if not folder.is_dir():
            return found
        for entry in folder.iterdir():
            name = entry.name
            if name.startswith("model_") and name.endswith("_meta.json"):
                version, kind = name[len("model_"):-len("_meta.json")], "meta"
            elif name.startswith("model_") and name.endswith(".pkl"):
                version, kind = name[len("model_"):-len(".pkl")], "pkl"
            else:
                continue
            if VERSION_PATTERN.fullmatch(version):
                found.setdefault(version, set()).add(kind)
        return found

    def list_versions(self, device_id: str) -> list[dict[str, Any]]:
        """Metas of complete versions, oldest first; incomplete or corrupt versions are skipped."""
        device_id = validate_device_id(device_id)
        metas = []
        for version, kinds in sorted(self._version_files(device_id).items()):
            if kinds != {"pkl", "meta"}:
                continue
            try:
                metas.append(self.read_meta(device_id, version))
            except (VersionNotFound, CorruptMeta, UnsafePath):
                continue
        return metas

    def versions_for_partition(self, device_id: str, partition_key: str) -> list[dict[str, Any]]:
        return [m for m in self.list_versions(device_id) if m.get("partition_key") == partition_key]

    def _read_verified(
        self, device_id: str, version: str, expected_sha256: str | None
    ) -> tuple[dict[str, Any], bytes]:
        meta = self.read_meta(device_id, version)
        path = self.model_path(device_id, version)
        try:
            data = self._confined(device_id, path).read_bytes()
        except FileNotFoundError:
            raise VersionNotFound(
                f"model file of version {version} of device {device_id} is missing ({path}): "
                f"roll back with `solar-ml model rollback --device {device_id}` or retrain"
            ) from None
        actual = sha256_hex(data)
        for source, wanted in (("meta", meta["sha256"]), ("pointer", expected_sha256)):
            if wanted is not None and actual != wanted:
                raise ChecksumMismatch(
                    f"{path} has sha256 {actual[:12]}…, its {source} says {wanted[:12]}…: "
                    f"the file is damaged or was replaced; roll back with "
                    f"`solar-ml model rollback --device {device_id}` or retrain"
                )
        return meta, data

    def load_model(
        self, device_id: str, version: str, *, expected_sha256: str | None = None
    ) -> object:
        """Unpickle a version only after its bytes match the meta's (and the caller's) sha256."""
        _, data = self._read_verified(device_id, version, expected_sha256)
        return deserialize_model(data)

    def load_version(
        self, device_id: str, version: str, *, expected_sha256: str | None = None
    ) -> StoredVersion:
        device_id = validate_device_id(device_id)
        meta, data = self._read_verified(device_id, version, expected_sha256)
        return StoredVersion(
            device_id, version, self.model_path(device_id, version),
            self.metadata_path(device_id, version), sha256_hex(data), meta,
            deserialize_model(data),
        )

    def verify_version(self, device_id: str, version: str) -> dict[str, Any]:
        """The version's meta, once its pkl's sha256 (streamed, not unpickled) matches it."""
        meta = self.read_meta(device_id, version)
        path = self.model_path(device_id, version)
        try:
            actual, _ = _file_sha256(self._confined(device_id, path))
        except FileNotFoundError:
            raise VersionNotFound(
                f"model file of version {version} of device {device_id} is missing ({path}): "
                "choose another version or retrain"
            ) from None
        if actual != meta["sha256"]:
            raise ChecksumMismatch(
                f"{path} has sha256 {actual[:12]}…, its meta says {meta['sha256'][:12]}…: "
                "the file is damaged or was replaced; choose another version or retrain"
            )
        return meta

    # the pointer

    def read_pointer(self, device_id: str) -> dict[str, Any] | None:
        """The pointer (either kind), or None when the device has none; refuses one that is
        not its own or not whole."""
        device_id = validate_device_id(device_id)
        path = self.pointer_path(device_id)
        fix = f"repair it with `solar-ml model rollback --device {device_id} --to VERSION`"
        try:
            pointer = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            raise CorruptPointer(f"{path} is not valid JSON: {fix}") from None
        problem = self._pointer_problem(device_id, pointer)
        if problem:
            raise CorruptPointer(f"{path} {problem}: {fix}")
        return pointer

    def _pointer_problem(self, device_id: str, pointer: object) -> str | None:
        if not isinstance(pointer, dict):
            return "is not a JSON object"
        serving = serving_of(pointer)
        if serving not in SERVING_KINDS:
            return f"serving {str(serving)[:40]!r} is not one of {', '.join(SERVING_KINDS)}"
        if serving == SERVING_FALLBACK:
            problem = self._fallback_problem(pointer)
            if problem:
                return problem
        elif not _is_version(pointer.get("version")):
            return "names no valid version"
        if pointer.get("device_id", device_id) != device_id:
            return f"belongs to device {pointer.get('device_id')!r}"
        previous = pointer.get("previous_version")
        if previous is not None and not _is_version(previous):
            return "previous_version is not a version id"
        if serving == SERVING_FALLBACK:
            return None
        version = pointer["version"]
        for key, expected in (
            ("model_path", self.model_path(device_id, version)),
            ("metadata_path", self.metadata_path(device_id, version)),
        ):
            if not self._names_expected(pointer.get(key), expected):
                return f"{key} {str(pointer.get(key))[:200]!r} is not {expected}"
        sha = pointer.get("sha256")
        if not isinstance(sha, str) or not SHA256_PATTERN.fullmatch(sha):
            return "has no valid sha256"
        return None

    @staticmethod
    def _fallback_problem(pointer: dict[str, Any]) -> str | None:
        if pointer.get("version") is not None:
            return "is a smart-persistence fallback but names a version"
        named = [key for key in MODEL_POINTER_FIELDS if pointer.get(key) is not None]
        if named:
            return f"is a smart-persistence fallback but names {', '.join(named)}"
        reason = pointer.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            return "is a smart-persistence fallback without a reason"
        if not isinstance(pointer.get("updated_at"), str):
            return "is a smart-persistence fallback without updated_at"
        challenger = pointer.get("challenger_version")
        if challenger is not None and not _is_version(challenger):
            return "challenger_version is not a version id"
        if pointer.get("cutoff") is not None and not isinstance(pointer["cutoff"], str):
            return "cutoff is not a time"
        for name in FALLBACK_FIGURES:
            value = pointer.get(name)
            if value is not None and not (_is_number(value) and math.isfinite(value)):
                return f"{name} is not a number"
        return None

    @contextmanager
    def device_lock(
        self, device_id: str, timeout_s: float | None = DEFAULT_LOCK_TIMEOUT_S
    ) -> Iterator[None]:
        """Exclusive per-device lock across processes (flock on `<device>/.lock`).

        Reentrant within a thread, so promotion code can hold it across read-decide-promote
        and still call `promote`. The kernel drops it when the holder dies: no stale locks.
        """
        lock_path = self.device_dir(device_id) / LOCK_NAME
        key = str(lock_path)
        depths = _held()
        if depths.get(key):
            depths[key] += 1
            try:
                yield
            finally:
                depths[key] -= 1
            return
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise LockTimeout(
                            f"device {device_id} is locked by another retrain, rollback or prune "
                            f"for over {timeout_s:g}s: retry when it finishes"
                        ) from None
                    time.sleep(0.05)
            depths[key] = 1
            try:
                yield
            finally:
                depths.pop(key, None)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def holds_lock(self, device_id: str) -> bool:
        return bool(_held().get(str(self.device_dir(device_id) / LOCK_NAME)))

    def _store_pointer(self, device_id: str, pointer: dict[str, Any]) -> dict[str, Any]:
        """Every pointer write: under the lock, validated as read_pointer would, atomic."""
        if not self.holds_lock(device_id):
            raise RuntimeError("the pointer may only move under device_lock")
        stored = json.loads(json_bytes(pointer))
        problem = self._pointer_problem(device_id, stored)
        if problem:
            raise CorruptPointer(f"refusing to write a pointer for {device_id} that {problem}")
        atomic_write_json(self.pointer_path(device_id), pointer)
        return stored

    def _write_pointer(
        self, device_id: str, meta: dict[str, Any], previous: str | None, reason: str | None
    ) -> dict[str, Any]:
        version = meta["version"]
        pointer: dict[str, Any] = {
            "device_id": device_id,
            "serving": SERVING_MODEL,
            "model_path": str(self.model_path(device_id, version)),
            "metadata_path": str(self.metadata_path(device_id, version)),
            "version": version,
            "updated_at": _utc_now_iso(),
            "metrics": pointer_metrics(meta),
            "sha256": meta["sha256"],
            "previous_version": previous,
        }
        for name in POINTER_COPIED_FIELDS:
            if name in meta:
                pointer[name] = meta[name]
        if reason is not None:
            pointer["reason"] = reason
        return self._store_pointer(device_id, pointer)

    def set_fallback(
        self, device_id: str, *, reason: str, challenger_version: str | None = None,
        cutoff: str | None = None, figures: dict[str, float | None] | None = None,
    ) -> dict[str, Any]:
        """Say the device is served by smart persistence: no model of it beats persistence.

        The caller holds `device_lock` across its read-decide-write, as for set_pointer. The
        model serving until now (or the one an earlier fallback displaced) is kept as
        `previous_version`, the rollback target; `cutoff` is the challenger's data cutoff (an
        older challenger is a backfill and leaves the fallback); `figures` are FALLBACK_FIGURES.
        """
        device_id = validate_device_id(device_id)
        if not self.holds_lock(device_id):
            raise RuntimeError("set_fallback needs device_lock held: take the lock first")
        previous = _previous_after(self.read_pointer(device_id), None)
        known = figures or {}
        pointer: dict[str, Any] = {
            "device_id": device_id,
            "serving": SERVING_FALLBACK,
            "version": None,
            "reason": reason,
            "updated_at": _utc_now_iso(),
            "previous_version": previous,
            "challenger_version": challenger_version,
            "cutoff": cutoff,
            **{name: known.get(name) for name in FALLBACK_FIGURES},
        }
        return self._store_pointer(device_id, pointer)

    def restore_pointer(self, device_id: str, pointer: dict[str, Any]) -> dict[str, Any]:
        """Put back a pointer read earlier (either kind), e.g. to undo a move the run log
        refused; validated as read_pointer would, a model pointer's version verified."""
        device_id = validate_device_id(device_id)
        with self.device_lock(device_id):
            if not is_fallback(pointer):
                self.verify_version(device_id, validate_version(pointer.get("version")))
            return self._store_pointer(device_id, pointer)

    def set_pointer(
        self, device_id: str, version: str, *, reason: str | None = None
    ) -> dict[str, Any]:
        """Point the device at a verified version; the replaced version becomes `previous`.

        The caller holds `device_lock` across its read-decide-move; `promote` takes it for you.
        """
        device_id = validate_device_id(device_id)
        validate_version(version)
        if not self.holds_lock(device_id):
            raise RuntimeError("set_pointer needs device_lock held: use promote, or take the lock")
        meta = self.verify_version(device_id, version)
        previous = _previous_after(self.read_pointer(device_id), version)
        return self._write_pointer(device_id, meta, previous, reason)

    def promote(self, device_id: str, version: str, *, reason: str | None = None) -> dict[str, Any]:
        """`set_pointer` under the device lock (reentrant: fine if the caller holds it)."""
        with self.device_lock(device_id):
            return self.set_pointer(device_id, version, reason=reason)

    def rollback(self, device_id: str, to: str | None = None) -> dict[str, Any]:
        """Move the pointer back (to `previous_version` or `to`); twice in a row rolls forward.

        With `to`, a corrupt pointer is replaced, which is how one is repaired. From a
        smart-persistence fallback, the model it displaced is `previous_version`.
        """
        device_id = validate_device_id(device_id)
        if to is not None:
            validate_version(to)
        with self.device_lock(device_id):
            try:
                current = self.read_pointer(device_id)
            except CorruptPointer:
                if to is None:
                    raise
                current = None
            if current is None and to is None:
                raise NoCurrentModel(
                    f"device {device_id} has no current model, so nothing to roll back: "
                    f"train one with `solar-ml retrain --device {device_id}`"
                )
            target = to if to is not None else current.get("previous_version")
            if target is None and is_fallback(current):
                raise NoPreviousVersion(
                    f"device {device_id} is served by smart persistence and no model served "
                    f"before it: name a version with `--to VERSION` (see `solar-ml model list "
                    f"--device {device_id}`) or retrain"
                )
            if target is None:
                raise NoPreviousVersion(
                    f"device {device_id}'s current model records no previous version: "
                    f"name one with `--to VERSION` (see `solar-ml model list --device {device_id}`)"
                )
            if current is not None and target == current["version"]:
                raise ModelStoreError(
                    f"version {target} is already current for device {device_id}: "
                    "name another with `--to VERSION`"
                )
            meta = self.verify_version(device_id, target)
            previous = _previous_after(current, target)
            return self._write_pointer(device_id, meta, previous, f"rollback to {target}")

    # housekeeping

    def clean_temp_files(
        self, device_id: str | None = None, older_than_s: float = STALE_AGE_S
    ) -> list[Path]:
        """Remove temp files a crashed writer left; younger ones may belong to a live writer."""
        devices = [validate_device_id(device_id)] if device_id is not None else self.list_devices()
        cutoff = time.time() - older_than_s
        removed = []
        for device in devices:
            for folder in (self.device_dir(device), self.versions_dir(device)):
                if not folder.is_dir():
                    continue
                for entry in folder.iterdir():
                    if not entry.name.startswith(TEMP_PREFIX) or not entry.is_file():
                        continue
                    try:
                        if entry.stat().st_mtime <= cutoff:
                            entry.unlink()
                            removed.append(entry)
                    except FileNotFoundError:
                        continue
        return removed

    def prune(
        self, keep: int, *, dry_run: bool = False, device_id: str | None = None,
        stale_after_s: float = STALE_AGE_S,
    ) -> PruneReport:
        """Keep the newest `keep` complete versions per device, plus every version a pointer names.

        Incomplete versions (a pkl without meta or the reverse) are removed once older than
        `stale_after_s`; younger ones may be a save in progress.
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep={keep!r} is invalid: expected a whole number, at least 1")
        devices = [validate_device_id(device_id)] if device_id is not None else self.list_devices()
        results = []
        temp_removed = 0
        for device in devices:
            with self.device_lock(device):
                results.append(self._prune_device(device, keep, dry_run, stale_after_s))
                if not dry_run:
                    temp_removed += len(self.clean_temp_files(device, stale_after_s))
        return PruneReport(keep, dry_run, results, temp_removed)

    def _prune_device(
        self, device_id: str, keep: int, dry_run: bool, stale_after_s: float
    ) -> DevicePrune:
        try:
            pointer = self.read_pointer(device_id)
        except CorruptPointer as exc:
            return DevicePrune(device_id, [], [], 0, f"pointer unreadable, nothing pruned: {exc}")
        protected = set()
        if pointer is not None:
            if pointer["version"] is not None:  # None: a smart-persistence fallback
                protected.add(pointer["version"])
            if pointer.get("previous_version"):
                protected.add(pointer["previous_version"])
        files = self._version_files(device_id)
        complete = [m["version"] for m in self.list_versions(device_id)]
        kept = set(complete[-keep:]) | protected
        stale_before = time.time() - stale_after_s
        doomed = []
        for version in sorted(files):
            if version in kept:
                continue
            if version not in complete and self._newest_mtime(device_id, version) > stale_before:
                continue  # maybe a save in progress
            doomed.append(version)
        freed = 0
        for version in doomed:
            # meta first: a version interrupted here is merely "incomplete", never half-loadable
            for path in (self.metadata_path(device_id, version), self.model_path(device_id, version)):
                try:
                    freed += path.stat().st_size
                    if not dry_run:
                        path.unlink()
                except FileNotFoundError:
                    continue
        if doomed and not dry_run:
            _fsync_dir(self.versions_dir(device_id))
        still_kept = sorted(v for v in files if v not in doomed)
        return DevicePrune(device_id, still_kept, doomed, freed)

    def _newest_mtime(self, device_id: str, version: str) -> float:
        newest = 0.0
        for path in (self.metadata_path(device_id, version), self.model_path(device_id, version)):
            try:
                newest = max(newest, path.stat().st_mtime)
            except FileNotFoundError:
                continue
        return newest


__all__ = [
    "ChecksumMismatch", "CorruptMeta", "CorruptPointer", "DevicePrune", "InvalidVersion",
    "LockTimeout", "ModelCandidate", "ModelRegistry", "ModelStoreError", "NoCurrentModel",
    "NoPreviousVersion", "PruneReport", "SERVING_FALLBACK", "SERVING_KINDS", "SERVING_MODEL",
    "StoredVersion", "VersionNotFound", "is_fallback",
    "UnsafePath", "atomic_write_bytes", "atomic_write_json", "deserialize_model",
    "serialize_model", "sha256_hex", "validate_version",
]
