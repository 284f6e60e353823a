from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from solar_ml_pipeline.config import InvalidDeviceId, Settings
from solar_ml_pipeline.readings.simulator import (
    COLUMNS,
    FAN_COOLING_C,
    FAN_OFF_C,
    FAN_ON_C,
    Fault,
    module_temperature_and_fan,
    simulate_device,
    simulate_readings,
)
from solar_ml_pipeline.readings.sites import DEFAULT_SITE, Site, site_for_device, site_from_settings
from solar_ml_pipeline.storage.sqlite import SqliteStore
from solar_ml_pipeline_tests.storage.mongomock_client import mongomock_store

START = datetime(2026, 1, 1, tzinfo=UTC)
END = datetime(2026, 1, 15, tzinfo=UTC)
COLOMBO = "Asia/Colombo"


@pytest.fixture(scope="module")
def fortnight() -> pd.DataFrame:
    return simulate_readings("tracker-1", start=START, end=END, seed=7)


def local(frame: pd.DataFrame, tz: str = COLOMBO) -> pd.DataFrame:
    return frame.set_index(frame["timestamp"].dt.tz_convert(tz))


def consecutive(frame: pd.DataFrame, step: timedelta = timedelta(minutes=1)) -> np.ndarray:
    """True where a row follows the previous one after exactly one step (no gap between)."""
    gaps = frame["timestamp"].diff().to_numpy()
    return gaps == np.timedelta64(int(step.total_seconds() * 1e9), "ns")


def test_same_seed_gives_identical_readings_and_another_seed_differs(fortnight):
    again = simulate_readings("tracker-1", start=START, end=END, seed=7)
    other = simulate_readings("tracker-1", start=START, end=END, seed=8)
    pd.testing.assert_frame_equal(fortnight, again)
    assert not other["power"].equals(fortnight["power"])


def test_windows_agree_on_the_instants_they_share(fortnight):
    split = datetime(2026, 1, 6, 9, 17, tzinfo=UTC)  # mid-morning in Colombo, mid-day state
    first = simulate_readings("tracker-1", start=START + timedelta(hours=30), end=split, seed=7)
    second = simulate_readings("tracker-1", start=split, end=END, seed=7)
    expected = fortnight[fortnight["timestamp"] >= START + timedelta(hours=30)]
    pd.testing.assert_frame_equal(
        pd.concat([first, second], ignore_index=True), expected.reset_index(drop=True)
    )


def test_each_device_gets_its_own_weather_for_the_same_seed(fortnight):
    other = simulate_readings("tracker-2", start=START, end=END, seed=7)
    assert not np.allclose(other["power"].head(5000), fortnight["power"].head(5000))


