"""Storage backends: MongoDB (production, when MONGODB_URI is set) or embedded SQLite."""

from __future__ import annotations

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.storage.base import (
    READING_COLUMNS,
    READING_FIELDS,
    SENSOR_FIELDS,
    RunNotFound,
    RunPage,
    Store,
    StoreUnavailable,
)

__all__ = [
    "READING_COLUMNS",
    "READING_FIELDS",
    "SENSOR_FIELDS",
    "RunNotFound",
    "RunPage",
    "Store",
    "StoreUnavailable",
    "open_store",
]


def open_store(settings: Settings) -> Store:
    """The store the settings select: MongoDB when MONGODB_URI is set, else SQLite."""
    if settings.mongodb_uri:
        from solar_ml_pipeline.storage.mongo import MongoStore

        return MongoStore.from_settings(settings)
    from solar_ml_pipeline.storage.sqlite import SqliteStore

    return SqliteStore.from_settings(settings)
