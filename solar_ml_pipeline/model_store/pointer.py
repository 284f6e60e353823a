"""The pointer (`current_model.json`): what serves a device, a model version or smart
persistence, in one format read and checked in one place, so a pointer that is not its
device's own, or not whole, is refused before anything trusts it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from solar_ml_pipeline.config import validate_device_id
from solar_ml_pipeline.model_store.errors import CorruptPointer
from solar_ml_pipeline.model_store.files import SHA256_PATTERN
from solar_ml_pipeline.model_store.layout import VERSION_PATTERN, StoreLayout

POINTER_NAME = "current_model.json"
CORE_METRICS = ("mae", "rmse", "r2", "train_samples", "test_samples")
# Meta fields copied into the pointer so `model current` can answer without a second read.
POINTER_COPIED_FIELDS = (
    "model_type", "feature_set", "features", "trained_at", "partition_key",
    "window_start", "window_end", "cutoff", "horizon_minutes", "intervals", "cold_start",
    "trained_on",
)
SERVING_MODEL = "model"
SERVING_FALLBACK = "smart_persistence"
SERVING_KINDS = (SERVING_MODEL, SERVING_FALLBACK)
# What a fallback pointer records of the decision that wrote it (numbers or null): the
# challenger's persistence-gate figures, and the displaced champion's on the same rows.
FALLBACK_FIGURES = ("daylight_mae", "daylight_persistence_mae", "champion_daylight_mae")
# Fields only a model pointer has: a fallback pointer naming a file is not a fallback.
MODEL_POINTER_FIELDS = ("model_path", "metadata_path", "sha256")


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


def previous_after(current: dict[str, Any] | None, new_version: str | None) -> str | None:
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


class PointerStore(StoreLayout):
    """Reading a device's pointer, and the checks every pointer read or written passes."""

    def pointer_path(self, device_id: str) -> Path:
        return self.device_dir(device_id) / POINTER_NAME

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
