"""The retraining assets: raw_readings -> feature_frame -> model_version -> promotion_decision.

Thin Dagster wrappers: the work is in readings, features, training, promotion and registry.
Each asset records a `failed` run-log entry itself when it fails, so an attempt launched from
anywhere (schedule, UI, CLI) leaves its record even without a job-level hook.
"""


import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import pandas as pd

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.forecasting import features, promotion, training
from solar_ml_pipeline.model_store.registry import (
    SERVING_FALLBACK,
    SERVING_MODEL,
    ModelCandidate,
    ModelStoreError,
    is_fallback,
)
from solar_ml_pipeline.orchestration.failures import (
    days_from_run_config,
    no_data_message,
    record_failed_attempt,
)
from solar_ml_pipeline.orchestration.io_managers import partition_parts
from solar_ml_pipeline.orchestration.partitions import retrain_partitions
from solar_ml_pipeline.orchestration.resources import (
    ModelStoreResource,
    RetrainPolicy,
    StoreResource,
)
from solar_ml_pipeline.readings import cleaning as readings
from solar_ml_pipeline.readings.simulator import site_for_device
from solar_ml_pipeline.storage.run_records import (
    EXTRA_METRIC_FIELDS,
    STATUS_SUCCESS,
    base_record,
    failed_fields,
    one_line,
    utc_now,
)

GROUP = "retraining"
OWNERS = ["team:solar-ml"]
ENOUGH_ROWS_CHECK = "enough_rows"
FRESH_READINGS_CHECK = "fresh_readings"
POSITIVE_SKILL_CHECK = "positive_skill"


