"""Immutable versions: a pkl and its meta, each written once (pkl first, the meta last, which
completes the version), and unpickled only after the bytes match the sha256 the meta records."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from solar_ml_pipeline.config import validate_device_id
from solar_ml_pipeline.model_store.errors import (
    ChecksumMismatch,
    CorruptMeta,
    ModelStoreError,
    UnsafePath,
    VersionNotFound,
)
from solar_ml_pipeline.model_store.files import (
    SHA256_PATTERN,
    atomic_write_bytes,
    file_sha256,
    json_bytes,
    sha256_hex,
)
from solar_ml_pipeline.model_store.layout import VERSION_PATTERN, StoreLayout
from solar_ml_pipeline.model_store.serialization import deserialize_model, serialize_model


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


class VersionStore(StoreLayout):
    """Saving, listing, verifying and loading versions.

    `save_version` first sweeps stale temp files with `clean_temp_files`, which
    retention.Retention provides in ModelRegistry.
    """

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
            device_id=device_id, version=version, model_path=self.relative(model_path),
            metadata_path=self.relative(metadata_path), sha256=sha256_hex(data),
            size_bytes=len(data),
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
            actual, _ = file_sha256(self._confined(device_id, path))
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
