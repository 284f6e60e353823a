"""Forecasts from the model in service, built from the device's latest readings.

The features come from the same `build_feature_frame` that training uses (no target), over
enough recent readings to fill the rolling windows, so serving sees what the model saw.
The model comes through the serving loader (sha256-verified, promotion-aware). When the
device's pointer says no model beats persistence, the forecast is smart persistence (the
clear-sky index stays what it is now) for the device's site, and the response says so.

Only the history the feature set needs is read (`features.history_needed`, about 1.5 hours
for `solar`, under one for `original`), not a fixed span: the last row, and so the forecast,
is the one a longer window gives. A `ForecastCache` reuses a device's last forecast until a
newer reading arrives or its pointer changes (promotion, rollback, fallback): the key holds the
newest reading's time, the whole pointer (version, sha256, updated_at) and the registered site,
and the pointer is read on every call, so the next request after a promotion is served by it,
in every process. `predict_fleet` forecasts every device with readings, a page at a time, and
lists the ones it cannot forecast with the reason; the devices of a site share one
computation of the solar geometry per minute (`solar.SunMemo`).
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from solar_ml_pipeline.config import Settings, validate_device_id
from solar_ml_pipeline.model_store.errors import ModelStoreError, NoCurrentModel
from solar_ml_pipeline.model_store.registry import SERVING_FALLBACK, SERVING_MODEL
from solar_ml_pipeline.model_store.serving import ModelServer, ServedModel
from solar_ml_pipeline.storage import Store
from solar_ml_pipeline.storage.run_records import iso_z, utc_now

if TYPE_CHECKING:  # solar loads pvlib, which answering "no model" need not wait for
    from solar_ml_pipeline.forecasting.solar import SunMemo

# What serving read before `now` until issue 18, whatever the feature set (tests compare the
# short window with it); backtests still read this much before their span.
LOOKBACK = timedelta(hours=3)
# A tracker clock slightly ahead of ours must not hide its newest reading.
CLOCK_SKEW = timedelta(minutes=5)


class PredictionUnavailable(Exception):
    """The model exists but there is nothing current to forecast from; the message says why."""


def lookback(feature_set: str, horizon_minutes: int) -> timedelta:
    """Readings read before `now`: the newest may be up to the horizon old, and its features
    need `history_needed(feature_set)` before it."""
    from solar_ml_pipeline.forecasting.features import history_needed

    return history_needed(feature_set) + timedelta(minutes=horizon_minutes)


class ForecastCache:
    """The last forecast of each device with the key it was made for; thread-safe.

    One entry per device (a newer key replaces it), at most `max_devices` devices (the
    oldest entry goes first). A hit returns a copy with `generated_at` of the new call.
    """

    def __init__(self, max_devices: int = 100_000) -> None:
        self.max_devices = max_devices
        self._entries: dict[str, tuple[tuple[Any, ...], dict[str, Any], datetime]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, device_id: str, key: tuple[Any, ...]) -> tuple[dict[str, Any], datetime] | None:
        with self._lock:
            entry = self._entries.get(device_id)
            if entry is None or entry[0] != key:
                self.misses += 1
                return None
            self.hits += 1
            return entry[1], entry[2]

    def put(self, device_id: str, key: tuple[Any, ...], forecast: dict[str, Any],
            based_on: datetime) -> None:
        with self._lock:
            self._entries.pop(device_id, None)
            while len(self._entries) >= self.max_devices:
                self._entries.pop(next(iter(self._entries)))
            self._entries[device_id] = (key, dict(forecast), based_on)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


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
                   now: datetime | None = None,
                   cache: ForecastCache | None = None,
                   sun: SunMemo | None = None) -> dict[str, Any]:
    """Forecast power `horizon` after the newest reading, which must be under `horizon` old.

    `serving` says what made the forecast: "model", or "smart_persistence" (with `reason`,
    `version` null) when the device's pointer says no model beats persistence.
    Raises NoCurrentModel (no model), PredictionUnavailable (no recent readings, or they lack
    a sensor the model needs) and the loader's errors (corrupt pointer, checksum mismatch).
    With `cache`, the device's last forecast is returned while its newest reading, pointer
    and site are those it was made for. `sun` shares the solar geometry with the other
    devices of a fleet call.
    """
    validate_device_id(device_id)
    now = now or utc_now()
    served = server.load_current(device_id)  # the pointer, read on every call
    if cache is None:
        return _forecast(settings, store, served, now, sun)
    horizon = _horizon(settings, served)
    newest = _newest_reading(store, device_id, now - timedelta(minutes=horizon),
                             now + CLOCK_SKEW)
    if newest is None:
        raise _nothing_recent(store, device_id, now, horizon)
    key = (newest, json.dumps(served.pointer, sort_keys=True, default=str),
           json.dumps(store.get_site(device_id), sort_keys=True, default=str))
    hit = cache.get(device_id, key)
    if hit is not None:
        forecast, based_on = hit
        _check_fresh(device_id, based_on, now, horizon)
        return {**forecast, "generated_at": iso_z(now)}
    forecast = _forecast(settings, store, served, now, sun)
    cache.put(device_id, key, forecast, datetime.fromisoformat(forecast["based_on"]))
    return forecast


def _newest_reading(store: Store, device_id: str, start: datetime, end: datetime) -> Any:
    """The newest reading's time in [start, end), None without one: the store's one-probe
    query where it has one (SQLite), else from the window itself."""
    probe = getattr(store, "newest_reading_us", None)
    if probe is not None:
        return probe(device_id, start, end)
    recent = store.read_window(device_id, start, end)
    return recent["timestamp"].max() if len(recent) else None


def _horizon(settings: Settings, served: ServedModel) -> int:
    if served.is_fallback:
        return settings.horizon_minutes
    return int(getattr(served.model, "horizon_minutes", None) or settings.horizon_minutes)


def _forecast(settings: Settings, store: Store, served: ServedModel,
              now: datetime, sun: SunMemo | None = None) -> dict[str, Any]:
    if served.is_fallback:
        return _smart_persistence_latest(settings, store, served, now, sun)
    device_id = served.device_id
    # Imported once a model exists: the feature code loads pvlib, which "no model" need not wait for.
    from solar_ml_pipeline.forecasting.features import build_feature_frame
    from solar_ml_pipeline.forecasting.training import FeaturesUnavailable

    model = served.model
    horizon = _horizon(settings, served)
    feature_set = getattr(model, "feature_set", None) or settings.feature_set
    readings = store.read_window(device_id, now - lookback(feature_set, horizon),
                                 now + CLOCK_SKEW)
    built = None
    if len(readings):
        built = build_feature_frame(
            readings, horizon_minutes=horizon,
            timezone=getattr(model, "timezone", None) or settings.timezone,
            feature_set=feature_set,
            with_target=False, site=serving_site(model, store, settings, device_id), sun=sun,
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
                              now: datetime, sun: SunMemo | None = None) -> dict[str, Any]:
    """The fallback forecast from the newest reading, same freshness rule as a model's."""
    from solar_ml_pipeline.forecasting.solar import smart_persistence_forecast
    from solar_ml_pipeline.readings.cleaning import clean_readings
    from solar_ml_pipeline.readings.sites import site_for_device

    device_id = served.device_id
    horizon = settings.horizon_minutes
    readings = store.read_window(device_id, now - lookback("solar", horizon), now + CLOCK_SKEW)
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
                                  site=site, sun=sun).frame.iloc[[-1]]
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


