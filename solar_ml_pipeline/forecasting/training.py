"""Fitting a forecaster on a feature frame and scoring it honestly against persistence.

The split is by time (earlier 80 % train, later 20 % test, as the original system did), so the
test window is the future of the training data. Persistence ("power stays what it is now")
is scored on the same test rows; skill = 1 - MAE_model / MAE_persistence.

Skill when persistence is perfect (MAE_persistence == 0, e.g. constant power): 0.0 if the
model is perfect too, else NaN: "how much better than a perfect forecast" has no answer, and
NaN keeps a made-up number out of plots and gates (the assets drop non-finite metadata).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import RegressorMixin
from sklearn.ensemble import (
    ExtraTreesRegressor,
    HistGradientBoostingRegressor,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from solar_ml_pipeline.config import MODEL_TYPES
from solar_ml_pipeline.forecasting.features import DAYLIGHT, SMART_PERSISTENCE, TARGET, FeatureFrame
from solar_ml_pipeline.forecasting.intervals import calibrated
from solar_ml_pipeline.storage.base import SITE_FIELDS

TRAIN_FRACTION = 0.8
MIN_ROWS_TO_SPLIT = 10

# What the estimator learns. "power": power at t + horizon. RESIDUAL: that power minus smart
# persistence (the clear-sky index stays), added back at prediction, so the model only learns
# how the weather departs from "as cloudy as now": better for every model type on real data
# (benchmarks/RESULTS.md). Each feature set's default is in DEFAULT_TARGETS.
RESIDUAL = "smart_persistence_residual"
TARGETS = ("power", RESIDUAL)
DEFAULT_TARGETS = {"original": "power", "solar": RESIDUAL}


class InsufficientData(ValueError):
    """Too few rows with a target to train and test; the message says how many and the fix."""


class FeaturesUnavailable(ValueError):
    """A model cannot be applied to a frame: features it was trained on are missing, or the
    frame's target is for another horizon."""


def _imputed(estimator: RegressorMixin, scale: bool = False) -> Pipeline:
    """Median imputation (learned on the training rows only) in front of an estimator that
    does not take NaN; empty columns are kept (as 0) so importances line up with features."""
    imputer = SimpleImputer(strategy="median", keep_empty_features=True)
    steps: list[Any] = [imputer, StandardScaler(), estimator] if scale else [imputer, estimator]
    return make_pipeline(*steps)


def make_estimator(model_type: str, *, n_jobs: int = -1,
                   params: Mapping[str, Any] | None = None) -> RegressorMixin:
    """A fresh, NaN-safe estimator for MODEL_TYPE; `params` override the final step's settings.

    random_forest is the original system's RandomForestRegressor(n_estimators=100,
    max_depth=15, n_jobs=-1) (random_state fixed so reruns reproduce); hist_gradient_boosting
    fits the absolute error; ridge is a fast linear baseline on scaled features.
    """
    overrides = dict(params or {})
    if model_type == "random_forest":
        settings = {"n_estimators": 100, "max_depth": 15, "n_jobs": n_jobs, "random_state": 0}
        return _imputed(RandomForestRegressor(**{**settings, **overrides}))
    if model_type == "extra_trees":
        settings = {"n_estimators": 100, "max_depth": 15, "n_jobs": n_jobs, "random_state": 0}
        return _imputed(ExtraTreesRegressor(**{**settings, **overrides}))
    if model_type == "hist_gradient_boosting":
        # Handles NaN natively: a missing value is a branch of its own, not a median.
        # Absolute-error loss: every gate and promotion judges MAE, and with clouds coming
        # and going the conditional mean (squared loss) sits between "sunny" and "cloudy",
        # wrong both ways; the median is not (daylight skill +11.7 % -> +22.4 % on real
        # data, benchmarks/RESULTS.md).
        settings = {"random_state": 0, "loss": "absolute_error"}
        return HistGradientBoostingRegressor(**{**settings, **overrides})
    if model_type == "ridge":
        return _imputed(Ridge(**{"alpha": 1.0, **overrides}), scale=True)
    raise ValueError(f"unknown model type {model_type!r}: expected one of {', '.join(MODEL_TYPES)}")


def _missing_features(features: list[str], frame: pd.DataFrame) -> list[str]:
    return [name for name in features if name not in frame.columns]


