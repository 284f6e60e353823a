"""Where the sun is and what a clear sky would give, so forecasts can separate geometry from
weather.

Power at a site is mostly geometry (sun elevation, a clear-sky ceiling that rises and falls
every day) times weather (the clear-sky index, power / clear-sky power). Geometry is known
exactly for any future instant; only the weather has to be forecast. These helpers compute
the geometric part for any object with the site attributes `latitude`, `longitude`,
`altitude` (m) and `capacity_w` (e.g. `readings.sites.Site`), vectorised over timestamps.

Choices (measured in benchmarks/forecast_quality.py, see benchmarks/RESULTS.md):

- Solar position: pvlib's ``ephemeris`` method, about ten times faster than NREL SPA and far
  more accurate than a 15-minute forecast needs.
- Clear sky: Ineichen with pvlib's monthly Linke turbidity climatology for the site.
- Clear-sky power: capacity x plane-of-array clear-sky irradiance / 1000 W/m2. The default
  mount is a one-axis north-south tracker (rotation +-60 degrees, no backtracking), the
  trackers this project serves; ``horizontal`` (GHI) is the orientation-free alternative.
- The clear-sky index is only defined while the clear sky gives at least
  MIN_CLEAR_SKY_FRACTION of capacity and the sun is above MIN_INDEX_ELEVATION_DEG: near
  sunrise and sunset a tiny denominator turns noise into huge ratios.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pvlib

MOUNTS = ("single_axis", "horizontal")
DEFAULT_MOUNT = "single_axis"
TRACKER_MAX_ANGLE_DEG = 60.0
STC_IRRADIANCE_W_M2 = 1000.0
MIN_INDEX_ELEVATION_DEG = 2.0
MIN_CLEAR_SKY_FRACTION = 0.02
MAX_CLEAR_SKY_INDEX = 2.0
DAYLIGHT_ELEVATION_DEG = 5.0


class SiteLike(Protocol):
    latitude: float
    longitude: float
    altitude: float
    capacity_w: float


def _utc_index(timestamps: Any) -> pd.DatetimeIndex:
    """A UTC DatetimeIndex from a Series, Index or sequence of tz-aware datetimes."""
    # A Series' .array keeps the tz without a slow trip through Python objects.
    index = pd.DatetimeIndex(timestamps.array if isinstance(timestamps, pd.Series) else timestamps)
    if index.tz is None:
        raise ValueError("timestamps must be timezone-aware (UTC instants); localize them first")
    return index.tz_convert("UTC")


def solar_position(timestamps: Any, site: SiteLike) -> pd.DataFrame:
    """Apparent elevation, apparent zenith and azimuth (degrees), one row per timestamp."""
    index = _utc_index(timestamps)
    if len(index) == 0:  # pvlib's ephemeris cannot reduce an empty array
        empty = np.empty(0, dtype="float64")
        return pd.DataFrame({"elevation": empty, "zenith": empty, "azimuth": empty}, index=index)
    position = pvlib.solarposition.get_solarposition(
        index, site.latitude, site.longitude, altitude=site.altitude, method="ephemeris",
    )
    return pd.DataFrame({
        "elevation": position["apparent_elevation"].to_numpy(dtype="float64"),
        "zenith": position["apparent_zenith"].to_numpy(dtype="float64"),
        "azimuth": position["azimuth"].to_numpy(dtype="float64"),
    }, index=index)


def solar_elevation(timestamps: Any, site: SiteLike) -> np.ndarray:
    """Apparent solar elevation in degrees (negative at night)."""
    return solar_position(timestamps, site)["elevation"].to_numpy()


def _clear_sky_irradiance(position: pd.DataFrame, site: SiteLike) -> pd.DataFrame:
    index = position.index
    turbidity = pvlib.clearsky.lookup_linke_turbidity(index, site.latitude, site.longitude)
    airmass = pvlib.atmosphere.get_relative_airmass(position["zenith"])
    pressure = pvlib.atmosphere.alt2pres(site.altitude)
    absolute = pvlib.atmosphere.get_absolute_airmass(airmass, pressure)
    dni_extra = pvlib.irradiance.get_extra_radiation(index)
    sky = pvlib.clearsky.ineichen(position["zenith"], absolute, turbidity,
                                  altitude=site.altitude, dni_extra=dni_extra)
    return sky.fillna(0.0)


def _plane_of_array(position: pd.DataFrame, sky: pd.DataFrame, mount: str) -> np.ndarray:
    if mount == "horizontal":
        return sky["ghi"].to_numpy(dtype="float64")
    tracking = pvlib.tracking.singleaxis(
        position["zenith"], position["azimuth"], axis_tilt=0.0, axis_azimuth=180.0,
        max_angle=TRACKER_MAX_ANGLE_DEG, backtrack=False,
    )
    tilt = tracking["surface_tilt"].fillna(0.0)
    azimuth = tracking["surface_azimuth"].fillna(180.0)
    poa = pvlib.irradiance.get_total_irradiance(
        tilt, azimuth, position["zenith"], position["azimuth"],
        sky["dni"], sky["ghi"], sky["dhi"], model="isotropic",
    )["poa_global"]
    return poa.fillna(0.0).to_numpy(dtype="float64")


def clear_sky_power(timestamps: Any, site: SiteLike, mount: str = DEFAULT_MOUNT,
                    position: pd.DataFrame | None = None) -> np.ndarray:
    """Power (W) the site would make under a clear sky at each timestamp; 0 at night.

    Pass `position` (from solar_position on the same timestamps) to reuse it.
    """
    if mount not in MOUNTS:
        raise ValueError(f"unknown mount {mount!r}: expected one of {', '.join(MOUNTS)}")
    if position is None:
        position = solar_position(timestamps, site)
    return power_from_irradiance(plane_of_array_irradiance(position, site, mount),
                                 position["elevation"].to_numpy(), site.capacity_w)


def plane_of_array_irradiance(position: pd.DataFrame, site: SiteLike,
                              mount: str = DEFAULT_MOUNT) -> np.ndarray:
    """Clear-sky irradiance (W/m2, never negative) on the mount's plane at each position."""
    if position.empty:
        return np.zeros(0)
    sky = _clear_sky_irradiance(position, site)
    return np.clip(_plane_of_array(position, sky, mount), 0.0, None)


