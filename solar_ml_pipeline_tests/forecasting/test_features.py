from __future__ import annotations

import time
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from solar_ml_pipeline.forecasting.features import (
    FEATURE_BUILDERS,
    ORIGINAL_FEATURES,
    TARGET,
    build_feature_frame,
    default_tolerance,
)
from solar_ml_pipeline.storage.base import READING_FIELDS

T0 = pd.Timestamp("2026-02-24T00:00:00Z")
COLOMBO = "Asia/Colombo"


def synthetic_readings(minutes: np.ndarray | list[float], seed: int = 0) -> pd.DataFrame:
    """Readings at the given minute offsets from T0 with every sensor, power a noisy daily curve."""
    offsets = np.asarray(minutes, dtype="float64")
    rng = np.random.default_rng(seed)
    n = len(offsets)
    daylight = np.clip(np.sin(offsets / 1440.0 * 2 * np.pi + 0.3), 0, None)  # T0 is 05:30 local
    frame = pd.DataFrame({"timestamp": T0 + pd.to_timedelta(offsets, unit="min")})
    frame["servo_angle"] = 90 * daylight
    frame["temperature"] = 28 + 5 * daylight + rng.normal(0, 0.3, n)
    frame["humidity"] = 70 - 10 * daylight + rng.normal(0, 1, n)
    frame["lux"] = 80_000 * daylight * rng.uniform(0.6, 1.0, n)
    frame["voltage"] = 12 + 6 * daylight
    frame["current"] = 3 * daylight * rng.uniform(0.6, 1.0, n)
    frame["power"] = frame["voltage"] * frame["current"]
    frame["fan_on"] = (frame["temperature"] > 31).astype("float64")
    return frame


def _build(readings: pd.DataFrame, **options):
    options.setdefault("horizon_minutes", 15)
    options.setdefault("timezone", COLOMBO)
    return build_feature_frame(readings, **options)


