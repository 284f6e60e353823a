"""Physically plausible tracker readings, so the pipeline can be tried without hardware.

The model behind the numbers (all seeded, nothing read from the network):

- Sun: pvlib solar position (``ephemeris`` method: vectorised, ten times faster than NREL
  and within 0.5 degrees of it) and Ineichen clear-sky irradiance with a per-day Linke
  turbidity.
- Clouds: each local day draws a cloudiness (the share of time under cloud). A seeded
  Ornstein-Uhlenbeck process with a 25-minute correlation time, thresholded at that share,
  gives passing clouds with soft edges; under cloud the beam is blocked and a slowly varying
  optical depth sets how much diffuse light is left. Power is therefore autocorrelated over
  tens of minutes without being a smooth curve, and days differ.
- Tracker: one horizontal north-south axis (pvlib single-axis tracking, no backtracking),
  rotation clipped to +-60 degrees and parked flat at night. ``servo_angle`` is the servo
  scale 0..180: ``90 + rotation``, below 90 facing east (morning), above 90 facing west.
- Temperatures: ambient follows a diurnal cycle (peak 14:00 solar time, cooler under
  cloud); the reported ``temperature`` is the module's: ambient plus 0.028 degC per W/m2 of
  plane-of-array irradiance, with an 8-minute thermal lag. The fan switches on at
  FAN_ON_C and off at FAN_OFF_C (hysteresis) and cools the module by FAN_COOLING_C.
- Electrical: DC power = capacity x POA/1000 x temperature derating; voltage from a
  60-cell module (Vmp 32 V at STC, lower when hot or dim); current = power / voltage.
  Voltage and current carry sensor noise and the reported power is their product, as a
  power-monitor chip computes it. Lux is ~120 x POA irradiance. Humidity falls as the air
  warms.
- Gaps: about 0.4 % of samples are missing at random, and on about one day in seven the
  link drops for 30 to 90 minutes.

Determinism: the same (device_id, seed, site, interval) gives the same reading for the same
instant whatever window is asked for. Every local day draws its random numbers from its own
seed (seed, device, date) and the slow state (fan, module lag) restarts each local midnight,
so simulating a month in one call or in weekly chunks yields identical rows.

Faults (readings.faults.Fault: a stuck sensor, a lost string) change only the instants they
cover, the same whatever window is asked for; without them the readings are the above.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from statistics import NormalDist
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pvlib

from solar_ml_pipeline.config import validate_device_id
from solar_ml_pipeline.readings.faults import FAULT_KINDS as FAULT_KINDS  # re-exported
from solar_ml_pipeline.readings.faults import Fault, apply_fault
from solar_ml_pipeline.readings.sites import DEFAULT_SITE, Site
from solar_ml_pipeline.storage.base import ReadingStore

COLUMNS = (
    "device_id", "timestamp", "servo_angle", "temperature", "humidity", "lux",
    "voltage", "current", "power", "fan_on",
)

MAX_ROTATION_DEG = 60.0
FAN_ON_C = 45.0
FAN_OFF_C = 40.0
FAN_COOLING_C = 4.0
MODULE_HEATING_C_PER_W_M2 = 0.028
MODULE_TIME_CONSTANT_MIN = 8.0
CLOUD_TIME_CONSTANT_MIN = 25.0
LUX_PER_W_M2 = 120.0
VMP_STC_V = 32.0
POWER_TEMP_COEFF_PER_C = -0.004
MISSING_SAMPLE_PROBABILITY = 0.004
OUTAGE_PROBABILITY_PER_DAY = 0.15
SIMULATION_CHUNK = timedelta(days=7)
MIN_INTERVAL_MINUTES = 1 / 60


@dataclass(frozen=True)
class SimulationResult:
    device_id: str
    rows_generated: int
    rows_written: int
    start: datetime
    end: datetime


def simulate_readings(
    device_id: str,
    *,
    start: datetime,
    end: datetime,
    interval_minutes: float = 1,
    seed: int = 0,
    site: Site = DEFAULT_SITE,
    faults: Sequence[Fault] = (),
) -> pd.DataFrame:
    """Readings of one tracker on the grid of `interval_minutes` within [start, end).

    Naive datetimes are UTC. Grid instants are whole multiples of the interval since the
    epoch, so windows that overlap agree on the instants they share, faults included.
    `faults` (see Fault) change the readings of the instants they cover, nothing else.
    """
    validate_device_id(device_id)
    step_ns = _interval_ns(interval_minutes)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed={seed!r} is invalid: expected a whole number, 0 or more")
    start_ns, end_ns = _epoch_ns(start, "start"), _epoch_ns(end, "end")
    if end_ns < start_ns:
        raise ValueError(f"end {end} is before start {start}: swap them")
    for fault in faults:
        if not isinstance(fault, Fault):
            raise TypeError(f"faults must be Fault objects, got {type(fault).__name__}")
    grid = _simulate_grid(device_id, start_ns, end_ns, step_ns, seed, site)

    def values_at(instant_ns: int) -> tuple[float, float]:
        alone = _simulate_grid(device_id, instant_ns, instant_ns + step_ns, step_ns, seed, site)
        where = np.flatnonzero(alone.grid_ns == instant_ns)[0]
        return alone.columns["power"][where], alone.columns["lux"][where]

    for fault in faults:
        apply_fault(grid.grid_ns, grid.columns, fault, step_ns, values_at)
    columns = grid.columns
    keep = (grid.grid_ns >= start_ns) & (grid.grid_ns < end_ns) & ~grid.missing
    frame = pd.DataFrame(
        {
            "device_id": device_id,
            "timestamp": grid.times[keep],
            **{name: columns[name][keep] for name in COLUMNS[2:]},
        },
        columns=list(COLUMNS),
    )
    frame["timestamp"] = frame["timestamp"].astype("datetime64[ns, UTC]")
    return frame.reset_index(drop=True)


@dataclass(frozen=True)
class _Grid:
    """Every reading of the local days covering a window, lost samples included."""

    grid_ns: np.ndarray
    times: pd.DatetimeIndex
    columns: dict[str, np.ndarray]  # the reported values, by COLUMNS name
    missing: np.ndarray


def _simulate_grid(device_id: str, start_ns: int, end_ns: int, step_ns: int, seed: int,
                   site: Site) -> _Grid:
    tz = ZoneInfo(site.timezone)
    first_day = _local_date(start_ns, tz)
    last_day = _local_date(max(end_ns - 1, start_ns), tz)
    day_count = (last_day - first_day).days + 1
    bounds = np.array(
        [_local_midnight_ns(first_day + timedelta(days=i), tz) for i in range(day_count + 1)]
    )
    # Grid points from the first local midnight, so the state at any instant is the same
    # whatever window was requested; trimmed to [start, end) at the end.
    cuts = -(-bounds // step_ns)  # ceil: first grid index at or after each midnight
    grid_ns = np.arange(cuts[0], cuts[-1], dtype=np.int64) * step_ns
    day_lengths = np.diff(cuts)
    times = pd.DatetimeIndex(pd.to_datetime(grid_ns, unit="ns", utc=True))

    device_key = zlib.crc32(device_id.encode())
    days = [
        _day_draws(seed, device_key, first_day + timedelta(days=i), int(n), step_ns)
        for i, n in enumerate(day_lengths)
    ]
    # Day-level values are interpolated from one local midnight to the next, so weather
    # and climate offsets drift instead of jumping at midnight.
    next_day = _day_scalars(seed, device_key, last_day + timedelta(days=1))
    offsets = _interpolate_days(days, next_day, day_lengths)
    cover = np.concatenate([d.cloud_cover for d in days])
    depth = np.concatenate([d.cloud_depth for d in days])
    light = _sunlight(times, site, offsets["turbidity"], cover, depth)
    daylight, poa, rotation = light.daylight, light.poa, light.rotation

    mean_ambient = 28.0 - 0.35 * max(abs(site.latitude) - 10.0, 0.0)
    slow_weather = np.concatenate([d.weather_noise for d in days])
    ambient = (
        mean_ambient
        + offsets["temperature_offset"]
        + 3.5 * _diurnal_shape(light.solar_hour)
        - 1.5 * cover * daylight
        + 0.3 * slow_weather
    )
    target = ambient + MODULE_HEATING_C_PER_W_M2 * poa
    alpha = 1.0 - math.exp(-step_ns / 60e9 / MODULE_TIME_CONSTANT_MIN)
    module_parts, fan_parts = [], []
    for part in np.split(target, np.cumsum(day_lengths)[:-1]):
        module_part, fan_part = module_temperature_and_fan(part, alpha)
        module_parts.append(module_part)
        fan_parts.append(fan_part)
    module = np.concatenate(module_parts)
    fan_on = np.concatenate(fan_parts)

    derating = 1.0 + POWER_TEMP_COEFF_PER_C * (module - 25.0)
    dc_power = np.clip(site.capacity_w * poa / 1000.0 * derating * 0.96, 0.0, site.capacity_w)
    voltage = (
        VMP_STC_V
        * (1.0 - 0.0035 * (module - 25.0))
        * (1.0 + 0.05 * np.log(np.maximum(poa, 1.0) / 1000.0))
        * poa / (poa + 3.0)
    )
    current = np.where(voltage > 0.1, dc_power / np.maximum(voltage, 0.1), 0.0)

    noise = np.concatenate([d.sensor_noise for d in days])
    voltage_read = np.round(np.abs(voltage + 0.03 * noise[:, 0]), 3)
    current_read = np.round(current * (1.0 + 0.004 * noise[:, 1]) + 0.002 * noise[:, 2], 4)
    power_read = np.round(voltage_read * current_read, 2)
    temperature_read = np.round(module + 0.15 * noise[:, 3], 2)
    humidity = np.clip(
        78.0
        + offsets["humidity_offset"]
        - 3.2 * (ambient - mean_ambient - offsets["temperature_offset"])
        + 5.0 * cover * daylight
        + 1.5 * slow_weather
        + 0.5 * noise[:, 4],
        20.0,
        100.0,
    )
    lux = np.clip(LUX_PER_W_M2 * poa * (1.0 + 0.02 * noise[:, 5]), 0.0, None)
    servo = np.clip(90.0 + np.round(rotation) + 0.15 * noise[:, 6], 0.0, 180.0)

    columns = {
        "servo_angle": np.round(servo, 2),
        "temperature": temperature_read,
        "humidity": np.round(humidity, 1),
        "lux": np.round(lux, 1),
        "voltage": voltage_read,
        "current": current_read,
        "power": power_read,
        "fan_on": fan_on,
    }
    return _Grid(grid_ns, times, columns, np.concatenate([d.missing for d in days]))


@dataclass(frozen=True)
class _Sunlight:
    solar_hour: np.ndarray
    daylight: np.ndarray
    rotation: np.ndarray
    poa: np.ndarray


def _sunlight(
    times: pd.DatetimeIndex, site: Site, turbidity: np.ndarray, cover: np.ndarray,
    depth: np.ndarray,
) -> _Sunlight:
    """Sun position, tracker rotation and plane-of-array irradiance under the given clouds.

    Under cloud cover `c` with optical depth `d`, GHI is clear-sky GHI x (1 - d c), the beam
    is DNI x (1 - c) and diffuse is what remains, so GHI = DNI cos(z) + DHI still holds.
    """
    sun = pvlib.solarposition.get_solarposition(
        times, site.latitude, site.longitude, site.altitude, method="ephemeris"
    )
    zenith = sun["apparent_zenith"].to_numpy()
    azimuth = sun["azimuth"].to_numpy()
    # pvlib divides by cos(zenith) and the airmass, which are zero or NaN at night.
    with np.errstate(divide="ignore", invalid="ignore"):
        airmass = pvlib.atmosphere.get_absolute_airmass(
            pvlib.atmosphere.get_relative_airmass(zenith),
            pvlib.atmosphere.alt2pres(site.altitude),
        )
        dni_extra = np.asarray(pvlib.irradiance.get_extra_radiation(times), dtype=float)
        clear = pvlib.clearsky.ineichen(zenith, airmass, turbidity, site.altitude, dni_extra)
        ghi_clear = np.nan_to_num(np.asarray(clear["ghi"], dtype=float))
        dni_clear = np.nan_to_num(np.asarray(clear["dni"], dtype=float))
        daylight = ghi_clear > 0
        ghi = ghi_clear * (1.0 - depth * cover)
        dni = dni_clear * (1.0 - cover)
        cos_zenith = np.clip(np.cos(np.radians(zenith)), 0.0, None)
        dhi = np.clip(ghi - dni * cos_zenith, 0.0, None)
        tracker = pvlib.tracking.singleaxis(
            zenith, azimuth, axis_tilt=0, axis_azimuth=180, max_angle=MAX_ROTATION_DEG,
            backtrack=False,
        )
        rotation = np.nan_to_num(np.asarray(tracker["tracker_theta"], dtype=float))
        rotation = np.where(daylight, rotation, 0.0)  # parked flat at night
        surface = pvlib.tracking.calc_surface_orientation(rotation, axis_tilt=0, axis_azimuth=180)
        poa = pvlib.irradiance.get_total_irradiance(
            surface["surface_tilt"], surface["surface_azimuth"], zenith, azimuth, dni, ghi, dhi,
            model="isotropic",
        )["poa_global"]
    poa = np.clip(np.nan_to_num(np.asarray(poa, dtype=float)), 0.0, None)
    return _Sunlight(sun["solar_time"].to_numpy(), daylight, rotation, poa)


def _diurnal_shape(solar_hour: np.ndarray) -> np.ndarray:
    """-1 at 06:00 solar time, +1 at 14:00: air warms for 8 hours and cools for 16."""
    hours_since_min = (solar_hour - 6.0) % 24.0
    return np.where(
        hours_since_min < 8.0,
        -np.cos(np.pi * hours_since_min / 8.0),
        np.cos(np.pi * (hours_since_min - 8.0) / 16.0),
    )


def module_temperature_and_fan(target_c: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Module temperature lagging `target_c` (smoothing factor `alpha` per sample) and the fan.

    The fan switches on when the module reaches FAN_ON_C and off only once it is back at
    FAN_OFF_C; while on it lowers the temperature the module tends to by FAN_COOLING_C.
    Sequential by nature (the fan depends on the temperature it changes), hence the loop.
    """
    targets = np.asarray(target_c, dtype=float).tolist()
    module = np.empty(len(targets))
    fan = np.zeros(len(targets), dtype=bool)
    if not targets:
        return module, fan
    temperature = targets[0]
    on = temperature >= FAN_ON_C
    for i, goal in enumerate(targets):
        if on:
            goal -= FAN_COOLING_C
        temperature += alpha * (goal - temperature)
        if not on and temperature >= FAN_ON_C:
            on = True
        elif on and temperature <= FAN_OFF_C:
            on = False
        module[i] = temperature
        fan[i] = on
    return module, fan


