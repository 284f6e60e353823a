"""A store written by the first release (flat modules, pickles naming
`solar_ml_pipeline.training.ForecastModel`) still loads, serves and rolls back."""

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from solar_ml_pipeline.forecasting.features import build_feature_frame
from solar_ml_pipeline.forecasting.training import ForecastModel
from solar_ml_pipeline.model_store.registry import ModelRegistry
from solar_ml_pipeline.model_store.serving import ModelServer
from solar_ml_pipeline.readings.simulator import simulate_readings
from solar_ml_pipeline.readings.sites import DEFAULT_SITE

FIXTURE = Path(__file__).parent / "fixtures" / "release_0_1_store"
# The first release's pointer and meta name absolute paths, so the store is restored where
# it was written (make_release_0_1_store.py).
WRITTEN_AT = Path("/tmp/solar-ml-release-0.1-store")
DEVICE = "legacy-1"
OLDER, NEWER = "20260602_100500_d388bd", "20260603_100500_9fb076"


@pytest.fixture
def legacy_registry():
    shutil.rmtree(WRITTEN_AT, ignore_errors=True)
    shutil.copytree(FIXTURE, WRITTEN_AT)
    yield ModelRegistry(WRITTEN_AT / "ml_models")
    shutil.rmtree(WRITTEN_AT, ignore_errors=True)


def test_the_fixture_pickles_name_the_first_release_module_path():
    data = next((FIXTURE / "ml_models" / DEVICE / "versions").glob("*.pkl")).read_bytes()
    assert b"solar_ml_pipeline.training" in data
    assert b"solar_ml_pipeline.forecasting" not in data


def test_a_first_release_version_loads_as_todays_forecast_model(legacy_registry):
    pointer = legacy_registry.read_pointer(DEVICE)
    assert pointer["version"] == NEWER and pointer["previous_version"] == OLDER
    model = legacy_registry.load_model(DEVICE, NEWER, expected_sha256=pointer["sha256"])
    assert isinstance(model, ForecastModel)


def test_a_first_release_store_serves_a_forecast(legacy_registry):
    served = ModelServer(legacy_registry).load_current(DEVICE)
    assert served.version == NEWER
    cutoff = datetime(2026, 6, 3, 10, tzinfo=UTC)
    readings = simulate_readings(DEVICE, start=cutoff - timedelta(hours=3), end=cutoff,
                                 interval_minutes=5, seed=1)
    built = build_feature_frame(readings, horizon_minutes=15, timezone="Asia/Colombo",
                                feature_set="solar", with_target=False, site=DEFAULT_SITE)
    predicted = served.model.predict(built.frame.tail(1))
    assert len(predicted) == 1 and predicted[0] == predicted[0]  # a number, not NaN


def test_a_first_release_store_rolls_back_to_its_previous_version(legacy_registry):
    pointer = legacy_registry.rollback(DEVICE)
    assert pointer["version"] == OLDER
    assert isinstance(legacy_registry.load_model(DEVICE, OLDER, expected_sha256=pointer["sha256"]),
                      ForecastModel)


def test_a_first_release_store_restored_at_another_path_serves_and_rolls_back(tmp_path):
    """Its pointer and metas name absolute paths under /tmp/solar-ml-release-0.1-store."""
    shutil.copytree(FIXTURE, tmp_path / "restored")
    registry = ModelRegistry(tmp_path / "restored" / "ml_models")
    assert registry.read_pointer(DEVICE)["model_path"].startswith(str(WRITTEN_AT))
    assert ModelServer(registry).load_current(DEVICE).version == NEWER
    assert registry.rollback(DEVICE)["version"] == OLDER
    assert ModelServer(registry).load_current(DEVICE).version == OLDER