def _by_timestamp(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index("timestamp")


def _nearest_within(timestamps: pd.Series, wanted: pd.Timestamp, tolerance: timedelta):
    """Brute-force reference: index of the reading nearest `wanted` within tolerance, or None."""
    distance = (timestamps - wanted).abs()
    best = distance.idxmin()
    return best if distance[best] <= tolerance else None


def test_original_features_are_the_original_fifteen_in_order():
    assert ORIGINAL_FEATURES == (
        "hour", "minute", "day_of_week", "servo_angle", "temperature", "humidity", "lux",
        "voltage", "current", "power", "fan_on", "power_diff", "lux_diff",
        "rolling_mean_power_5", "rolling_mean_lux_5",
    )
    built = _build(synthetic_readings(range(60)))
    assert built.features == list(ORIGINAL_FEATURES)
    assert list(built.frame.columns) == ["timestamp", *ORIGINAL_FEATURES, TARGET]


def test_target_is_the_power_horizon_minutes_later_matched_by_time():
    readings = synthetic_readings(range(120))
    readings["power"] = np.arange(120.0) * 10  # distinct values: the match is unambiguous
    frame = _build(readings).frame
    exact = frame[frame["timestamp"] <= T0 + pd.Timedelta(minutes=119 - 15)]
    np.testing.assert_array_equal(exact[TARGET], (np.arange(len(exact)) + 15) * 10)
    # past the last reading, t + 15 still matches it within the 3-minute tolerance
    assert frame["timestamp"].iloc[-1] == T0 + pd.Timedelta(minutes=119 - 15 + 3)
    assert frame[TARGET].iloc[-1] == 1190


def test_a_reading_whose_horizon_falls_in_a_gap_gets_no_target_and_is_dropped():
    minutes = [*range(0, 60), *range(90, 150)]  # nothing from minute 60 to 89
    readings = synthetic_readings(minutes)
    built = _build(readings)
    kept = set(built.frame["timestamp"])
    tolerance = default_tolerance(15)
    for stamp in readings["timestamp"]:
        match = _nearest_within(readings["timestamp"], stamp + timedelta(minutes=15), tolerance)
        assert (stamp in kept) == (match is not None), stamp
    # t = 50 min: t + 15 = 65 is 6 min from any reading, so that row cannot be trained on
    assert T0 + pd.Timedelta(minutes=50) not in kept
    # t = 45: t + 15 = 60 is nearest the reading at minute 59; a row offset of 15 would have
    # paired it with minute 90, after the gap
    power_at = _by_timestamp(readings)["power"]
    target_45 = _by_timestamp(built.frame).loc[T0 + pd.Timedelta(minutes=45), TARGET]
    assert target_45 == power_at[T0 + pd.Timedelta(minutes=59)]
    assert target_45 != power_at[T0 + pd.Timedelta(minutes=90)]


def test_irregular_cadence_targets_match_a_brute_force_nearest_reading():
    rng = np.random.default_rng(3)
    minutes = np.cumsum(rng.uniform(0.5, 6.0, 300))
    readings = synthetic_readings(minutes)
    built = _build(readings)
    tolerance = default_tolerance(15)
    expected = {}
    for stamp in readings["timestamp"]:
        match = _nearest_within(readings["timestamp"], stamp + timedelta(minutes=15), tolerance)
        if match is not None:
            expected[stamp] = readings.loc[match, "power"]
    got = dict(zip(built.frame["timestamp"], built.frame[TARGET], strict=True))
    assert got == expected


def test_an_explicit_zero_tolerance_accepts_only_exact_matches():
    readings = synthetic_readings([0, 1, 15, 17])
    built = _build(readings, tolerance=timedelta(0))
    assert built.frame["timestamp"].tolist() == [T0]


def test_a_tolerance_reaching_back_to_the_reading_itself_is_refused():
    with pytest.raises(ValueError, match="tolerance"):
        _build(synthetic_readings(range(30)), tolerance=timedelta(minutes=15))


@pytest.mark.parametrize(("horizon", "tolerance"), [
    (15, timedelta(minutes=3)), (1, timedelta(seconds=30)), (60, timedelta(minutes=12)),
    (3, timedelta(minutes=1)),
])
def test_default_tolerance_is_a_fifth_of_the_horizon_at_least_a_minute_below_half(horizon,
                                                                                 tolerance):
    assert default_tolerance(horizon) == tolerance


def test_shuffled_and_duplicated_input_gives_the_same_frame():
    readings = synthetic_readings(np.cumsum(np.random.default_rng(1).uniform(0.5, 4, 400)))
    messy = pd.concat([readings, readings.iloc[::7]]).sample(frac=1.0, random_state=5)
    expected = _build(readings)
    got = _build(messy)
    pd.testing.assert_frame_equal(got.frame, expected.frame)
    assert got.features == expected.features


def test_no_feature_uses_a_reading_after_its_timestamp():
    minutes = [*range(0, 200), *range(215, 400)]
    readings = synthetic_readings(minutes)
    cut = T0 + pd.Timedelta(minutes=250)
    future = readings["timestamp"] > cut
    changed = readings.copy()
    sensors = list(READING_FIELDS)
    changed.loc[future, sensors] = changed.loc[future, sensors] * 3 + 100
    changed = changed.drop(changed.index[future][::3])  # and lose some future readings
    full = _build(readings, with_target=False).frame
    perturbed = _build(changed, with_target=False).frame
    past_only = _build(readings[~future], with_target=False).frame
    past = full[full["timestamp"] <= cut].reset_index(drop=True)
    pd.testing.assert_frame_equal(perturbed[perturbed["timestamp"] <= cut].reset_index(drop=True),
                                  past)
    pd.testing.assert_frame_equal(past_only, past)


def test_calendar_features_are_local_time_of_the_configured_zone():
    readings = synthetic_readings([13 * 60, 20 * 60])  # 13:00 and 20:00 UTC on a Tuesday
    frame = _build(readings, with_target=False).frame
    # Colombo is UTC+05:30: 18:30 Tuesday, then 01:30 Wednesday
    assert frame[["hour", "minute", "day_of_week"]].values.tolist() == [[18, 30, 1], [1, 30, 2]]
    utc = _build(readings, timezone="UTC", with_target=False).frame
    assert utc[["hour", "minute", "day_of_week"]].values.tolist() == [[13, 0, 1], [20, 0, 1]]


def test_power_diff_is_the_change_since_the_previous_reading_and_nan_after_a_gap():
    readings = synthetic_readings([0, 1, 11, 22, 23])  # 10 min is not a gap, 11 min is
    readings["power"] = [1.0, 2.0, 4.0, 8.0, 16.0]
    frame = _build(readings, with_target=False).frame
    np.testing.assert_array_equal(frame["power_diff"], [np.nan, 1.0, 2.0, np.nan, 8.0])


def test_rolling_means_cover_the_last_five_readings_and_restart_after_a_gap():
    minutes = [0, 1, 2, 3, 4, 5, 6, 30, 31]
    readings = synthetic_readings(minutes)
    readings["power"] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 100.0, 200.0]
    readings["lux"] = [10.0, np.nan, 30.0, 40.0, 50.0, 60.0, 70.0, 1.0, 3.0]
    frame = _build(readings, with_target=False).frame
    np.testing.assert_allclose(frame["rolling_mean_power_5"],
                               [1, 1.5, 2, 2.5, 3, 4, 5, 100, 150])
    # the missing lux at minute 1 is filled from minute 0 (1 min old) before averaging
    np.testing.assert_allclose(frame["rolling_mean_lux_5"],
                               [10, 10, 50 / 3, 22.5, 28, 38, 50, 1, 2])