def test_readings_have_the_reading_columns_on_a_utc_grid_inside_the_window(fortnight):
    assert tuple(fortnight.columns) == COLUMNS
    assert str(fortnight["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert fortnight["fan_on"].dtype == bool
    assert (fortnight["device_id"] == "tracker-1").all()
    stamps = fortnight["timestamp"]
    assert stamps.is_monotonic_increasing and stamps.is_unique
    assert stamps.min() >= START and stamps.max() < END
    assert (stamps.dt.second == 0).all()
    numeric = fortnight[list(COLUMNS[2:9])]
    assert np.isfinite(numeric.to_numpy()).all()


def test_a_few_readings_are_missing_like_a_real_link(fortnight):
    expected = (END - START) // timedelta(minutes=1)
    assert 0.97 * expected < len(fortnight) < 0.9995 * expected
    gaps = fortnight["timestamp"].diff().dropna()
    assert (gaps == timedelta(minutes=2)).sum() >= 10  # single missing minutes
    assert (gaps >= timedelta(minutes=30)).any()  # and at least one outage


def test_power_is_zero_at_night_and_positive_at_midday_in_colombo(fortnight):
    by_local = local(fortnight)
    night = by_local.between_time("20:00", "04:00")
    midday = by_local.between_time("11:00", "13:00")
    assert night["power"].abs().max() < 0.5
    assert night["lux"].max() == 0.0
    assert (midday["power"] > 10.0).all()
    daily_peak = by_local["power"].resample("1D").max()
    assert (daily_peak.iloc[1:-1] > 150.0).all()
    assert fortnight["power"].max() <= DEFAULT_SITE.capacity_w


def test_power_equals_voltage_times_current_within_sensor_noise(fortnight):
    product = fortnight["voltage"] * fortnight["current"]
    assert np.allclose(fortnight["power"], product, rtol=0.005, atol=0.02)
    daytime = fortnight[fortnight["power"] > 50]
    assert daytime["voltage"].between(20.0, 40.0).all()


def test_servo_turns_east_in_the_morning_west_in_the_afternoon_and_parks_flat_at_night(fortnight):
    by_local = local(fortnight)
    morning = by_local.between_time("07:30", "10:00")["servo_angle"]
    afternoon = by_local.between_time("14:00", "16:30")["servo_angle"]
    night = by_local.between_time("20:00", "04:00")["servo_angle"]
    assert (morning < 85).all() and (afternoon > 95).all()
    assert (night - 90).abs().max() < 1.0
    assert fortnight["servo_angle"].between(30.0 - 1.0, 150.0 + 1.0).all()
    hourly = by_local.between_time("08:00", "16:00")["servo_angle"].groupby(
        lambda stamp: stamp.hour
    ).median()
    assert hourly.is_monotonic_increasing


def test_fan_switches_on_above_the_high_threshold_and_off_below_the_low_one(fortnight):
    fan = fortnight["fan_on"].to_numpy()
    temperature = fortnight["temperature"].to_numpy()
    adjacent = consecutive(fortnight)
    switched_on = adjacent & fan & ~np.roll(fan, 1)
    switched_off = adjacent & ~fan & np.roll(fan, 1)
    assert switched_on.sum() >= 5 and switched_off.sum() >= 5
    noise = 0.8  # about five standard deviations of the temperature sensor
    assert (temperature[switched_on] >= FAN_ON_C - noise).all()
    assert (temperature[switched_off] <= FAN_OFF_C + noise).all()
    band = (temperature > FAN_OFF_C + noise) & (temperature < FAN_ON_C - noise)
    assert fan[band].any() and (~fan[band]).any()  # the band keeps whatever state it had


def test_fan_hysteresis_and_cooling_on_a_rising_then_falling_temperature():
    target = np.concatenate([np.linspace(30, 60, 301), np.linspace(60, 30, 301)])
    module, fan = module_temperature_and_fan(target, alpha=1.0)
    first_on = int(np.argmax(fan))
    assert target[first_on] >= FAN_ON_C and target[first_on - 1] < FAN_ON_C
    on = fan.copy()
    on[first_on] = False  # the switching sample itself still had the fan off
    assert FAN_COOLING_C >= 1.0 and np.allclose(module[on], target[on] - FAN_COOLING_C)
    last_on = len(fan) - 1 - int(np.argmax(fan[::-1]))
    assert module[last_on + 1] <= FAN_OFF_C  # switched off on reaching the low threshold
    assert fan[first_on:last_on + 1].all()
    # Between the thresholds the fan keeps its state: off on the way up, on on the way down.
    band = (module > FAN_OFF_C) & (module < FAN_ON_C)
    index = np.arange(len(target))
    before_on, cooling_down = index < first_on, (index >= 301) & (index <= last_on)
    assert (band & before_on).sum() > 10 and (band & cooling_down).sum() > 10
    assert not fan[band & before_on].any() and fan[band & cooling_down].all()
    # Switching off lets the module warm back into the band without the fan chattering.
    assert module[last_on + 2] > FAN_OFF_C and not fan[last_on + 1:].any()


def test_humidity_falls_as_the_module_warms(fortnight):
    assert fortnight["temperature"].corr(fortnight["humidity"]) < -0.3
    assert fortnight["humidity"].between(20.0, 100.0).all()


def test_lux_follows_irradiance_at_about_120_lux_per_watt_per_square_metre(fortnight):
    sunny = fortnight[fortnight["power"] > 50]
    # power ~ 300 W x POA/1000 x derating (0.85..1.0); lux ~ 120 x POA.
    ratio = (sunny["lux"] / sunny["power"]).median()
    assert 120 * 1000 / 300 < ratio < 120 * 1000 / (300 * 0.8)
    assert fortnight["lux"].corr(fortnight["power"]) > 0.95


def test_clouds_make_days_differ_and_power_persist_for_minutes_but_not_hours(fortnight):
    by_local = local(fortnight)
    daily_energy = by_local["power"].resample("1D").sum().iloc[1:-1]
    assert daily_energy.std() / daily_energy.mean() > 0.15
    day = by_local.between_time("09:00", "15:00")["power"].asfreq("1min").interpolate()
    one_minute = day.autocorr(1)
    assert one_minute > 0.9
    fifteen_minutes_change = (day.shift(-15) - day).abs().mean()
    assert fifteen_minutes_change > 5.0


def test_thirty_days_at_one_minute_take_well_under_two_seconds():
    simulate_readings("warm-up", start=START, end=START + timedelta(days=1))
    began = time.perf_counter()
    frame = simulate_readings("tracker-1", start=START, end=START + timedelta(days=30))
    elapsed = time.perf_counter() - began
    assert len(frame) > 42_000
    assert elapsed < 2.0


@pytest.mark.parametrize(
    ("site", "start"),
    [
        (Site(latitude=-33.92, longitude=18.42, timezone="Africa/Johannesburg"), START),
        # Across the spring DST change, a 23-hour local day.
        (Site(latitude=59.91, longitude=10.75, timezone="Europe/Oslo"),
         datetime(2026, 3, 27, tzinfo=UTC)),
    ],
)
def test_other_sites_and_time_zones_give_complete_plausible_readings(site, start):
    frame = simulate_readings("t1", start=start, end=start + timedelta(days=4), site=site)
    assert frame["timestamp"].is_unique and frame["timestamp"].is_monotonic_increasing
    assert np.isfinite(frame[list(COLUMNS[2:9])].to_numpy()).all()
    by_local = local(frame, site.timezone)
    assert by_local.between_time("23:30", "00:30")["power"].abs().max() < 0.5
    assert by_local.between_time("11:30", "13:30")["power"].max() > 50


def test_a_coarser_interval_gives_readings_on_that_grid():
    frame = simulate_readings("t1", start=START, end=START + timedelta(days=2), interval_minutes=5)
    assert (frame["timestamp"].dt.minute % 5 == 0).all()
    assert 0.95 * 576 < len(frame) <= 576


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"device_id": "../x"}, InvalidDeviceId, "invalid device id"),
        ({"interval_minutes": 0}, ValueError, "interval_minutes=0 is invalid"),
        ({"seed": -1}, ValueError, "seed=-1 is invalid"),
        ({"end": START - timedelta(days=1)}, ValueError, "is before start"),
    ],
)
def test_bad_arguments_are_refused_with_one_line(arguments, error, message):
    call = {"device_id": "t1", "start": START, "end": START + timedelta(days=1), **arguments}
    with pytest.raises(error, match=message) as caught:
        simulate_readings(call.pop("device_id"), **call)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"latitude": 91.0}, "latitude=91.0 is invalid"),
        ({"capacity_w": 0.0}, "capacity_w=0.0 is invalid"),
        ({"timezone": "Mars/Base"}, "timezone='Mars/Base' is invalid"),
    ],
)
def test_an_impossible_site_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        Site(**{"latitude": 7.0, "longitude": 80.0, **fields})