def _partition_check(name: str, asset: str, description: str,
                     partitions_def: dg.PartitionsDefinition, blocking: bool = False) -> dg.AssetCheckSpec:
    """A check recorded per device x period partition (partitioned check specs are Preview)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(name, asset=asset, description=description, blocking=blocking,
                                 partitions_def=partitions_def)


class RetrainConfig(dg.Config):
    """Run-time overrides for a manual retrain (the schedule passes none)."""

    days: int | None = None


class TrainingFailed(dg.Failure):
    """A failure whose description is the one-line error recorded in the run log."""


def _window(context: dg.AssetExecutionContext, days: int) -> tuple[datetime, datetime]:
    period = context.partition_time_window
    cutoff = period.start.astimezone(UTC)
    return cutoff - timedelta(days=days), cutoff


def _days_used(context: dg.AssetExecutionContext, policy: RetrainPolicy) -> int:
    return days_from_run_config(context.run.run_config) or policy.retrain_days


def _run_duration_s(context: dg.AssetExecutionContext) -> float | None:
    stats = context.instance.get_run_stats(context.run_id)
    return round(time.time() - stats.start_time, 3) if stats.start_time else None


@contextmanager
def _recorded_attempt(context: dg.AssetExecutionContext, settings: Settings,
                      store: StoreResource) -> Iterator[None]:
    """On any failure, leave one `failed` record for this run (unless one exists) and re-raise."""
    try:
        yield
    except Exception as exc:
        message = exc.description if isinstance(exc, dg.Failure) and exc.description else str(exc)
        device_id, period_key = partition_parts(context)
        try:
            record_failed_attempt(
                store.open(), settings, run_id=context.run_id, device_id=device_id,
                period_key=period_key, days=days_from_run_config(context.run.run_config),
                message=message or type(exc).__name__, duration_s=_run_duration_s(context),
            )
        except Exception as log_exc:  # noqa: BLE001 - the run log may be the thing that is down
            context.log.error(f"could not record the failed attempt in the run log: {log_exc}")
        raise


def build_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    partitions_def = retrain_partitions(settings)
    backend_kind = "mongodb" if settings.mongodb_uri else "sqlite"
    common: dict[str, Any] = {
        "partitions_def": partitions_def,
        "group_name": GROUP,
        "owners": OWNERS,
        "tags": {"domain": "solar-forecasting"},
    }

    @dg.asset(
        **common,
        io_manager_key="frame_io_manager",
        kinds={"pandas", backend_kind},
        description=(
            "The device's readings in the training window [period start - RETRAIN_DAYS, "
            "period start), typed, deduplicated on timestamp and sorted."
        ),
        check_specs=[
            _partition_check(
                ENOUGH_ROWS_CHECK, "raw_readings",
                "The window holds at least MIN_TRAINING_ROWS clean readings (blocking).",
                partitions_def, blocking=True,
            ),
            _partition_check(
                FRESH_READINGS_CHECK, "raw_readings",
                "The latest reading is at most one period older than the cutoff: a silent "
                "tracker still trains, on stale data (warning).",
                partitions_def,
            ),
        ],
    )
    def raw_readings(context: dg.AssetExecutionContext, config: RetrainConfig,
                     store: StoreResource, policy: RetrainPolicy) -> Iterator[Any]:
        with _recorded_attempt(context, settings, store):
            device_id, _ = partition_parts(context)
            days = config.days or policy.retrain_days
            start, end = _window(context, days)
            frame = store.open().read_window(device_id, start, end)
            clean, report = readings.clean_readings(frame)
            rows = len(clean)
            yield dg.Output(
                clean,
                metadata={
                    "window_start": start.isoformat(),
                    "window_end": end.isoformat(),
                    "days_used": days,
                    "rows": rows,
                    **report.as_metadata(),
                },
            )
            enough = rows >= policy.min_training_rows
            message = no_data_message(device_id, start, end, rows)
            yield dg.AssetCheckResult(
                check_name=ENOUGH_ROWS_CHECK,
                passed=enough,
                severity=dg.AssetCheckSeverity.ERROR,
                description=None if enough else message,
                metadata={"rows": rows, "min_training_rows": policy.min_training_rows},
            )
            yield _freshness_result(report.last_timestamp, end, context.partition_time_window)
            if not enough:
                raise TrainingFailed(description=message)

    @dg.asset(
        **common,
        io_manager_key="frame_io_manager",
        kinds={"pandas"},
        description=(
            "Features of each reading and the target: power HORIZON_MINUTES later, matched by "
            "time. Sensors the device never sent in the window are left out."
        ),
    )
    def feature_frame(context: dg.AssetExecutionContext, raw_readings: pd.DataFrame,
                      store: StoreResource, policy: RetrainPolicy) -> dg.Output:
        with _recorded_attempt(context, settings, store):
            device_id, _ = partition_parts(context)
            built = features.build_feature_frame(
                raw_readings,
                horizon_minutes=policy.horizon_minutes,
                timezone=policy.timezone,
                feature_set=policy.feature_set,
                with_target=True,
                site=site_for_device(store.open(), settings, device_id),
            )
            return dg.Output(
                built,
                metadata={
                    "rows": len(built.frame),
                    "features": dg.MetadataValue.json(list(built.features)),
                    "feature_count": len(built.features),
                    "feature_set": policy.feature_set,
                    "horizon_minutes": policy.horizon_minutes,
                },
            )

    @dg.asset(
        **common,
        io_manager_key="model_io_manager",
        kinds={"scikitlearn"},
        check_specs=[
            _partition_check(
                POSITIVE_SKILL_CHECK, "model_version",
                "The model beats persistence (skill > 0) on its test window; a model that does "
                "not is stored and judged, but is not worth serving (warning).",
                partitions_def,
            ),
        ],
        description=(
            "A model fitted on the earlier 80 % of the feature frame and scored on the later "
            "20 % against persistence; stored as a new immutable version."
        ),
    )
    def model_version(context: dg.AssetExecutionContext, feature_frame: Any,
                      store: StoreResource, models: ModelStoreResource,
                      policy: RetrainPolicy) -> Iterator[Any]:
        with _recorded_attempt(context, settings, store):
            device_id, period_key = partition_parts(context)
            days = _days_used(context, policy)
            start, end = _window(context, days)
            model, evaluation = training.train_and_evaluate(
                feature_frame,
                model_type=policy.model_type,
                horizon_minutes=policy.horizon_minutes,
                feature_set=policy.feature_set,
                threads=training.threads_per_run(settings.max_concurrent_runs),
            )
            trained_at = utc_now()
            version = models.registry().new_version_id(trained_at)
            metrics = evaluation.as_metrics()
            meta = {
                "device_id": device_id,
                "version": version,
                "trained_at": trained_at.isoformat().replace("+00:00", "Z"),
                "days_used": days,
                "rows_used": int(metrics.get("rows_used", len(feature_frame.frame))),
                "features": list(model.features),
                "metrics": metrics,
                "model_type": policy.model_type,
                "feature_set": policy.feature_set,
                "horizon_minutes": policy.horizon_minutes,
                "partition_key": str(context.partition_key),
                "period": period_key,
                "window_start": start.isoformat().replace("+00:00", "Z"),
                "window_end": end.isoformat().replace("+00:00", "Z"),
                "cutoff": end.isoformat().replace("+00:00", "Z"),
            }
            float_metadata = {
                name: float(value) for name, value in metrics.items()
                if isinstance(value, float) and math.isfinite(value)
            }
            int_metadata = {
                name: int(value) for name, value in metrics.items()
                if isinstance(value, int) and not isinstance(value, bool)
            }
            yield dg.Output(
                ModelCandidate(device_id=device_id, version=version, model=model, meta=meta),
                metadata={
                    **float_metadata,
                    **int_metadata,
                    "model_type": policy.model_type,
                    "feature_set": policy.feature_set,
                    "period": period_key,
                    "feature_importance": _importance_table(model),
                },
            )
            skill = metrics.get("skill")
            yield dg.AssetCheckResult(
                check_name=POSITIVE_SKILL_CHECK,
                passed=bool(skill is not None and math.isfinite(skill) and skill > 0),
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"skill": float(skill) if skill is not None and math.isfinite(skill) else 0.0,
                          "mae": float(metrics["mae"]),
                          "persistence_mae": float(metrics["persistence_mae"])},
                description=None if skill and skill > 0 else (
                    f"skill {skill} against persistence: the forecast does not beat "
                    "'power stays what it is now' on this window"),
            )

    @dg.asset(
        **common,
        kinds={"python"},
        description=(
            "Whether the new version replaces the one in service: both scored on the new "
            "version's test window; promoted only per the MAE threshold policy, never for a "
            "backfill older than the model in service. With REQUIRE_BEAT_PERSISTENCE, when "
            "neither beats persistence in daylight the device is served by smart persistence "
            "(metadata serving_fallback = 1)."
        ),
    )
    def promotion_decision(context: dg.AssetExecutionContext, model_version: Any,
                           feature_frame: Any, store: StoreResource,
                           models: ModelStoreResource,
                           policy: RetrainPolicy) -> dg.MaterializeResult:
        with _recorded_attempt(context, settings, store):
            return _decide_and_record(context, model_version, feature_frame, store, models, policy)

    return [raw_readings, feature_frame, model_version, promotion_decision]


def _freshness_result(last_reading: datetime | None, cutoff: datetime,
                      period: Any) -> dg.AssetCheckResult:
    allowed = period.end - period.start
    age = None if last_reading is None else cutoff - last_reading
    fresh = age is not None and age <= allowed
    return dg.AssetCheckResult(
        check_name=FRESH_READINGS_CHECK,
        passed=fresh,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"latest_reading": last_reading.isoformat() if last_reading else "none",
                  "age_hours": round(age.total_seconds() / 3600, 3) if age is not None else -1.0,
                  "allowed_hours": allowed.total_seconds() / 3600},
        description=None if fresh else (
            "no readings in the window" if last_reading is None
            else f"latest reading {last_reading.isoformat()} is older than one period before the cutoff"),
    )


def _importance_table(model: Any) -> dg.MetadataValue:
    importances = getattr(model, "feature_importances", None)
    rows = []
    if callable(importances):
        for name, value in importances():
            rows.append(dg.TableRecord({"feature": name, "importance": float(value)}))
    return dg.MetadataValue.table(
        records=rows,
        schema=dg.TableSchema(columns=[
            dg.TableColumn("feature", "string"), dg.TableColumn("importance", "float"),
        ]),
    )


# Decision rules of a challenger refused by the persistence gate (promotion.py rule 3).
GATE_REFUSALS = ("loses_to_persistence", "persistence_unknown")


def _number(value: float | None) -> str:
    return f"{value:.4g}" if value is not None and math.isfinite(value) else "unknown"


def _fallback_backfill(pointer: dict[str, Any], challenger: promotion.Contender) -> promotion.Decision | None:
    """A challenger older than the one that put the device on smart persistence is a backfill."""
    cutoff = pointer.get("cutoff")
    if not cutoff or challenger.cutoff >= _parse(cutoff):
        return None
    return promotion.Decision(
        False, f"Not promoted: backfill, cutoff {challenger.cutoff.isoformat()} is older than "
               f"the {cutoff} of the challenger that put the device on smart persistence "
               f"(challenger {challenger.version} MAE {_number(challenger.mae)})", "backfill")


def _decide_and_record(context: dg.AssetExecutionContext, stored: Any, feature_frame: Any,
                       store: StoreResource, models: ModelStoreResource,
                       policy: RetrainPolicy) -> dg.MaterializeResult:
    """Decide, record the attempt, then move the pointer: to the challenger, to the
    smart-persistence fallback (gate on, challenger refused by it and no champion that still
    beats persistence in daylight on the same window), or nowhere."""
    device_id, period_key = partition_parts(context)
    registry = models.registry()
    meta = stored.meta
    metrics = meta["metrics"]
    _, test = training.split_time_ordered(feature_frame.frame)
    cutoff = _parse(meta["cutoff"])
    challenger = promotion.daylight_gate_contender(stored.version, metrics, cutoff)
    with registry.device_lock(device_id):
        pointer = registry.read_pointer(device_id)
        on_fallback = is_fallback(pointer)
        champion = None
        champion_note = None
        champion_daylight = None
        champion_unservable = False
        if pointer is not None and not on_fallback:
            champion_meta = registry.read_meta(device_id, pointer["version"])
            champion_cutoff = _parse(str(champion_meta.get("cutoff") or champion_meta["trained_at"]))
            try:
                # The pointer's sha256 too: a pkl replaced together with its meta is never
                # unpickled; a champion that cannot be verified is unscored, so it is replaced.
                champion_model = registry.load_model(device_id, pointer["version"],
                                                     expected_sha256=pointer["sha256"])
                champion_mae = training.score_on(champion_model, test,
                                                  horizon_minutes=policy.horizon_minutes)
                champion_daylight = training.daylight_score_on(
                    champion_model, test, horizon_minutes=policy.horizon_minutes)
            except (training.FeaturesUnavailable, ModelStoreError) as exc:
                champion_mae = float("nan")
                champion_note = str(exc)
                # missing, damaged or replaced: it cannot serve, so it is no reason to stay
                champion_unservable = isinstance(exc, ModelStoreError)
            champion = promotion.Contender(version=pointer["version"], mae=champion_mae,
                                           cutoff=champion_cutoff,
                                           persistence_mae=challenger.persistence_mae,
                                           gate_mae=champion_daylight)
        # A fallback pointer is no champion: the next challenger that passes the gate serves.
        decision = _fallback_backfill(pointer, challenger) if on_fallback else None
        if decision is None:
            decision = promotion.decide_promotion(
                challenger, champion, policy.mae_threshold_percent,
                require_beat_persistence=policy.require_beat_persistence)
        champion_beats = promotion.beats_persistence(champion) if champion else None
        to_fallback = (policy.require_beat_persistence and not decision.promoted
                       and decision.rule in GATE_REFUSALS
                       and (champion is None or champion_beats is False or champion_unservable))
        reason = decision.reason if champion_note is None else f"{decision.reason} ({champion_note})"
        persistence = f"daylight persistence MAE {_number(challenger.persistence_mae)}"
        if to_fallback and champion_unservable:
            reason += (f"; champion {champion.version} cannot be served, so it is displaced and "
                       f"{device_id} is served by smart persistence")
        elif to_fallback and champion is not None:
            reason += (f"; champion {champion.version} loses to persistence too (daylight MAE "
                       f"{_number(champion_daylight)}, {persistence}), so it is displaced and "
                       f"{device_id} is served by smart persistence")
        elif to_fallback:
            state = "stays on" if on_fallback else "no model beats persistence, so it is served by"
            reason += f"; {device_id} {state} smart persistence"
        elif champion is not None and decision.rule in GATE_REFUSALS:
            standing = ("unknown" if champion_beats is None else
                        f"daylight MAE {_number(champion_daylight)}, {persistence}")
            reason += f"; champion {champion.version} stays in service ({standing})"
        elif on_fallback and decision.promoted:
            reason += f"; replaces the smart-persistence fallback of {device_id}"
        reason = one_line(reason)
        if to_fallback or (on_fallback and not decision.promoted):
            serving = SERVING_FALLBACK
        elif decision.promoted or champion is not None:
            serving = SERVING_MODEL
        else:
            serving = None
        record = base_record(
            run_id=context.run_id, device_id=device_id, partition_key=str(context.partition_key),
            period=period_key, window_start=_parse(meta["window_start"]), window_end=_parse(meta["window_end"]),
            days_used=meta["days_used"], horizon_minutes=meta["horizon_minutes"],
            model_type=meta["model_type"], trained_at=_parse(meta["trained_at"]),
        )
        record.update(
            rows_used=meta["rows_used"],
            mae=metrics.get("mae"), rmse=metrics.get("rmse"), r2=metrics.get("r2"),
            train_samples=metrics.get("train_samples"), test_samples=metrics.get("test_samples"),
            persistence_mae=metrics.get("persistence_mae"), skill=metrics.get("skill"),
            **{name: metrics.get(name) for name in EXTRA_METRIC_FIELDS},
            features=meta["features"], model_path=meta.get("model_path") or str(stored.model_path),
            version=stored.version, status=STATUS_SUCCESS, error=None,
            promoted=decision.promoted, decision_reason=reason, decision_rule=decision.rule,
            champion_version=champion.version if champion else None,
            champion_mae=_finite_or_none(champion.mae) if champion else None,
            champion_daylight_mae=champion_daylight, serving=serving,
            duration_s=_run_duration_s(context), finished_at=utc_now(),
        )
        # The record before the pointer: a run log that cannot take the attempt (store down or
        # read-only) fails the run before a model it never recorded can serve.
        store.open().upsert_run(record)
        new_pointer = pointer
        try:
            if decision.promoted:
                new_pointer = registry.set_pointer(device_id, stored.version)
            elif to_fallback:
                new_pointer = registry.set_fallback(
                    device_id, reason=reason, challenger_version=stored.version,
                    cutoff=meta["cutoff"],
                    figures={"daylight_mae": challenger.gate_mae,
                             "daylight_persistence_mae": challenger.persistence_mae,
                             "champion_daylight_mae": champion_daylight})
        except Exception as exc:
            what = "promoted" if decision.promoted else "put on smart persistence"
            store.open().upsert_run({"run_id": context.run_id, **failed_fields(
                f"{stored.version} was stored but {device_id} was not {what}: {exc}",
                record["duration_s"])})
            raise

    context.log.info(f"{device_id} {period_key}: {reason}")
    gate_figures = {name: float(value) for name, value in (
        ("challenger_daylight_mae", challenger.gate_mae),
        ("daylight_persistence_mae", challenger.persistence_mae),
        ("champion_daylight_mae", champion_daylight),
    ) if value is not None and math.isfinite(value)}
    return dg.MaterializeResult(
        metadata={
            "promoted": decision.promoted,
            "reason": reason,
            "rule": decision.rule,
            "serving": serving or "none",
            "serving_fallback": int(serving == SERVING_FALLBACK),
            "challenger_version": stored.version,
            "challenger_mae": float(challenger.mae),
            "champion_version": record["champion_version"] or "",
            "contenders": dg.MetadataValue.table(
                records=[
                    dg.TableRecord({"role": "challenger", "version": stored.version,
                                    "mae": float(challenger.mae)}),
                    *([dg.TableRecord({"role": "champion", "version": champion.version,
                                       "mae": float(champion.mae)})] if champion else []),
                ],
                schema=dg.TableSchema(columns=[
                    dg.TableColumn("role", "string"), dg.TableColumn("version", "string"),
                    dg.TableColumn("mae", "float"),
                ]),
            ),
            **({"champion_mae": float(champion.mae)}
               if champion and math.isfinite(champion.mae) else {}),
            **gate_figures,
            "pointer": dg.MetadataValue.json(new_pointer or {}),
        },
    )


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
