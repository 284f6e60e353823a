"""Prediction intervals: P10 / P50 / P90 around every forecast, conformal by sky regime.

Why conformal rather than quantile models: one more fit per quantile would triple training
time, and quantile estimators on a 30-day window are badly calibrated where data are thin
(high variability); split-conformal quantiles of the test window's own residuals are
calibrated by construction on exchangeable data and cost nothing to serve.

Residuals scale with the sun, so they are normalised by the clear-sky power at the forecast
instant (floored at a share of capacity, so nights get a narrow band, not a zero one), and
taken separately per regime: night, and three levels of the last hour's clear-sky-index
variability (steady sky, broken, very broken), split at the calibration rows' tertiles.
P50 is the point forecast itself: the promotion decision judges it, as before. The band is
fitted on the first half of the test window and its coverage measured on the second half
(what the run record reports), then refitted on the whole test window for serving.

An interval model is plain JSON (floats and lists), kept in the version's meta and copied into
the pointer, so serving needs no extra read and a fallback pointer can carry the band of
smart persistence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from solar_ml_pipeline.forecasting.features import DAYLIGHT, TARGET

LOWER_Q, UPPER_Q = 0.1, 0.9
VARIABILITY = "clear_sky_index_std_1h"
CLEAR_SKY_AHEAD = "clear_sky_power_ahead"
FLOOR_SHARE = 0.02  # of capacity: the smallest scale a residual is measured in
MIN_REGIME_ROWS = 30  # fewer calibration rows in a regime: it borrows the pooled quantiles
METHOD = "conformal_by_regime"


def _scale(frame: pd.DataFrame, floor_w: float) -> np.ndarray:
    if CLEAR_SKY_AHEAD in frame.columns:
        return np.maximum(frame[CLEAR_SKY_AHEAD].to_numpy(dtype="float64"), floor_w)
    return np.ones(len(frame))


def _regimes(frame: pd.DataFrame, edges: list[float], floor_w: float) -> np.ndarray:
    """0 night (clear sky below the floor), then 1..len(edges)+1 by variability."""
    if CLEAR_SKY_AHEAD not in frame.columns:
        return np.ones(len(frame), dtype=int)
    night = frame[CLEAR_SKY_AHEAD].to_numpy(dtype="float64") < floor_w
    if VARIABILITY in frame.columns and edges:
        variability = np.nan_to_num(frame[VARIABILITY].to_numpy(dtype="float64"), nan=0.0)
        level = 1 + np.searchsorted(np.asarray(edges), variability, side="right")
    else:
        level = np.ones(len(frame), dtype=int)
    return np.where(night, 0, level)


def _conformal(values: np.ndarray, q: float) -> float:
    """The split-conformal quantile: the ceil((n + 1) q)-th smallest of n residuals."""
    n = len(values)
    rank = min(max(math.ceil((n + 1) * q), 1), n)
    return float(np.partition(values, rank - 1)[rank - 1])


def fit_intervals(frame: pd.DataFrame, point: np.ndarray, capacity_w: float | None) -> dict[str, Any]:
    """The interval model of a point forecast `point` of `frame` (rows with a target)."""
    floor_w = FLOOR_SHARE * capacity_w if capacity_w else 1.0
    actual = frame[TARGET].to_numpy(dtype="float64")
    residual = (actual - np.asarray(point, dtype="float64")) / _scale(frame, floor_w)
    edges: list[float] = []
    if VARIABILITY in frame.columns and CLEAR_SKY_AHEAD in frame.columns:
        lit = frame[CLEAR_SKY_AHEAD].to_numpy(dtype="float64") >= floor_w
        variability = np.nan_to_num(frame[VARIABILITY].to_numpy(dtype="float64")[lit], nan=0.0)
        if len(variability) >= 3 * MIN_REGIME_ROWS:
            edges = [float(np.quantile(variability, 1 / 3)), float(np.quantile(variability, 2 / 3))]
    regimes = _regimes(frame, edges, floor_w)
    pooled = (_conformal(residual, LOWER_Q), _conformal(residual, UPPER_Q)) if len(residual) \
        else (0.0, 0.0)
    lower, upper = [], []
    for regime in range(len(edges) + 2):
        part = residual[regimes == regime]
        if len(part) >= MIN_REGIME_ROWS:
            lower.append(_conformal(part, LOWER_Q))
            upper.append(_conformal(part, UPPER_Q))
        else:
            lower.append(pooled[0])
            upper.append(pooled[1])
    return {"method": METHOD, "quantiles": [LOWER_Q, 0.5, UPPER_Q], "floor_w": floor_w,
            "edges": edges, "lower": lower, "upper": upper, "calibration_rows": len(residual)}


def band(intervals: Mapping[str, Any] | None, frame: pd.DataFrame,
         point: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(P10, P50, P90) for each row of `frame` around `point`; None without an interval
    model (versions trained before intervals existed). Never below zero (unless P50 is), and
    never a band that leaves out its own P50."""
    if not intervals:
        return None
    point = np.asarray(point, dtype="float64")
    floor_w = float(intervals["floor_w"])
    regimes = _regimes(frame, list(intervals["edges"]), floor_w)
    regimes = np.clip(regimes, 0, len(intervals["lower"]) - 1)
    scale = _scale(frame, floor_w)
    lower = point + np.asarray(intervals["lower"])[regimes] * scale
    upper = point + np.asarray(intervals["upper"])[regimes] * scale
    # P10 <= P50 <= P90 always, and no bound below zero power unless the point forecast
    # itself is (a model can say -0.1 W at night); a biased regime (both quantiles on one
    # side of zero) keeps the point forecast at one edge of its band.
    return np.minimum(np.maximum(lower, 0.0), point), point, np.maximum(upper, point)


def coverage(frame: pd.DataFrame, p10: np.ndarray, p90: np.ndarray) -> tuple[float | None, float | None]:
    """Share of daylight targets inside [P10, P90], and the mean width there (W); None
    without daylight rows (or a frame built without a site, which cannot tell)."""
    if DAYLIGHT not in frame.columns:
        return None, None
    actual = frame[TARGET].to_numpy(dtype="float64")
    day = frame[DAYLIGHT].to_numpy(dtype=bool)
    if not day.any():
        return None, None
    inside = (actual[day] >= p10[day]) & (actual[day] <= p90[day])
    return float(inside.mean()), float((p90[day] - p10[day]).mean())


def calibrated(test: pd.DataFrame, point: np.ndarray, capacity_w: float | None
               ) -> tuple[dict[str, Any], float | None, float | None]:
    """Fit on the test window's first half, measure daylight coverage and width on its second
    half, then refit on the whole window: (interval model, coverage, mean width)."""
    half = len(test) // 2
    point = np.asarray(point, dtype="float64")
    early, late = test.iloc[:half], test.iloc[half:]
    held_out = fit_intervals(early, point[:half], capacity_w)
    measured = band(held_out, late, point[half:])
    cover, width = coverage(late, measured[0], measured[2]) if measured else (None, None)
    return fit_intervals(test, point, capacity_w), cover, width