# A forecast of a few rows finishes before OpenMP's threads wake (PASSIVE waiting, see
# the package): one thread makes a one-row gradient-boosting predict 3x faster (2.6 -> 0.8 ms).
FEW_ROWS = 256
_THREADPOOLS: list[Any] = []


def _few_rows_one_thread(rows: int) -> Any:
    if rows > FEW_ROWS:
        return nullcontext()
    if not _THREADPOOLS:  # finding the loaded thread pools once costs milliseconds
        from threadpoolctl import ThreadpoolController

        _THREADPOOLS.append(ThreadpoolController())
    return _THREADPOOLS[0].limit(limits=1, user_api="openmp")


@dataclass
class ForecastModel:
    """A fitted estimator with what it takes to use it: its features, horizon and the time
    zone its calendar features were computed in (build prediction frames the same way).

    Pickled as a version file by class path: after a move, map the old path in
    `model_store.serialization.MOVED_MODULES` so stored versions keep loading.
    """

    estimator: Any
    features: list[str]
    horizon_minutes: int
    model_type: str
    feature_set: str
    trained_at: datetime
    timezone: str | None = None
    # The site the features were computed for (SITE_FIELDS); serving must build the frame
    # for the same site. None for models trained without one.
    site: dict[str, Any] | None = None
    # What the estimator learnt (TARGETS); versions pickled before this field read "power".
    target: str = "power"

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Forecast power `horizon_minutes` after each row of a frame from build_feature_frame."""
        needed = [*self.features, *([SMART_PERSISTENCE] if self.target == RESIDUAL else [])]
        missing = _missing_features(list(dict.fromkeys(needed)), frame)
        if missing:
            raise FeaturesUnavailable(
                f"the model needs features missing from this frame: {', '.join(missing)}; "
                f"build the frame from readings that include those sensors"
            )
        with _few_rows_one_thread(len(frame)):
            predictions = np.asarray(
                self.estimator.predict(frame[self.features].astype("float64")), dtype="float64")
        if self.target == RESIDUAL:
            predictions = predictions + frame[SMART_PERSISTENCE].to_numpy(dtype="float64")
        return predictions

    def feature_importances(self) -> list[tuple[str, float]]:
        """(feature, importance) pairs, largest first; empty for estimators without them."""
        final = self.estimator[-1] if isinstance(self.estimator, Pipeline) else self.estimator
        values = getattr(final, "feature_importances_", None)
        if values is None and hasattr(final, "coef_"):
            values = np.abs(np.ravel(final.coef_))
        if values is None or len(values) != len(self.features):
            return []
        pairs = [(name, float(value)) for name, value in zip(self.features, values, strict=True)]
        return sorted(pairs, key=lambda pair: pair[1], reverse=True)


@dataclass(frozen=True)
class Evaluation:
    mae: float
    rmse: float
    r2: float
    persistence_mae: float
    persistence_rmse: float
    skill: float
    train_samples: int
    test_samples: int
    rows_used: int
    # Beyond the original metrics; None when unknown. Smart persistence and daylight need
    # the frame's reference columns (a frame built with a site), see features.py.
    rmse_skill: float | None = None
    smart_persistence_mae: float | None = None
    smart_persistence_rmse: float | None = None
    skill_smart: float | None = None
    rmse_skill_smart: float | None = None
    daylight_samples: int | None = None
    daylight_mae: float | None = None
    daylight_rmse: float | None = None
    daylight_persistence_mae: float | None = None
    daylight_persistence_rmse: float | None = None
    daylight_skill: float | None = None
    daylight_rmse_skill: float | None = None
    daylight_smart_persistence_mae: float | None = None
    daylight_skill_smart: float | None = None
    # P10-P90 band (intervals.py): held-out daylight coverage and mean width on the test
    # window, and the interval models of the forecast and of smart persistence (JSON).
    interval_coverage: float | None = None
    interval_width: float | None = None
    intervals: dict[str, Any] | None = None

    def as_metrics(self) -> dict[str, float | int]:
        metrics: dict[str, float | int] = {
            "mae": float(self.mae),
            "rmse": float(self.rmse),
            "r2": float(self.r2),
            "persistence_mae": float(self.persistence_mae),
            "persistence_rmse": float(self.persistence_rmse),
            "skill": float(self.skill),
            "train_samples": int(self.train_samples),
            "test_samples": int(self.test_samples),
            "rows_used": int(self.rows_used),
        }
        for name in _OPTIONAL_METRICS:
            value = getattr(self, name)
            if value is not None:
                metrics[name] = int(value) if name == "daylight_samples" else float(value)
        return metrics


_OPTIONAL_METRICS = (
    "rmse_skill", "smart_persistence_mae", "smart_persistence_rmse", "skill_smart",
    "rmse_skill_smart", "daylight_samples", "daylight_mae", "daylight_rmse",
    "daylight_persistence_mae", "daylight_persistence_rmse", "daylight_skill",
    "daylight_rmse_skill", "daylight_smart_persistence_mae", "daylight_skill_smart",
    "interval_coverage", "interval_width",
)


def site_record(site: Any) -> dict[str, Any] | None:
    """The site's SITE_FIELDS as plain values (kept in the pickle and the meta file)."""
    if site is None:
        return None
    return {name: getattr(site, name, None) for name in SITE_FIELDS}


