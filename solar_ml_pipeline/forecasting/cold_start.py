"""Cold start: a tracker with less than COLD_START_DAYS (at most RETRAIN_DAYS) of its own
readings is forecast by a fleet model, fitted on the other devices' windows normalised by
each one's capacity.

With the `solar` features and the smart-persistence residual target, what a model learns is
how the sky departs from "as cloudy as now" in clear-sky terms: that transfers between sites
once every power-valued column is divided by the site's capacity. The fleet model is stored
as a version of the young device itself (bound to its capacity and site), so serving,
checksums, history, rollback and the backtest need nothing new; its meta says `cold_start`
and which devices taught it. While the device is young each retrain offers a fresh fleet
model, judged on the device's own latest rows by the usual promotion rules (the persistence
gate included); from COLD_START_DAYS on it trains its own model, which replaces the fleet
model through the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.forecasting import features as feature_frames
from solar_ml_pipeline.forecasting.features import SMART_PERSISTENCE, TARGET, FeatureFrame
from solar_ml_pipeline.forecasting.quality import flag_readings
from solar_ml_pipeline.forecasting.training import (
    RESIDUAL,
    Evaluation,
    FeaturesUnavailable,
    evaluate_on_test,
    make_estimator,
    site_record,
    split_time_ordered,
)
from solar_ml_pipeline.readings.cleaning import clean_readings
from solar_ml_pipeline.readings.sites import site_for_device
from solar_ml_pipeline.storage.base import Store

COLD_START_FEATURE_SET = "solar"
MAX_FLEET_DEVICES = 20  # the fleet model learns from at most this many other devices
FLEET_DAYS = 14  # of each teacher's newest readings: enough variety, bounded cost
MIN_TEACHER_DAYS = 3.0  # a teacher must have this much history itself
POWER_COLUMNS = ("power", "clear_sky_power", "clear_sky_power_ahead",
                 *(f"power_lag_{m}" for m in feature_frames.POWER_LAGS_MINUTES),
                 SMART_PERSISTENCE, TARGET)


def normalised(frame: pd.DataFrame, capacity_w: float) -> pd.DataFrame:
    """The frame with every power-valued column divided by the site's capacity."""
    out = frame.copy()
    for name in POWER_COLUMNS:
        if name in out.columns:
            out[name] = out[name].to_numpy(dtype="float64") / capacity_w
    return out


@dataclass
class FleetForecastModel:
    """A fleet estimator bound to one device's capacity and site: frames in W in, W out."""

    estimator: Any
    features: list[str]
    horizon_minutes: int
    model_type: str
    capacity_w: float
    trained_at: datetime
    timezone: str | None
    site: dict[str, Any] | None
    trained_on: list[str] = field(default_factory=list)
    feature_set: str = COLD_START_FEATURE_SET
    target: str = RESIDUAL
    cold_start: bool = True

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        missing = [n for n in (*self.features, SMART_PERSISTENCE) if n not in frame.columns]
        if missing:
            raise FeaturesUnavailable(f"the fleet model needs features missing from this "
                                      f"frame: {', '.join(missing)}")
        scaled = normalised(frame[list(dict.fromkeys([*self.features, SMART_PERSISTENCE]))],
                            self.capacity_w)
        residual = np.asarray(self.estimator.predict(scaled[self.features].astype("float64")),
                              dtype="float64")
        return frame[SMART_PERSISTENCE].to_numpy(dtype="float64") + residual * self.capacity_w

    def feature_importances(self) -> list[tuple[str, float]]:
        return []


def is_young(window: pd.DataFrame, cutoff: datetime, days: float) -> bool:
    """Fewer than `days` of the device's own readings before the cutoff (an hour's slack, so
    a window that starts a minute late is not young); never with `days` 0."""
    if days <= 0:
        return False
    if window.empty:
        return True
    first = pd.Timestamp(window["timestamp"].min()).to_pydatetime()
    return cutoff - first < timedelta(days=days) - timedelta(hours=1)


def fleet_frame(settings: Settings, store: Store, device_id: str, cutoff: datetime,
                horizon_minutes: int) -> tuple[pd.DataFrame, list[str]]:
    """The teachers' normalised training rows, and who they are (other devices with at
    least MIN_TEACHER_DAYS of readings before the cutoff, the newest FLEET_DAYS of each)."""
    parts, teachers = [], []
    for other in store.list_devices():
        if other == device_id or len(teachers) >= MAX_FLEET_DEVICES:
            continue
        readings, _ = clean_readings(store.read_window(other, cutoff - timedelta(days=FLEET_DAYS),
                                                       cutoff))
        if readings.empty or not _spans(readings, MIN_TEACHER_DAYS):
            continue
        site = site_for_device(store, settings, other)
        usable = readings[flag_readings(readings, site).usable.to_numpy()]
        built = feature_frames.build_feature_frame(
            usable, horizon_minutes=horizon_minutes, timezone=site.timezone,
            feature_set=COLD_START_FEATURE_SET, with_target=True, site=site)
        if len(built.frame):
            parts.append(normalised(built.frame, float(site.capacity_w)))
            teachers.append(other)
    return (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()), teachers


def _spans(readings: pd.DataFrame, days: float) -> bool:
    stamps = readings["timestamp"]
    return stamps.max() - stamps.min() >= pd.Timedelta(days=days)


def train_fleet_candidate(settings: Settings, store: Store, device_id: str, cutoff: datetime,
                          own: FeatureFrame, *, model_type: str, horizon_minutes: int,
                          threads: int | None = None
                          ) -> tuple[FleetForecastModel, Evaluation] | None:
    """The fleet model bound to `device_id`, scored on the device's own test rows (the later
    20 % of `own`, as its own model is); None when no other device can teach."""
    from contextlib import nullcontext

    from threadpoolctl import threadpool_limits

    teach, teachers = fleet_frame(settings, store, device_id, cutoff, horizon_minutes)
    if teach.empty or own.site is None or not own.site.capacity_w:
        return None
    features = [name for name in feature_frames.SOLAR_FEATURES if name in teach.columns
                and teach[name].notna().any()]
    estimator = make_estimator(model_type)
    learnt = teach[TARGET].to_numpy(dtype="float64") - teach[SMART_PERSISTENCE].to_numpy()
    limit = nullcontext() if threads is None else threadpool_limits(threads, user_api="openmp")
    with limit:
        estimator.fit(teach[features].astype("float64"), learnt)
    model = FleetForecastModel(
        estimator=estimator, features=features, horizon_minutes=horizon_minutes,
        model_type=f"fleet_{model_type}", capacity_w=float(own.site.capacity_w),
        trained_at=datetime.now(cutoff.tzinfo), timezone=own.timezone,
        site=site_record(own.site), trained_on=teachers)
    train, test = split_time_ordered(own.frame)
    evaluation = evaluate_on_test(model, test, train_samples=len(teach),
                                  rows_used=len(own.frame), capacity_w=model.capacity_w)
    return model, evaluation