def simulate_device(
    store: ReadingStore,
    device_id: str,
    *,
    days: float = 7,
    interval_minutes: float = 1,
    end: datetime | None = None,
    seed: int = 0,
    site: Site = DEFAULT_SITE,
    batch_size: int = 5000,
    faults: Sequence[Fault] = (),
) -> SimulationResult:
    """Simulate `days` of readings ending at `end` (default: now, floored to the minute).

    Works week by week (identical to one call, see the module notes) so memory stays
    bounded for long spans; returns how many rows were new to the store.
    """
    validate_device_id(device_id)
    if not isinstance(days, int | float) or not math.isfinite(days) or not 0 < days <= 36600:
        raise ValueError(f"days={days!r} is invalid: expected a number of days above 0")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid: expected 1 or more")
    _interval_ns(interval_minutes)
    if end is None:
        end = datetime.now(UTC).replace(second=0, microsecond=0)
    end = _as_utc(end, "end")
    start = end - timedelta(days=days)
    generated = written = 0
    for chunk_start, chunk_end in _chunks(start, end):
        frame = simulate_readings(
            device_id, start=chunk_start, end=chunk_end,
            interval_minutes=interval_minutes, seed=seed, site=site, faults=faults,
        )
        generated += len(frame)
        for offset in range(0, len(frame), batch_size):
            written += store.write_readings(readings_records(frame.iloc[offset:offset + batch_size]))
    return SimulationResult(device_id, generated, written, start, end)