def skill_score(mae: float, persistence_mae: float) -> float:
    """1 - mae / persistence_mae; see the module docstring for a perfect persistence."""
    if persistence_mae > 0:
        return 1.0 - mae / persistence_mae
    return 0.0 if mae == 0 else math.nan


def split_time_ordered(frame: pd.DataFrame,
                       train_fraction: float = TRAIN_FRACTION) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Earlier `train_fraction` of the rows (by timestamp) to train, the rest to test."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction={train_fraction!r} is invalid: expected 0 < f < 1")
    ordered = frame.sort_values("timestamp", kind="mergesort").reset_index(drop=True)
    cut = int(len(ordered) * train_fraction)
    train, test = ordered.iloc[:cut], ordered.iloc[cut:]
    if train.empty or test.empty:
        raise InsufficientData(
            f"not enough rows to split into train and test: {len(ordered)} rows with a target; "
            f"use a longer window (RETRAIN_DAYS) or check the device's readings"
        )
    return train, test


def _target_values(frame: pd.DataFrame) -> np.ndarray:
    if TARGET not in frame.columns:
        raise ValueError(f"the frame has no {TARGET} column: build it with with_target=True")
    return frame[TARGET].to_numpy(dtype="float64")


def score_on(model: ForecastModel, test_frame: pd.DataFrame, *,
             horizon_minutes: int | None = None) -> float:
    """MAE of any model (e.g. the champion) on a test frame (e.g. the challenger's).

    Pass the frame's `horizon_minutes` to refuse a model trained for another horizon: its
    MAE against this target would mean nothing.
    """
    if horizon_minutes is not None and model.horizon_minutes != horizon_minutes:
        raise FeaturesUnavailable(
            f"the model forecasts {model.horizon_minutes} min ahead but the frame's target is "
            f"{horizon_minutes} min ahead; compare models of the same HORIZON_MINUTES"
        )
    missing = _missing_features(model.features, test_frame)
    if missing:
        raise FeaturesUnavailable(
            f"cannot score the model on this window: its features {', '.join(missing)} are "
            f"not available here (a sensor missing from the window)"
        )
    if test_frame.empty:
        raise InsufficientData("cannot score a model on an empty test window")
    return float(mean_absolute_error(_target_values(test_frame), model.predict(test_frame)))


def _rows_to_fit(train: pd.DataFrame, estimator: Any) -> pd.DataFrame:
    """The training rows the estimator learns from.

    An absolute-error fit breaks when more than half of the targets sit exactly on one value:
    with long nights (power 0 now and 15 minutes later) the median is that value, and
    HistGradientBoosting then predicts it everywhere (measured on simulated one-minute
    windows: constant 0). Rows dark now and dark at the horizon hold nothing to learn, so an
    absolute-error estimator is fitted without them, unless that would leave too few rows.
    """
    if getattr(estimator, "loss", None) != "absolute_error":
        return train
    dark = (train["power"].to_numpy() == 0) & (_target_values(train) == 0)
    lit = train[~dark]
    return lit if len(lit) >= MIN_ROWS_TO_SPLIT else train


