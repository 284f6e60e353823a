"""P10 / P50 / P90: conformal bands by sky regime, calibrated on held-out rows, carried from
training to the pointer, `predict` and the backtest."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from solar_ml_pipeline.forecasting.backtest import backtest
from solar_ml_pipeline.forecasting.features import DAYLIGHT, TARGET
from solar_ml_pipeline.forecasting.intervals import band, calibrated, coverage, fit_intervals
from solar_ml_pipeline.forecasting.prediction import predict_latest
from solar_ml_pipeline.model_store.serving import ModelServer
from solar_ml_pipeline_tests.forecasting.test_backtest import (
    DAY,
    DEVICE,
    FIRST_CUTOFF,
    replay_retrains,
)


def _frame(n: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows whose error grows with the sky's variability, as real ones do."""
    rng = np.random.default_rng(seed)
    clear = rng.uniform(50, 300, n)
    variability = rng.uniform(0, 0.4, n)
    point = clear * 0.7
    noise = rng.normal(0, 1, n) * clear * (0.02 + variability)
    return pd.DataFrame({
        "clear_sky_power_ahead": clear, "clear_sky_index_std_1h": variability,
        TARGET: point + noise, DAYLIGHT: True}), point


def test_a_band_fitted_on_earlier_rows_covers_80_percent_of_later_ones():
    frame, point = _frame(4000)
    fitted = fit_intervals(frame.iloc[:2000], point[:2000], capacity_w=300)
    p10, p50, p90 = band(fitted, frame.iloc[2000:], point[2000:])
    cover, width = coverage(frame.iloc[2000:], p10, p90)
    assert cover == pytest.approx(0.80, abs=0.03)
    np.testing.assert_array_equal(p50, point[2000:])  # P50 is the point forecast, judged as before
    # by regime: steady skies get narrow bands, broken ones wide
    steady = frame.iloc[2000:]["clear_sky_index_std_1h"].to_numpy() < 0.1
    assert (p90 - p10)[steady].mean() < 0.5 * (p90 - p10)[~steady].mean()
    assert width > 0


def test_bands_never_go_below_zero_and_nights_are_narrow():
    frame, point = _frame(600)
    frame.loc[:99, "clear_sky_power_ahead"] = 0.0  # night: below the floor
    point[:100] = 0.0
    frame.loc[:99, TARGET] = 0.0
    fitted = fit_intervals(frame, point, capacity_w=300)
    p10, _, p90 = band(fitted, frame, point)
    assert (p10 >= 0).all()
    assert (p90[:100] - p10[:100]).max() <= 0.02 * 300 * 2


def test_the_held_out_coverage_is_what_calibrated_reports():
    frame, point = _frame(3000, seed=4)
    intervals, cover, width = calibrated(frame, point, capacity_w=300)
    assert cover == pytest.approx(0.80, abs=0.04) and width > 0
    assert intervals["calibration_rows"] == 3000  # refitted on the whole window to serve


def test_no_band_for_versions_trained_before_intervals():
    frame, point = _frame(10)
    assert band(None, frame, point) is None


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    return replay_retrains(tmp_path_factory.mktemp("intervals") / "home",
                           [FIRST_CUTOFF, FIRST_CUTOFF + DAY])


def test_a_retrain_records_coverage_and_width_and_the_pointer_carries_both_bands(replay):
    record = replay.records[-1]
    assert 0.5 < record["interval_coverage"] < 1.0 and record["interval_width"] > 0
    meta = replay.registry.read_meta(DEVICE, record["version"])
    assert set(meta["intervals"]) == {"model", "smart_persistence"}
    assert meta["metrics"]["interval_coverage"] == record["interval_coverage"]
    pointer = replay.registry.read_pointer(DEVICE)
    assert pointer["intervals"] == replay.registry.read_meta(DEVICE, pointer["version"])[
        "intervals"]


def test_predict_and_the_fallback_answer_with_p10_p50_p90(replay):
    now = FIRST_CUTOFF + DAY + timedelta(hours=20)  # daylight in Colombo, readings till then
    forecast = predict_latest(replay.settings, replay.store, ModelServer(replay.registry),
                              DEVICE, now=now)
    assert forecast["p10"] <= forecast["p50"] == forecast["predicted_power"] <= forecast["p90"]
    pointer = replay.registry.read_pointer(DEVICE)
    meta = replay.registry.read_meta(DEVICE, pointer["version"])
    with replay.registry.device_lock(DEVICE):
        replay.registry.set_fallback(DEVICE, reason="test",
                                     intervals={"smart_persistence":
                                                meta["intervals"]["smart_persistence"]})
    try:
        fallback = predict_latest(replay.settings, replay.store, ModelServer(replay.registry),
                                  DEVICE, now=now)
        assert fallback["serving"] == "smart_persistence"
        assert fallback["p10"] <= fallback["predicted_power"] <= fallback["p90"]
        assert fallback["p90"] > fallback["p10"]
    finally:
        replay.registry.rollback(DEVICE)


def test_backtest_rows_carry_the_band_that_served_and_the_summary_its_coverage(replay):
    result = backtest(replay.settings, replay.store, replay.registry, DEVICE,
                      FIRST_CUTOFF, FIRST_CUTOFF + 2 * DAY)
    rows = result.rows[result.rows["daylight"]]
    assert rows["p10"].notna().all() and (rows["p10"] <= rows["p90"]).all()
    assert 0.4 < result.summary["daylight_interval_coverage"] <= 1.0
    assert result.summary["daylight_interval_width"] > 0


def test_a_band_always_holds_its_own_p50_even_where_the_model_is_biased():
    frame, point = _frame(400, seed=2)
    frame[TARGET] = point - 40.0  # the model overforecasts every row: both quantiles < 0
    fitted = fit_intervals(frame, point, capacity_w=300)
    p10, p50, p90 = band(fitted, frame, point)
    assert (p10 <= p50).all() and (p50 <= p90).all()
    night = band(fitted, frame.iloc[:3], np.array([-0.1, 0.0, 5.0]))  # a model's -0.1 W
    assert (night[0] <= night[1]).all() and (night[1] <= night[2]).all()
    assert night[0][0] == -0.1 and (night[0][1:] >= 0).all()
