"""Forecasts from the model in service, built from the device's latest readings.

The features come from the same `build_feature_frame` that training uses (no target), over
enough recent readings to fill the rolling windows, so serving sees what the model saw.
The model comes through the serving loader (sha256-verified, promotion-aware). When the
device's pointer says no model beats persistence, the forecast is smart persistence (the
clear-sky index stays what it is now) for the device's site, and the response says so.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from solar_ml_pipeline.config import Settings, validate_device_id
from solar_ml_pipeline.model_store.registry import SERVING_FALLBACK, SERVING_MODEL
from solar_ml_pipeline.model_store.serving import ModelServer, ServedModel
from solar_ml_pipeline.storage import Store
from solar_ml_pipeline.storage.run_records import iso_z, utc_now

# Readings read before `now`: ample for the 5-reading rolling means, the one-hour solar
# features and the gap rules, at any cadence from 1 to 5 minutes.
LOOKBACK = timedelta(hours=3)
# A tracker clock slightly ahead of ours must not hide its newest reading.
CLOCK_SKEW = timedelta(minutes=5)


class PredictionUnavailable(Exception):
    """The model exists but there is nothing current to forecast from; the message says why."""


def _stale_message(device_id: str, newest: datetime | None, now: datetime,
                   horizon_minutes: int) -> str:
    if newest is None:
        return (f"device {device_id} has no readings: predictions need live readings "
                f"(send some, or `solar-ml simulate --device {device_id}` for a demo)")
    return (f"no recent readings for device {device_id}: the newest is from {iso_z(newest)}, "
            f"more than the {horizon_minutes}-minute horizon before now ({iso_z(now)}); "
            "predictions need live readings")


def _nothing_recent(store: Store, device_id: str, now: datetime,
                    horizon_minutes: int) -> PredictionUnavailable:
    """The error for a window without a usable reading: it names the newest one, if any."""
    newest = store.latest_readings(device_id, 1)
    newest_at = newest["timestamp"].iloc[-1].to_pydatetime() if len(newest) else None
    return PredictionUnavailable(_stale_message(device_id, newest_at, now, horizon_minutes))


def _check_fresh(device_id: str, based_on: datetime, now: datetime, horizon_minutes: int) -> None:
    if now - based_on > timedelta(minutes=horizon_minutes):
        raise PredictionUnavailable(_stale_message(device_id, based_on, now, horizon_minutes))


def serving_site(model: Any, store: Store, settings: Settings, device_id: str) -> Any:
    """The site the model's features were computed for; else the device's registered site."""
    from dataclasses import fields

    from solar_ml_pipeline.readings.sites import Site, site_for_device

    recorded = getattr(model, "site", None)
    if isinstance(recorded, dict):
        names = {f.name for f in fields(Site)}
        known = {k: v for k, v in recorded.items() if k in names and v is not None}
        try:
            return Site(**known)
        except (TypeError, ValueError):
            pass  # an incomplete record: the registered site is what training used
    return site_for_device(store, settings, device_id)


def predict_latest(settings: Settings, store: Store, server: ModelServer, device_id: str,
                   now: datetime | None = None) -> dict[str, Any]:
    """Forecast power `horizon` after the newest reading, which must be under `horizon` old.

    `serving` says what made the forecast: "model", or "smart_persistence" (with `reason`,
    `version` null) when the device's pointer says no model beats persistence.
    Raises NoCurrentModel (no model), PredictionUnavailable (no recent readings, or they lack
    a sensor the model needs) and the loader's errors (corrupt pointer, checksum mismatch).
    """
    validate_device_id(device_id)
    now = now or utc_now()
    served = server.load_current(device_id)
    if served.is_fallback:
        return _smart_persistence_latest(settings, store, served, now)
    # Imported once a model exists: the feature code loads pvlib, which "no model" need not wait for.
    from solar_ml_pipeline.forecasting.features import build_feature_frame
    from solar_ml_pipeline.forecasting.training import FeaturesUnavailable

    model = served.model
    horizon = int(getattr(model, "horizon_minutes", None) or settings.horizon_minutes)
    readings = store.read_window(device_id, now - LOOKBACK, now + CLOCK_SKEW)
    built = None
    if len(readings):
        built = build_feature_frame(
            readings, horizon_minutes=horizon,
            timezone=getattr(model, "timezone", None) or settings.timezone,
            feature_set=getattr(model, "feature_set", None) or settings.feature_set,
            with_target=False, site=serving_site(model, store, settings, device_id),
        )
    if built is None or built.frame.empty:
        raise _nothing_recent(store, device_id, now, horizon)
    latest = built.frame.iloc[[-1]]
    based_on = latest["timestamp"].iloc[0].to_pydatetime()
    _check_fresh(device_id, based_on, now, horizon)
    try:
        predicted = float(model.predict(latest)[0])
    except FeaturesUnavailable as exc:
        raise PredictionUnavailable(f"device {device_id}, model {served.version}: {exc}") from None
    bands = served.pointer.get("intervals") or {}
    return {
        "device_id": device_id,
        "serving": SERVING_MODEL,
        "version": served.version,
        "model_type": getattr(model, "model_type", None),
        "cold_start": bool(getattr(model, "cold_start", False)),
        "horizon_minutes": horizon,
        "based_on": iso_z(based_on),
        "forecast_for": iso_z(based_on + timedelta(minutes=horizon)),
        "predicted_power": predicted,
        **interval_fields(bands.get("model"), latest, predicted),
        "current_power": float(latest["power"].iloc[0]),
        "readings_used": len(built.frame),
        "generated_at": iso_z(now),
    }


def interval_fields(intervals: dict[str, Any] | None, row: Any,
                    predicted: float) -> dict[str, float | None]:
    """p10/p50/p90 of one forecast (None for versions trained before intervals existed)."""
    from solar_ml_pipeline.forecasting.intervals import band

    made = band(intervals, row, [predicted])
    if made is None:
        return {"p10": None, "p50": predicted, "p90": None}
    return {"p10": float(made[0][0]), "p50": float(made[1][0]), "p90": float(made[2][0])}


def _smart_persistence_latest(settings: Settings, store: Store, served: ServedModel,
                              now: datetime) -> dict[str, Any]:
    """The fallback forecast from the newest reading, same freshness rule as a model's."""
    from solar_ml_pipeline.forecasting.solar import smart_persistence_forecast
    from solar_ml_pipeline.readings.cleaning import clean_readings
    from solar_ml_pipeline.readings.sites import site_for_device

    device_id = served.device_id
    horizon = settings.horizon_minutes
    readings = store.read_window(device_id, now - LOOKBACK, now + CLOCK_SKEW)
    clean, _ = clean_readings(readings)
    usable = clean.dropna(subset=["timestamp", "power"])
    if usable.empty:
        raise _nothing_recent(store, device_id, now, horizon)
    # Row by row: the newest reading (clean_readings sorts by time) is all the answer needs.
    site = site_for_device(store, settings, device_id)
    latest = smart_persistence_forecast(usable.tail(1), site, horizon).iloc[-1]
    based_on = latest["timestamp"].to_pydatetime()
    _check_fresh(device_id, based_on, now, horizon)
    band = (served.pointer.get("intervals") or {}).get("smart_persistence")
    row = None
    if band:  # the band needs the sky's variability over the last hour: the solar frame
        from solar_ml_pipeline.forecasting.features import build_feature_frame

        row = build_feature_frame(usable, horizon_minutes=horizon, timezone=settings.timezone,
                                  feature_set="solar", with_target=False,
                                  site=site).frame.iloc[[-1]]
    return {
        "device_id": device_id,
        "serving": SERVING_FALLBACK,
        "reason": served.reason,
        "version": None,
        "model_type": None,
        "cold_start": False,
        "horizon_minutes": horizon,
        "based_on": iso_z(based_on),
        "forecast_for": iso_z(latest["forecast_for"].to_pydatetime()),
        "predicted_power": float(latest["predicted_power"]),
        **interval_fields(band if row is not None else None, row,
                          float(latest["predicted_power"])),
        "current_power": float(usable["power"].iloc[-1]),
        "clear_sky_index": float(latest["clear_sky_index"]),
        "readings_used": len(usable),
        "generated_at": iso_z(now),
    }
