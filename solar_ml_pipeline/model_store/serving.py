"""The serving loader: the current model of a device, verified, cached, promotion-aware.

Each call reads the small pointer file, so a promotion or rollback is served on the next call
without a restart; the unpickled model is cached by (device, version, sha256), so an unchanged
pointer costs one JSON read. Bytes are unpickled only after their sha256 matches both the
pointer and the version's meta: a torn, replaced or tampered file raises, never serves.
A smart-persistence fallback pointer (no model of the device beats persistence) is served
as such: no model, `serving` says so and `reason` says why; the caller forecasts without one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from solar_ml_pipeline.config import validate_device_id
from solar_ml_pipeline.model_store.errors import NoCurrentModel
from solar_ml_pipeline.model_store.pointer import SERVING_FALLBACK, SERVING_MODEL, is_fallback
from solar_ml_pipeline.model_store.registry import ModelRegistry


@dataclass(frozen=True)
class ServedModel:
    """What serves a device: a model (`serving` "model"), or smart persistence
    (`serving` "smart_persistence", `version` and `model` None, `reason` why)."""

    device_id: str
    version: str | None
    model: Any = field(repr=False)
    pointer: dict[str, Any]

    @property
    def is_fallback(self) -> bool:
        return is_fallback(self.pointer)

    @property
    def serving(self) -> str:
        return SERVING_FALLBACK if self.is_fallback else SERVING_MODEL

    @property
    def reason(self) -> str | None:
        return self.pointer.get("reason") if self.is_fallback else None


class ModelServer:
    """Thread-safe: the API serves requests from several threads with one instance."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._cache: dict[str, tuple[tuple[str, str, str], Any]] = {}
        self._lock = threading.Lock()

    def load_current(self, device_id: str) -> ServedModel:
        device_id = validate_device_id(device_id)
        pointer = self.registry.read_pointer(device_id)
        if pointer is None:
            raise NoCurrentModel(
                f"device {device_id} has no current model: "
                f"train one with `solar-ml retrain --device {device_id}`"
            )
        if is_fallback(pointer):
            with self._lock:
                self._cache.pop(device_id, None)  # the displaced model is not served: free it
            return ServedModel(device_id, None, None, pointer)
        key = (device_id, pointer["version"], pointer["sha256"])
        with self._lock:
            cached = self._cache.get(device_id)
        if cached is not None and cached[0] == key:
            return ServedModel(device_id, pointer["version"], cached[1], pointer)
        model = self.registry.load_model(
            device_id, pointer["version"], expected_sha256=pointer["sha256"]
        )
        with self._lock:
            self._cache[device_id] = (key, model)  # one model per device: the old one is freed
        return ServedModel(device_id, pointer["version"], model, pointer)