def test_site_comes_from_the_configured_location_and_time_zone():
    settings = Settings(site_latitude=-33.9, site_longitude=18.4, timezone="Africa/Johannesburg")
    site = site_from_settings(settings)
    assert (site.latitude, site.longitude, site.timezone) == (-33.9, 18.4, "Africa/Johannesburg")
    assert (DEFAULT_SITE.latitude, DEFAULT_SITE.timezone) == (6.9271, COLOMBO)


def test_a_device_registered_site_overrides_the_configured_one_field_by_field(tmp_path):
    store = SqliteStore(tmp_path / "solar_ml.db")
    settings = Settings()
    assert site_for_device(store, settings, "tracker-1") == DEFAULT_SITE
    store.set_site("tracker-1", {"latitude": 51.5, "longitude": -0.1, "capacity_w": 450.0})
    site = site_for_device(store, settings, "tracker-1")
    assert (site.latitude, site.longitude, site.capacity_w) == (51.5, -0.1, 450.0)
    assert (site.altitude, site.timezone) == (0.0, settings.timezone)


def test_simulate_device_writes_every_reading_once_and_a_rerun_adds_nothing(tmp_path):
    store = SqliteStore(tmp_path / "solar_ml.db")
    end = datetime(2026, 2, 11, 12, 0, tzinfo=UTC)
    result = simulate_device(store, "tracker-9", days=10, end=end, seed=3, batch_size=4000)
    assert result.rows_written == result.rows_generated > 13_000
    assert (result.start, result.end) == (end - timedelta(days=10), end)
    # Written week by week, yet the same as one call over the whole span.
    expected = simulate_readings("tracker-9", start=result.start, end=end, seed=3)
    stored = store.read_window("tracker-9", result.start, end)
    assert len(stored) == len(expected)
    assert stored["timestamp"].tolist() == expected["timestamp"].tolist()
    assert np.allclose(stored["power"], expected["power"])
    assert np.array_equal(stored["fan_on"], expected["fan_on"].astype(float))
    again = simulate_device(store, "tracker-9", days=10, end=end, seed=3)
    assert again.rows_written == 0 and again.rows_generated == result.rows_generated