def readings_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain Python values (datetime, float, bool), which every backend can encode."""
    columns = [name for name in COLUMNS if name != "timestamp"]
    timestamps = pd.DatetimeIndex(frame["timestamp"]).to_pydatetime()
    values = [frame[name].tolist() for name in columns]
    return [
        {"timestamp": stamp, **dict(zip(columns, row, strict=True))}
        for stamp, *row in zip(timestamps, *values, strict=True)
    ]


# -- per-day randomness ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Day:
    scalars: Mapping[str, float]
    cloud_cover: np.ndarray
    cloud_depth: np.ndarray
    weather_noise: np.ndarray
    sensor_noise: np.ndarray
    missing: np.ndarray


def _day_scalars(seed: int, device_key: int, day: date) -> dict[str, float]:
    rng = np.random.default_rng([seed, device_key, day.toordinal(), 0])
    return {
        "cloudiness": float(rng.beta(0.7, 1.0)),
        "turbidity": float(rng.uniform(3.0, 5.0)),
        "temperature_offset": float(rng.normal(0.0, 0.8)),
        "humidity_offset": float(rng.normal(0.0, 3.0)),
    }


def _day_draws(seed: int, device_key: int, day: date, n: int, step_ns: int) -> _Day:
    scalars = _day_scalars(seed, device_key, day)
    rng = np.random.default_rng([seed, device_key, day.toordinal(), 1])
    step_min = step_ns / 60e9
    cloudiness = min(max(scalars["cloudiness"], 1e-3), 1 - 1e-3)
    threshold = NormalDist().inv_cdf(1.0 - cloudiness)
    cloud_field = _ar1(rng.standard_normal(n + 1), math.exp(-step_min / CLOUD_TIME_CONSTANT_MIN))
    cover = 1.0 / (1.0 + np.exp(-(cloud_field - threshold) / 0.25))
    depth_field = _ar1(rng.standard_normal(n + 1), math.exp(-step_min / 60.0))
    depth = 0.55 + 0.3 / (1.0 + np.exp(-depth_field))
    weather = _ar1(rng.standard_normal(n + 1), math.exp(-step_min / 90.0))
    sensor_noise = rng.standard_normal((n, 7))
    missing = rng.random(n) < MISSING_SAMPLE_PROBABILITY
    if rng.random() < OUTAGE_PROBABILITY_PER_DAY:
        length = max(1, round(rng.uniform(30.0, 90.0) / step_min))
        first = int(rng.integers(0, max(n, 1)))
        missing[first:first + length] = True
    return _Day(scalars, cover, depth, weather, sensor_noise, missing)


def _ar1(shocks: np.ndarray, phi: float) -> np.ndarray:
    """Unit-variance AR(1) (a sampled Ornstein-Uhlenbeck process); shocks[0] is the start."""
    scale = math.sqrt(1.0 - phi * phi)
    values = shocks.tolist()
    state = values[0]
    out = np.empty(len(values) - 1)
    for i, shock in enumerate(values[1:]):
        state = phi * state + scale * shock
        out[i] = state
    return out


def _interpolate_days(
    days: list[_Day], next_day: Mapping[str, float], lengths: np.ndarray
) -> dict[str, np.ndarray]:
    names = ("turbidity", "temperature_offset", "humidity_offset")
    ends = [*(d.scalars for d in days[1:]), next_day]
    result: dict[str, np.ndarray] = {}
    for name in names:
        parts = []
        for day, following, n in zip(days, ends, lengths, strict=True):
            fraction = np.arange(n) / max(n, 1)
            parts.append(day.scalars[name] + (following[name] - day.scalars[name]) * fraction)
        result[name] = np.concatenate(parts) if parts else np.empty(0)
    return result


# -- time helpers ---------------------------------------------------------------------------


def _interval_ns(interval_minutes: float) -> int:
    if (not isinstance(interval_minutes, int | float) or isinstance(interval_minutes, bool)
            or not math.isfinite(interval_minutes)
            or not MIN_INTERVAL_MINUTES <= interval_minutes <= 1440):
        raise ValueError(
            f"interval_minutes={interval_minutes!r} is invalid: expected 1/60 (one second) to 1440"
        )
    return round(interval_minutes * 60e9)


def _as_utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _epoch_ns(value: datetime, name: str) -> int:
    utc = _as_utc(value, name)
    if not 1970 <= utc.year <= 2200:
        raise ValueError(f"{name} {value.isoformat()} is out of range: expected years 1970 to 2200")
    return pd.Timestamp(utc).value


def _local_date(epoch_ns: int, tz: ZoneInfo) -> date:
    return pd.Timestamp(epoch_ns, unit="ns", tz=UTC).tz_convert(tz).date()


def _local_midnight_ns(day: date, tz: ZoneInfo) -> int:
    return pd.Timestamp(datetime.combine(day, clock_time(), tz)).value


def _chunks(start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
    cursor = start
    while cursor < end:
        following = min(cursor + SIMULATION_CHUNK, end)
        yield cursor, following
        cursor = following
