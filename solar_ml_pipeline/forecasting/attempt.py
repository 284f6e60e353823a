"""One device's retrain attempt as plain calls, without Dagster.

The four steps are the four assets (read the window, build features, train and store a
version, decide and record); the assets call them one each and only add Dagster's events.
`retrain_device` runs all four in one go, so one warm process can retrain many devices and
tests can drive an attempt directly. Every attempt leaves exactly one run-log record.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from solar_ml_pipeline.config import Settings, validate_device_id
from solar_ml_pipeline.forecasting import cold_start, features, promotion, training
from solar_ml_pipeline.forecasting.decision import Champion, ServingDecision, decide_serving
from solar_ml_pipeline.forecasting.quality import QualityReport, QualityRules, flag_readings
from solar_ml_pipeline.model_store.registry import (
    ModelCandidate,
    ModelRegistry,
    ModelStoreError,
    StoredVersion,
    is_fallback,
)
from solar_ml_pipeline.readings.cleaning import CleaningReport, clean_readings
from solar_ml_pipeline.readings.sites import site_for_device
from solar_ml_pipeline.storage.base import Store
from solar_ml_pipeline.storage.run_records import (
    EXTRA_METRIC_FIELDS,
    STATUS_SUCCESS,
    base_record,
    failed_fields,
    utc_now,
    write_failure,
)


class AttemptFailed(Exception):
    """An attempt that cannot go on; the message is the one line the run log records."""


@dataclass(frozen=True)
class Policy:
    """How an attempt trains and judges (from Settings; the Dagster resource mirrors it)."""

    retrain_days: int = 30
    horizon_minutes: int = 15
    model_type: str = "hist_gradient_boosting"
    feature_set: str = "solar"
    min_training_rows: int = 100
    min_usable_share: float = 0.5
    cold_start_days: float = 7.0
    mae_threshold_percent: float = 10.0
    require_beat_persistence: bool = True
    timezone: str = "Asia/Colombo"

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            retrain_days=settings.retrain_days, horizon_minutes=settings.horizon_minutes,
            model_type=settings.model_type, feature_set=settings.feature_set,
            min_training_rows=settings.min_training_rows,
            min_usable_share=settings.min_usable_share,
            cold_start_days=settings.cold_start_days,
            mae_threshold_percent=settings.mae_threshold_percent,
            require_beat_persistence=settings.require_beat_persistence,
            timezone=settings.timezone,
        )


@dataclass(frozen=True)
class Attempt:
    """Which model is being made: the device, the period it serves and its data cutoff (the
    period start, UTC), trained on the `days` before the cutoff."""

    run_id: str
    device_id: str
    period_key: str
    cutoff: datetime
    days: int
    started_at: float = field(default_factory=time.time)  # epoch seconds, for duration_s
    dagster_run_id: str | None = None  # the run that made the attempt, when one run made many

    @property
    def launched_by(self) -> str:
        return self.dagster_run_id or self.run_id

    @property
    def partition_key(self) -> str:
        return f"{self.device_id}|{self.period_key}"

    @property
    def window_start(self) -> datetime:
        return self.cutoff - timedelta(days=self.days)

    def duration_s(self) -> float:
        return round(time.time() - self.started_at, 3)


@dataclass(frozen=True)
class WindowReadings:
    """The window's clean readings (`frame`, every row), whether they can train, and their
    data-quality flags: `usable` is what features and targets are built from."""

    frame: pd.DataFrame
    report: CleaningReport
    enough: bool
    message: str  # why the window cannot train, when it is not enough
    quality: QualityReport | None = None

    @property
    def usable(self) -> pd.DataFrame:
        """The readings no data-quality flag touches, in time order."""
        if self.quality is None:
            return self.frame
        return self.frame[self.quality.usable.to_numpy()].reset_index(drop=True)


@dataclass(frozen=True)
class Outcome:
    """The decision step's result: what the run log got and what the pointer became."""

    record: dict[str, Any]
    decision: ServingDecision
    challenger: promotion.Contender
    champion: Champion | None
    pointer: dict[str, Any] | None


