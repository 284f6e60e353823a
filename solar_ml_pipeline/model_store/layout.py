"""Where a device's files live under MODEL_DIR, and the checks that keep every path inside it.

A device id and a version id each become part of a file name, so both are validated where
the names are made; a link leading out of a device's versions folder is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

from solar_ml_pipeline.config import is_valid_device_id, validate_device_id
from solar_ml_pipeline.model_store.errors import InvalidVersion, UnsafePath

VERSIONS_DIR = "versions"
VERSION_PATTERN = re.compile(r"^\d{8}_\d{6}(?:_[0-9a-f]{6})?$")


def validate_version(version: object) -> str:
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise InvalidVersion(
            f"invalid model version {repr(version)[:80]}: expected YYYYMMDD_HHMMSS_xxxxxx "
            "(see `solar-ml model list --device D`)"
        )
    return version


class StoreLayout:
    """The paths of one MODEL_DIR: the base every part of ModelRegistry builds on."""

    def __init__(self, model_dir: Path, lock_url: str | None = None) -> None:
        self.model_dir = Path(model_dir).expanduser().resolve()
        # PostgreSQL URL whose advisory locks serialise a device's promotions across hosts
        # (a file lock on a network filesystem does not); None: one host, file locks only.
        self.lock_url = lock_url

    def device_dir(self, device_id: str) -> Path:
        return self.model_dir / validate_device_id(device_id)

    def versions_dir(self, device_id: str) -> Path:
        return self.device_dir(device_id) / VERSIONS_DIR

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

    def relative(self, path: Path) -> str:
        """A file's name relative to MODEL_DIR, as pointers and metas record it: the store
        serves wherever it is mounted or restored (`device/versions/model_V.pkl`)."""
        return path.relative_to(self.model_dir).as_posix()

    def _names_expected(self, raw: object, expected: Path) -> bool:
        """Whether a recorded path names this file: relative to MODEL_DIR (this release), or
        absolute (the first release's), where a store copied or mounted elsewhere still
        names its own `device/versions/file`. Files are always opened at `expected`."""
        if not isinstance(raw, str) or not raw:
            return False
        named = Path(raw)
        if not named.is_absolute():
            return (self.model_dir / named).resolve() == expected.resolve()
        if named.resolve() == expected.resolve():
            return True
        own = expected.relative_to(self.model_dir).parts
        return ".." not in named.parts and named.parts[-len(own):] == own

    def list_devices(self) -> list[str]:
        """Device folders under MODEL_DIR; folders whose names are not device ids are ignored."""
        if not self.model_dir.is_dir():
            return []
        return sorted(
            entry.name for entry in self.model_dir.iterdir()
            if entry.is_dir() and is_valid_device_id(entry.name)
        )
