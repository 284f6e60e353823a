"""Cold start: a tracker with a few hours of readings is served by a fleet model taught by the
other devices, labelled as such, until its own model wins under the usual rules."""

from __future__ import annotations

import uuid
from datetime import timedelta

import numpy as np
import pytest

from solar_ml_pipeline.config import settings_from_env
from solar_ml_pipeline.forecasting.attempt import retrain_device
from solar_ml_pipeline.forecasting.cold_start import FleetForecastModel, is_young, normalised
from solar_ml_pipeline.forecasting.prediction import predict_latest
from solar_ml_pipeline.interfaces import operations
from solar_ml_pipeline.interfaces.operations import registry_for
from solar_ml_pipeline.model_store.serving import ModelServer
from solar_ml_pipeline.readings.simulator import simulate_readings
from solar_ml_pipeline.readings.sites import DEFAULT_SITE
from solar_ml_pipeline.storage import open_store
from solar_ml_pipeline_tests.forecasting.test_backtest import FIRST_CUTOFF

YOUNG = "newbie01"
BIG = 600.0  # the young tracker is twice the size of the default 300 W site


@pytest.fixture
def fleet(tmp_path):
    settings = settings_from_env({"SOLAR_ML_HOME": str(tmp_path / "home"), "RETRAIN_DAYS": "7",
                                  "PERIODS_START": "2026-01-01",
                                  "REQUIRE_BEAT_PERSISTENCE": "false"})
    store = open_store(settings)
    for seed, device in enumerate(("teacher01", "teacher02")):
        frame = simulate_readings(device, start=FIRST_CUTOFF - timedelta(days=5),
                                  end=FIRST_CUTOFF + timedelta(days=1), interval_minutes=1,
                                  seed=seed + 10, site=DEFAULT_SITE)
        store.write_readings(frame.to_dict("records"))
    store.set_site(YOUNG, {"latitude": DEFAULT_SITE.latitude,
                           "longitude": DEFAULT_SITE.longitude, "altitude": 0.0,
                           "capacity_w": BIG, "timezone": DEFAULT_SITE.timezone})
    return settings, store, registry_for(settings)


def _young_readings(store, hours: float, end=FIRST_CUTOFF + timedelta(hours=2)):
    from dataclasses import replace

    frame = simulate_readings(YOUNG, start=end - timedelta(hours=hours), end=end + timedelta(hours=24),
                              interval_minutes=1, seed=3,
                              site=replace(DEFAULT_SITE, capacity_w=BIG))
    store.write_readings(frame.to_dict("records"))


def test_normalising_by_capacity_makes_two_sizes_of_one_sky_the_same_rows():
    frame = simulate_readings("x", start=FIRST_CUTOFF, end=FIRST_CUTOFF + timedelta(hours=2),
                              interval_minutes=1, seed=1, site=DEFAULT_SITE)
    doubled = frame.assign(power=frame["power"] * 2)
    np.testing.assert_allclose(normalised(doubled, 600.0)["power"],
                               normalised(frame, 300.0)["power"])


def test_a_device_is_young_until_it_has_cold_start_days_of_readings():
    frame = simulate_readings("x", start=FIRST_CUTOFF - timedelta(days=2), end=FIRST_CUTOFF,
                              interval_minutes=5, seed=1, site=DEFAULT_SITE)
    assert is_young(frame, FIRST_CUTOFF, days=3)
    assert not is_young(frame, FIRST_CUTOFF, days=2)
    assert not is_young(frame.iloc[:0], FIRST_CUTOFF, days=0)  # COLD_START_DAYS=0: never


def test_a_tracker_with_six_hours_of_readings_is_served_by_a_labelled_fleet_model(fleet):
    settings, store, registry = fleet
    cutoff = FIRST_CUTOFF + timedelta(hours=2)  # 20:30 local: the young one began at 14:30
    _young_readings(store, hours=6, end=cutoff)
    record = retrain_device(settings, store, registry, YOUNG, "2026-03-01", cutoff,
                            run_id=str(uuid.uuid4()))
    assert record["status"] == "success", record["error"]
    assert record["cold_start"] is True and record["model_type"] == "fleet_hist_gradient_boosting"
    meta = registry.read_meta(YOUNG, record["version"])
    assert meta["trained_on"] == ["teacher01", "teacher02"]
    model = registry.load_model(YOUNG, record["version"])
    assert isinstance(model, FleetForecastModel) and model.capacity_w == BIG
    assert record["promoted"] is True  # nothing served it before
    shown = operations.current_model(settings, YOUNG)
    assert shown["cold_start"] is True and shown["trained_on"] == meta["trained_on"]
    noon = cutoff + timedelta(hours=16)  # 12:30 local the next day
    forecast = predict_latest(settings, store, ModelServer(registry), YOUNG, now=noon)
    assert forecast["cold_start"] is True
    assert forecast["p10"] <= forecast["predicted_power"] <= forecast["p90"]
    # scaled to this tracker: the same sky on a site half the size forecasts half the power
    from dataclasses import replace as copy_with

    from solar_ml_pipeline.forecasting.cold_start import POWER_COLUMNS
    from solar_ml_pipeline.forecasting.features import build_feature_frame

    readings = store.read_window(YOUNG, cutoff, noon)
    frame = build_feature_frame(readings, horizon_minutes=15, timezone=DEFAULT_SITE.timezone,
                                feature_set="solar", with_target=False,
                                site=copy_with(DEFAULT_SITE, capacity_w=BIG)).frame
    half = frame.copy()
    for name in POWER_COLUMNS:
        if name in half:
            half[name] = half[name] / 2
    np.testing.assert_allclose(copy_with(model, capacity_w=BIG / 2).predict(half),
                               model.predict(frame) / 2, rtol=1e-9, atol=1e-9)

    # A day later it has a full (1-day) window of its own: its own model is trained and
    # judged against the fleet model in service, by the usual rules.
    grown = settings.with_overrides(retrain_days=1, cold_start_days=0.5)
    later = cutoff + timedelta(hours=20)
    own = retrain_device(grown, store, registry, YOUNG, "2026-03-02", later, run_id="own-1")
    assert own["status"] == "success" and own["cold_start"] is False
    assert own["model_type"] == "hist_gradient_boosting"
    assert own["champion_version"] == record["version"]


def test_without_teachers_a_young_device_trains_its_own_model_or_says_why(tmp_path):
    settings = settings_from_env({"SOLAR_ML_HOME": str(tmp_path / "home"), "RETRAIN_DAYS": "7",
                                  "PERIODS_START": "2026-01-01", "MIN_TRAINING_ROWS": "5"})
    store = open_store(settings)
    frame = simulate_readings(YOUNG, start=FIRST_CUTOFF - timedelta(minutes=12),
                              end=FIRST_CUTOFF, interval_minutes=1, seed=3, site=DEFAULT_SITE)
    store.write_readings(frame.to_dict("records"))
    record = retrain_device(settings, store, registry_for(settings), YOUNG, "2026-03-01",
                            FIRST_CUTOFF, run_id="r1")
    assert record["status"] == "failed"  # its own model cannot train on 12 readings either
    assert "not enough rows" in record["error"]
