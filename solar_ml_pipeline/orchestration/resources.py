"""Dagster resources: the readings/run-log store, the model registry and the retrain policy.

Each is configured from Settings in `definitions.py`; the MongoDB URI is passed as an EnvVar
so it is never shown in the UI.
"""

from __future__ import annotations

import os
from dataclasses import asdict, fields
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.forecasting.attempt import Policy
from solar_ml_pipeline.model_store.registry import ModelRegistry
from solar_ml_pipeline.storage import Store, open_store


class StoreResource(dg.ConfigurableResource):
    """Readings, run log and sites: MongoDB when `mongodb_uri` is set, else embedded SQLite."""

    mongodb_uri: str | None = None
    mongodb_db: str = "solar_db"
    collection_readings: str = "readings_raw"
    collection_model_runs: str = "model_runs"
    collection_devices: str = "devices"
    sqlite_path: str = ".solar_ml/solar_ml.db"
    mongodb_timeout_ms: int = 5000

    _store: Store | None = PrivateAttr(default=None)
    _pid: int | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings) -> StoreResource:
        return cls(
            mongodb_uri=dg.EnvVar("MONGODB_URI") if settings.mongodb_uri else None,
            mongodb_db=settings.mongodb_db,
            collection_readings=settings.collection_readings,
            collection_model_runs=settings.collection_model_runs,
            collection_devices=settings.collection_devices,
            sqlite_path=str(settings.sqlite_path),
            mongodb_timeout_ms=settings.mongodb_timeout_ms,
        )

    def settings(self) -> Settings:
        return Settings(
            mongodb_uri=self.mongodb_uri,
            mongodb_db=self.mongodb_db,
            collection_readings=self.collection_readings,
            collection_model_runs=self.collection_model_runs,
            collection_devices=self.collection_devices,
            solar_ml_home=Path(self.sqlite_path).parent,
            mongodb_timeout_ms=self.mongodb_timeout_ms,
        )

    def open(self) -> Store:
        """One store per process: connections are not shared across a fork."""
        if self._store is None or self._pid != os.getpid():
            self._store = open_store(self.settings())
            self._pid = os.getpid()
        return self._store


class ModelStoreResource(dg.ConfigurableResource):
    """The versioned model files and current-model pointers under MODEL_DIR."""

    model_dir: str
    lock_url: str | None = None  # DAGSTER_PG_URL: promotions serialised across hosts

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelStoreResource:
        return cls(model_dir=str(settings.model_dir),
                   lock_url=dg.EnvVar("DAGSTER_PG_URL") if settings.dagster_pg_url else None)

    def registry(self) -> ModelRegistry:
        return ModelRegistry(Path(self.model_dir), lock_url=self.lock_url)


class RetrainPolicy(dg.ConfigurableResource):
    """How a partition is trained and judged; the values come from Settings."""

    retrain_days: int = 30
    horizon_minutes: int = 15
    model_type: str = "hist_gradient_boosting"
    feature_set: str = "solar"
    min_training_rows: int = 100
    min_usable_share: float = 0.5
    cold_start_days: float = 7.0
    mae_threshold_percent: float = 10.0
    require_beat_persistence: bool = True
    timezone: str = "Asia/Colombo"
    site_latitude: float = 6.9271
    site_longitude: float = 79.8612

    @classmethod
    def from_settings(cls, settings: Settings) -> RetrainPolicy:
        return cls(**asdict(Policy.from_settings(settings)),
                   site_latitude=settings.site_latitude, site_longitude=settings.site_longitude)

    def plain(self) -> Policy:
        """The domain's Policy, which the attempt steps take (the same values)."""
        return Policy(**{f.name: getattr(self, f.name) for f in fields(Policy)})
