"""Shared fixtures: every test gets its own SOLAR_ML_HOME and a clean configuration."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from solar_ml_pipeline.config import Settings, settings_from_env

CONFIG_VARIABLES = (
    "MONGODB_URI", "MONGODB_DB", "COLLECTION_READINGS", "COLLECTION_MODEL_RUNS",
    "COLLECTION_DEVICES", "SOLAR_ML_HOME", "MODEL_DIR", "DAGSTER_HOME", "RETRAIN_ENABLED",
    "RETRAIN_DAYS", "RETRAIN_INTERVAL_HOURS", "RETRAIN_TIME", "TIMEZONE", "PERIODS_START",
    "MAE_THRESHOLD_PERCENT", "HORIZON_MINUTES", "MODEL_TYPE", "FEATURE_SET",
    "MIN_TRAINING_ROWS", "MIN_USABLE_SHARE", "KEEP_VERSIONS", "SITE_LATITUDE", "SITE_LONGITUDE", "API_TOKEN",
    "API_READ_TOKEN", "API_MAX_BODY_BYTES", "API_RETRAIN_TIMEOUT_S",
    "ALERT_WEBHOOK_URL", "DAGSTER_WEBSERVER_URL", "REQUIRE_BEAT_PERSISTENCE", "MAX_CONCURRENT_RUNS", "MONGODB_TIMEOUT_MS",
    "FLEET_BATCH_SIZE", "DRIFT_PERIODS", "COLD_START_DAYS", "DAGSTER_PG_URL", "CELERY_BROKER_URL", "CELERY_BACKEND_URL",
)

# A period whose 7-day window the `trained_device` fixtures fill with simulated readings.
PERIOD = "2026-03-10"
PERIOD_START = datetime(2026, 3, 10, 13, 0, tzinfo=UTC)  # 18:30 Asia/Colombo


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> Iterator[None]:
    """No developer's MONGODB_URI or .env leaks into a test."""
    for name in CONFIG_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # set (not just deleted) so that code exporting DAGSTER_HOME is undone after the test
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path_factory.mktemp("dagster_home")))
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    yield


@pytest.fixture
def test_env(tmp_path) -> dict[str, str]:
    """Environment of a project home in tmp_path with a fast model (tests, not benchmarks).

    The persistence gate is off so promotion mechanics do not hinge on how well a model does on
    a few simulated days; test_assets proves the gate with it on.
    """
    return {
        "SOLAR_ML_HOME": str(tmp_path / "home"),
        "MODEL_TYPE": "hist_gradient_boosting",
        "PERIODS_START": "2026-01-01",
        "REQUIRE_BEAT_PERSISTENCE": "false",
    }


@pytest.fixture
def settings(test_env) -> Settings:
    return settings_from_env(test_env)


@pytest.fixture
def env_for_subprocess(test_env) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
    env.update(test_env)
    return env


@pytest.fixture
def store(settings):
    from solar_ml_pipeline.storage import open_store

    s = open_store(settings)
    yield s
    s.close()


def simulate_into(store, device_id: str, *, end: datetime = PERIOD_START, days: float = 8,
                  seed: int = 0, interval_minutes: float = 1) -> int:
    """Readings for `days` before `end` (plus a day after it, which training must not see)."""
    from solar_ml_pipeline.readings.simulator import simulate_readings
    from solar_ml_pipeline.readings.sites import DEFAULT_SITE

    frame = simulate_readings(device_id, start=end - timedelta(days=days),
                              end=end + timedelta(days=1), interval_minutes=interval_minutes,
                              seed=seed, site=DEFAULT_SITE)
    return store.write_readings(frame.to_dict("records"))