FLEET_DEFAULT_LIMIT = 1000
FLEET_MAX_LIMIT = 10_000


def predict_fleet(settings: Settings, store: Store, server: ModelServer, *,
                  limit: int = FLEET_DEFAULT_LIMIT, skip: int = 0, now: datetime | None = None,
                  cache: ForecastCache | None = None) -> dict[str, Any]:
    """The latest forecast of every device with readings, a page at a time.

    Devices are taken in id order; of the page's `limit` devices after `skip`, each is in
    `forecasts` (the predict_latest answer: what serves it, its interval) or in `unavailable`
    with `reason` (the message predict would give) and `kind`: "no_model",
    "no_recent_readings" (none under the horizon old, or they lack a sensor the model needs)
    or "model_store_error" (a pointer or version that cannot be served). `total` counts the
    devices with readings.
    """
    if not 1 <= limit <= FLEET_MAX_LIMIT:
        raise ValueError(f"limit={limit!r} is invalid: expected 1-{FLEET_MAX_LIMIT}")
    if skip < 0:
        raise ValueError(f"skip={skip!r} is invalid: expected at least 0")
    from solar_ml_pipeline.forecasting.solar import SunMemo

    now = now or utc_now()
    devices = sorted(store.list_devices())
    sun = SunMemo()  # the geometry of each site and minute, computed once for the page
    forecasts: list[dict[str, Any]] = []
    unavailable: list[dict[str, Any]] = []
    for device_id in devices[skip:skip + limit]:
        try:
            forecasts.append(predict_latest(settings, store, server, device_id, now=now,
                                            cache=cache, sun=sun))
        except NoCurrentModel as exc:
            unavailable.append({"device_id": device_id, "kind": "no_model", "reason": str(exc)})
        except PredictionUnavailable as exc:
            unavailable.append({"device_id": device_id, "kind": "no_recent_readings",
                                "reason": str(exc)})
        except ModelStoreError as exc:
            unavailable.append({"device_id": device_id, "kind": "model_store_error",
                                "reason": str(exc)})
    return {"total": len(devices), "limit": limit, "skip": skip, "generated_at": iso_z(now),
            "forecasts": forecasts, "unavailable": unavailable}
