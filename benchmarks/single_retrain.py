"""Single retrain: the project's Dagster retrain of one partition against an original-style script.

Both sides run in this one process, on the same readings in the same store, alternately:

- project: `retrain_in_foreground(settings, request)`, exactly what `solar-ml retrain` does
  (builds the definitions, opens the DAGSTER_HOME instance, runs the four assets with the
  in-process executor, stores a version, judges promotion against the champion, logs the run);
- original-style: the original worker's steps as a plain script: read the window from the
  store into pandas, the 15 original features with a row-offset target (`shift(-15)`), the
  original's RandomForestRegressor(100, max_depth=15, n_jobs=-1) (scikit-learn's default
  HistGradientBoostingRegressor for the boosting rows), a time-ordered 80/20 split,
  MAE/RMSE/R2, `joblib.dump` of the model, its meta JSON and pointer, and one run record in
  the same run log.

The process is warm (imports done, one retrain of each side first). Peak memory is the
growth of this process's resident set over the call (see bench_support.PeakRss), so C
allocations such as tree nodes count. `--profile` adds a cProfile breakdown of one project
retrain by stage.

    python benchmarks/single_retrain.py                       # 7 and 30 days, CONFIGS
    python benchmarks/single_retrain.py --days 7 --repeats 1  # quicker
    python benchmarks/single_retrain.py --configs random_forest:original --profile
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bench_support as bs
import dagster as dg
import joblib
import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from solar_ml_pipeline.forecasting import training
from solar_ml_pipeline.orchestration.definitions import build_definitions
from solar_ml_pipeline.orchestration.instance import dagster_yaml_text, ensure_dagster_home
from solar_ml_pipeline.orchestration.jobs import RETRAIN_JOB
from solar_ml_pipeline.orchestration.partitions import DEVICE_DIMENSION, partition_key
from solar_ml_pipeline.orchestration.retraining import (
    resolve_request,
    retrain_in_foreground,
    run_config_for,
    run_tags,
)
from solar_ml_pipeline.storage import open_store

DEVICE = "tracker01"
MODEL_TYPES = ("random_forest", "hist_gradient_boosting")
# (MODEL_TYPE, FEATURE_SET) pairs measured by default: the target's forest with the shipped
# feature set, the same forest on the original's 15 features (like for like: what is left
# between the two sides is orchestration), and the shipped default model.
CONFIGS = (("random_forest", "solar"), ("random_forest", "original"),
           ("hist_gradient_boosting", "solar"))
ORIGINAL_FEATURES = [
    "hour", "minute", "day_of_week",
    "servo_angle", "temperature", "humidity", "lux", "voltage", "current", "power", "fan_on",
    "power_diff", "lux_diff", "rolling_mean_power_5", "rolling_mean_lux_5",
]
HORIZON_ROWS = 15  # the original: target = power 15 rows later, whatever the gap


# -- the original-style side ------------------------------------------------------------------


def original_estimator(model_type: str) -> Any:
    """The original's forest; for gradient boosting (which the original never had) what an
    original-style script would write: scikit-learn's defaults. The project's own boosting
    differs (absolute-error loss, fitted without rows dark now and at the horizon, see
    training.py), so only the random_forest rows compare like with like."""
    if model_type == "random_forest":
        return RandomForestRegressor(n_estimators=100, max_depth=15, n_jobs=-1, random_state=0)
    if model_type == "hist_gradient_boosting":
        return HistGradientBoostingRegressor(random_state=0)
    raise ValueError(f"no original-style estimator for {model_type!r}")


def original_features(frame: pd.DataFrame) -> pd.DataFrame:
    """The original worker's feature code: calendar from the stored (UTC) timestamp, row diffs,
    5-row rolling means, target 15 rows ahead, then every incomplete row dropped."""
    df = frame.sort_values("timestamp").reset_index(drop=True)
    df["hour"] = df["timestamp"].dt.hour
    df["minute"] = df["timestamp"].dt.minute
    df["day_of_week"] = df["timestamp"].dt.dayofweek
    df["fan_on"] = df["fan_on"].astype(float)
    df["power_diff"] = df["power"].diff()
    df["lux_diff"] = df["lux"].diff()
    df["rolling_mean_power_5"] = df["power"].rolling(5).mean()
    df["rolling_mean_lux_5"] = df["lux"].rolling(5).mean()
    df["target_power"] = df["power"].shift(-HORIZON_ROWS)
    return df.dropna(subset=[*ORIGINAL_FEATURES, "target_power"])


@dataclass(frozen=True)
class BaselineResult:
    mae: float
    rows_used: int
    model_bytes: int


def original_style_retrain(store: Any, device_id: str, start: datetime, end: datetime,
                           model_dir: Path, model_type: str) -> BaselineResult:
    """One retrain as the original worker did it, minus Dagster."""
    frame = store.read_window(device_id, start, end)
    df = original_features(frame)
    cut = int(len(df) * 0.8)
    train, test = df.iloc[:cut], df.iloc[cut:]
    model = original_estimator(model_type)
    model.fit(train[ORIGINAL_FEATURES], train["target_power"])
    predicted = model.predict(test[ORIGINAL_FEATURES])
    actual = test["target_power"].to_numpy()
    metrics = {
        "mae": float(mean_absolute_error(actual, predicted)),
        "rmse": float(np.sqrt(mean_squared_error(actual, predicted))),
        "r2": float(r2_score(actual, predicted)),
        "train_samples": len(train), "test_samples": len(test),
    }
    trained_at = datetime.now(UTC)
    version = trained_at.strftime("%Y%m%d_%H%M%S_%f")
    versions = model_dir / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    model_path = versions / f"model_{version}.pkl"
    joblib.dump(model, model_path)
    meta = {"device_id": device_id, "version": version, "trained_at": trained_at.isoformat(),
            "days_used": (end - start).days, "rows_used": len(df), "features": ORIGINAL_FEATURES,
            "metrics": metrics, "model_type": model_type}
    (versions / f"model_{version}_meta.json").write_text(json.dumps(meta, indent=2))
    pointer_path = model_dir / "current_model.json"
    current = json.loads(pointer_path.read_text()) if pointer_path.exists() else None
    promoted = current is None or metrics["mae"] <= current["metrics"]["mae"] * 1.10
    if promoted:
        temp = pointer_path.with_suffix(".tmp")
        temp.write_text(json.dumps({"model_path": str(model_path), "version": version,
                                    "metrics": metrics}))
        temp.replace(pointer_path)
    store.upsert_run({
        "run_id": str(uuid.uuid4()), "device_id": device_id, "trained_at": trained_at,
        "days_used": meta["days_used"], "horizon_minutes": HORIZON_ROWS,
        "rows_used": len(df), **metrics, "features": ORIGINAL_FEATURES,
        "model_path": str(model_path), "status": "success", "error": None, "promoted": promoted,
    })
    return BaselineResult(metrics["mae"], len(df), model_path.stat().st_size)


# -- the project side ---------------------------------------------------------------------


class FitClock:
    """Wall time inside `training.train_and_evaluate` (the fit and its test scoring), which
    the model_version asset calls through the module: what is left of a project retrain
    is what orchestration, storage and promotion cost."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._original = training.train_and_evaluate

    def __enter__(self) -> FitClock:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return self._original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        training.train_and_evaluate = timed
        return self

    def __exit__(self, *exc: object) -> None:
        training.train_and_evaluate = self._original


