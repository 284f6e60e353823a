"""Realised scores and the drift guard: judge what served, after the fact, on what happened.

Promotion judges a model on the last 20 % of its own training window; these judge the
forecasts it then served. A period is scored once its readings are in (its end plus the
horizon and the target tolerance): the period's backtest (backtest.py) pooled into one
`forecast_scores` record. The drift guard is a pure rule over the newest scores plus one
pointer move: a model that loses to smart persistence in realised daylight MAE for
DRIFT_PERIODS scored periods in a row is replaced by the better of its previous version and
smart persistence, with a `drift` run record saying why. A drift never deletes a version, and
the next retrain may replace what it chose as usual.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from solar_ml_pipeline.config import Settings, validate_device_id
from solar_ml_pipeline.forecasting.attempt import smart_persistence_band
from solar_ml_pipeline.forecasting.backtest import backtest, pooled_scores
from solar_ml_pipeline.forecasting.features import default_tolerance
from solar_ml_pipeline.model_store.registry import (
    MOVE_DRIFT,
    SERVING_FALLBACK,
    SERVING_MODEL,
    ModelRegistry,
    is_fallback,
)
from solar_ml_pipeline.storage.base import Store
from solar_ml_pipeline.storage.records import normalize_score
from solar_ml_pipeline.storage.run_records import (
    KIND_DRIFT,
    STATUS_SUCCESS,
    base_record,
    iso_z,
    utc_now,
)

# Summary fields a score keeps: plottable floats and counts.
SCORE_METRICS = (
    "rows", "rows_scored", "rows_unserved", "mae", "rmse", "persistence_mae",
    "smart_persistence_mae", "skill", "skill_smart", "daylight_rows", "daylight_mae",
    "daylight_rmse", "daylight_persistence_mae", "daylight_smart_persistence_mae",
    "daylight_skill", "daylight_skill_smart", "daylight_interval_coverage",
    "daylight_interval_width",
)


class ScoreNotReady(ValueError):
    """The period's readings are not all in yet; the message says when they will be."""


def readings_in_at(settings: Settings, period_end: datetime) -> datetime:
    """When a period can be scored: its last forecast's target time, plus the tolerance."""
    return (period_end + timedelta(minutes=settings.horizon_minutes)
            + default_tolerance(settings.horizon_minutes))


def served_model(score: dict[str, Any]) -> str | None:
    """The model version that served most of the scored period, else None (smart
    persistence did). A promotion lands minutes after the period starts, so the version it
    replaced serves the first readings: the period is still the new version's."""
    served = score.get("served_by") or {}
    if not served:
        return None
    label = max(served, key=served.get)
    return None if label == SERVING_FALLBACK else label


def score_period(settings: Settings, store: Store, registry: ModelRegistry, device_id: str,
                 period: str, start: datetime, end: datetime, *,
                 now: datetime | None = None) -> dict[str, Any]:
    """Score what served the device in [start, end) on the realised readings; stored as the
    period's `forecast_scores` record (a rescore replaces it) and returned."""
    device_id = validate_device_id(device_id)
    now = now or utc_now()
    ready = readings_in_at(settings, end)
    if now < ready:
        raise ScoreNotReady(
            f"period {period} of {device_id} ends at {iso_z(end)}; its readings are all in at "
            f"{iso_z(ready)}: score it after that")
    result = backtest(settings, store, registry, device_id, start, end)
    summary = result.summary
    record = {
        "device_id": device_id, "period": period, "period_start": start, "period_end": end,
        "scored_at": now, "horizon_minutes": settings.horizon_minutes,
        "served_by": summary["served_by"], "unavailable": summary["unavailable"],
        **{name: summary.get(name) for name in SCORE_METRICS},
    }
    store.upsert_score(record)
    return normalize_score(record)


@dataclass(frozen=True)
class DriftVerdict:
    """Whether the model in service has drifted, and on which scores that rests."""

    drifted: bool
    version: str | None
    periods: tuple[str, ...]
    reason: str


