"""Retention: old versions are pruned and temp files a crashed writer left are swept, without
ever removing a version a pointer names or a file a writer still running may own."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from solar_ml_pipeline.config import validate_device_id
from solar_ml_pipeline.model_store.errors import CorruptPointer
from solar_ml_pipeline.model_store.files import TEMP_PREFIX, fsync_dir
from solar_ml_pipeline.model_store.locks import DeviceLocks
from solar_ml_pipeline.model_store.pointer import PointerStore
from solar_ml_pipeline.model_store.versions import VersionStore

# A temp file or half-saved version younger than this may belong to a writer still running.
STALE_AGE_S = 15 * 60


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


class Retention(DeviceLocks, PointerStore, VersionStore):
    """Pruning and temp-file sweeping; `save_version` sweeps too, before it writes."""

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
            fsync_dir(self.versions_dir(device_id))
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