def no_data_message(device_id: str, start: datetime, end: datetime, rows: int) -> str:
    return (f"No data found for training: device {device_id}, "
            f"window [{start.isoformat()}, {end.isoformat()}): {rows} rows")


def _iso_z(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def read_window(store: Store, attempt: Attempt, policy: Policy,
                settings: Settings | None = None, *, now: datetime | None = None) -> WindowReadings:
    """The device's clean readings in [cutoff - days, cutoff), flagged for data quality at
    the device's site (from `settings`' defaults where it has none) as of `now` (default: the
    real now). Not enough when fewer than MIN_TRAINING_ROWS are clean, when less than
    MIN_USABLE_SHARE of them is free of flags, or fewer than MIN_TRAINING_ROWS are."""
    frame = store.read_window(attempt.device_id, attempt.window_start, attempt.cutoff)
    clean, report = clean_readings(frame)
    rows = len(clean)
    site = site_for_device(store, settings or Settings(), attempt.device_id)
    quality = flag_readings(clean, site, now=now,
                            rules=QualityRules(min_usable_share=policy.min_usable_share))
    usable = rows - quality.flagged
    message = no_data_message(attempt.device_id, attempt.window_start, attempt.cutoff, rows)
    blocked = quality.blocking_reason(policy.min_usable_share)
    if rows >= policy.min_training_rows and blocked:
        message = blocked
    elif rows >= policy.min_training_rows and usable < policy.min_training_rows:
        short = no_data_message(attempt.device_id, attempt.window_start, attempt.cutoff, usable)
        message = f"{short} without data-quality flags ({quality.summary()})"
    enough = usable >= policy.min_training_rows and blocked is None
    return WindowReadings(clean, report, enough, message, quality)


def build_features(readings: pd.DataFrame, store: Store, settings: Settings, attempt: Attempt,
                   policy: Policy) -> features.FeatureFrame:
    """Features and targets of `readings`: the window's usable ones (WindowReadings.usable),
    so no flagged reading is a feature, a lag or a target."""
    return features.build_feature_frame(
        readings, horizon_minutes=policy.horizon_minutes, timezone=policy.timezone,
        feature_set=policy.feature_set, with_target=True,
        site=site_for_device(store, settings, attempt.device_id),
    )


def _own_or_fleet(frame: features.FeatureFrame, attempt: Attempt, policy: Policy,
                  threads: int | None, teachers: tuple[Settings, Store] | None
                  ) -> tuple[Any, training.Evaluation, dict[str, Any]]:
    """A young device's fleet model (when other devices can teach), else its own model."""
    young = (teachers is not None and policy.feature_set == cold_start.COLD_START_FEATURE_SET
             and cold_start.is_young(frame.frame, attempt.cutoff,
                                     min(policy.retrain_days, policy.cold_start_days)))
    if young:
        settings, store = teachers
        fleet = cold_start.train_fleet_candidate(
            settings, store, attempt.device_id, attempt.cutoff, frame,
            model_type=policy.model_type, horizon_minutes=policy.horizon_minutes,
            threads=threads)
        if fleet is not None:
            model, evaluation = fleet
            return model, evaluation, {"cold_start": True, "trained_on": model.trained_on}
    model, evaluation = training.train_and_evaluate(
        frame, model_type=policy.model_type, horizon_minutes=policy.horizon_minutes,
        feature_set=policy.feature_set, threads=threads)
    return model, evaluation, {"cold_start": False}


def train_candidate(feature_frame: features.FeatureFrame, attempt: Attempt, policy: Policy, *,
                    threads: int | None = None, quality: QualityReport | None = None,
                    teachers: tuple[Settings, Store] | None = None) -> ModelCandidate:
    """A fitted model scored on its test window, with the meta its version file will carry
    (`quality_flags` and `usable_share` of the window when `quality` is given). With
    `teachers` (settings and store), a device younger than RETRAIN_DAYS gets the fleet model
    instead (cold_start.py), scored on its own test rows; the meta says which."""
    model, evaluation, fleet_meta = _own_or_fleet(feature_frame, attempt, policy, threads,
                                                  teachers)
    trained_at = utc_now()
    version = ModelRegistry.new_version_id(trained_at)
    metrics = evaluation.as_metrics()
    meta = {
        "device_id": attempt.device_id,
        "version": version,
        "trained_at": _iso_z(trained_at),
        "days_used": attempt.days,
        "rows_used": int(metrics.get("rows_used", len(feature_frame.frame))),
        "features": list(model.features),
        "metrics": metrics,
        "model_type": getattr(model, "model_type", policy.model_type),
        "feature_set": getattr(model, "feature_set", policy.feature_set),
        "horizon_minutes": policy.horizon_minutes,
        **fleet_meta,
        "partition_key": attempt.partition_key,
        "period": attempt.period_key,
        "window_start": _iso_z(attempt.window_start),
        "window_end": _iso_z(attempt.cutoff),
        "cutoff": _iso_z(attempt.cutoff),
        **(quality.as_fields() if quality is not None else {}),
        "intervals": evaluation.intervals,
    }
    return ModelCandidate(device_id=attempt.device_id, version=version, model=model, meta=meta)


def store_candidate(registry: ModelRegistry, candidate: ModelCandidate,
                    run_id: str) -> StoredVersion:
    """A new immutable version, tagged with the run that made it (never moves the pointer)."""
    return registry.save_version(candidate.device_id, candidate.version, candidate.model,
                                 {**candidate.meta, "dagster_run_id": run_id})


def _score_champion(registry: ModelRegistry, device_id: str, pointer: dict[str, Any],
                    test: pd.DataFrame, challenger: promotion.Contender,
                    horizon_minutes: int) -> Champion:
    """The champion on the challenger's test window; one that cannot be verified is unscored."""
    meta = registry.read_meta(device_id, pointer["version"])
    cutoff = _parse(str(meta.get("cutoff") or meta["trained_at"]))
    note, unservable, daylight = None, False, None
    try:
        # The pointer's sha256 too: a pkl replaced together with its meta is never unpickled.
        model = registry.load_model(device_id, pointer["version"],
                                    expected_sha256=pointer["sha256"])
        mae = training.score_on(model, test, horizon_minutes=horizon_minutes)
        daylight = training.daylight_score_on(model, test, horizon_minutes=horizon_minutes)
    except (training.FeaturesUnavailable, ModelStoreError) as exc:
        mae, note = float("nan"), str(exc)
        unservable = isinstance(exc, ModelStoreError)  # missing, damaged or replaced
    return Champion(promotion.Contender(version=pointer["version"], mae=mae, cutoff=cutoff,
                                        persistence_mae=challenger.persistence_mae,
                                        gate_mae=daylight), note, unservable)


def _success_record(attempt: Attempt, stored: StoredVersion, decision: ServingDecision,
                    champion: Champion | None) -> dict[str, Any]:
    meta, metrics = stored.meta, stored.meta["metrics"]
    old = champion.contender if champion else None
    record = base_record(
        run_id=attempt.run_id, device_id=attempt.device_id, partition_key=attempt.partition_key,
        period=attempt.period_key, window_start=_parse(meta["window_start"]),
        window_end=_parse(meta["window_end"]), days_used=meta["days_used"],
        horizon_minutes=meta["horizon_minutes"], model_type=meta["model_type"],
        trained_at=_parse(meta["trained_at"]), dagster_run_id=attempt.launched_by,
    )
    record.update(
        rows_used=meta["rows_used"],
        mae=metrics.get("mae"), rmse=metrics.get("rmse"), r2=metrics.get("r2"),
        train_samples=metrics.get("train_samples"), test_samples=metrics.get("test_samples"),
        persistence_mae=metrics.get("persistence_mae"), skill=metrics.get("skill"),
        **{name: metrics.get(name) for name in EXTRA_METRIC_FIELDS},
        features=meta["features"], model_path=str(stored.model_path),
        version=stored.version, status=STATUS_SUCCESS, error=None,
        promoted=decision.promoted, decision_reason=decision.reason, decision_rule=decision.rule,
        champion_version=old.version if old else None,
        champion_mae=_finite_or_none(old.mae) if old else None,
        champion_daylight_mae=old.gate_mae if old else None, serving=decision.serving,
        cold_start=bool(meta.get("cold_start")),
        duration_s=attempt.duration_s(), finished_at=utc_now(),
        quality_flags=meta.get("quality_flags"), usable_share=meta.get("usable_share"),
    )
    return record


def decide_and_record(store: Store, registry: ModelRegistry, attempt: Attempt,
                      stored: StoredVersion, feature_frame: features.FeatureFrame,
                      policy: Policy) -> Outcome:
    """Decide, record the attempt, then move the pointer (to the challenger, to the
    smart-persistence fallback, or nowhere), all under the device's lock."""
    device_id = attempt.device_id
    metrics = stored.meta["metrics"]
    _, test = training.split_time_ordered(feature_frame.frame)
    challenger = promotion.daylight_gate_contender(stored.version, metrics,
                                                   _parse(stored.meta["cutoff"]))
    with registry.device_lock(device_id):
        pointer = registry.read_pointer(device_id)
        on_fallback = is_fallback(pointer)
        champion = None
        if pointer is not None and not on_fallback:
            champion = _score_champion(registry, device_id, pointer, test, challenger,
                                       policy.horizon_minutes)
        fallback_cutoff = pointer.get("cutoff") if on_fallback else None
        decision = decide_serving(
            device_id, challenger, champion, on_fallback=on_fallback,
            fallback_cutoff=_parse(fallback_cutoff) if fallback_cutoff else None,
            threshold_percent=policy.mae_threshold_percent,
            require_beat_persistence=policy.require_beat_persistence)
        record = _success_record(attempt, stored, decision, champion)
        # The record before the pointer: a run log that cannot take the attempt (store down or
        # read-only) fails the attempt before a model it never recorded can serve.
        store.upsert_run(record)
        new_pointer = pointer
        try:
            if decision.promoted:
                new_pointer = registry.set_pointer(device_id, stored.version,
                                                   run_id=attempt.run_id)
            elif decision.to_fallback:
                new_pointer = registry.set_fallback(
                    device_id, reason=decision.reason, challenger_version=stored.version,
                    cutoff=stored.meta["cutoff"], run_id=attempt.run_id,
                    intervals=smart_persistence_band(stored.meta),
                    figures={"daylight_mae": challenger.gate_mae,
                             "daylight_persistence_mae": challenger.persistence_mae,
                             "champion_daylight_mae": record["champion_daylight_mae"]})
        except Exception as exc:
            what = "promoted" if decision.promoted else "put on smart persistence"
            store.upsert_run({"run_id": attempt.run_id, **failed_fields(
                f"{stored.version} was stored but {device_id} was not {what}: {exc}",
                record["duration_s"])})
            raise
    return Outcome(record, decision, challenger, champion, new_pointer)


def smart_persistence_band(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The smart-persistence interval model a version's test window calibrated: what a
    fallback pointer carries, so fallback forecasts come with P10/P90 too."""
    bands = meta.get("intervals") or {}
    band = bands.get("smart_persistence") if isinstance(bands, dict) else None
    return {"smart_persistence": band} if band else None


def record_failure(store: Store, attempt: Attempt, policy: Policy, message: str,
                   quality: QualityReport | None = None) -> bool:
    """One `failed` record for the attempt unless its run already has a final one (with the
    window's data-quality counts when they are known)."""
    record = base_record(
        run_id=attempt.run_id, device_id=attempt.device_id, partition_key=attempt.partition_key,
        period=attempt.period_key, window_start=attempt.window_start, window_end=attempt.cutoff,
        days_used=attempt.days, horizon_minutes=policy.horizon_minutes,
        model_type=policy.model_type, dagster_run_id=attempt.launched_by,
    )
    if quality is not None:
        record.update(quality.as_fields())
    return write_failure(store, record, message or "the attempt failed", attempt.duration_s())


@dataclass
class AttemptResult:
    """What one attempt got through: each step's result, or the step that failed and why."""

    attempt: Attempt
    window: WindowReadings | None = None
    frame: features.FeatureFrame | None = None
    candidate: ModelCandidate | None = None
    stored: StoredVersion | None = None
    outcome: Outcome | None = None
    failed_step: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


READ, FEATURES, TRAIN, DECIDE = "read", "features", "train", "decide"


def latest_stored_version(registry: ModelRegistry, attempt: Attempt) -> StoredVersion:
    """The newest version trained for this partition, verified: what a decision alone judges."""
    metas = registry.versions_for_partition(attempt.device_id, attempt.partition_key)
    if not metas:
        raise AttemptFailed(f"no stored model version for partition {attempt.partition_key}: "
                            "materialize model_version for this partition first")
    version = metas[-1]["version"]
    meta = registry.verify_version(attempt.device_id, version)
    return StoredVersion(attempt.device_id, version,
                         registry.model_path(attempt.device_id, version),
                         registry.metadata_path(attempt.device_id, version), meta["sha256"], meta)


def run_attempt(settings: Settings, store: Store, registry: ModelRegistry, attempt: Attempt,
                policy: Policy, *, featurise: bool = True, train: bool = True,
                decide: bool = True, threads: int | None = None) -> AttemptResult:
    """The attempt's steps in this process, stopping at the first failure, which is recorded
    (one `failed` record) and returned, never raised.

    Training and deciding read and featurise first: the frames are rebuilt from the readings
    store rather than kept. `train` makes a new version; `decide` judges it, or without
    `train` the newest version stored for the partition.
    """
    attempt = replace(attempt, started_at=time.time())  # its own duration, not its batch's
    result = AttemptResult(attempt)
    step = READ
    try:
        result.window = read_window(store, attempt, policy, settings)
        if not result.window.enough:
            raise AttemptFailed(result.window.message)
        if not (featurise or train or decide):
            return result
        step = FEATURES
        result.frame = build_features(result.window.usable, store, settings, attempt, policy)
        if train:
            step = TRAIN
            result.candidate = train_candidate(result.frame, attempt, policy, threads=threads,
                                               quality=result.window.quality,
                                               teachers=(settings, store))
            result.stored = store_candidate(registry, result.candidate, attempt.launched_by)
        if decide:
            step = DECIDE
            stored = result.stored or latest_stored_version(registry, attempt)
            result.outcome = decide_and_record(store, registry, attempt, stored, result.frame,
                                               policy)
    except Exception as exc:  # noqa: BLE001 - one device's failure is its record, not a crash
        result.failed_step, result.error = step, str(exc) or type(exc).__name__
        record_failure(store, attempt, policy, result.error,
                       result.window.quality if result.window else None)
    return result


def retrain_device(settings: Settings, store: Store, registry: ModelRegistry, device_id: str,
                   period_key: str, cutoff: datetime, *, run_id: str, days: int | None = None,
                   policy: Policy | None = None, threads: int | None = None) -> dict[str, Any]:
    """One device's whole attempt in this process; returns its run-log record (`failed`, with
    the one-line reason, when any step fails: the error is recorded, not raised)."""
    policy = policy or Policy.from_settings(settings)
    attempt = Attempt(run_id=run_id, device_id=validate_device_id(device_id),
                      period_key=period_key, cutoff=cutoff.astimezone(UTC),
                      days=days or policy.retrain_days)
    run_attempt(settings, store, registry, attempt, policy, threads=threads)
    record = store.get_run(run_id)
    if record is None:
        raise AttemptFailed(f"the run log holds no record of attempt {run_id}: check the store")
    return record