def drift_verdict(scores: list[dict[str, Any]], periods: int) -> DriftVerdict:
    """Drift: the newest `periods` scores were all served by one model and it lost to smart
    persistence in realised daylight MAE in each. Pure, so the rule can be read and tested
    alone. `scores` newest first, as ScoreStore.list_scores gives them."""
    newest = scores[:periods]
    if len(newest) < periods:
        return DriftVerdict(False, None, (), f"fewer than {periods} scored periods")
    versions = {served_model(score) for score in newest}
    if len(versions) != 1 or None in versions:
        return DriftVerdict(False, None, (), "the periods were not all served by one model")
    (version,) = versions
    lost = [s for s in newest if _loses_to_smart_persistence(s)]
    names = tuple(s["period"] for s in reversed(newest))
    if len(lost) < periods:
        return DriftVerdict(False, version, names,
                            f"{version} beat smart persistence in {periods - len(lost)} of the "
                            f"last {periods} scored periods")
    figures = ", ".join(f"{s['period']} {s['daylight_mae']:.1f} vs {s['daylight_smart_persistence_mae']:.1f} W"
                        for s in reversed(newest))
    return DriftVerdict(True, version, names,
                        f"{version} lost to smart persistence in realised daylight MAE for "
                        f"{periods} scored period(s) in a row ({figures})")


def _loses_to_smart_persistence(score: dict[str, Any]) -> bool:
    mae, smart = score.get("daylight_mae"), score.get("daylight_smart_persistence_mae")
    return bool(score.get("daylight_rows")) and mae is not None and smart is not None \
        and mae > smart


def guard_against_drift(settings: Settings, store: Store, registry: ModelRegistry,
                        device_id: str, *, dagster_run_id: str | None = None,
                        ) -> dict[str, Any] | None:
    """Apply the drift rule to the device's newest scores; on drift, record it and move the
    pointer (the record first, as promotion does) and return the `drift` record."""
    device_id = validate_device_id(device_id)
    scores = store.list_scores(device_id, limit=settings.drift_periods)
    verdict = drift_verdict(scores, settings.drift_periods)
    if not verdict.drifted:
        return None
    with registry.device_lock(device_id):
        pointer = registry.read_pointer(device_id)
        if pointer is None or is_fallback(pointer) or pointer["version"] != verdict.version:
            return None  # something else moved it since: that move stands
        span = (scores[len(verdict.periods) - 1]["period_start"], scores[0]["period_end"])
        replacement, figures = _better_of_previous_and_smart(
            settings, store, registry, device_id, pointer.get("previous_version"), span)
        run_id = str(uuid.uuid4())
        reason = f"drift: {verdict.reason}; now served by {replacement or SERVING_FALLBACK} " \
                 f"({figures})"
        record = _drift_record(settings, device_id, run_id, verdict, replacement, reason,
                               scores[0]["period"], dagster_run_id)
        store.upsert_run(record)
        if replacement is not None:
            registry.set_pointer(device_id, replacement, move=MOVE_DRIFT, run_id=run_id,
                                 reason=reason)
        else:
            registry.set_fallback(
                device_id, reason=reason, move=MOVE_DRIFT, run_id=run_id,
                intervals=smart_persistence_band(registry.read_meta(device_id, verdict.version)))
    return record


def _better_of_previous_and_smart(settings: Settings, store: Store, registry: ModelRegistry,
                                  device_id: str, previous: str | None,
                                  span: tuple[str, str]) -> tuple[str | None, str]:
    """The previous version if, serving the drifted periods, it beats smart persistence in
    daylight MAE; else None (smart persistence). Also the figures that decided."""
    if previous is None:
        return None, "no previous version"
    start, end = (datetime.fromisoformat(t.replace("Z", "+00:00")) for t in span)
    as_if = [{"at": iso_z(start - timedelta(days=1)), "version": previous}]
    replay = backtest(settings, store, registry, device_id, start, end, history=as_if)
    scores = pooled_scores(replay.rows)
    mae, smart = scores["daylight_mae"], scores["daylight_smart_persistence_mae"]
    if mae is None or smart is None or replay.summary["unavailable"]:
        return None, f"previous version {previous} cannot be scored on those periods"
    verdict = f"previous {previous} {mae:.1f} W vs smart persistence {smart:.1f} W"
    return (previous if mae < smart else None), verdict


def _drift_record(settings: Settings, device_id: str, run_id: str, verdict: DriftVerdict,
                  replacement: str | None, reason: str, period: str,
                  dagster_run_id: str | None) -> dict[str, Any]:
    record = base_record(run_id=run_id, device_id=device_id, partition_key=None, period=period,
                         window_start=None, window_end=None, days_used=None,
                         horizon_minutes=settings.horizon_minutes, model_type=None,
                         dagster_run_id=dagster_run_id or run_id)
    record.update(kind=KIND_DRIFT, status=STATUS_SUCCESS, error=None,
                  promoted=replacement is not None, version=replacement,
                  champion_version=verdict.version, decision_reason=reason,
                  decision_rule="drift", drift_periods=list(verdict.periods),
                  serving=SERVING_MODEL if replacement else SERVING_FALLBACK,
                  duration_s=0.0, finished_at=utc_now())
    return record