def project_retrain(settings: Any, store: Any, days: int) -> dict[str, Any]:
    request = resolve_request(settings, DEVICE, bs.PERIOD, days)
    with FitClock() as fit:
        run_id = retrain_in_foreground(settings, request)
    record = store.get_run(run_id)
    if record is None or record.get("status") != "success":
        raise RuntimeError(f"project retrain failed: {record and record.get('error')}")
    return {**record, "fit_s": fit.seconds}


def project_retrain_in_memory(settings: Any, store: Any, days: int) -> dict[str, Any]:
    """What-if: the same job on an in-memory Dagster instance (nothing persisted, so no run
    history or UI): bounds what the instance's SQLite event log costs a retrain."""
    request = resolve_request(settings, DEVICE, bs.PERIOD, days)
    job = build_definitions(settings).resolve_job_def(RETRAIN_JOB)
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(DEVICE_DIMENSION, [DEVICE])
        result = job.execute_in_process(
            run_config=run_config_for(request), instance=instance,
            partition_key=partition_key(DEVICE, bs.PERIOD),
            tags=run_tags(request, "bench-in-memory"), raise_on_error=False)
    record = store.get_run(result.run_id)
    if record is None or record.get("status") != "success":
        raise RuntimeError(f"in-memory retrain failed: {record and record.get('error')}")
    return record


