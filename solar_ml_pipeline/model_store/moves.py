"""Moving the pointer: promote, roll back, fall back to smart persistence, restore. Each move
happens under the device lock, to a version whose sha256 was just verified, and writes a
pointer validated as read_pointer would validate it, so a move never leaves a bad pointer."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from solar_ml_pipeline.config import validate_device_id
from solar_ml_pipeline.model_store.errors import (
    CorruptPointer,
    ModelStoreError,
    NoCurrentModel,
    NoPreviousVersion,
)
from solar_ml_pipeline.model_store.files import atomic_write_json, json_bytes
from solar_ml_pipeline.model_store.history import (
    MOVE_FALLBACK,
    MOVE_PROMOTION,
    MOVE_RESTORE,
    MOVE_ROLLBACK,
    PointerHistory,
    entry_for,
    serving_label,
)
from solar_ml_pipeline.model_store.layout import validate_version
from solar_ml_pipeline.model_store.locks import DeviceLocks
from solar_ml_pipeline.model_store.pointer import (
    FALLBACK_FIGURES,
    POINTER_COPIED_FIELDS,
    SERVING_FALLBACK,
    SERVING_MODEL,
    is_fallback,
    pointer_metrics,
    previous_after,
)
from solar_ml_pipeline.model_store.versions import VersionStore


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PointerMoves(DeviceLocks, PointerHistory, VersionStore):
    """Every way the pointer moves; each write goes through `_store_pointer`, which also
    appends the move to the device's history."""

    # When a move happens (`updated_at`, the history's `at`); a replay of past periods (the
    # backtest benchmark) sets it to the period's cutoff.
    clock: Callable[[], datetime] = staticmethod(_utc_now)

    def _now_iso(self) -> str:
        return _iso(self.clock())

    def _store_pointer(self, device_id: str, pointer: dict[str, Any], *, move: str,
                       run_id: str | None, at: str | None = None) -> dict[str, Any]:
        """Every pointer write: under the lock, validated as read_pointer would, atomic, then
        one history line (after the pointer: see history.py for a crash between the two)."""
        if not self.holds_lock(device_id):
            raise RuntimeError("the pointer may only move under device_lock")
        stored = json.loads(json_bytes(pointer))
        problem = self._pointer_problem(device_id, stored)
        if problem:
            raise CorruptPointer(f"refusing to write a pointer for {device_id} that {problem}")
        try:
            replaced = serving_label(self.read_pointer(device_id))
        except CorruptPointer:
            replaced = None
        atomic_write_json(self.pointer_path(device_id), pointer)
        self._append_history(device_id, entry_for(stored, move, replaced, run_id, at=at))
        return stored

    def _write_pointer(
        self, device_id: str, meta: dict[str, Any], previous: str | None, reason: str | None,
        *, move: str, run_id: str | None,
    ) -> dict[str, Any]:
        version = meta["version"]
        pointer: dict[str, Any] = {
            "device_id": device_id,
            "serving": SERVING_MODEL,
            "model_path": self.relative(self.model_path(device_id, version)),
            "metadata_path": self.relative(self.metadata_path(device_id, version)),
            "version": version,
            "updated_at": self._now_iso(),
            "metrics": pointer_metrics(meta),
            "sha256": meta["sha256"],
            "previous_version": previous,
        }
        for name in POINTER_COPIED_FIELDS:
            if name in meta:
                pointer[name] = meta[name]
        if reason is not None:
            pointer["reason"] = reason
        return self._store_pointer(device_id, pointer, move=move, run_id=run_id)

    def set_fallback(
        self, device_id: str, *, reason: str, challenger_version: str | None = None,
        cutoff: str | None = None, figures: dict[str, float | None] | None = None,
        move: str = MOVE_FALLBACK, run_id: str | None = None,
        intervals: dict[str, Any] | None = None,
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
        previous = previous_after(self.read_pointer(device_id), None)
        known = figures or {}
        pointer: dict[str, Any] = {
            "device_id": device_id,
            "serving": SERVING_FALLBACK,
            "version": None,
            "reason": reason,
            "updated_at": self._now_iso(),
            "previous_version": previous,
            "challenger_version": challenger_version,
            "cutoff": cutoff,
            **{name: known.get(name) for name in FALLBACK_FIGURES},
        }
        if intervals:  # smart persistence's P10/P90 band, calibrated by the challenger
            pointer["intervals"] = intervals
        return self._store_pointer(device_id, pointer, move=move, run_id=run_id)

    def restore_pointer(self, device_id: str, pointer: dict[str, Any]) -> dict[str, Any]:
        """Put back a pointer read earlier (either kind), e.g. to undo a move the run log
        refused; validated as read_pointer would, a model pointer's version verified."""
        device_id = validate_device_id(device_id)
        with self.device_lock(device_id):
            if not is_fallback(pointer):
                self.verify_version(device_id, validate_version(pointer.get("version")))
            # The pointer as it was; its history line is dated now, after the undone move.
            return self._store_pointer(device_id, pointer, move=MOVE_RESTORE, run_id=None,
                                       at=self._now_iso())

    def set_pointer(
        self, device_id: str, version: str, *, reason: str | None = None,
        move: str = MOVE_PROMOTION, run_id: str | None = None,
    ) -> dict[str, Any]:
        """Point the device at a verified version; the replaced version becomes `previous`.

        The caller holds `device_lock` across its read-decide-move; `promote` takes it for you.
        """
        device_id = validate_device_id(device_id)
        validate_version(version)
        if not self.holds_lock(device_id):
            raise RuntimeError("set_pointer needs device_lock held: use promote, or take the lock")
        meta = self.verify_version(device_id, version)
        previous = previous_after(self.read_pointer(device_id), version)
        return self._write_pointer(device_id, meta, previous, reason, move=move, run_id=run_id)

    def promote(self, device_id: str, version: str, *, reason: str | None = None,
                run_id: str | None = None) -> dict[str, Any]:
        """`set_pointer` under the device lock (reentrant: fine if the caller holds it)."""
        with self.device_lock(device_id):
            return self.set_pointer(device_id, version, reason=reason, run_id=run_id)

    def rollback(self, device_id: str, to: str | None = None, *,
                 run_id: str | None = None) -> dict[str, Any]:
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
            previous = previous_after(current, target)
            return self._write_pointer(device_id, meta, previous, f"rollback to {target}",
                                       move=MOVE_ROLLBACK, run_id=run_id)
