"""ModelRegistry, the model store's one public class, and every name callers import from here.

It is composed from one part per concern (see the package docstring for the layout on disk
and the promises the parts keep together), so each part can be read alone while callers keep
a single object and a single import path.
"""

from __future__ import annotations

from solar_ml_pipeline.model_store.errors import (
    ChecksumMismatch,
    CorruptMeta,
    CorruptPointer,
    InvalidVersion,
    LockTimeout,
    LockUnavailable,
    ModelStoreError,
    NoCurrentModel,
    NoPreviousVersion,
    UnsafePath,
    VersionNotFound,
)
from solar_ml_pipeline.model_store.files import (
    SHA256_PATTERN,
    TEMP_PREFIX,
    atomic_write_bytes,
    atomic_write_json,
    json_bytes,
    sha256_hex,
)
from solar_ml_pipeline.model_store.history import (
    HISTORY_NAME,
    MOVE_DRIFT,
    MOVE_FALLBACK,
    MOVE_PROMOTION,
    MOVE_RESTORE,
    MOVE_ROLLBACK,
    MOVE_UNRECORDED,
    MOVES,
    served_at,
)
from solar_ml_pipeline.model_store.history import parse_time as parse_history_time
from solar_ml_pipeline.model_store.layout import VERSION_PATTERN, VERSIONS_DIR, validate_version
from solar_ml_pipeline.model_store.locks import DEFAULT_LOCK_TIMEOUT_S, LOCK_NAME
from solar_ml_pipeline.model_store.moves import PointerMoves
from solar_ml_pipeline.model_store.pointer import (
    CORE_METRICS,
    FALLBACK_FIGURES,
    MODEL_POINTER_FIELDS,
    POINTER_COPIED_FIELDS,
    POINTER_NAME,
    SERVING_FALLBACK,
    SERVING_KINDS,
    SERVING_MODEL,
    is_fallback,
    pointer_metrics,
    serving_of,
)
from solar_ml_pipeline.model_store.retention import STALE_AGE_S, DevicePrune, PruneReport, Retention
from solar_ml_pipeline.model_store.serialization import (
    MOVED_MODULES,
    PICKLE_PROTOCOL,
    deserialize_model,
    serialize_model,
)
from solar_ml_pipeline.model_store.versions import ModelCandidate, StoredVersion


class ModelRegistry(PointerMoves, Retention):
    """Versioned model files and current-model pointers under one MODEL_DIR.

    Paths (layout.StoreLayout), versions (versions.VersionStore), the pointer
    (pointer.PointerStore), locks (locks.DeviceLocks), pointer moves (moves.PointerMoves), the
    pointer's history (history.PointerHistory) and retention (retention.Retention).
    """


__all__ = [
    "CORE_METRICS", "DEFAULT_LOCK_TIMEOUT_S", "FALLBACK_FIGURES", "HISTORY_NAME", "LOCK_NAME",
    "MOVES", "MOVE_DRIFT", "MOVE_FALLBACK", "MOVE_PROMOTION", "MOVE_RESTORE", "MOVE_ROLLBACK",
    "MOVE_UNRECORDED", "parse_history_time", "served_at",
    "MODEL_POINTER_FIELDS", "MOVED_MODULES", "PICKLE_PROTOCOL", "POINTER_COPIED_FIELDS",
    "POINTER_NAME", "SERVING_FALLBACK", "SERVING_KINDS", "SERVING_MODEL", "SHA256_PATTERN",
    "STALE_AGE_S", "TEMP_PREFIX", "VERSIONS_DIR", "VERSION_PATTERN",
    "ChecksumMismatch", "CorruptMeta", "CorruptPointer", "DevicePrune", "InvalidVersion",
    "LockTimeout", "LockUnavailable", "ModelCandidate", "ModelRegistry", "ModelStoreError", "NoCurrentModel",
    "NoPreviousVersion", "PruneReport", "StoredVersion", "UnsafePath", "VersionNotFound",
    "atomic_write_bytes", "atomic_write_json", "deserialize_model", "is_fallback", "json_bytes",
    "pointer_metrics", "serialize_model", "serving_of", "sha256_hex", "validate_version",
]