def power_from_irradiance(irradiance: np.ndarray, elevation: np.ndarray,
                          capacity_w: float) -> np.ndarray:
    """Clear-sky power (W) of a site of `capacity_w` from its plane-of-array irradiance."""
    power = capacity_w * irradiance / STC_IRRADIANCE_W_M2
    return np.where(elevation > 0.0, power, 0.0)


class SunMemo:
    """Solar elevation and clear-sky irradiance by place and instant, shared by the devices
    of one fleet forecast: trackers of a site report at the same minutes, so the first
    device's window computes the geometry the others look up (capacity is applied per
    device). Instants not seen yet are computed together, in one vectorised call.
    """

    def __init__(self, mount: str = DEFAULT_MOUNT) -> None:
        self.mount = mount
        self._tables: dict[tuple[float, float, float], pd.DataFrame] = {}

    def geometry(self, instants: pd.DatetimeIndex, site: SiteLike) -> tuple[np.ndarray, np.ndarray]:
        """(elevation, plane-of-array irradiance) at each instant, as the site computes them."""
        wanted = _utc_index(instants)
        if len(wanted) == 0:  # an empty window (pvlib cannot reduce an empty array)
            return np.zeros(0), np.zeros(0)
        place = (float(site.latitude), float(site.longitude), float(site.altitude))
        table = self._tables.get(place)
        missing = wanted.unique() if table is None else wanted.unique().difference(table.index)
        if len(missing):
            position = solar_position(missing, site)
            computed = pd.DataFrame({
                "elevation": position["elevation"].to_numpy(),
                "irradiance": plane_of_array_irradiance(position, site, self.mount),
            }, index=position.index)
            table = computed if table is None else pd.concat([table, computed]).sort_index()
            self._tables[place] = table
        rows = table.index.get_indexer(wanted)
        return (table["elevation"].to_numpy()[rows], table["irradiance"].to_numpy()[rows])


