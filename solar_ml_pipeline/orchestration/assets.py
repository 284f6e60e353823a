"""The retraining assets: raw_readings -> feature_frame -> model_version -> promotion_decision.

One multi-asset step runs the four steps of `forecasting.attempt` for every device of its run
(one partition, or a batch of devices from a schedule tick, the discovery sensor or a UI
backfill) and reports each device's own events: a materialisation per asset and device, and
per-partition checks. A device that fails stops only its own attempt: the others go on, its
later assets stay unmaterialised, Dagster marks them failed for that partition, and the step
fails at the end naming the failed devices, so "Re-execute from failure" retries only those.
Nothing passes between steps through an IO manager: the frames are rebuilt from the readings
store, and the model version lives in the model store.
"""

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import dagster as dg

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.forecasting import attempt as steps
from solar_ml_pipeline.forecasting.training import threads_per_run
from solar_ml_pipeline.model_store.registry import SERVING_FALLBACK
from solar_ml_pipeline.orchestration.batches import ASSET_NAMES, run_attempts
from solar_ml_pipeline.orchestration.failures import RETRAIN_OP
from solar_ml_pipeline.orchestration.partitions import period_bounds, retrain_partitions
from solar_ml_pipeline.orchestration.resources import (
    ModelStoreResource,
    RetrainPolicy,
    StoreResource,
)

GROUP = "retraining"
OWNERS = ["team:solar-ml"]
RAW, FEATURES, MODEL, DECISION = ASSET_NAMES
ENOUGH_ROWS_CHECK = "enough_rows"
FRESH_READINGS_CHECK = "fresh_readings"
POSITIVE_SKILL_CHECK = "positive_skill"
SHOWN_FAILURES = 5


