"""Backtest any span: forecast every reading with what served the device at that moment.

What served comes from the pointer's history (model_store.history), so the rows are the
forecasts the service would have given, model or smart-persistence fallback, scored on the
readings that came after. Persistence ("power stays") and smart persistence ("the clear-sky
index stays") are computed on the same rows, so every summary states the skill against both.
Reads only: nothing is written, no pointer moves. The realised scores (scoring.py) are the
summary of one period's backtest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from solar_ml_pipeline.config import Settings, validate_device_id
from solar_ml_pipeline.forecasting import features as feature_frames
from solar_ml_pipeline.forecasting.intervals import band
from solar_ml_pipeline.forecasting.prediction import LOOKBACK, serving_site
from solar_ml_pipeline.forecasting.quality import flag_readings
from solar_ml_pipeline.forecasting.training import FeaturesUnavailable
from solar_ml_pipeline.model_store.registry import (
    SERVING_FALLBACK,
    ModelRegistry,
    ModelStoreError,
    parse_history_time,
    served_at,
)
from solar_ml_pipeline.readings.cleaning import clean_readings
from solar_ml_pipeline.readings.sites import site_for_device
from solar_ml_pipeline.storage.base import Store

ROW_FIELDS = ("timestamp", "forecast_for", "predicted_power", "p10", "p90", "power_at_target",
              "persistence", "smart_persistence", "served_by", "daylight", "flagged")
MAX_SPAN = timedelta(days=400)


class InvalidSpan(ValueError):
    """Bounds that do not make a span (no time zone, end not after start, too long)."""


class BacktestUnavailable(LookupError):
    """The span holds nothing to backtest (no readings, nothing served): says which."""


@dataclass(frozen=True)
class Backtest:
    """Every reading of the span with its served forecast and both baselines (`rows`,
    columns ROW_FIELDS; `served_by` a version id, `smart_persistence`, or None before
    anything served; `flagged` when a data-quality flag touches the reading or the one it is
    scored against), and the pooled summary of the rows that can be scored."""

    device_id: str
    start: datetime
    end: datetime
    rows: pd.DataFrame
    summary: dict[str, Any]


def pooled_scores(rows: pd.DataFrame) -> dict[str, Any]:
    """MAE, RMSE and skill against persistence and smart persistence, all hours and in
    daylight, over unflagged rows that have a forecast and a realised power at the target."""
    scored = rows[rows["predicted_power"].notna() & rows["power_at_target"].notna()]
    if "flagged" in rows:
        scored = scored[~scored["flagged"].astype(bool)]
    out: dict[str, Any] = {"rows_scored": len(scored)}
    for label, part in (("", scored), ("daylight_", scored[scored["daylight"]])):
        actual = part["power_at_target"].to_numpy(dtype="float64")
        errors = {name: part[column].to_numpy(dtype="float64") - actual for name, column in (
            ("served", "predicted_power"), ("persistence", "persistence"),
            ("smart", "smart_persistence"))}
        count = len(part)
        mae = {name: float(np.abs(e).mean()) if count else None for name, e in errors.items()}
        if label:
            out[f"{label}rows"] = count
        out[f"{label}mae"] = mae["served"]
        out[f"{label}rmse"] = float(np.sqrt((errors["served"] ** 2).mean())) if count else None
        out[f"{label}persistence_mae"] = mae["persistence"]
        out[f"{label}smart_persistence_mae"] = mae["smart"]
        out[f"{label}skill"] = _skill(mae["served"], mae["persistence"])
        out[f"{label}skill_smart"] = _skill(mae["served"], mae["smart"])
    day = scored[scored["daylight"]]
    if "p10" in day and day["p10"].notna().any():  # realised P10-P90 coverage in daylight
        banded = day[day["p10"].notna() & day["p90"].notna()]
        inside = banded["power_at_target"].between(banded["p10"], banded["p90"])
        out["daylight_interval_coverage"] = float(inside.mean())
        out["daylight_interval_width"] = float((banded["p90"] - banded["p10"]).mean())
    else:
        out["daylight_interval_coverage"] = out["daylight_interval_width"] = None
    return out


def _skill(mae: float | None, baseline: float | None) -> float | None:
    if mae is None or not baseline:
        return None
    return 1.0 - mae / baseline


def _bounds(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidSpan("start and end need a time zone: add Z or +00:00")
    if end <= start:
        raise InvalidSpan(f"end {_iso(end)} is not after start {_iso(start)}: give a later end")
    if end - start > MAX_SPAN:
        raise InvalidSpan(f"the span is longer than {MAX_SPAN.days} days: backtest it in parts")


def backtest(settings: Settings, store: Store, registry: ModelRegistry, device_id: str,
             start: datetime, end: datetime, *,
             history: list[dict[str, Any]] | None = None) -> Backtest:
    """Forecast every reading in [start, end) as the service would have at that moment.

    Raises InvalidSpan for bounds that make no span, BacktestUnavailable when the span has
    no readings or nothing served the device in it; a served version that cannot be loaded any more leaves its rows unforecast
    (`predicted_power` NaN) and is named in the summary's `unavailable` list.
    """
    device_id = validate_device_id(device_id)
    _bounds(start, end)
    horizon = settings.horizon_minutes
    reach = timedelta(minutes=horizon) + feature_frames.default_tolerance(horizon)
    readings = store.read_window(device_id, start - LOOKBACK, end + reach)
    if readings.empty or not ((readings["timestamp"] >= start)
                              & (readings["timestamp"] < end)).any():
        newest = store.latest_readings(device_id, 1)
        where = (f"its newest is from {_iso(newest['timestamp'].iloc[-1])}" if len(newest)
                 else "it has none at all")
        raise BacktestUnavailable(
            f"device {device_id} has no readings in [{_iso(start)}, {_iso(end)}): {where}; "
            "choose a span with readings")
    history = registry.pointer_history(device_id) if history is None else history
    if served_at(history, end - timedelta(microseconds=1)) is None:
        raise BacktestUnavailable(
            f"nothing served device {device_id} in [{_iso(start)}, {_iso(end)}): its first "
            "model or fallback came later (see `solar-ml model history --device "
            f"{device_id}`)")
    site = site_for_device(store, settings, device_id)
    # Frames by how they are built: a month of daily versions shares one, the reference's.
    frames: dict[tuple[Any, ...], pd.DataFrame] = {}
    reference = _frame(frames, readings, horizon, settings.timezone, "solar", site).copy()
    reference["power_at_target"] = feature_frames.target_power(reference, horizon)
    clean, _ = clean_readings(readings)
    quality = flag_readings(clean, site)
    reference["flagged"] = _flagged(reference, clean["timestamp"], ~quality.usable.to_numpy(),
                                    horizon)
    stamps = reference["timestamp"]
    rows = reference[(stamps >= start) & (stamps < end)].reset_index(drop=True)
    served, in_force = _served_by(history, rows["timestamp"])
    predicted = np.full(len(rows), np.nan)
    fallback = served == SERVING_FALLBACK
    predicted[fallback] = rows.loc[fallback, feature_frames.SMART_PERSISTENCE].to_numpy()
    unavailable: list[str] = []
    for version in sorted({v for v in served if v not in (None, SERVING_FALLBACK)}):
        mask = served == version
        forecast = _model_forecast(settings, store, registry, device_id, version, readings,
                                   rows.loc[mask, "timestamp"], frames)
        if forecast is None:
            unavailable.append(version)
        else:
            predicted[mask] = forecast
    p10, p90 = _bands(history, in_force, rows, predicted)
    out = pd.DataFrame({
        "timestamp": rows["timestamp"],
        "forecast_for": rows["timestamp"] + pd.Timedelta(minutes=horizon),
        "predicted_power": predicted,
        "p10": p10,
        "p90": p90,
        "power_at_target": rows["power_at_target"],
        "persistence": rows["power"],
        "smart_persistence": rows[feature_frames.SMART_PERSISTENCE],
        "served_by": served,
        "daylight": rows[feature_frames.DAYLIGHT].astype(bool),
        "flagged": rows["flagged"].astype(bool),
    })
    summary = {
        "device_id": device_id, "start": _iso(start), "end": _iso(end),
        "horizon_minutes": horizon, "rows": len(out),
        "rows_unserved": int(pd.isna(out["served_by"]).sum()),
        "served_by": {str(k): int(v) for k, v in out["served_by"].value_counts().items()},
        "unavailable": unavailable,
        "rows_flagged": int(out["flagged"].sum()),
        "quality_flags": {name: int(count) for name, count in quality.counts.items()},
        **pooled_scores(out),
    }
    return Backtest(device_id, start, end, out, summary)


def _flagged(reference: pd.DataFrame, stamps: pd.Series, flags: np.ndarray,
             horizon: int) -> np.ndarray:
    """Per row: is its reading, or the reading its target matched, flagged? (The target is
    matched as features.target_power matches it, on the flags instead of the power.)"""
    marks = pd.DataFrame({"timestamp": stamps.to_numpy(), "power": flags.astype(float)})
    at_target = feature_frames.target_power(marks, horizon) > 0.5  # NaN (no match) is False
    either = pd.Series(flags | at_target, index=stamps.to_numpy())
    return either.reindex(reference["timestamp"].to_numpy()).fillna(False).to_numpy(dtype=bool)


def _bands(history: list[dict[str, Any]], in_force: np.ndarray, rows: pd.DataFrame,
           predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P10 and P90 per row from the band that served with each move (NaN where none)."""
    p10, p90 = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
    for entry_index in np.unique(in_force[in_force > 0]):
        entry = history[entry_index - 1]
        kind = "model" if entry.get("version") else SERVING_FALLBACK
        mask = in_force == entry_index
        made = band((entry.get("intervals") or {}).get(kind), rows[mask], predicted[mask])
        if made is not None:
            p10[mask], p90[mask] = made[0], made[2]
    return p10, p90


