"""Who served when: every pointer move appended to the device's `pointer_history.jsonl`.

The pointer says what serves now; the history says what served at any past moment, so an
auditor can name the model behind any forecast and a backtest can replay what was served.
The pointer is written first and the history line after it: a crash between the two leaves
a pointer newer than the last line, which `pointer_history` reports as an `unrecorded` move
(at the pointer's `updated_at`) rather than hiding it. Lines are only ever appended.
"""

from __future__ import annotations

import json
import os
from bisect import bisect_right
from datetime import datetime
from pathlib import Path
from typing import Any

from solar_ml_pipeline.config import validate_device_id
from solar_ml_pipeline.model_store.errors import CorruptPointer
from solar_ml_pipeline.model_store.pointer import SERVING_FALLBACK, PointerStore, serving_of

HISTORY_NAME = "pointer_history.jsonl"
MOVE_PROMOTION = "promotion"
MOVE_ROLLBACK = "rollback"
MOVE_FALLBACK = "fallback"
MOVE_DRIFT = "drift"
MOVE_RESTORE = "restore"
MOVE_UNRECORDED = "unrecorded"  # a pointer with no history line: older store, or a crash
MOVES = (MOVE_PROMOTION, MOVE_ROLLBACK, MOVE_FALLBACK, MOVE_DRIFT, MOVE_RESTORE,
         MOVE_UNRECORDED)
HISTORY_FIELDS = ("at", "move", "serving", "version", "replaced", "reason", "run_id")


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def entry_for(pointer: dict[str, Any], move: str, replaced: str | None,
              run_id: str | None, *, at: str | None = None) -> dict[str, Any]:
    """The history line of a pointer just written: what serves from `at` (the pointer's
    `updated_at` unless the move put back an older pointer) on, and what it replaced (a
    version, `smart_persistence`, or None for the device's first pointer)."""
    return {
        "at": at or pointer["updated_at"],
        "move": move,
        "serving": serving_of(pointer),
        "version": pointer.get("version"),
        "replaced": replaced,
        "reason": pointer.get("reason"),
        "run_id": run_id,
        # the P10/P90 band that served with it, so a backtest gives past intervals too
        "intervals": pointer.get("intervals"),
    }


def serving_label(pointer: dict[str, Any] | None) -> str | None:
    """A pointer's version, or `smart_persistence` for a fallback: what `replaced` records."""
    if pointer is None:
        return None
    return SERVING_FALLBACK if serving_of(pointer) == SERVING_FALLBACK else pointer["version"]


class PointerHistory(PointerStore):
    """Appending and reading a device's pointer history."""

    def history_path(self, device_id: str) -> Path:
        return self.device_dir(device_id) / HISTORY_NAME

    def _append_history(self, device_id: str, entry: dict[str, Any]) -> None:
        """One line, appended and flushed to disk; the caller holds the device lock."""
        line = (json.dumps(entry, sort_keys=True, allow_nan=False) + "\n").encode()
        path = self.history_path(device_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def pointer_history(self, device_id: str) -> list[dict[str, Any]]:
        """Every move, oldest first; a torn last line (a crash mid-append) is skipped, and a
        pointer newer than the last line is reported as an `unrecorded` move."""
        device_id = validate_device_id(device_id)
        entries: list[dict[str, Any]] = []
        try:
            raw = self.history_path(device_id).read_bytes()
        except FileNotFoundError:
            raw = b""
        for line in raw.splitlines():
            try:
                entry = json.loads(line)
                parse_time(entry["at"])
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        entries.sort(key=lambda e: parse_time(e["at"]))
        try:
            pointer = self.read_pointer(device_id)
        except CorruptPointer:
            pointer = None
        if pointer is not None and isinstance(pointer.get("updated_at"), str):
            newest = parse_time(entries[-1]["at"]) if entries else None
            if newest is None or parse_time(pointer["updated_at"]) > newest:
                replaced = (entries[-1]["version"] or SERVING_FALLBACK) if entries else None
                entries.append(entry_for(pointer, MOVE_UNRECORDED, replaced, None))
        return entries


def served_at(history: list[dict[str, Any]], when: datetime) -> dict[str, Any] | None:
    """The history entry in force at `when` (the last move at or before it), or None when
    nothing served the device yet."""
    times = [parse_time(entry["at"]) for entry in history]
    index = bisect_right(times, when)
    return history[index - 1] if index else None
