"""Data-quality flags: each flag on a day of readings, healthy data flags nothing, and an
attempt never fits on flagged readings and stops when too few are usable."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from solar_ml_pipeline.forecasting import solar
from solar_ml_pipeline.forecasting.attempt import Attempt, Policy, retrain_device, run_attempt
from solar_ml_pipeline.forecasting.features import TARGET, build_feature_frame
from solar_ml_pipeline.forecasting.quality import (
    QUALITY_FLAGS,
    QualityRules,
    flag_readings,
    usable_readings,
)
from solar_ml_pipeline.model_store.registry import ModelRegistry
from solar_ml_pipeline.readings.cleaning import clean_readings
from solar_ml_pipeline.readings.simulator import Fault, simulate_readings
from solar_ml_pipeline.readings.sites import DEFAULT_SITE, Site
from solar_ml_pipeline.storage.sqlite import SqliteStore
from solar_ml_pipeline_tests.conftest import PERIOD, PERIOD_START
from solar_ml_pipeline_tests.storage.mongomock_client import mongomock_store

COLOMBO = "Asia/Colombo"
DAY = datetime(2026, 3, 5, tzinfo=UTC)  # 05:30 in Colombo, before sunrise
SITE = DEFAULT_SITE  # Colombo, 300 W


def local(clock: str, day: int = 5) -> pd.Timestamp:
    return pd.Timestamp(f"2026-03-{day:02d} {clock}", tz=COLOMBO).tz_convert("UTC")


def a_day(interval_minutes: float = 1, seed: int = 3) -> pd.DataFrame:
    frame, _ = clean_readings(simulate_readings("tracker01", start=DAY, end=DAY + timedelta(days=1),
                                                interval_minutes=interval_minutes, seed=seed))
    return frame


def between(frame: pd.DataFrame, start: str, end: str) -> np.ndarray:
    return ((frame["timestamp"] >= local(start)) & (frame["timestamp"] < local(end))).to_numpy()


def flagged(report, name: str) -> np.ndarray:
    return report.flags[name].to_numpy()


@pytest.fixture(scope="module")
def day() -> pd.DataFrame:
    frame = a_day()
    assert flag_readings(frame, SITE).flagged == 0  # the baseline every test below changes
    return frame


def test_power_repeated_for_30_daylight_minutes_is_stuck_and_20_minutes_is_not(day):
    frame = day.copy()
    long, short = between(frame, "10:00", "10:45"), between(frame, "13:00", "13:20")
    frame.loc[long, "power"] = 123.45
    frame.loc[short, "power"] = 150.0
    report = flag_readings(frame, SITE)
    assert (flagged(report, "stuck") == long).all()
    assert report.counts["stuck"] == long.sum() and report.flagged == long.sum()


def test_lux_repeated_in_daylight_is_stuck_but_zero_power_and_lux_all_night_are_not(day):
    frame = day.copy()
    frozen = between(frame, "15:00", "16:00")
    frame.loc[frozen, "lux"] = 40000.0
    report = flag_readings(frame, SITE)
    assert (flagged(report, "stuck") == frozen).all()
    night = between(frame, "20:00", "23:59")
    assert (frame.loc[night, "power"] == 0).all() and not flagged(report, "stuck")[night].any()


def test_three_identical_readings_at_a_15_minute_cadence_are_stuck_and_two_are_not():
    frame = a_day(interval_minutes=15, seed=1)
    three = between(frame, "10:00", "10:31")
    two = between(frame, "14:00", "14:16")
    assert three.sum() == 3 and two.sum() == 2
    frame.loc[three, "power"] = 111.0
    frame.loc[two, "power"] = 99.0
    assert (flagged(flag_readings(frame, SITE), "stuck") == three).all()


def test_power_well_above_the_clear_sky_is_flagged_only_when_the_site_has_a_capacity(day):
    frame = day.copy()
    noon = between(frame, "12:20", "12:21")
    frame.loc[noon, "power"] = 2 * SITE.capacity_w
    report = flag_readings(frame, SITE)
    assert (flagged(report, "above_clear_sky") == noon).all()
    unknown_capacity = SimpleNamespace(latitude=SITE.latitude, longitude=SITE.longitude,
                                       altitude=0.0, capacity_w=None, timezone=COLOMBO)
    assert flag_readings(frame, unknown_capacity).flagged == 0


def test_a_fixed_panel_beating_a_flat_tracker_at_a_winter_noon_is_no_clear_sky_exceedance():
    # Golden, Colorado in December: a tilted panel gets ~1.8x the flat tracker's clear sky
    golden = Site(39.74, -105.18, 1800.0, 3000.0, "America/Denver")
    start = datetime(2025, 12, 15, 7, tzinfo=UTC)  # local midnight
    frame, _ = clean_readings(simulate_readings("tracker01", start=start,
                                                end=start + timedelta(days=1), site=golden))
    local_time = frame["timestamp"].dt.tz_convert("America/Denver")
    noon = ((local_time.dt.hour >= 11) & (local_time.dt.hour < 13)).to_numpy()
    frame.loc[noon, "power"] = 0.9 * solar.clear_sky_ceiling(frame.loc[noon, "timestamp"], golden)
    tracker_clear = solar.clear_sky_power(frame.loc[noon, "timestamp"], golden)
    assert (frame.loc[noon, "power"] > 1.5 * tracker_clear).all()
    assert flag_readings(frame, golden).counts["above_clear_sky"] == 0


def test_power_at_night_above_1_percent_of_capacity_is_flagged_and_a_watt_is_not(day):
    frame = day.copy()
    loud, faint = between(frame, "23:00", "23:01"), between(frame, "23:30", "23:31")
    frame.loc[loud, "power"], frame.loc[faint, "power"] = 20.0, 1.0
    report = flag_readings(frame, SITE)
    assert (flagged(report, "night_power") == loud).all() and report.flagged == 1


def test_power_held_at_capacity_for_90_minutes_is_clipping_and_for_30_minutes_is_not(day):
    frame = day.copy()
    long, short = between(frame, "10:30", "12:00"), between(frame, "14:00", "14:30")
    for rows in (long, short):  # at capacity, but never one value twice (that is stuck)
        frame.loc[rows, "power"] = 297.2 + 0.01 * np.arange(rows.sum())
    report = flag_readings(frame, SITE)
    assert (flagged(report, "clipping") == long).all() and report.flagged == long.sum()


def test_a_tracker_that_stops_while_the_sun_moves_is_frozen_but_one_parked_at_its_limit_is_not(day):
    frame = day.copy()
    stopped = between(frame, "10:30", "12:00")  # an ideal tracker turns ~20 degrees meanwhile
    parked = between(frame, "06:00", "08:00")  # low sun: the ideal tracker sits at -60 degrees
    frame.loc[stopped, "servo_angle"] = 95.0
    frame.loc[parked, "servo_angle"] = 30.0
    report = flag_readings(frame, SITE)
    assert (flagged(report, "frozen_tracker") == stopped).all()
    assert report.flagged == stopped.sum()


def test_readings_more_than_5_minutes_in_the_future_are_flagged(day):
    now = local("12:00").to_pydatetime()
    report = flag_readings(day, SITE, now=now)
    future = (day["timestamp"] > local("12:05")).to_numpy()
    assert (flagged(report, "future_timestamp") == future).all()
    assert report.counts["future_timestamp"] == future.sum() > 0


def test_without_a_site_only_stuck_non_zero_values_and_future_timestamps_are_flagged(day):
    frame = day.copy()
    stuck = between(frame, "10:00", "10:45")
    frame.loc[stuck, "power"] = 123.45
    frame.loc[between(frame, "23:00", "23:01"), "power"] = 200.0  # night power: needs a site
    report = flag_readings(frame, None, now=local("16:00").to_pydatetime())
    future = (frame["timestamp"] > local("16:05")).to_numpy()
    assert (flagged(report, "stuck") == stuck).all()
    assert (flagged(report, "future_timestamp") == future).all()
    assert report.flagged == (stuck | future).sum()


def test_missing_sensors_raise_no_flag(day):
    frame = day.copy()
    frame["lux"], frame["servo_angle"] = np.nan, np.nan
    assert flag_readings(frame, SITE).flagged == 0
    assert flag_readings(frame[["timestamp", "power"]], SITE).flagged == 0


def test_the_report_follows_the_input_rows_and_usable_readings_keeps_only_unflagged_ones(day):
    frame = day.copy()
    frame.loc[between(frame, "10:00", "10:45"), "power"] = 123.45
    frame.loc[between(frame, "23:00", "23:01"), "power"] = 20.0
    shuffled = frame.sample(frac=1.0, random_state=1)
    shuffled.index = shuffled.index + 1000
    report = flag_readings(shuffled, SITE)
    assert report.flags.index.equals(shuffled.index) and report.usable.index.equals(shuffled.index)
    assert list(report.flags.columns) == list(QUALITY_FLAGS) == list(report.counts)
    in_order = flag_readings(frame, SITE)
    assert report.counts == in_order.counts
    assert (report.flags.loc[frame.index + 1000].to_numpy() == in_order.flags.to_numpy()).all()
    usable, again = usable_readings(shuffled, SITE)
    assert again.counts == report.counts
    assert usable.index.equals(shuffled.index[report.usable.to_numpy()])
    assert len(usable) == report.rows - report.flagged


def test_counts_name_every_flag_and_the_summary_is_one_line(day):
    frame = day.copy()
    frame.loc[between(frame, "10:00", "10:45"), "power"] = 123.45
    frame.loc[between(frame, "23:00", "23:03"), "power"] = 20.0
    report = flag_readings(frame, SITE)
    assert report.counts == {"stuck": 45, "above_clear_sky": 0, "night_power": 3,
                             "clipping": 0, "frozen_tracker": 0, "future_timestamp": 0}
    share = 100 * (1 - 48 / len(frame))
    assert report.summary() == (f"stuck 45, night_power 3 of {len(frame)} rows flagged "
                                f"({share:.1f} % usable)")
    assert report.usable_share == pytest.approx(1 - 48 / len(frame))
    assert flag_readings(day, SITE).summary() == f"no quality flags on {len(day)} rows"
    empty = flag_readings(day.iloc[:0], SITE)
    assert (empty.rows, empty.usable_share, empty.counts["stuck"]) == (0, 0.0, 0)


@pytest.mark.parametrize("change", [{"stuck_minutes": -1}, {"min_usable_share": 1.5},
                                    {"above_clear_sky_factor": 0.5},
                                    {"night_elevation_deg": -100}, {"future_minutes": float("nan")}])
def test_an_invalid_rule_is_refused_in_one_line_naming_it(change):
    with pytest.raises(ValueError) as info:
        replace(QualityRules(), **change)
    assert next(iter(change)) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("site", "start", "interval"), [
    (DEFAULT_SITE, datetime(2026, 1, 1, tzinfo=UTC), 1),
    (DEFAULT_SITE, datetime(2026, 6, 1, tzinfo=UTC), 5),
    (Site(59.9, 10.7, 20.0, 5000.0, "Europe/Oslo"), datetime(2026, 6, 1, tzinfo=UTC), 1),
    (Site(39.74, -105.18, 1800.0, 300.0, "America/Denver"), datetime(2026, 12, 1, tzinfo=UTC), 5),
])
def test_a_month_of_healthy_simulated_readings_flags_well_under_a_tenth_of_a_percent(site, start,
                                                                                    interval):
    frame, _ = clean_readings(simulate_readings("tracker01", start=start,
                                                end=start + timedelta(days=30),
                                                interval_minutes=interval, seed=5, site=site))
    report = flag_readings(frame, site, now=start + timedelta(days=30))
    assert report.flagged <= 0.001 * report.rows, report.summary()


def test_thirty_days_of_one_minute_readings_are_flagged_in_well_under_a_second():
    frame, _ = clean_readings(simulate_readings("tracker01", start=DAY,
                                                end=DAY + timedelta(days=30)))
    assert len(frame) > 40_000
    flag_readings(frame, SITE)  # warm: pvlib's first call loads its tables
    started = time.perf_counter()
    flag_readings(frame, SITE)
    assert time.perf_counter() - started < 1.0


# -- in an attempt ---------------------------------------------------------------------------

STUCK_START = datetime(2026, 3, 7, 4, 0, tzinfo=UTC)  # 09:30 to 11:30 in Colombo
STUCK_END = datetime(2026, 3, 7, 6, 0, tzinfo=UTC)


@pytest.fixture
def registry(settings):
    return ModelRegistry(settings.model_dir)


def write_simulated(store, device_id: str, faults=()) -> pd.DataFrame:
    frame = simulate_readings(device_id, start=PERIOD_START - timedelta(days=8), end=PERIOD_START,
                              faults=faults)
    store.write_readings(frame.to_dict("records"))
    return frame


def test_a_stuck_sensor_segment_is_flagged_excluded_from_training_and_counted(settings, store,
                                                                              registry):
    write_simulated(store, "tracker01", [Fault("stuck", STUCK_START, STUCK_END)])
    attempt = Attempt(run_id="run-stuck", device_id="tracker01", period_key=PERIOD,
                      cutoff=PERIOD_START, days=7)
    result = run_attempt(settings, store, registry, attempt, Policy.from_settings(settings))
    assert result.ok, result.error
    window, quality = result.window.frame, result.window.quality
    segment = ((window["timestamp"] >= STUCK_START) & (window["timestamp"] < STUCK_END)).to_numpy()
    assert segment.sum() > 100  # the raw window still holds the segment
    assert (quality.flags["stuck"].to_numpy() == segment).all()
    assert quality.counts == {**dict.fromkeys(QUALITY_FLAGS, 0), "stuck": int(segment.sum())}

    frame = result.frame.frame
    stamps = frame["timestamp"]
    margin = timedelta(minutes=3)  # the target's and the lags' matching tolerance
    inside = (STUCK_START + margin, STUCK_END - margin)

    def within(moments: pd.Series) -> pd.Series:
        return (moments >= inside[0]) & (moments < inside[1])

    assert not ((stamps >= STUCK_START) & (stamps < STUCK_END)).any()  # no feature row
    assert not within(stamps + timedelta(minutes=15)).any()  # no target from the segment
    assert frame.loc[within(stamps - timedelta(minutes=15)), "power_lag_15"].isna().all()
    expected = build_feature_frame(window[quality.usable.to_numpy()], horizon_minutes=15,
                                   timezone=settings.timezone, feature_set="solar", site=SITE)
    assert len(frame) == len(expected.frame)
    assert (frame[TARGET].to_numpy() == expected.frame[TARGET].to_numpy()).all()

    record = store.get_run("run-stuck")
    share = round(1 - segment.sum() / len(window), 4)
    assert record["rows_used"] == len(frame)
    assert record["quality_flags"] == quality.counts and record["usable_share"] == share
    meta = registry.read_meta("tracker01", record["version"])
    assert meta["quality_flags"] == quality.counts and meta["usable_share"] == share


@pytest.mark.parametrize(("frozen_from", "share_of", "top_flag", "fix"), [
    # frozen at night: 0 W all day long, so every daylight reading is stuck
    (PERIOD_START - timedelta(days=7) + timedelta(hours=2), "daylight readings are usable (",
     "stuck", "check the power and lux sensors"),
    # frozen at noon: the noon value all night too
    (PERIOD_START - timedelta(days=7, hours=6), "readings are usable, below", "night_power",
     "check the device clock and the site's timezone and longitude, or the meter's zero offset; "
     "check the power and lux sensors"),
])
def test_a_window_mostly_flagged_fails_the_attempt_in_one_line_with_one_record_and_no_version(
        settings, store, registry, frozen_from, share_of, top_flag, fix):
    write_simulated(store, "tracker01", [Fault("stuck", frozen_from)])
    record = retrain_device(settings, store, registry, "tracker01", PERIOD, PERIOD_START,
                            run_id="run-bad", days=7)
    assert record["status"] == "failed"
    error = record["error"]
    assert "\n" not in error
    assert error.startswith("only 0.0 % of the window's") and share_of in error
    assert f"below MIN_USABLE_SHARE 50 %: flagged {top_flag} " in error and fix in error
    assert record["quality_flags"]["stuck"] > 0 and set(record["quality_flags"]) == set(QUALITY_FLAGS)
    # the nights of a sensor dead at 0 W are usable, yet no model can learn daylight from them
    assert record["usable_share"] == (pytest.approx(0.52, abs=0.03) if top_flag == "stuck" else 0.0)
    assert [r["run_id"] for r in store.list_runs(device_id="tracker01").runs] == ["run-bad"]
    assert registry.list_versions("tracker01") == []
    assert registry.read_pointer("tracker01") is None


def test_min_usable_share_decides_whether_a_partly_flagged_window_trains(settings, store,
                                                                         registry):
    write_simulated(store, "tracker01", [Fault("stuck", STUCK_START, STUCK_END)])
    strict = settings.with_overrides(min_usable_share=0.999)
    failed = retrain_device(strict, store, registry, "tracker01", PERIOD, PERIOD_START,
                            run_id="run-strict", days=7)
    assert failed["status"] == "failed" and "below MIN_USABLE_SHARE 99.9 %" in failed["error"]
    assert registry.list_versions("tracker01") == []
    trained = retrain_device(settings, store, registry, "tracker01", PERIOD, PERIOD_START,
                             run_id="run-default", days=7)
    assert trained["status"] == "success" and trained["usable_share"] > 0.98


@pytest.mark.parametrize("backend", ["sqlite", "mongomock"])
def test_the_quality_counts_of_a_run_record_round_trip_on_both_backends(backend, tmp_path):
    store = SqliteStore(tmp_path / "solar_ml.db") if backend == "sqlite" else mongomock_store()
    counts = {**dict.fromkeys(QUALITY_FLAGS, 0), "stuck": np.int64(120), "night_power": 3}
    try:
        store.upsert_run({"run_id": "r1", "device_id": "tracker01", "status": "running",
                          "quality_flags": counts, "usable_share": np.float64(0.9722)})
        store.upsert_run({"run_id": "r1", "status": "success"})
        stored = store.get_run("r1")
    finally:
        store.close()
    assert stored["quality_flags"] == {**dict.fromkeys(QUALITY_FLAGS, 0), "stuck": 120,
                                       "night_power": 3}
    assert type(stored["quality_flags"]["stuck"]) is int
    assert stored["usable_share"] == 0.9722
