"""Real measured PV power shipped inside the `pvanalytics` wheel (pip install .[bench]).

NREL PVDAQ system 50 (Golden, Colorado; fixed tilt 45 degrees, azimuth 158 degrees per the
pvanalytics examples): 15-minute AC power in W from 2011-04-15 to 2013-12-31, file
`system_50_ac_power_2_full_DST.parquet` (needs pyarrow). Its timestamps carry a fixed
-07:00 offset but are wall-clock Denver time with daylight saving ("full_DST"): measured
here, the power centroid of each day jumps by about 50 minutes against solar noon at every
DST change as labelled, and moves smoothly through the year once read as America/Denver.
Each value is the mean of the 15 minutes starting at its label, so the loader moves labels
to interval centres (+7.5 min) to make them instants, as the pipeline's readings are.

NREL Mesa one-axis tracker: six days (2010-06-25..30) of 15-minute AC power, too short
for a month of retrains; used to check which clear-sky shape fits a tracker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

SYSTEM_50_FILE = "system_50_ac_power_2_full_DST.parquet"
MESA_TRACKER_FILE = "nrel_1axis_tracker_mesa_ac_power.csv"
NREL_GOLDEN = {"latitude": 39.7406, "longitude": -105.1775, "altitude": 1800.0}


@dataclass(frozen=True)
class RealSite:
    """The site attributes solar.py needs (same names as readings.sites.Site)."""

    latitude: float
    longitude: float
    altitude: float
    capacity_w: float
    timezone: str


def data_dir() -> Path:
    try:
        import pvanalytics
    except ImportError:
        raise SystemExit(
            "pvanalytics is not installed: run `pip install -e .[bench]` for the real data"
        ) from None
    return Path(pvanalytics.__file__).parent / "data"


def _readings(timestamps: pd.DatetimeIndex, power: np.ndarray, device_id: str) -> pd.DataFrame:
    return pd.DataFrame({
        "device_id": device_id,
        "timestamp": timestamps.tz_convert("UTC").astype("datetime64[ns, UTC]"),
        "power": np.clip(power.astype("float64"), 0.0, None),
    })


def load_system_50() -> tuple[pd.DataFrame, RealSite]:
    """Readings (device_id, timestamp UTC at interval centre, power W >= 0) and the site.

    Capacity is the 99.9th percentile of measured power (the nameplate is not shipped): it
    only scales the clear-sky power, which the models and smart persistence use as a ratio.
    """
    try:
        raw = pd.read_parquet(data_dir() / SYSTEM_50_FILE)
    except ImportError:
        raise SystemExit("reading parquet needs pyarrow: run `pip install -e .[bench]`") from None
    raw = raw.dropna(subset=["ac_power_2"])
    wall_clock = pd.DatetimeIndex(raw["measured_on"]).tz_localize(None)
    local = wall_clock.tz_localize("America/Denver", ambiguous="NaT", nonexistent="NaT")
    keep = ~local.isna()  # the repeated / skipped hour at each DST change cannot be placed
    centres = local[keep] + pd.Timedelta(minutes=7.5)
    readings = _readings(centres, raw["ac_power_2"].to_numpy()[keep], "nrel_system_50")
    readings = readings.sort_values("timestamp").drop_duplicates("timestamp")
    capacity = float(np.quantile(readings["power"], 0.999))
    site = RealSite(**NREL_GOLDEN, capacity_w=round(capacity, 1), timezone="America/Denver")
    return readings.reset_index(drop=True), site


def load_mesa_tracker() -> tuple[pd.DataFrame, RealSite]:
    raw = pd.read_csv(data_dir() / MESA_TRACKER_FILE)
    stamps = pd.DatetimeIndex(pd.to_datetime(raw["measured_on"], utc=True))
    readings = _readings(stamps, raw["ac_power"].to_numpy(), "nrel_mesa_tracker")
    capacity = float(readings["power"].max())
    return readings, RealSite(**NREL_GOLDEN, capacity_w=capacity, timezone="America/Denver")
