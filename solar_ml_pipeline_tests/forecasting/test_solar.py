import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from solar_ml_pipeline.forecasting import solar


@dataclass(frozen=True)
class Site:
    latitude: float = 6.9271
    longitude: float = 79.8612
    altitude: float = 5.0
    capacity_w: float = 300.0
    timezone: str = "Asia/Colombo"


COLOMBO = Site()


def _day(date: str = "2026-03-20", freq: str = "1min") -> pd.DatetimeIndex:
    return pd.date_range(date, periods=pd.Timedelta("1D") // pd.Timedelta(freq), freq=freq,
                         tz="UTC")


def test_noon_elevation_at_the_equinox_is_ninety_minus_the_latitude():
    elevation = solar.solar_elevation(_day(), COLOMBO)
    assert elevation.max() == pytest.approx(90 - COLOMBO.latitude, abs=0.6)


def test_the_sun_is_below_the_horizon_at_local_midnight():
    midnight_colombo = pd.DatetimeIndex(["2026-03-19T18:30:00Z"])
    assert solar.solar_elevation(midnight_colombo, COLOMBO)[0] < -60


def test_solar_noon_in_colombo_is_near_0620_utc():
    day = _day()
    noon = day[np.argmax(solar.solar_elevation(day, COLOMBO))]
    # Longitude 79.86 E is 5 h 19 min ahead of UTC; the equation of time adds ~7 min.
    assert abs(noon - pd.Timestamp("2026-03-20T06:48:00Z")) < pd.Timedelta(minutes=5)


def test_naive_timestamps_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        solar.solar_elevation(pd.date_range("2026-03-20", periods=3, freq="h"), COLOMBO)


def test_a_series_of_timestamps_gives_the_same_geometry_as_an_index():
    day = _day(freq="15min")
    from_series = solar.solar_elevation(pd.Series(day), COLOMBO)
    np.testing.assert_allclose(from_series, solar.solar_elevation(day, COLOMBO))


@pytest.mark.parametrize("mount", solar.MOUNTS)
def test_clear_sky_power_is_zero_at_night_and_near_capacity_at_noon(mount):
    day = _day()
    elevation = solar.solar_elevation(day, COLOMBO)
    power = solar.clear_sky_power(day, COLOMBO, mount)
    assert np.all(power[elevation <= 0] == 0)
    assert 0.8 * COLOMBO.capacity_w < power.max() < 1.15 * COLOMBO.capacity_w


def test_clear_sky_power_scales_with_capacity():
    day = _day(freq="15min")
    bigger = Site(capacity_w=600.0)
    np.testing.assert_allclose(solar.clear_sky_power(day, bigger),
                               2 * solar.clear_sky_power(day, COLOMBO))


def test_a_tracker_collects_more_than_a_flat_panel_when_the_sun_is_low():
    morning = pd.DatetimeIndex(["2026-03-20T02:00:00Z"])  # 07:30 Colombo, sun ~20 degrees
    tracker = solar.clear_sky_power(morning, COLOMBO, "single_axis")[0]
    flat = solar.clear_sky_power(morning, COLOMBO, "horizontal")[0]
    assert tracker > 1.5 * flat > 0


def test_an_unknown_mount_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="single_axis, horizontal"):
        solar.clear_sky_power(_day(), COLOMBO, "dual_axis")


def test_clear_sky_index_is_the_ratio_by_day_and_undefined_at_low_sun():
    power = np.array([50.0, 150.0, 900.0, 5.0])
    clear = np.array([100.0, 200.0, 300.0, 1.0])
    elevation = np.array([30.0, 45.0, 60.0, 0.5])
    index = solar.clear_sky_index(power, clear, elevation, capacity_w=300.0)
    np.testing.assert_allclose(index[:2], [0.5, 0.75])
    assert index[2] == solar.MAX_CLEAR_SKY_INDEX  # a spike is clipped, not believed
    assert np.isnan(index[3])


def test_clear_sky_index_is_undefined_when_the_clear_sky_is_a_sliver_of_capacity():
    index = solar.clear_sky_index([1.0], [2.0], [20.0], capacity_w=300.0)
    assert np.isnan(index[0])


def test_smart_persistence_keeps_the_index_and_moves_the_sky_on():
    forecast = solar.smart_persistence(power=[100.0, 7.0], clear_sky_now=[200.0, 0.0],
                                       clear_sky_ahead=[260.0, 0.0],
                                       elevation_now=[40.0, -10.0], capacity_w=300.0)
    assert forecast[0] == pytest.approx(130.0)  # index 0.5 of the clear sky ahead
    assert forecast[1] == 7.0  # no index at night: plain persistence