def threads_per_run(max_concurrent_runs: int) -> int:
    """OpenMP threads one fit may use: this machine's cores shared among the runs that may
    fit at once. Boosting with more threads than free cores gets slower, not faster (a 7-day
    fit took 1.5 s with two threads and 0.85 s with one on two busy cores), and the run queue
    lets MAX_CONCURRENT_RUNS fits share the machine."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, max_concurrent_runs))


def train_and_evaluate(feature_frame: FeatureFrame, *, model_type: str, horizon_minutes: int,
                       feature_set: str, n_jobs: int = -1,
                       estimator_params: Mapping[str, Any] | None = None,
                       trained_at: datetime | None = None,
                       target: str | None = None,
                       threads: int | None = None) -> tuple[ForecastModel, Evaluation]:
    """Fit on the earlier 80 % of the frame, score the later 20 % against persistence.

    `target`: what the estimator learns (TARGETS); None takes the feature set's default.
    `threads`: cap on OpenMP threads while fitting and scoring (see threads_per_run); None
    leaves the libraries' default (all cores).
    """
    limit = nullcontext() if threads is None else threadpool_limits(threads, user_api="openmp")
    with limit:
        return _train_and_evaluate(feature_frame, model_type=model_type,
                                   horizon_minutes=horizon_minutes, feature_set=feature_set,
                                   n_jobs=n_jobs, estimator_params=estimator_params,
                                   trained_at=trained_at, target=target)


def _train_and_evaluate(feature_frame: FeatureFrame, *, model_type: str, horizon_minutes: int,
                        feature_set: str, n_jobs: int,
                        estimator_params: Mapping[str, Any] | None,
                        trained_at: datetime | None,
                        target: str | None) -> tuple[ForecastModel, Evaluation]:
    target = target or DEFAULT_TARGETS.get(feature_set, "power")
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}: expected one of {', '.join(TARGETS)}")
    if target == RESIDUAL and SMART_PERSISTENCE not in feature_frame.frame.columns:
        raise ValueError(f"target {RESIDUAL!r} needs the smart_persistence column: build the "
                         f"feature frame with the device's site")
    if feature_frame.horizon_minutes != horizon_minutes or feature_frame.feature_set != feature_set:
        raise ValueError(
            f"the feature frame was built for horizon {feature_frame.horizon_minutes} min and "
            f"feature set {feature_frame.feature_set!r}, not {horizon_minutes} min and "
            f"{feature_set!r}; rebuild it with the same settings"
        )
    frame = feature_frame.frame
    if len(frame) < MIN_ROWS_TO_SPLIT:
        raise InsufficientData(
            f"not enough rows to train: {len(frame)} readings have a target "
            f"{horizon_minutes} min later (need at least {MIN_ROWS_TO_SPLIT}); use a longer "
            f"window (RETRAIN_DAYS) or check the device's readings"
        )
    train, test = split_time_ordered(frame)
    # A feature with no value in the training rows carries nothing, and an all-NaN column
    # makes HistGradientBoosting fail (e.g. 15-minute lags of a 20-minute cadence).
    features = [name for name in feature_frame.features if train[name].notna().any()]
    estimator = make_estimator(model_type, n_jobs=n_jobs, params=estimator_params)
    fit = _rows_to_fit(train, estimator)
    learnt = _target_values(fit)
    if target == RESIDUAL:
        learnt = learnt - fit[SMART_PERSISTENCE].to_numpy(dtype="float64")
    estimator.fit(fit[features].astype("float64"), learnt)
    model = ForecastModel(
        estimator=estimator, features=features, horizon_minutes=horizon_minutes,
        model_type=model_type, feature_set=feature_set,
        trained_at=trained_at or datetime.now(UTC), timezone=feature_frame.timezone,
        site=site_record(feature_frame.site), target=target,
    )
    evaluation = evaluate_on_test(model, test, train_samples=len(train), rows_used=len(frame),
                                  capacity_w=getattr(feature_frame.site, "capacity_w", None))
    return model, evaluation


def evaluate_on_test(model: Any, test: pd.DataFrame, *, train_samples: int, rows_used: int,
                     capacity_w: float | None) -> Evaluation:
    """The Evaluation of any fitted model (own or fleet) on a device's test rows: MAE, RMSE,
    skill against persistence and smart persistence, daylight figures, P10-P90 bands."""
    actual = _target_values(test)
    predicted = model.predict(test)
    persistence = test["power"].to_numpy(dtype="float64")
    mae = float(mean_absolute_error(actual, predicted))
    persistence_mae = float(mean_absolute_error(actual, persistence))
    model_band, cover, width = calibrated(test, predicted, capacity_w)
    bands = {"model": model_band}
    if SMART_PERSISTENCE in test.columns:
        bands["smart_persistence"] = calibrated(
            test, test[SMART_PERSISTENCE].to_numpy(dtype="float64"), capacity_w)[0]
    return Evaluation(
        mae=mae,
        rmse=float(np.sqrt(mean_squared_error(actual, predicted))),
        r2=float(r2_score(actual, predicted)),
        persistence_mae=persistence_mae,
        persistence_rmse=float(np.sqrt(mean_squared_error(actual, persistence))),
        skill=skill_score(mae, persistence_mae),
        train_samples=train_samples,
        test_samples=len(test),
        rows_used=rows_used,
        **baseline_metrics(test, predicted),
        interval_coverage=cover, interval_width=width, intervals=bands,
    )


def _mae_rmse(actual: np.ndarray, forecast: np.ndarray) -> tuple[float, float]:
    if len(actual) == 0:
        return math.nan, math.nan
    error = forecast - actual
    return float(np.mean(np.abs(error))), float(np.sqrt(np.mean(error * error)))


def baseline_metrics(test: pd.DataFrame, predicted: np.ndarray) -> dict[str, float | int]:
    """The Evaluation fields beyond the original ones, for forecasts `predicted` of `test`.

    Only for a frame built with a site (it has the reference columns): RMSE skill, smart
    persistence and daylight-only scores (rows whose forecast instant has the sun above 5
    degrees; at night every forecast is right and would flatter the averages). A frame
    without a site keeps the original metrics alone. Skills follow skill_score (NaN when the
    baseline is perfect and the model is not).
    """
    if SMART_PERSISTENCE not in test.columns and DAYLIGHT not in test.columns:
        return {}
    actual = _target_values(test)
    predicted = np.asarray(predicted, dtype="float64")
    persistence = test["power"].to_numpy(dtype="float64")
    model_mae, model_rmse = _mae_rmse(actual, predicted)
    persistence_mae, persistence_rmse = _mae_rmse(actual, persistence)
    metrics: dict[str, float | int] = {"rmse_skill": skill_score(model_rmse, persistence_rmse)}
    if SMART_PERSISTENCE in test.columns:
        smart = test[SMART_PERSISTENCE].to_numpy(dtype="float64")
        smart_mae, smart_rmse = _mae_rmse(actual, smart)
        metrics.update(
            smart_persistence_mae=smart_mae,
            smart_persistence_rmse=smart_rmse,
            skill_smart=skill_score(model_mae, smart_mae),
            rmse_skill_smart=skill_score(model_rmse, smart_rmse),
        )
    if DAYLIGHT in test.columns:
        day = test[DAYLIGHT].to_numpy(dtype=bool)
        day_mae, day_rmse = _mae_rmse(actual[day], predicted[day])
        day_persistence_mae, day_persistence_rmse = _mae_rmse(actual[day], persistence[day])
        metrics.update(
            daylight_samples=int(day.sum()),
            daylight_mae=day_mae,
            daylight_rmse=day_rmse,
            daylight_persistence_mae=day_persistence_mae,
            daylight_persistence_rmse=day_persistence_rmse,
            daylight_skill=skill_score(day_mae, day_persistence_mae),
            daylight_rmse_skill=skill_score(day_rmse, day_persistence_rmse),
        )
        if SMART_PERSISTENCE in test.columns:
            day_smart_mae, _ = _mae_rmse(actual[day], test[SMART_PERSISTENCE].to_numpy()[day])
            metrics.update(
                daylight_smart_persistence_mae=day_smart_mae,
                daylight_skill_smart=skill_score(day_mae, day_smart_mae),
            )
    return metrics


def daylight_score_on(model: ForecastModel, test_frame: pd.DataFrame, *,
                      horizon_minutes: int | None = None) -> float | None:
    """MAE of any model (e.g. the champion) on the daylight rows of a test frame: the rows
    the persistence gate judges, so it compares with the challenger's daylight figures.

    None when the frame has no daylight column (built without a site) or no daylight rows;
    refuses a model of another horizon or without its features, as score_on does.
    """
    if DAYLIGHT not in test_frame.columns:
        return None
    daylight = test_frame[test_frame[DAYLIGHT].to_numpy(dtype=bool)]
    if daylight.empty:
        return None
    return score_on(model, daylight, horizon_minutes=horizon_minutes)