def clear_sky_ceiling(timestamps: Any, site: SiteLike,
                      position: pd.DataFrame | None = None) -> np.ndarray:
    """Power (W) of a panel facing the sun under a clear sky (beam + diffuse): the most any
    mount, tracker or fixed, makes; 0 at night. Data checks use it as an upper bound.

    Pass `position` (from solar_position on the same timestamps) to reuse it.
    """
    if position is None:
        position = solar_position(timestamps, site)
    if position.empty:
        return np.zeros(0)
    sky = _clear_sky_irradiance(position, site)
    irradiance = sky["dni"].to_numpy(dtype="float64") + sky["dhi"].to_numpy(dtype="float64")
    power = site.capacity_w * np.clip(irradiance, 0.0, None) / STC_IRRADIANCE_W_M2
    return np.where(position["elevation"].to_numpy() > 0.0, power, 0.0)


def clear_sky_index(power: Sequence[float] | np.ndarray, clear_sky: Sequence[float] | np.ndarray,
                    elevation: Sequence[float] | np.ndarray, capacity_w: float) -> np.ndarray:
    """power / clear-sky power, clipped to [0, MAX_CLEAR_SKY_INDEX]; NaN at low sun."""
    power = np.asarray(power, dtype="float64")
    clear_sky = np.asarray(clear_sky, dtype="float64")
    elevation = np.asarray(elevation, dtype="float64")
    defined = ((elevation >= MIN_INDEX_ELEVATION_DEG)
               & (clear_sky >= MIN_CLEAR_SKY_FRACTION * capacity_w))
    ratio = np.divide(power, clear_sky, out=np.full_like(power, np.nan), where=defined)
    return np.clip(ratio, 0.0, MAX_CLEAR_SKY_INDEX)


def is_daylight(elevation: Sequence[float] | np.ndarray) -> np.ndarray:
    """The rows forecast quality is judged on: sun higher than DAYLIGHT_ELEVATION_DEG.

    At night every forecast (and persistence) is right; counting those rows hides errors.
    """
    return np.asarray(elevation, dtype="float64") > DAYLIGHT_ELEVATION_DEG


def smart_persistence(power: Sequence[float] | np.ndarray, clear_sky_now: Sequence[float] | np.ndarray,
                      clear_sky_ahead: Sequence[float] | np.ndarray,
                      elevation_now: Sequence[float] | np.ndarray, capacity_w: float) -> np.ndarray:
    """The clear-sky index stays what it is now: forecast = index(t) x clear-sky power(t + h).

    Where the index is undefined (low sun, night) it falls back to plain persistence.
    """
    power = np.asarray(power, dtype="float64")
    index = clear_sky_index(power, clear_sky_now, elevation_now, capacity_w)
    ahead = np.asarray(clear_sky_ahead, dtype="float64")
    return np.where(np.isnan(index), power, index * ahead)


def smart_persistence_forecast(readings: pd.DataFrame, site: SiteLike, horizon_minutes: int,
                               mount: str = DEFAULT_MOUNT) -> pd.DataFrame:
    """Smart-persistence forecast for every reading: the service's fallback when no model
    beats persistence.

    `readings` needs `timestamp` (tz-aware) and `power`; rows without either are skipped.
    Returns columns timestamp, forecast_for (timestamp + horizon), clear_sky_index and
    predicted_power, in time order.
    """
    if horizon_minutes < 1:
        raise ValueError(f"horizon_minutes={horizon_minutes!r} is invalid: expected at least 1")
    missing = [name for name in ("timestamp", "power") if name not in readings.columns]
    if missing:
        raise ValueError(f"readings lack column(s) {', '.join(missing)}: "
                         f"pass readings with timestamp and power")
    usable = readings[["timestamp", "power"]].copy()
    usable["timestamp"] = pd.to_datetime(usable["timestamp"], utc=True, errors="coerce")
    usable["power"] = pd.to_numeric(usable["power"], errors="coerce")
    usable = usable.dropna().sort_values("timestamp", kind="mergesort").reset_index(drop=True)
    now = _utc_index(usable["timestamp"])
    ahead = now + pd.Timedelta(minutes=horizon_minutes)
    position = solar_position(now, site)
    clear_now = clear_sky_power(now, site, mount, position=position)
    clear_ahead = clear_sky_power(ahead, site, mount)
    power = usable["power"].to_numpy(dtype="float64")
    elevation = position["elevation"].to_numpy()
    return pd.DataFrame({
        "timestamp": now,
        "forecast_for": ahead,
        "clear_sky_index": clear_sky_index(power, clear_now, elevation, site.capacity_w),
        "predicted_power": smart_persistence(power, clear_now, clear_ahead, elevation,
                                             site.capacity_w),
    })
