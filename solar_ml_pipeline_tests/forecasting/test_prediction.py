"""Forecasts when the device's pointer says no model beats persistence: smart persistence for
the device's own site, reported as such. (Model forecasts: test_operations.)"""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from solar_ml_pipeline.forecasting import solar
from solar_ml_pipeline.forecasting.prediction import PredictionUnavailable, predict_latest
from solar_ml_pipeline.model_store.serving import ModelServer
from solar_ml_pipeline.readings.sites import DEFAULT_SITE, Site
from solar_ml_pipeline_tests.interfaces.test_operations import (
    FALLBACK_REASON,
    NOW,
    put_on_fallback,
    registry,  # noqa: F401 - fixture
    save_constant_version,
    write_recent_readings,
)


def expected_smart_persistence(site, power: float, at, horizon: int = 15) -> float:
    """index now x clear-sky power at the horizon, from the solar primitives."""
    now = pd.DatetimeIndex([at])
    clear_now = solar.clear_sky_power(now, site)[0]
    clear_ahead = solar.clear_sky_power(now + pd.Timedelta(minutes=horizon), site)[0]
    return power / clear_now * clear_ahead


def test_on_smart_persistence_predict_forecasts_the_clear_sky_index_and_says_why(
        settings, store, registry):  # noqa: F811 - fixture
    save_constant_version(registry, "t1", 111.0, 1)
    server = ModelServer(registry)
    write_recent_readings(store, "t1", NOW - timedelta(minutes=2))
    assert predict_latest(settings, store, server, "t1", now=NOW)["serving"] == "model"

    put_on_fallback(registry, "t1")
    forecast = predict_latest(settings, store, server, "t1", now=NOW)  # same server: no restart
    assert (forecast["serving"], forecast["version"], forecast["model_type"]) == (
        "smart_persistence", None, None)
    assert forecast["reason"] == FALLBACK_REASON
    based_on = NOW - timedelta(minutes=2)
    assert (forecast["based_on"], forecast["forecast_for"]) == (
        "2026-03-12T05:58:00Z", "2026-03-12T06:13:00Z")
    assert forecast["current_power"] == 200.0 and forecast["readings_used"] == 60
    assert forecast["predicted_power"] == pytest.approx(
        expected_smart_persistence(DEFAULT_SITE, 200.0, based_on), rel=1e-9)
    assert forecast["predicted_power"] != pytest.approx(200.0)  # not plain persistence
    assert 0 < forecast["clear_sky_index"] < 2


def test_smart_persistence_uses_the_devices_registered_site(settings, store, registry):  # noqa: F811
    berlin = Site(latitude=52.5, longitude=13.4, capacity_w=5000.0, timezone="Europe/Berlin")
    store.set_site("t1", {"latitude": 52.5, "longitude": 13.4, "capacity_w": 5000.0,
                          "timezone": "Europe/Berlin"})
    put_on_fallback(registry, "t1")
    write_recent_readings(store, "t1", NOW - timedelta(minutes=2))
    forecast = predict_latest(settings, store, ModelServer(registry), "t1", now=NOW)
    at = NOW - timedelta(minutes=2)
    assert 0 < forecast["clear_sky_index"] < 2  # 07:00 in Berlin: low sun, yet not clipped
    assert forecast["predicted_power"] == pytest.approx(
        expected_smart_persistence(berlin, 200.0, at), rel=1e-9)
    assert forecast["predicted_power"] != pytest.approx(
        expected_smart_persistence(DEFAULT_SITE, 200.0, at), rel=1e-3)


def test_smart_persistence_needs_recent_readings_like_a_model(settings, store, registry):  # noqa: F811
    put_on_fallback(registry, "t1")
    server = ModelServer(registry)
    with pytest.raises(PredictionUnavailable, match="t1 has no readings"):
        predict_latest(settings, store, server, "t1", now=NOW)
    write_recent_readings(store, "t1", NOW - timedelta(minutes=40))
    with pytest.raises(PredictionUnavailable, match="more than the 15-minute horizon"):
        predict_latest(settings, store, server, "t1", now=NOW)