def test_simulated_readings_are_stored_by_the_mongodb_backend_too():
    store = mongomock_store()  # quadratic upserts: a short span
    end = datetime(2026, 2, 11, 6, 0, tzinfo=UTC)
    result = simulate_device(store, "tracker-9", days=2, interval_minutes=20, end=end)
    assert result.rows_written == result.rows_generated > 130
    expected = simulate_readings("tracker-9", start=result.start, end=end, interval_minutes=20)
    stored = store.read_window("tracker-9", result.start, end)
    assert stored["timestamp"].tolist() == expected["timestamp"].tolist()
    assert np.allclose(stored["power"], expected["power"])
    assert simulate_device(store, "tracker-9", days=2, interval_minutes=20, end=end).rows_written == 0


def test_simulate_device_ends_now_floored_to_the_minute_by_default(tmp_path):
    store = SqliteStore(tmp_path / "solar_ml.db")
    before = datetime.now(UTC)
    result = simulate_device(store, "tracker-1", days=0.25, interval_minutes=5)
    assert result.end.second == 0 and result.end.microsecond == 0
    assert before - timedelta(minutes=1) <= result.end <= datetime.now(UTC)
    assert store.count_readings("tracker-1") == result.rows_written


def test_simulate_device_refuses_an_invalid_device_before_writing(tmp_path):
    store = SqliteStore(tmp_path / "solar_ml.db")
    with pytest.raises(InvalidDeviceId):
        simulate_device(store, "../x", days=1)
    assert store.count_readings() == 0


# -- injected faults -------------------------------------------------------------------------

FAULT_START = datetime(2026, 1, 6, 4, 0, 30, tzinfo=UTC)  # 09:30:30 in Colombo: mid-morning
FAULT_END = datetime(2026, 1, 6, 6, 0, tzinfo=UTC)


def during(frame: pd.DataFrame, start: datetime, end: datetime | None = None) -> np.ndarray:
    after = frame["timestamp"] >= start
    return (after if end is None else after & (frame["timestamp"] < end)).to_numpy()


def test_no_faults_give_exactly_the_default_readings(fortnight):
    pd.testing.assert_frame_equal(
        simulate_readings("tracker-1", start=START, end=END, seed=7, faults=()), fortnight)