def test_smart_persistence_is_exact_on_a_clear_day():
    day = _day(freq="5min")
    clear = solar.clear_sky_power(day, COLOMBO)
    readings = pd.DataFrame({"timestamp": day, "power": 0.8 * clear})
    forecast = solar.smart_persistence_forecast(readings, COLOMBO, horizon_minutes=15)
    ahead = 0.8 * solar.clear_sky_power(day + pd.Timedelta(minutes=15), COLOMBO)
    elevation = solar.solar_elevation(day, COLOMBO)
    bright = elevation > 10
    np.testing.assert_allclose(forecast["predicted_power"].to_numpy()[bright], ahead[bright])
    assert (forecast["forecast_for"] - forecast["timestamp"] == pd.Timedelta(minutes=15)).all()


def test_smart_persistence_forecast_skips_unusable_rows_and_sorts_by_time():
    readings = pd.DataFrame({
        "timestamp": ["2026-03-20T06:10:00Z", "2026-03-20T06:00:00Z", None,
                      "2026-03-20T06:05:00Z"],
        "power": [150.0, 140.0, 1.0, "broken"],
    })
    forecast = solar.smart_persistence_forecast(readings, COLOMBO, horizon_minutes=15)
    assert list(forecast["timestamp"]) == [pd.Timestamp("2026-03-20T06:00:00Z"),
                                           pd.Timestamp("2026-03-20T06:10:00Z")]


def test_smart_persistence_forecast_names_missing_columns():
    with pytest.raises(ValueError, match="power"):
        solar.smart_persistence_forecast(pd.DataFrame({"timestamp": []}), COLOMBO, 15)


def test_daylight_means_the_sun_above_five_degrees():
    assert solar.is_daylight([4.9, 5.0, 5.1, -20]).tolist() == [False, False, True, False]


def test_a_month_of_one_minute_timestamps_takes_well_under_a_second():
    month = pd.Series(pd.date_range("2026-03-01", periods=43_200, freq="1min", tz="UTC"))
    solar.clear_sky_power(month[:10], COLOMBO)  # warm the turbidity table
    began = time.perf_counter()
    position = solar.solar_position(month, COLOMBO)
    solar.clear_sky_power(month, COLOMBO, position=position)
    # About 0.2 s on an idle core; the bound leaves room for a busy CI machine.
    assert time.perf_counter() - began < 2.0


def test_the_sun_memo_gives_each_site_what_it_computes_alone_and_each_instant_once(monkeypatch):
    calls = []
    position = solar.solar_position

    def counting(timestamps, site):  # noqa: ANN001, ANN202
        calls.append(len(timestamps))
        return position(timestamps, site)

    memo = solar.SunMemo()
    minutes = pd.date_range("2026-03-20 00:30", periods=180, freq="1min", tz="UTC")
    jittered = minutes[60:] + pd.Timedelta(seconds=20)  # another tracker's clock
    big = Site(capacity_w=5000.0)  # same place, other capacity
    sydney = Site(latitude=-33.87, longitude=151.21, altitude=30.0, timezone="Australia/Sydney")
    cases = [(COLOMBO, minutes), (big, minutes), (COLOMBO, jittered), (sydney, minutes)]
    expected = [(solar.solar_elevation(t, s), solar.clear_sky_power(t, s)) for s, t in cases]
    monkeypatch.setattr(solar, "solar_position", counting)
    for (site, instants), (elevation, clear_sky) in zip(cases, expected, strict=True):
        got_elevation, irradiance = memo.geometry(instants, site)
        np.testing.assert_allclose(got_elevation, elevation, rtol=1e-12, atol=1e-9)
        power = solar.power_from_irradiance(irradiance, got_elevation, site.capacity_w)
        np.testing.assert_allclose(power, clear_sky, rtol=1e-12, atol=1e-9)
    # Colombo's minutes once (the larger tracker there reuses them), its jittered instants,
    # and Sydney's minutes: three vectorised calls, each instant computed once
    assert calls == [180, 120, 180]


def test_the_sun_memo_answers_an_empty_window_with_empty_geometry():
    empty = pd.DatetimeIndex([], tz="UTC")
    elevation, irradiance = solar.SunMemo().geometry(empty, COLOMBO)
    assert elevation.shape == irradiance.shape == (0,)