def test_missing_optional_values_are_filled_only_from_the_last_ten_minutes():
    readings = synthetic_readings(range(0, 30))
    readings["temperature"] = np.nan
    readings.loc[0, "temperature"] = 25.0
    frame = _build(readings, with_target=False).frame
    filled = frame["temperature"]
    assert (filled[:11] == 25.0).all()
    assert filled[11:].isna().all()


def test_an_optional_sensor_absent_from_the_window_is_left_out_with_its_derived_features():
    readings = synthetic_readings(range(60))
    readings["lux"] = np.nan
    readings = readings.drop(columns=["humidity"])
    built = _build(readings)
    missing = {"lux", "lux_diff", "rolling_mean_lux_5", "humidity"}
    assert built.features == [name for name in ORIGINAL_FEATURES if name not in missing]
    assert missing.isdisjoint(built.frame.columns)
    assert "power" in built.frame.columns


def test_prediction_frame_keeps_every_reading_up_to_the_latest_without_a_target():
    readings = synthetic_readings(range(30))
    built = _build(readings, with_target=False)
    assert TARGET not in built.frame.columns
    assert len(built.frame) == 30
    assert built.frame["timestamp"].iloc[-1] == readings["timestamp"].iloc[-1]
    training = _build(readings).frame
    shared = built.frame.iloc[: len(training)]
    pd.testing.assert_frame_equal(shared, training.drop(columns=[TARGET]))


def test_an_empty_window_builds_an_empty_frame():
    built = _build(synthetic_readings([]))
    assert built.frame.empty
    assert TARGET in built.frame.columns and "power" in built.frame.columns


def test_unknown_feature_set_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown feature set 'nope': expected one of original"):
        _build(synthetic_readings(range(5)), feature_set="nope")
    assert "original" in FEATURE_BUILDERS


def test_a_month_of_one_minute_readings_builds_in_well_under_a_second():
    readings = synthetic_readings(np.arange(30 * 24 * 60)).sample(frac=1.0, random_state=0)
    _build(readings.iloc[:100])  # warm imports and caches
    started = time.perf_counter()
    built = _build(readings)
    elapsed = time.perf_counter() - started
    assert len(built.frame) == 30 * 24 * 60 - 12  # the last 12 have no reading near t + 15
    assert elapsed < 1.0


# -- feature set `solar` and the reference columns (issue 8) ---------------------------------

from dataclasses import dataclass  # noqa: E402