def _served_by(history: list[dict[str, Any]], stamps: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Per reading, the version that served it, `smart_persistence`, or None (the last
    move at or before the reading, as history.served_at decides for one moment), and the
    1-based index of that move in `history` (0: none)."""
    moves = pd.DatetimeIndex([parse_history_time(entry["at"]) for entry in history]).as_unit("ns")
    labels = np.array([None] + [entry["version"] or SERVING_FALLBACK for entry in history],
                      dtype=object)
    in_force = np.searchsorted(moves.asi8, stamps.dt.as_unit("ns").astype("int64").to_numpy(),
                               side="right")
    return labels[in_force], in_force


def _frame(frames: dict[tuple[Any, ...], pd.DataFrame], readings: pd.DataFrame, horizon: int,
           timezone: str, feature_set: str, site: Any) -> pd.DataFrame:
    """The span's feature frame built this way, built once per backtest."""
    key = (horizon, timezone, feature_set, site)
    if key not in frames:
        frames[key] = feature_frames.build_feature_frame(
            readings, horizon_minutes=horizon, timezone=timezone, feature_set=feature_set,
            with_target=False, site=site).frame
    return frames[key]


def _model_forecast(settings: Settings, store: Store, registry: ModelRegistry, device_id: str,
                    version: str, readings: pd.DataFrame, stamps: pd.Series,
                    frames: dict[tuple[Any, ...], pd.DataFrame]) -> np.ndarray | None:
    """The version's forecasts at `stamps`, features built as serving builds them."""
    try:
        model = registry.load_model(device_id, version)
    except ModelStoreError:
        return None  # pruned or damaged since: its rows stay unforecast, and say so
    built = _frame(frames, readings,
                   int(getattr(model, "horizon_minutes", None) or settings.horizon_minutes),
                   getattr(model, "timezone", None) or settings.timezone,
                   getattr(model, "feature_set", None) or settings.feature_set,
                   serving_site(model, store, settings, device_id))
    wanted = built[built["timestamp"].isin(stamps)]
    try:
        forecast = pd.Series(model.predict(wanted), index=wanted["timestamp"].to_numpy())
    except FeaturesUnavailable:
        return None
    return forecast.reindex(stamps.to_numpy()).to_numpy(dtype="float64")


def _iso(value: datetime) -> str:
    return pd.Timestamp(value).tz_convert("UTC").isoformat().replace("+00:00", "Z")