CONSOLIDATED_EVENT_LOG = """
event_log_storage:
  module: dagster._core.storage.event_log
  class: ConsolidatedSqliteEventLogStorage
  config:
    base_dir: {base_dir}
"""


def consolidated_settings(settings: Any) -> Any:
    """What-if: a second DAGSTER_HOME whose dagster.yaml (the project's, plus one block) keeps
    every run's events in one SQLite file instead of a new database per run."""
    home = settings.solar_ml_home / "dagster_home_consolidated"
    variant = settings.with_overrides(dagster_home=home)
    config = ensure_dagster_home(variant) / "dagster.yaml"
    config.write_text(dagster_yaml_text(variant, pooled_sqlite=False)
                      + CONSOLIDATED_EVENT_LOG.format(base_dir=home / "history" / "events"))
    return variant


# -- measuring ----------------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    cpu_seconds: float
    growth_mib: float
    mae: float
    rows: int
    fit_seconds: float | None = None


def measure(action: Any) -> Sample:
    cpu_before = time.process_time()
    with bs.PeakRss() as memory, bs.Stopwatch() as watch:
        result = action()
    cpu = time.process_time() - cpu_before
    mae = float(result["mae"] if isinstance(result, dict) else result.mae)
    rows = int(result["rows_used"] if isinstance(result, dict) else result.rows_used)
    fit = result.get("fit_s") if isinstance(result, dict) else None
    return Sample(watch.seconds, cpu, memory.growth_mib, mae, rows, fit)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def run_pair(settings: Any, store: Any, model_type: str, feature_set: str, days: int,
             baseline_dir: Path) -> tuple[Sample, Sample]:
    start = bs.CUTOFF - timedelta(days=days)
    project_settings = settings.with_overrides(model_type=model_type, feature_set=feature_set)
    project = measure(lambda: project_retrain(project_settings, store, days))
    baseline = measure(lambda: original_style_retrain(
        store, DEVICE, start, bs.CUTOFF, baseline_dir, model_type))
    return project, baseline


# -- profile ------------------------------------------------------------------------------

# Top-level stages of one project retrain, (almost) disjoint: cumulative seconds of these
# functions under cProfile. Event writes made from inside an asset body (context.log) are
# counted in both; they are a handful.
STAGES = (
    ("outside the run: definitions + instance", None),
    ("asset raw_readings (read window, clean, checks)", ("assets.py", "raw_readings")),
    ("asset feature_frame (build features)", ("assets.py", "feature_frame")),
    ("asset model_version (fit + evaluate)", ("assets.py", "model_version")),
    ("asset promotion_decision (champion load + score, pointer, run log)",
     ("assets.py", "promotion_decision")),
    ("IO manager: store the version (pickle, sha256, fsync)", ("io_managers.py", "handle_output")),
    ("IO manager: hand the version to promotion (sha256 streamed, no unpickle)",
     ("io_managers.py", "load_input")),
    ("Dagster event log writes", ("event_methods.py", "handle_new_event")),
)
DETAILS = (
    ("of which estimator fit + test scoring", ("training.py", "train_and_evaluate")),
    ("of which champion unpickle (registry.load_model)", ("versions.py", "load_model")),
    ("of which champion scoring (training.score_on)", ("training.py", "score_on")),
    ("of which the run's new event-log database (alembic init)", ("sqlite_event_log.py", "_initdb")),
    ("of which SQLAlchemy engines created (one per event write)", ("create.py", "create_engine")),
    ("of which sqlite commits", ("~", "<method 'commit' of 'sqlite3.Connection' objects>")),
)


