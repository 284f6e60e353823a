"""The retraining assets: raw_readings -> feature_frame -> model_version -> promotion_decision.

Each body calls one step of `forecasting.attempt` and turns its result into Dagster events
(outputs, metadata, checks). Each asset records a `failed` run-log entry itself when it
fails, so an attempt launched from anywhere (schedule, UI, CLI) leaves its record even
without a job-level hook.
"""

import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pandas as pd

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.forecasting import attempt as steps
from solar_ml_pipeline.forecasting.training import threads_per_run
from solar_ml_pipeline.model_store.registry import SERVING_FALLBACK
from solar_ml_pipeline.orchestration.failures import days_from_run_config, record_failed_attempt
from solar_ml_pipeline.orchestration.io_managers import partition_parts
from solar_ml_pipeline.orchestration.partitions import retrain_partitions
from solar_ml_pipeline.orchestration.resources import (
    ModelStoreResource,
    RetrainPolicy,
    StoreResource,
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


def _run_start(context: dg.AssetExecutionContext) -> float | None:
    return context.instance.get_run_stats(context.run_id).start_time


def _attempt(context: dg.AssetExecutionContext, policy: RetrainPolicy,
             days: int | None = None, *, timed: bool = False) -> steps.Attempt:
    """The attempt this step belongs to: its partition, cutoff (period start) and window;
    `timed` reads the run's start from the instance, for the record's duration."""
    device_id, period_key = partition_parts(context)
    return steps.Attempt(
        run_id=context.run_id, device_id=device_id, period_key=period_key,
        cutoff=context.partition_time_window.start.astimezone(UTC),
        days=days or days_from_run_config(context.run.run_config) or policy.retrain_days,
        started_at=(_run_start(context) if timed else None) or time.time(),
    )


def _run_duration_s(context: dg.AssetExecutionContext) -> float | None:
    start = _run_start(context)
    return round(time.time() - start, 3) if start else None


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
            attempt = _attempt(context, policy, config.days)
            window = steps.read_window(store.open(), attempt, policy.plain())
            rows = len(window.frame)
            yield dg.Output(window.frame, metadata={
                "window_start": attempt.window_start.isoformat(),
                "window_end": attempt.cutoff.isoformat(),
                "days_used": attempt.days, "rows": rows, **window.report.as_metadata(),
            })
            yield dg.AssetCheckResult(
                check_name=ENOUGH_ROWS_CHECK, passed=window.enough,
                severity=dg.AssetCheckSeverity.ERROR,
                description=None if window.enough else window.message,
                metadata={"rows": rows, "min_training_rows": policy.min_training_rows},
            )
            yield _freshness_result(window.report.last_timestamp, attempt.cutoff,
                                    context.partition_time_window)
            if not window.enough:
                raise TrainingFailed(description=window.message)

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
            built = steps.build_features(raw_readings, store.open(), settings,
                                         _attempt(context, policy), policy.plain())
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
            candidate = steps.train_candidate(
                feature_frame, _attempt(context, policy), policy.plain(),
                threads=threads_per_run(settings.max_concurrent_runs))
            metrics = candidate.meta["metrics"]
            yield dg.Output(candidate, metadata={
                **_number_metadata(metrics),
                "model_type": policy.model_type, "feature_set": policy.feature_set,
                "period": candidate.meta["period"],
                "feature_importance": _importance_table(candidate.model),
            })
            yield _skill_result(metrics)

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
            attempt = _attempt(context, policy, int(model_version.meta["days_used"]), timed=True)
            outcome = steps.decide_and_record(store.open(), models.registry(), attempt,
                                              model_version, feature_frame, policy.plain())
            context.log.info(f"{attempt.device_id} {attempt.period_key}: "
                             f"{outcome.decision.reason}")
            return dg.MaterializeResult(metadata=_decision_metadata(outcome, model_version.version))

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


def _number_metadata(metrics: dict[str, Any]) -> dict[str, float | int]:
    """Finite float and int metrics as plottable metadata."""
    out: dict[str, float | int] = {}
    for name, value in metrics.items():
        if isinstance(value, float) and math.isfinite(value):
            out[name] = float(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            out[name] = int(value)
    return out


def _skill_result(metrics: dict[str, Any]) -> dg.AssetCheckResult:
    skill = metrics.get("skill")
    known = skill is not None and math.isfinite(skill)
    return dg.AssetCheckResult(
        check_name=POSITIVE_SKILL_CHECK,
        passed=bool(known and skill > 0),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"skill": float(skill) if known else 0.0,
                  "mae": float(metrics["mae"]),
                  "persistence_mae": float(metrics["persistence_mae"])},
        description=None if skill and skill > 0 else (
            f"skill {skill} against persistence: the forecast does not beat "
            "'power stays what it is now' on this window"),
    )


def _decision_metadata(outcome: steps.Outcome, version: str) -> dict[str, Any]:
    decision, challenger = outcome.decision, outcome.challenger
    champion = outcome.champion.contender if outcome.champion else None
    champion_daylight = outcome.record["champion_daylight_mae"]
    gate_figures = {name: float(value) for name, value in (
        ("challenger_daylight_mae", challenger.gate_mae),
        ("daylight_persistence_mae", challenger.persistence_mae),
        ("champion_daylight_mae", champion_daylight),
    ) if value is not None and math.isfinite(value)}
    return {
        "promoted": decision.promoted,
        "reason": decision.reason,
        "rule": decision.rule,
        "serving": decision.serving or "none",
        "serving_fallback": int(decision.serving == SERVING_FALLBACK),
        "challenger_version": version,
        "challenger_mae": float(challenger.mae),
        "champion_version": outcome.record["champion_version"] or "",
        "contenders": dg.MetadataValue.table(
            records=[
                dg.TableRecord({"role": "challenger", "version": version,
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
        "pointer": dg.MetadataValue.json(outcome.pointer or {}),
    }