from solar_ml_pipeline.forecasting import solar  # noqa: E402
from solar_ml_pipeline.forecasting.features import (  # noqa: E402
    DAYLIGHT,
    POWER_LAGS_MINUTES,
    SMART_PERSISTENCE,
    SOLAR_FEATURES,
)


@dataclass(frozen=True)
class _Site:
    latitude: float = 6.9271
    longitude: float = 79.8612
    altitude: float = 5.0
    capacity_w: float = 300.0
    timezone: str = COLOMBO


SITE = _Site()


def clear_day_readings(minutes, share: float = 0.7) -> pd.DataFrame:
    """Power only: `share` of the site's clear-sky power at the given minutes from T0."""
    stamps = T0 + pd.to_timedelta(np.asarray(minutes, dtype="float64"), unit="min")
    return pd.DataFrame({"timestamp": stamps,
                         "power": share * solar.clear_sky_power(stamps, SITE)})


def test_solar_feature_set_has_geometry_index_lags_and_no_calendar():
    built = _build(clear_day_readings(range(0, 1440, 5)), feature_set="solar", site=SITE)
    assert built.features == list(SOLAR_FEATURES)
    assert not {"hour", "minute", "day_of_week"} & set(built.features)
    assert built.site == SITE


def test_solar_feature_set_without_a_site_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="pass site="):
        _build(clear_day_readings(range(0, 60, 5)), feature_set="solar")


def test_geometry_features_are_at_the_reading_and_at_the_forecast_instant():
    readings = clear_day_readings(range(0, 1440, 5))
    frame = _build(readings, feature_set="solar", site=SITE, with_target=False).frame
    stamps = pd.DatetimeIndex(frame["timestamp"])
    ahead = stamps + pd.Timedelta(minutes=15)
    np.testing.assert_allclose(frame["solar_elevation"], solar.solar_elevation(stamps, SITE))
    np.testing.assert_allclose(frame["solar_elevation_ahead"], solar.solar_elevation(ahead, SITE))
    np.testing.assert_allclose(frame["clear_sky_power_ahead"], solar.clear_sky_power(ahead, SITE))


def test_on_a_clear_day_the_index_is_constant_and_smart_persistence_is_the_target():
    frame = _build(clear_day_readings(range(0, 1440, 5), share=0.7), feature_set="solar",
                   site=SITE).frame
    bright = frame["solar_elevation"] > 10
    np.testing.assert_allclose(frame.loc[bright, "clear_sky_index"], 0.7)
    np.testing.assert_allclose(frame.loc[bright, "clear_sky_index_mean_1h"], 0.7)
    np.testing.assert_allclose(frame.loc[bright, "clear_sky_index_std_1h"], 0.0, atol=1e-9)
    np.testing.assert_allclose(frame.loc[bright, SMART_PERSISTENCE], frame.loc[bright, TARGET])


def test_power_lags_are_matched_by_time_not_by_row():
    minutes = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 30, 45, 60, 75, 90]  # dense, then sparse
    readings = synthetic_readings(minutes)
    frame = _by_timestamp(_build(readings, feature_set="solar", site=SITE,
                                 with_target=False).frame)
    power = _by_timestamp(readings)["power"]
    at = T0 + pd.Timedelta(minutes=90)
    for lag in POWER_LAGS_MINUTES:
        assert frame.loc[at, f"power_lag_{lag}"] == power[at - pd.Timedelta(minutes=lag)]
    # 30 min after T0 there is no reading 15 min earlier (a gap): no made-up lag.
    assert np.isnan(frame.loc[T0 + pd.Timedelta(minutes=30), "power_lag_15"])


def test_solar_features_use_no_reading_after_their_timestamp():
    readings = synthetic_readings(np.arange(0, 600, 1.0))
    full = _by_timestamp(_build(readings, feature_set="solar", site=SITE,
                                with_target=False).frame)
    cut = T0 + pd.Timedelta(minutes=400)
    early = _by_timestamp(_build(readings[readings["timestamp"] <= cut], feature_set="solar",
                                 site=SITE, with_target=False).frame)
    pd.testing.assert_frame_equal(full.loc[:cut, list(SOLAR_FEATURES)],
                                  early[list(SOLAR_FEATURES)])


