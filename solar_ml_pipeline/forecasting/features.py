"""Features and the forecast target, computed by time so gaps and disorder cannot fool them.

One function serves training (`with_target=True`) and prediction (`with_target=False`), so
a model always sees features built the same way.

Rules, all by timestamp, never by row offset:

- Calendar features (hour, minute, day_of_week with Monday = 0) are local time in `timezone`.
- A *gap* is more than MAX_GAP (10 minutes) between consecutive readings: with the usual
  1-5 minute cadence, one lost reading is not a gap, a silent tracker is.
- Optional sensors missing in a row take the last value seen at most MAX_GAP earlier, else
  stay NaN; the estimators impute what remains (see training.make_estimator).
- `*_diff` is the change since the previous reading, NaN right after a gap.
- `rolling_mean_*_5` is the mean of the current and up to 4 previous readings (the original
  system's 5-reading window), never reaching back across a gap; NaN values are skipped.
- The target is the power of the reading nearest to `t + horizon`, within `tolerance`
  (default: max(1 min, horizon / 5), never more than half the horizon, so the match is always
  after `t`). A reading with no such match (its horizon falls in a gap) has no target and is
  dropped when `with_target`.

No feature uses a reading after its own timestamp. Which optional sensors exist is decided
per window: a sensor with no value in the window is left out, with every feature derived
from it, and `FeatureFrame.features` lists what remains.

Feature set `solar` (needs the site): solar geometry now and at `t + horizon`, the clear-sky
index (power / clear-sky power) with its mean and variability over the last hour, power
15/30/45/60 minutes ago matched by time, and smart persistence (the index stays, the sky
geometry moves on). No calendar features: a 7-day window cannot teach what a Tuesday is,
while the sun's position says everything time of day and season do.

Whenever a site is given, every frame also carries two reference columns that are not
features, for honest scoring (see training.py): `daylight` (sun above 5 degrees at
`t + horizon`) and `smart_persistence`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd

from solar_ml_pipeline.forecasting import solar
from solar_ml_pipeline.readings.cleaning import OPTIONAL_SENSORS, clean_readings, sensors_present

TARGET = "target_power"
MAX_GAP = pd.Timedelta(minutes=10)
ROLLING_READINGS = 5

ORIGINAL_FEATURES = (
    "hour", "minute", "day_of_week",
    "servo_angle", "temperature", "humidity", "lux", "voltage", "current", "power", "fan_on",
    "power_diff", "lux_diff", "rolling_mean_power_5", "rolling_mean_lux_5",
)

# The optional sensor each feature needs; features not listed need only timestamp and power.
ORIGINAL_SOURCES = {
    **{name: name for name in OPTIONAL_SENSORS},
    "lux_diff": "lux",
    "rolling_mean_lux_5": "lux",
}


POWER_LAGS_MINUTES = (15, 30, 45, 60)
INDEX_WINDOW = pd.Timedelta(minutes=60)
SOLAR_FEATURES = (
    "power", "solar_elevation", "solar_elevation_ahead", "clear_sky_power",
    "clear_sky_power_ahead", "clear_sky_index", "clear_sky_index_mean_1h",
    "clear_sky_index_std_1h", *(f"power_lag_{minutes}" for minutes in POWER_LAGS_MINUTES),
    "smart_persistence",
)
# Columns added beside the features when a site is known; never model inputs.
DAYLIGHT = "daylight"
SMART_PERSISTENCE = "smart_persistence"
FEATURE_SETS_NEEDING_SITE = ("solar",)


@dataclass(frozen=True)
class FeatureOptions:
    """What a feature-set builder may depend on besides the readings. `site`: any object
    with latitude, longitude, altitude and capacity_w (e.g. sites.Site)."""

    horizon_minutes: int
    timezone: str
    site: solar.SiteLike | None = None
    sun: solar.SunMemo | None = None


@dataclass(frozen=True)
class FeatureFrame:
    """`frame`: timestamp, the usable feature columns (power among them), target when built
    with one. `features`: the model inputs for this window, in feature-set order."""

    frame: pd.DataFrame
    features: list[str]
    horizon_minutes: int
    timezone: str
    feature_set: str
    with_target: bool
    site: solar.SiteLike | None = None


# A builder gets cleaned, sorted readings and returns feature columns on the same index plus
# the names usable in this window.
FeatureBuilder = Callable[[pd.DataFrame, FeatureOptions], tuple[pd.DataFrame, list[str]]]


def _segment_starts(timestamps: pd.Series) -> np.ndarray:
    """For each row, the index of the first row of its gap-free run of readings."""
    positions = np.arange(len(timestamps))
    # diff() of the first row is NaT, which compares False: row 0 starts a run via position 0.
    starts_run = timestamps.diff().to_numpy() > MAX_GAP.to_timedelta64()
    return np.maximum.accumulate(np.where(starts_run, positions, 0))


def _fill_recent(values: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Missing values take the last value seen at most MAX_GAP earlier."""
    positions = np.arange(len(values))
    last_seen = np.maximum.accumulate(np.where(~np.isnan(values), positions, -1))
    known = last_seen >= 0
    source = np.where(known, last_seen, 0)
    recent = known & (timestamps - timestamps[source] <= MAX_GAP.to_timedelta64())
    return np.where(recent, values[source], np.nan)