def partition_check(name: str, asset: str, description: str,
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


@dataclass(frozen=True)
class Batch:
    """The devices one run retrains, and which of the four assets (and checks) it makes."""

    attempts: list[steps.Attempt]
    selected: set[str]
    checks: set[str]
    skipped: int  # done by an earlier run of this retry chain

    @classmethod
    def of(cls, context: dg.AssetExecutionContext, settings: Settings, policy: RetrainPolicy,
           days: int | None) -> "Batch":
        keys = [str(key) for key in context.partition_keys]
        selected_keys = set(context.selected_asset_keys)
        attempts = [
            steps.Attempt(run_id=planned.attempt_id, device_id=planned.device_id,
                          period_key=planned.period_key,
                          cutoff=period_bounds(settings, planned.period_key)[0],
                          days=days or policy.retrain_days, dagster_run_id=context.run_id)
            for planned in run_attempts(context.instance, context.run, keys, selected_keys)]
        return cls(attempts, {k.to_user_string() for k in selected_keys},
                   {k.name for k in context.selected_asset_check_keys}, len(keys) - len(attempts))

    def failure(self, failed: list[steps.AttemptResult]) -> str:
        if len(self.attempts) == 1:
            return failed[0].error or "the attempt failed"
        shown = "; ".join(f"{r.attempt.device_id}: {r.error}" for r in failed[:SHOWN_FAILURES])
        more = f"; and {len(failed) - SHOWN_FAILURES} more" if len(failed) > SHOWN_FAILURES else ""
        return (f"{len(failed)} of {len(self.attempts)} devices failed ({shown}{more}); the others "
                "are retrained: Re-execute from failure (or solar-ml retrain --retry-failed "
                "RUN_ID) retries only the failed ones")


def build_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    partitions_def = retrain_partitions(settings)
    backend_kind = "mongodb" if settings.mongodb_uri else "sqlite"
    common: dict[str, Any] = {"partitions_def": partitions_def, "group_name": GROUP,
                              "owners": OWNERS, "tags": {"domain": "solar-forecasting"},
                              "skippable": True}
    specs = [
        dg.AssetSpec(RAW, **common, kinds={"pandas", backend_kind}, description=(
            "The device's readings in the training window [period start - RETRAIN_DAYS, "
            "period start), typed, deduplicated on timestamp and sorted.")),
        dg.AssetSpec(FEATURES, **common, deps=[RAW], kinds={"pandas"}, description=(
            "Features of each reading and the target: power HORIZON_MINUTES later, matched by "
            "time. Sensors the device never sent in the window are left out.")),
        dg.AssetSpec(MODEL, **common, deps=[FEATURES], kinds={"scikitlearn"}, description=(
            "A model fitted on the earlier 80 % of the feature frame and scored on the later "
            "20 % against persistence; stored as a new immutable version.")),
        dg.AssetSpec(DECISION, **common, deps=[MODEL, FEATURES], kinds={"python"}, description=(
            "Whether the new version replaces the one in service: both scored on the new "
            "version's test window; promoted only per the MAE threshold policy, never for a "
            "backfill older than the model in service. With REQUIRE_BEAT_PERSISTENCE, when "
            "neither beats persistence in daylight the device is served by smart persistence "
            "(metadata serving_fallback = 1).")),
    ]
    checks = [
        partition_check(ENOUGH_ROWS_CHECK, RAW, "The window holds at least MIN_TRAINING_ROWS "
                         "clean readings free of data-quality flags, and they are at least "
                         "MIN_USABLE_SHARE of its readings (blocking).", partitions_def,
                         blocking=True),
        partition_check(FRESH_READINGS_CHECK, RAW, "The latest reading is at most one period "
                         "older than the cutoff: a silent tracker still trains, on stale data "
                         "(warning).", partitions_def),
        partition_check(POSITIVE_SKILL_CHECK, MODEL, "The model beats persistence (skill > 0) "
                         "on its test window; a model that does not is stored and judged, but "
                         "is not worth serving (warning).", partitions_def),
    ]

    @dg.multi_asset(
        name=RETRAIN_OP, specs=specs, check_specs=checks, can_subset=True,
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=settings.fleet_batch_size),
        description="Retrain each device of the run: one attempt per device x period partition.",
    )
    def retrain(context: dg.AssetExecutionContext, config: RetrainConfig, store: StoreResource,
                models: ModelStoreResource, policy: RetrainPolicy) -> Iterator[Any]:
        batch = Batch.of(context, settings, policy, config.days)
        if batch.skipped:
            context.log.info(f"{batch.skipped} device(s) already retrained by the failed run")
        failed = []
        run_log, registry, plain = store.open(), models.registry(), policy.plain()
        threads = threads_per_run(settings.max_concurrent_runs)
        for attempt in batch.attempts:
            result = steps.run_attempt(
                settings, run_log, registry, attempt, plain,
                featurise=bool(batch.selected - {RAW}), train=MODEL in batch.selected,
                decide=DECISION in batch.selected, threads=threads)
            yield from _device_events(result, batch, settings, policy)
            if not result.ok:
                failed.append(result)
                context.log.error(f"{attempt.partition_key}: {result.error}")
        if failed:
            raise TrainingFailed(description=batch.failure(failed))

    return [retrain]