def profile_stages(settings: Any, store: Any, model_type: str, feature_set: str,
                   days: int) -> tuple[str, float]:
    """cProfile one project retrain; what each stage costs and what Dagster adds around them."""
    profiler = cProfile.Profile()
    project_settings = settings.with_overrides(model_type=model_type, feature_set=feature_set)
    with bs.Stopwatch() as watch:
        profiler.runcall(project_retrain, project_settings, store, days)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    cumulative: dict[tuple[str, str], tuple[float, int]] = {}
    for (filename, _, function), (_, calls, _, cum, _) in stats.items():
        key = (Path(filename).name, function)
        seconds, count = cumulative.get(key, (0.0, 0))
        cumulative[key] = (seconds + cum, count + calls)
    total = cumulative[("retraining.py", "retrain_in_foreground")][0]
    in_run = cumulative[("job_definition.py", "execute_in_process")][0]

    def row(label: str, seconds: float, calls: int | str = "") -> list[Any]:
        return [label, calls, f"{seconds:.3f}", f"{100 * seconds / total:.1f}%"]

    rows = [row(STAGES[0][0], total - in_run)]
    accounted = total - in_run
    for label, key in STAGES[1:]:
        seconds, calls = cumulative.get(key, (0.0, 0))
        rows.append(row(label, seconds, calls))
        accounted += seconds
    rows.append(row("everything else Dagster does (plan, steps, type checks, run status)",
                    max(total - accounted, 0.0)))
    rows.append(row("total (retrain_in_foreground)", total, 1))
    for label, key in DETAILS:
        seconds, calls = cumulative.get(key, (0.0, 0))
        rows.append(row(label, seconds, calls))
    return bs.markdown_table(["stage", "calls", "seconds", "share"], rows), watch.seconds


# -- main ---------------------------------------------------------------------------------