def _diff_since_previous(values: np.ndarray, segment_starts: np.ndarray) -> np.ndarray:
    previous = np.arange(len(values)) - 1
    has_previous = previous >= segment_starts
    safe = np.where(has_previous, previous, 0)
    return np.where(has_previous, values - values[safe], np.nan)


def _trailing_mean(values: np.ndarray, segment_starts: np.ndarray, readings: int) -> np.ndarray:
    """Mean of the current and up to `readings - 1` previous values of the same run."""
    n = len(values)
    if n == 0:
        return values
    lags = np.arange(readings)
    sources = np.arange(n)[:, None] - lags[None, :]
    in_run = sources >= segment_starts[:, None]
    window = np.where(in_run, values[np.where(in_run, sources, 0)], np.nan)
    counts = np.sum(~np.isnan(window), axis=1)
    sums = np.nansum(window, axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _original_features(readings: pd.DataFrame,
                       options: FeatureOptions) -> tuple[pd.DataFrame, list[str]]:
    timestamps = readings["timestamp"]
    stamps = timestamps.to_numpy(dtype="datetime64[ns]")  # UTC instants, not objects
    local = timestamps.dt.tz_convert(options.timezone)
    starts = _segment_starts(timestamps)
    columns: dict[str, np.ndarray] = {
        "hour": local.dt.hour.to_numpy(dtype="int64"),
        "minute": local.dt.minute.to_numpy(dtype="int64"),
        "day_of_week": local.dt.dayofweek.to_numpy(dtype="int64"),
    }
    for name in (*OPTIONAL_SENSORS, "power"):
        values = readings[name].to_numpy(dtype="float64")
        columns[name] = values if name == "power" else _fill_recent(values, stamps)
    columns["power_diff"] = _diff_since_previous(columns["power"], starts)
    columns["lux_diff"] = _diff_since_previous(columns["lux"], starts)
    columns["rolling_mean_power_5"] = _trailing_mean(columns["power"], starts, ROLLING_READINGS)
    columns["rolling_mean_lux_5"] = _trailing_mean(columns["lux"], starts, ROLLING_READINGS)

    present = set(sensors_present(readings))
    usable = [
        name for name in ORIGINAL_FEATURES
        if ORIGINAL_SOURCES.get(name) is None or ORIGINAL_SOURCES[name] in present
    ]
    frame = pd.DataFrame({name: columns[name] for name in usable}, index=readings.index)
    return frame, usable


@dataclass(frozen=True)
class _SunAt:
    """Solar geometry of every reading, now and at the forecast instant."""

    elevation: np.ndarray
    elevation_ahead: np.ndarray
    clear_sky: np.ndarray
    clear_sky_ahead: np.ndarray


def _sun_at(timestamps: pd.Series, horizon_minutes: int, site: solar.SiteLike,
            sun: solar.SunMemo | None = None) -> _SunAt:
    """Through a SunMemo (the fleet call's, else one for this window): the instants `now`
    and `ahead` share are computed once, with the same numbers as one by one."""
    sun = sun or solar.SunMemo()
    now = pd.DatetimeIndex(timestamps.array)
    elevation, irradiance = sun.geometry(now, site)
    elevation_ahead, irradiance_ahead = sun.geometry(
        now + pd.Timedelta(minutes=horizon_minutes), site)
    return _SunAt(
        elevation=elevation, elevation_ahead=elevation_ahead,
        clear_sky=solar.power_from_irradiance(irradiance, elevation, site.capacity_w),
        clear_sky_ahead=solar.power_from_irradiance(irradiance_ahead, elevation_ahead,
                                                    site.capacity_w),
    )


def _instants(timestamps: pd.Series) -> np.ndarray:
    return timestamps.to_numpy(dtype="datetime64[ns]").view("int64")


def _nearest_within(instants: np.ndarray, wanted: np.ndarray, tolerance: timedelta) -> np.ndarray:
    """For each wanted instant, the index of the nearest of the sorted `instants` at most
    `tolerance` away (the earlier one on a tie), else -1: pandas' merge_asof(direction=
    "nearest") to the letter, without its per-call frame building (a third of a forecast)."""
    count = len(instants)
    if count == 0:
        return np.full(len(wanted), -1, dtype="int64")
    before = np.searchsorted(instants, wanted, side="right") - 1
    after = np.searchsorted(instants, wanted, side="left")
    never = np.iinfo("int64").max
    gap_before = np.where(before >= 0, wanted - instants[np.maximum(before, 0)], never)
    gap_after = np.where(after < count, instants[np.minimum(after, count - 1)] - wanted, never)
    nearest = np.where(gap_before <= gap_after, before, after)
    gap = np.minimum(gap_before, gap_after)
    return np.where(gap <= pd.Timedelta(tolerance).value, nearest, -1)


def _values_at(values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    out = np.full(len(indices), np.nan)
    found = indices >= 0
    out[found] = values[indices[found]]
    return out


def _value_minutes_ago(timestamps: pd.Series, values: np.ndarray, minutes: int) -> np.ndarray:
    """The value of the reading nearest to `t - minutes`, within the target's tolerance rule."""
    instants = _instants(timestamps)
    lag = pd.Timedelta(minutes=minutes).value
    return _values_at(values, _nearest_within(instants, instants - lag,
                                              default_tolerance(minutes)))


def _solar_features(readings: pd.DataFrame,
                    options: FeatureOptions) -> tuple[pd.DataFrame, list[str]]:
    site = options.site
    if site is None:
        raise ValueError("feature set 'solar' needs the device's site: pass site=...")
    timestamps = readings["timestamp"]
    sun = _sun_at(timestamps, options.horizon_minutes, site, options.sun)
    power = readings["power"].to_numpy(dtype="float64")
    index = solar.clear_sky_index(power, sun.clear_sky, sun.elevation, site.capacity_w)
    # Trailing hour by time: (t - 60 min, t], the reading at t included, NaN skipped.
    recent = pd.Series(index, index=pd.DatetimeIndex(timestamps.array)).rolling(
        INDEX_WINDOW, min_periods=1)
    columns: dict[str, np.ndarray] = {
        "power": power,
        "solar_elevation": sun.elevation,
        "solar_elevation_ahead": sun.elevation_ahead,
        "clear_sky_power": sun.clear_sky,
        "clear_sky_power_ahead": sun.clear_sky_ahead,
        "clear_sky_index": index,
        "clear_sky_index_mean_1h": recent.mean().to_numpy(),
        "clear_sky_index_std_1h": recent.std(ddof=0).to_numpy(),
    }
    for minutes in POWER_LAGS_MINUTES:
        columns[f"power_lag_{minutes}"] = _value_minutes_ago(timestamps, power, minutes)
    columns["smart_persistence"] = solar.smart_persistence(
        power, sun.clear_sky, sun.clear_sky_ahead, sun.elevation, site.capacity_w)
    return pd.DataFrame(columns, index=readings.index), list(SOLAR_FEATURES)


def _reference_columns(readings: pd.DataFrame, horizon_minutes: int,
                       site: solar.SiteLike, sun_memo: solar.SunMemo | None) -> pd.DataFrame:
    sun = _sun_at(readings["timestamp"], horizon_minutes, site, sun_memo)
    power = readings["power"].to_numpy(dtype="float64")
    return pd.DataFrame({
        DAYLIGHT: solar.is_daylight(sun.elevation_ahead),
        SMART_PERSISTENCE: solar.smart_persistence(
            power, sun.clear_sky, sun.clear_sky_ahead, sun.elevation, site.capacity_w),
    }, index=readings.index)


FEATURE_BUILDERS: dict[str, FeatureBuilder] = {
    "original": _original_features,
    "solar": _solar_features,
}


def default_tolerance(horizon_minutes: int) -> timedelta:
    """How far the target reading may sit from `t + horizon`: max(1 min, horizon/5), capped
    at half the horizon so the target is never the reading at `t` itself."""
    horizon = timedelta(minutes=horizon_minutes)
    return min(max(timedelta(minutes=1), horizon / 5), horizon / 2)


def _target(readings: pd.DataFrame, horizon: timedelta, tolerance: timedelta) -> np.ndarray:
    instants = _instants(readings["timestamp"])
    matched = _nearest_within(instants, instants + pd.Timedelta(horizon).value, tolerance)
    return _values_at(readings["power"].to_numpy(dtype="float64"), matched)


def target_power(readings: pd.DataFrame, horizon_minutes: int) -> np.ndarray:
    """The realised power `horizon` after each reading (NaN where none is within the default
    tolerance): what a forecast made at that reading is scored against."""
    horizon = timedelta(minutes=horizon_minutes)
    return _target(readings, horizon, default_tolerance(horizon_minutes))


def history_needed(feature_set: str) -> timedelta:
    """How far before a reading its features look: the longest lag (with its matching
    tolerance) or rolling window of the set, plus one MAX_GAP of margin. Serving reads only
    this much history before the newest reading, and gets the same last row as from more.

    - solar: the one-hour clear-sky-index window and the 60-minute power lag matched within
      default_tolerance(60), so 72 minutes.
    - original: up to ROLLING_READINGS - 1 previous readings of the same gap-free run, each at
      most MAX_GAP apart, and sensors carried forward for at most MAX_GAP.
    """
    if feature_set == "solar":
        longest_lag = max(POWER_LAGS_MINUTES)
        span = max(INDEX_WINDOW.to_pytimedelta(),
                   timedelta(minutes=longest_lag) + default_tolerance(longest_lag))
    elif feature_set == "original":
        span = (ROLLING_READINGS - 1) * MAX_GAP.to_pytimedelta() + MAX_GAP.to_pytimedelta()
    else:
        raise ValueError(f"unknown feature set {feature_set!r}: expected one of "
                         f"{', '.join(FEATURE_BUILDERS)}")
    return span + MAX_GAP.to_pytimedelta()


def build_feature_frame(readings: pd.DataFrame, *, horizon_minutes: int, timezone: str,
                        feature_set: str = "original", with_target: bool = True,
                        tolerance: timedelta | None = None,
                        site: solar.SiteLike | None = None,
                        sun: solar.SunMemo | None = None) -> FeatureFrame:
    """Features (and the target) of every reading in the window, sorted by time.

    The readings are cleaned first (idempotent), so raw, shuffled or duplicated input gives
    the same frame as its cleaned form. `site` is required by the `solar` feature set; with
    any set it adds the `daylight` and `smart_persistence` reference columns. `sun` shares
    the solar geometry between the windows of one fleet call.
    """
    builder = FEATURE_BUILDERS.get(feature_set)
    if builder is None:
        raise ValueError(f"unknown feature set {feature_set!r}: expected one of "
                         f"{', '.join(FEATURE_BUILDERS)}")
    if horizon_minutes < 1:
        raise ValueError(f"horizon_minutes={horizon_minutes!r} is invalid: expected at least 1")
    if site is None and feature_set in FEATURE_SETS_NEEDING_SITE:
        raise ValueError(f"feature set {feature_set!r} needs the device's site (latitude, "
                         f"longitude, altitude, capacity_w): pass site=...")
    clean, _ = clean_readings(readings)
    options = FeatureOptions(horizon_minutes=horizon_minutes, timezone=timezone, site=site,
                             sun=sun)
    built, usable = builder(clean, options)
    parts = [clean[["timestamp"]], built]
    if site is not None and "solar_elevation_ahead" in built.columns:
        parts.append(pd.DataFrame({DAYLIGHT: solar.is_daylight(built["solar_elevation_ahead"])},
                                  index=built.index))
    elif site is not None:
        parts.append(_reference_columns(clean, horizon_minutes, site, sun))
    frame = pd.concat(parts, axis=1)
    if "power" not in frame.columns:
        frame["power"] = clean["power"]  # persistence needs power now, feature or not
    if with_target:
        horizon = timedelta(minutes=horizon_minutes)
        if tolerance is None:
            tolerance = default_tolerance(horizon_minutes)
        elif not timedelta(0) <= tolerance < horizon:
            raise ValueError(f"tolerance={tolerance} is invalid: expected 0 <= tolerance < "
                             f"the {horizon_minutes} min horizon")
        frame[TARGET] = _target(clean, horizon, tolerance)
        frame = frame[frame[TARGET].notna()].reset_index(drop=True)
    return FeatureFrame(frame=frame, features=usable, horizon_minutes=horizon_minutes,
                        timezone=timezone, feature_set=feature_set, with_target=with_target,
                        site=site)