def _device_events(result: steps.AttemptResult, batch: Batch, settings: Settings,
                   policy: RetrainPolicy) -> Iterator[Any]:
    """The Dagster events of one device's attempt: what it got through, nothing more."""
    attempt, key = result.attempt, result.attempt.partition_key
    window = result.window
    if RAW in batch.selected and window is not None:
        yield dg.AssetMaterialization(RAW, partition=key, metadata={
            "window_start": attempt.window_start.isoformat(),
            "window_end": attempt.cutoff.isoformat(), "days_used": attempt.days,
            "rows": len(window.frame), **window.report.as_metadata(),
            **(window.quality.as_metadata() if window.quality is not None else {})})
    if window is not None:  # the window's checks also run alone ("Execute check" in the UI)
        if ENOUGH_ROWS_CHECK in batch.checks:
            yield _check(RAW, ENOUGH_ROWS_CHECK, key, window.enough, dg.AssetCheckSeverity.ERROR,
                         None if window.enough else window.message,
                         {"rows": len(window.frame), "min_training_rows": policy.min_training_rows,
                          **(window.quality.as_metadata() if window.quality is not None else {}),
                          "min_usable_share": policy.min_usable_share},
                         blocking=True)
        if FRESH_READINGS_CHECK in batch.checks:
            yield _freshness_result(key, window.report.last_timestamp,
                                    *period_bounds(settings, attempt.period_key))
    if FEATURES in batch.selected and result.frame is not None:
        yield dg.AssetMaterialization(FEATURES, partition=key, metadata={
            "rows": len(result.frame.frame),
            "features": dg.MetadataValue.json(list(result.frame.features)),
            "feature_count": len(result.frame.features), "feature_set": policy.feature_set,
            "horizon_minutes": policy.horizon_minutes})
    if MODEL in batch.selected and result.stored is not None:
        yield dg.AssetMaterialization(MODEL, partition=key, metadata=_version_metadata(
            result.stored, result.candidate, policy))
        if POSITIVE_SKILL_CHECK in batch.checks:
            yield _skill_result(key, result.stored.meta["metrics"])
    if DECISION in batch.selected and result.outcome is not None:
        yield dg.AssetMaterialization(DECISION, partition=key, metadata=_decision_metadata(
            result.outcome, result.outcome.record["version"]))


def _check(asset: str, name: str, key: str, passed: bool, severity: dg.AssetCheckSeverity,
           description: str | None, metadata: dict[str, Any],
           blocking: bool = False) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(asset_key=dg.AssetKey(asset), check_name=name, passed=passed,
                                   severity=severity, description=description, metadata=metadata,
                                   blocking=blocking, partition=key)


def _version_metadata(stored: Any, candidate: Any, policy: RetrainPolicy) -> dict[str, Any]:
    meta = stored.meta
    return {
        "version": stored.version, "model_path": dg.MetadataValue.path(str(stored.model_path)),
        "sha256": stored.sha256, "size_bytes": int(meta["size_bytes"]),
        **_number_metadata(meta["metrics"]),
        "model_type": policy.model_type, "feature_set": policy.feature_set,
        "period": meta["period"],
        "feature_importance": _importance_table(candidate.model if candidate else None),
    }


def _freshness_result(key: str, last_reading: datetime | None, cutoff: datetime,
                      period_end: datetime) -> dg.AssetCheckEvaluation:
    allowed = period_end - cutoff
    age = None if last_reading is None else cutoff - last_reading
    fresh = age is not None and age <= allowed
    return _check(
        RAW, FRESH_READINGS_CHECK, key, fresh, dg.AssetCheckSeverity.WARN,
        None if fresh else (
            "no readings in the window" if last_reading is None
            else f"latest reading {last_reading.isoformat()} is older than one period before the cutoff"),
        {"latest_reading": last_reading.isoformat() if last_reading else "none",
         "age_hours": round(age.total_seconds() / 3600, 3) if age is not None else -1.0,
         "allowed_hours": allowed.total_seconds() / 3600},
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


def _skill_result(key: str, metrics: dict[str, Any]) -> dg.AssetCheckEvaluation:
    skill = metrics.get("skill")
    known = skill is not None and math.isfinite(skill)
    return _check(
        MODEL, POSITIVE_SKILL_CHECK, key, bool(known and skill > 0), dg.AssetCheckSeverity.WARN,
        None if skill and skill > 0 else (
            f"skill {skill} against persistence: the forecast does not beat "
            "'power stays what it is now' on this window"),
        {"skill": float(skill) if known else 0.0, "mae": float(metrics["mae"]),
         "persistence_mae": float(metrics["persistence_mae"])},
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
        "cold_start": int(bool(outcome.record.get("cold_start"))),
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