def parse_config(text: str, parser: argparse.ArgumentParser) -> tuple[str, str]:
    from solar_ml_pipeline.config import FEATURE_SETS

    model_type, _, feature_set = text.partition(":")
    if model_type not in MODEL_TYPES or feature_set not in FEATURE_SETS:
        parser.error(f"--configs {text!r}: expected MODEL_TYPE:FEATURE_SET with MODEL_TYPE in "
                     f"{', '.join(MODEL_TYPES)} and FEATURE_SET in {', '.join(FEATURE_SETS)}")
    return model_type, feature_set


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, nargs="+", default=[7, 30])
    parser.add_argument("--configs", nargs="+", default=[f"{m}:{f}" for m, f in CONFIGS],
                        help="MODEL_TYPE:FEATURE_SET pairs to measure (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="measured pairs per configuration (medians reported)")
    parser.add_argument("--profile", action="store_true",
                        help="add a cProfile breakdown of one project retrain (first model, "
                             "shortest window)")
    args = parser.parse_args(argv)
    configs = [parse_config(text, parser) for text in args.configs]
    bs.quiet_warnings()

    print(bs.header("Single retrain: project (Dagster, in-process executor) vs original-style script"))
    with bs.bench_home("single"):
        settings = bs.settings_here()
        store = open_store(settings)
        rows_written = bs.seed_readings(store, DEVICE, max(args.days), seed=1)
        baseline_dir = settings.solar_ml_home / "original_models" / DEVICE
        print(f"\n{rows_written} simulated 1-minute readings of {DEVICE} ending "
              f"{bs.CUTOFF:%Y-%m-%d %H:%M} UTC; period {bs.PERIOD}; {args.repeats} measured "
              "pair(s) per row (project then original), after one warm-up pair per model.\n")
        for model_type, feature_set in configs:
            run_pair(settings, store, model_type, feature_set, min(args.days), baseline_dir)

        rows = []
        ratios: dict[tuple[str, str, int], float] = {}
        for model_type, feature_set in configs:
            for days in args.days:
                pairs = [run_pair(settings, store, model_type, feature_set, days, baseline_dir)
                         for _ in range(args.repeats)]
                project = [p for p, _ in pairs]
                baseline = [b for _, b in pairs]
                ratio = median([p.seconds / b.seconds for p, b in pairs])
                ratios[(model_type, feature_set, days)] = ratio
                fit = median([s.fit_seconds or 0.0 for s in project])
                rest = median([s.seconds - (s.fit_seconds or 0.0) for s in project])
                rows.append([
                    model_type, feature_set, days, project[0].rows, baseline[0].rows,
                    f"{median([s.seconds for s in project]):.2f}",
                    f"{median([s.seconds for s in baseline]):.2f}",
                    f"{ratio:.2f}x",
                    f"{median([p.cpu_seconds / b.cpu_seconds for p, b in pairs]):.2f}x",
                    f"{fit:.2f}", f"{rest:.2f}",
                    f"{median([s.growth_mib for s in project]):.0f}",
                    f"{median([s.growth_mib for s in baseline]):.0f}",
                    f"{project[0].mae:.2f}", f"{baseline[0].mae:.2f}",
                ])
        print(bs.markdown_table(
            ["model", "project features", "days", "rows project", "rows original",
             "wall s project", "wall s original", "wall ratio", "CPU ratio",
             "fit s project", "rest s project", "peak MiB project", "peak MiB original",
             "MAE W project", "MAE W original"], rows))
        print("\nWall s: median over the pairs; ratios: median of the per-pair project/original "
              "ratios (CPU = this process's CPU time, all threads, which load from other "
              "processes disturbs less than wall time). Fit s: the project's fit and test "
              "scoring (training.train_and_evaluate); rest s: everything else in the project's "
              "retrain (Dagster, reading, features, storing, promotion, run log). The original "
              "side always uses its 15 features. Peak MiB: growth of this process's resident "
              "memory during the call. MAE on each side's own later-20 % test rows (project: "
              "target matched by time; original: 15 rows later).")
        if args.profile:
            model_type, feature_set = configs[0]
            days = min(args.days)
            table, seconds = profile_stages(settings, store, model_type, feature_set, days)
            print(f"\nWhere the project's time goes: one {model_type} ({feature_set} features) "
                  f"retrain of {days} days under cProfile ({seconds:.2f} s with profiling).\n")
            print(table)
            start = bs.CUTOFF - timedelta(days=days)
            variant = settings.with_overrides(model_type=model_type, feature_set=feature_set)
            consolidated = consolidated_settings(variant)
            project_retrain(consolidated, store, days)  # warm-up: creates its databases
            what_if = [
                ("project, DAGSTER_HOME instance (as shipped)",
                 measure(lambda: project_retrain(variant, store, days))),
                ("project, one consolidated SQLite event log (what-if)",
                 measure(lambda: project_retrain(consolidated, store, days))),
                ("project, in-memory Dagster instance (what-if)",
                 measure(lambda: project_retrain_in_memory(variant, store, days))),
                ("original-style script", measure(lambda: original_style_retrain(
                    store, DEVICE, start, bs.CUTOFF, baseline_dir, model_type))),
            ]
            print(f"\nWhat the persisted event log costs: one run each, {model_type}, {days} days "
                  "(what-ifs change only this benchmark's temporary Dagster instance).\n")
            print(bs.markdown_table(["variant", "wall s", "CPU s"],
                                    [[name, f"{s.seconds:.2f}", f"{s.cpu_seconds:.2f}"]
                                     for name, s in what_if]))
        store.close()
    summary = ", ".join(f"{model}/{features} {days}d {ratio:.2f}x"
                        for (model, features, days), ratio in ratios.items())
    target = [r for (model, _, _), r in ratios.items() if model == "random_forest"]
    verdict = ("" if not target else
               f" (target <= 1.10 with random_forest: {'met' if max(target) <= 1.10 else 'NOT met'})")
    print("\n" + bs.ratio_line("single_retrain", f"project/original wall time {summary}{verdict}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