def test_a_stuck_fault_freezes_power_and_lux_at_their_first_value_and_changes_nothing_else(
        fortnight):
    faulty = simulate_readings("tracker-1", start=START, end=END, seed=7,
                               faults=[Fault("stuck", FAULT_START, FAULT_END)])
    inside = during(fortnight, FAULT_START, FAULT_END)
    first = fortnight[inside].iloc[0]
    assert first["timestamp"] == pd.Timestamp(FAULT_START).ceil("min") and first["power"] > 50
    assert (faulty.loc[inside, "power"] == first["power"]).all()
    assert (faulty.loc[inside, "lux"] == first["lux"]).all()
    assert fortnight.loc[inside, "power"].nunique() > 100  # they moved before the fault
    others = [name for name in COLUMNS if name not in ("power", "lux")]
    pd.testing.assert_frame_equal(faulty[others], fortnight[others])
    pd.testing.assert_frame_equal(faulty[~inside], fortnight[~inside])


def test_a_stuck_fault_that_began_before_the_window_keeps_the_value_it_froze_at(fortnight):
    later = FAULT_START + timedelta(hours=1)
    window = simulate_readings("tracker-1", start=later, end=END, seed=7,
                               faults=[Fault("stuck", FAULT_START)])  # never ends
    frozen = fortnight[during(fortnight, FAULT_START)].iloc[0]
    assert (window["power"] == frozen["power"]).all() and (window["lux"] == frozen["lux"]).all()
    whole = simulate_readings("tracker-1", start=START, end=END, seed=7,
                              faults=[Fault("stuck", FAULT_START)])
    pd.testing.assert_frame_equal(
        window, whole[during(whole, later)].reset_index(drop=True))


def test_a_lost_string_scales_power_and_current_from_its_start_on(fortnight):
    faulty = simulate_readings("tracker-1", start=START, end=END, seed=7,
                               faults=[Fault("lost_string", FAULT_START, factor=0.5)])
    after = during(fortnight, FAULT_START)
    assert np.allclose(faulty.loc[after, "power"], fortnight.loc[after, "power"] * 0.5, atol=0.006)
    assert np.allclose(faulty.loc[after, "current"], fortnight.loc[after, "current"] * 0.5,
                       atol=6e-5)
    assert faulty.loc[after, "power"].sum() < 0.51 * fortnight.loc[after, "power"].sum()
    unchanged = [name for name in COLUMNS if name not in ("power", "current")]
    pd.testing.assert_frame_equal(faulty[unchanged], fortnight[unchanged])
    pd.testing.assert_frame_equal(faulty[~after], fortnight[~after])


def test_a_lost_string_with_an_end_is_repaired_at_it(fortnight):
    faulty = simulate_readings("tracker-1", start=START, end=END, seed=7,
                               faults=[Fault("lost_string", FAULT_START, FAULT_END, factor=0.0)])
    inside = during(fortnight, FAULT_START, FAULT_END)
    assert (faulty.loc[inside, "power"] == 0).all()
    pd.testing.assert_frame_equal(faulty[~inside], fortnight[~inside])


def test_simulate_device_stores_the_faulty_readings(tmp_path):
    store = SqliteStore(tmp_path / "solar_ml.db")
    end = datetime(2026, 1, 7, tzinfo=UTC)
    faults = [Fault("stuck", FAULT_START, FAULT_END)]
    simulate_device(store, "tracker-1", days=3, end=end, seed=7, faults=faults)
    stored = store.read_window("tracker-1", FAULT_START, FAULT_END)
    assert len(stored) > 100 and stored["power"].nunique() == 1


@pytest.mark.parametrize(("fault", "hint"), [
    (lambda: Fault("melted", START), "expected one of stuck, lost_string"),
    (lambda: Fault("stuck", START, START - timedelta(minutes=1)), "is not after its start"),
    (lambda: Fault("lost_string", START, factor=-0.5), "0 or more"),
    (lambda: Fault("lost_string", START, factor=float("nan")), "0 or more"),
])
def test_an_invalid_fault_is_refused_in_one_line(fault, hint):
    with pytest.raises(ValueError) as info:
        fault()
    assert hint in str(info.value) and "\n" not in str(info.value)


def test_faults_must_be_fault_objects():
    with pytest.raises(TypeError, match="Fault objects"):
        simulate_readings("tracker-1", start=START, end=END, faults=[("stuck", START)])