def test_any_feature_set_with_a_site_carries_daylight_and_smart_persistence_but_not_as_features():
    built = _build(synthetic_readings(range(0, 1440, 5)), feature_set="original", site=SITE)
    assert {DAYLIGHT, SMART_PERSISTENCE} <= set(built.frame.columns)
    assert built.features == list(ORIGINAL_FEATURES)
    ahead = pd.DatetimeIndex(built.frame["timestamp"]) + pd.Timedelta(minutes=15)
    expected = solar.solar_elevation(ahead, SITE) > 5
    assert built.frame[DAYLIGHT].tolist() == expected.tolist()


def test_without_a_site_the_original_frame_is_unchanged():
    readings = synthetic_readings(range(0, 300, 2))
    assert DAYLIGHT not in _build(readings).frame.columns


def test_a_month_of_one_minute_readings_builds_solar_features_in_a_few_seconds():
    readings = synthetic_readings(np.arange(0, 43_200, 1.0))
    began = time.perf_counter()
    _build(readings, feature_set="solar", site=SITE)
    assert time.perf_counter() - began < 5.0  # about 1 s on an idle core


from hypothesis import given, settings as hypothesis_settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from solar_ml_pipeline.forecasting import features as feature_module  # noqa: E402


def _merge_asof_reference(timestamps, values, wanted, tolerance):
    """What the lags and the target were computed with before: pandas' merge_asof."""
    matched = pd.merge_asof(pd.DataFrame({"at": wanted}),
                            pd.DataFrame({"at": timestamps, "value": values}), on="at",
                            direction="nearest", tolerance=pd.Timedelta(tolerance))
    return matched["value"].to_numpy(dtype="float64")


@hypothesis_settings(max_examples=300, deadline=None)
@given(gaps=st.lists(st.integers(1, 1200), max_size=60),  # seconds between readings
       missing=st.lists(st.booleans(), max_size=61),
       lag_minutes=st.integers(1, 60), horizon_minutes=st.integers(2, 60))
def test_lags_and_target_match_the_nearest_reading_within_tolerance_as_merge_asof_did(
        gaps, missing, lag_minutes, horizon_minutes):
    start = pd.Timestamp("2026-03-10 06:00", tz="UTC")
    seconds = np.concatenate([[0], np.cumsum(gaps)]).astype("int64")
    timestamps = pd.Series(start + pd.to_timedelta(seconds, unit="s"))
    values = np.arange(len(seconds), dtype="float64") * 10.0
    values[[i for i, gone in enumerate(missing[:len(values)]) if gone]] = np.nan
    lag = pd.Timedelta(minutes=lag_minutes)
    expected = _merge_asof_reference(timestamps, values, timestamps - lag,
                                     default_tolerance(lag_minutes))
    np.testing.assert_array_equal(
        feature_module._value_minutes_ago(timestamps, values, lag_minutes), expected)
    horizon = timedelta(minutes=horizon_minutes)
    readings = pd.DataFrame({"timestamp": timestamps, "power": values})
    np.testing.assert_array_equal(
        feature_module._target(readings, horizon, default_tolerance(horizon_minutes)),
        _merge_asof_reference(timestamps, values, timestamps + horizon,
                              default_tolerance(horizon_minutes)))


def test_a_reading_equally_near_on_both_sides_matches_the_earlier_one_as_merge_asof_did():
    timestamps = pd.Series(pd.to_datetime(["2026-03-10 06:00", "2026-03-10 06:10"], utc=True))
    values = np.array([1.0, 2.0])
    wanted = timestamps.iloc[:1] + pd.Timedelta(minutes=5)
    tolerance = timedelta(minutes=5)
    reference = _merge_asof_reference(timestamps, values, wanted, tolerance)
    got = feature_module._nearest_within(feature_module._instants(timestamps),
                                         feature_module._instants(wanted), tolerance)
    assert list(reference) == [1.0] and list(got) == [0]
