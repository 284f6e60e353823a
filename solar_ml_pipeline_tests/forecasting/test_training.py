from __future__ import annotations

import math
import pickle
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor

from solar_ml_pipeline.config import MODEL_TYPES
from solar_ml_pipeline.forecasting import training as training_module
from solar_ml_pipeline.forecasting.features import TARGET, build_feature_frame
from solar_ml_pipeline.forecasting.training import (
    FeaturesUnavailable,
    ForecastModel,
    InsufficientData,
    make_estimator,
    score_on,
    skill_score,
    split_time_ordered,
    threads_per_run,
    train_and_evaluate,
)
from solar_ml_pipeline_tests.forecasting.test_features import synthetic_readings

FAST = {
    "random_forest": {"n_estimators": 10},
    "extra_trees": {"n_estimators": 10},
    "hist_gradient_boosting": {"max_iter": 20},
    "ridge": {},
}


def _feature_frame(minutes=range(600), horizon_minutes=15, **options):
    return build_feature_frame(synthetic_readings(minutes, **options),
                               horizon_minutes=horizon_minutes, timezone="Asia/Colombo")


def _train(feature_frame, model_type="ridge", horizon_minutes=15):
    return train_and_evaluate(feature_frame, model_type=model_type,
                              horizon_minutes=horizon_minutes, feature_set="original",
                              n_jobs=1, estimator_params=FAST[model_type])


def test_split_trains_on_the_earlier_rows_and_tests_on_the_later_ones():
    frame = _feature_frame().frame
    train, test = split_time_ordered(frame.sample(frac=1.0, random_state=2))
    assert (len(train), len(test)) == (int(len(frame) * 0.8), len(frame) - int(len(frame) * 0.8))
    assert train["timestamp"].max() < test["timestamp"].min()
    assert train["timestamp"].is_monotonic_increasing and test["timestamp"].is_monotonic_increasing


def test_split_refuses_a_frame_too_small_for_a_test_set():
    frame = _feature_frame().frame.iloc[:1]
    with pytest.raises(InsufficientData, match="1 rows"):
        split_time_ordered(frame)
    with pytest.raises(ValueError, match="train_fraction"):
        split_time_ordered(frame, train_fraction=1.0)


def test_default_random_forest_is_the_original_one():
    estimator = make_estimator("random_forest")
    forest = estimator[-1]
    assert isinstance(forest, RandomForestRegressor)
    assert (forest.n_estimators, forest.max_depth, forest.n_jobs) == (100, 15, -1)


def test_unknown_model_type_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown model type 'svm': expected one of random_forest"):
        make_estimator("svm")


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_model_type_trains_on_readings_with_missing_values(model_type):
    readings = synthetic_readings(range(600))
    readings.loc[::4, ["temperature", "lux"]] = np.nan
    readings.loc[200:260, "humidity"] = np.nan  # longer than the fill limit: stays NaN
    built = build_feature_frame(readings, horizon_minutes=15, timezone="Asia/Colombo")
    assert built.frame[built.features].isna().any().any()
    model, evaluation = _train(built, model_type)
    assert model.model_type == model_type
    assert np.isfinite(model.predict(built.frame)).all()
    assert math.isfinite(evaluation.mae) and evaluation.mae >= 0


def test_metrics_count_the_rows_and_compare_against_persistence_on_the_test_rows():
    built = _feature_frame()
    model, evaluation = _train(built)
    _, test = split_time_ordered(built.frame)
    persistence_error = (test[TARGET] - test["power"]).abs().mean()
    assert evaluation.persistence_mae == pytest.approx(persistence_error)
    assert evaluation.skill == pytest.approx(1 - evaluation.mae / evaluation.persistence_mae)
    assert evaluation.train_samples + evaluation.test_samples == evaluation.rows_used
    assert evaluation.rows_used == len(built.frame)
    metrics = evaluation.as_metrics()
    assert set(metrics) == {"mae", "rmse", "r2", "persistence_mae", "persistence_rmse", "skill",
                            "train_samples", "test_samples", "rows_used"}
    assert all(type(metrics[name]) is float for name in ("mae", "rmse", "r2", "skill"))
    assert type(metrics["rows_used"]) is int


def test_skill_is_known_on_a_ramp_that_persistence_misses_and_a_linear_model_learns():
    readings = synthetic_readings(range(300))
    readings["power"] = 2.0 * np.arange(300)  # rises 2 W a minute: persistence is 30 W short
    built = build_feature_frame(readings, horizon_minutes=15, timezone="UTC",
                                tolerance=timedelta(0))  # exact matches: every target 30 W up
    _, evaluation = train_and_evaluate(built, model_type="ridge", horizon_minutes=15,
                                       feature_set="original", estimator_params={"alpha": 1e-6})
    assert evaluation.persistence_mae == pytest.approx(30.0)
    assert evaluation.mae < 0.5
    assert evaluation.skill == pytest.approx(1 - evaluation.mae / 30.0)
    assert evaluation.skill > 0.98


@pytest.mark.parametrize(("mae", "persistence_mae", "skill"), [
    (1.0, 2.0, 0.5), (3.0, 2.0, -0.5), (0.0, 0.0, 0.0),
], ids=["half-the-error", "worse-than-persistence", "both-perfect"])
def test_skill_score(mae, persistence_mae, skill):
    assert skill_score(mae, persistence_mae) == skill


def test_skill_is_undefined_when_persistence_is_perfect_and_the_model_is_not():
    assert math.isnan(skill_score(0.5, 0.0))


def test_too_few_rows_with_a_target_is_insufficient_data_with_a_clear_message():
    built = _feature_frame(minutes=range(20))  # 20 readings, 8 with a target 15 min later
    with pytest.raises(InsufficientData, match=r"not enough rows to train: 8 readings"):
        _train(built)


def test_a_frame_built_for_another_horizon_is_refused():
    built = _feature_frame(horizon_minutes=30)
    with pytest.raises(ValueError, match="built for horizon 30 min"):
        _train(built, horizon_minutes=15)


def test_a_model_pickles_and_predicts_the_same_after_unpickling():
    built = _feature_frame()
    model, _ = _train(built, "random_forest")
    restored = pickle.loads(pickle.dumps(model))
    assert isinstance(restored, ForecastModel)
    assert restored.features == model.features and restored.timezone == "Asia/Colombo"
    np.testing.assert_array_equal(restored.predict(built.frame), model.predict(built.frame))


def test_scoring_a_model_on_its_own_test_split_reproduces_its_mae():
    built = _feature_frame()
    model, evaluation = _train(built)
    _, test = split_time_ordered(built.frame)
    assert score_on(model, test, horizon_minutes=15) == pytest.approx(evaluation.mae)


def test_a_champion_is_scored_on_the_challengers_test_window():
    champion, _ = _train(_feature_frame(seed=1))
    challenger_frame = _feature_frame(minutes=range(600, 1200), seed=2)
    challenger, _ = _train(challenger_frame)
    _, test = split_time_ordered(challenger_frame.frame)
    expected = (champion.predict(test) - test[TARGET]).abs().mean()
    assert score_on(champion, test) == pytest.approx(expected)


def test_a_champion_needing_a_sensor_missing_from_the_window_cannot_be_scored():
    champion, _ = _train(_feature_frame())
    readings = synthetic_readings(range(600))
    readings["lux"] = np.nan
    without_lux = build_feature_frame(readings, horizon_minutes=15, timezone="Asia/Colombo")
    _, test = split_time_ordered(without_lux.frame)
    with pytest.raises(FeaturesUnavailable, match="lux, lux_diff, rolling_mean_lux_5"):
        score_on(champion, test)
    with pytest.raises(FeaturesUnavailable, match="lux"):
        champion.predict(test)


def test_a_champion_for_another_horizon_cannot_be_scored():
    champion, _ = _train(_feature_frame(horizon_minutes=30), horizon_minutes=30)
    _, test = split_time_ordered(_feature_frame().frame)
    with pytest.raises(FeaturesUnavailable, match="30 min ahead"):
        score_on(champion, test, horizon_minutes=15)


def test_feature_importances_name_every_feature_largest_first():
    built = _feature_frame()
    model, _ = _train(built, "random_forest")
    importances = model.feature_importances()
    assert sorted(name for name, _ in importances) == sorted(built.features)
    values = [value for _, value in importances]
    assert values == sorted(values, reverse=True)


def test_model_records_its_settings_and_training_time():
    trained_at = datetime(2026, 2, 24, 13, 0, tzinfo=UTC)
    built = _feature_frame()
    model, _ = train_and_evaluate(built, model_type="ridge", horizon_minutes=15,
                                  feature_set="original", trained_at=trained_at)
    assert (model.model_type, model.feature_set, model.horizon_minutes) == (
        "ridge", "original", 15)
    assert model.trained_at == trained_at
    assert model.features == built.features



# -- baselines and daylight metrics (issue 8) ------------------------------------------------

from solar_ml_pipeline.forecasting.training import baseline_metrics  # noqa: E402
from solar_ml_pipeline_tests.forecasting.test_features import SITE, clear_day_readings  # noqa: E402

EXTENDED_METRICS = {
    "rmse_skill", "smart_persistence_mae", "smart_persistence_rmse", "skill_smart",
    "rmse_skill_smart", "daylight_samples", "daylight_mae", "daylight_rmse",
    "daylight_persistence_mae", "daylight_persistence_rmse", "daylight_skill",
    "daylight_rmse_skill", "daylight_smart_persistence_mae", "daylight_skill_smart",
}


def _site_frame(feature_set="original"):
    readings = clear_day_readings(np.arange(0, 3 * 1440, 5.0), share=0.6)
    return build_feature_frame(readings, horizon_minutes=15, timezone="Asia/Colombo",
                               feature_set=feature_set, site=SITE)


def test_with_a_site_metrics_add_smart_persistence_and_daylight_scores_as_floats():
    built = _site_frame()
    model, evaluation = _train(built)
    metrics = evaluation.as_metrics()
    assert EXTENDED_METRICS <= set(metrics)
    assert all(type(metrics[name]) is float for name in EXTENDED_METRICS - {"daylight_samples"})
    _, test = split_time_ordered(built.frame)
    day = test["daylight"].to_numpy(dtype=bool)
    assert metrics["daylight_samples"] == int(day.sum()) > 0
    error = (test[TARGET] - test["power"]).abs().to_numpy()
    assert metrics["daylight_persistence_mae"] == pytest.approx(error[day].mean())
    smart_error = (test[TARGET] - test["smart_persistence"]).abs().mean()
    assert metrics["smart_persistence_mae"] == pytest.approx(smart_error)
    assert metrics["daylight_skill"] == pytest.approx(
        1 - metrics["daylight_mae"] / metrics["daylight_persistence_mae"])
    assert metrics["rmse_skill"] == pytest.approx(
        1 - metrics["rmse"] / metrics["persistence_rmse"])


def test_night_rows_dilute_all_hours_persistence_error_but_not_the_daylight_one():
    _, evaluation = _train(_site_frame())
    assert evaluation.daylight_persistence_mae > evaluation.persistence_mae


def test_smart_persistence_is_near_perfect_on_clear_days():
    _, evaluation = _train(_site_frame())
    assert evaluation.daylight_smart_persistence_mae < 0.05 * evaluation.daylight_persistence_mae


def test_baseline_metrics_of_a_frame_without_a_site_are_empty():
    _, test = split_time_ordered(_feature_frame().frame)
    assert baseline_metrics(test, test["power"].to_numpy()) == {}


def test_a_solar_model_records_its_site_and_predicts_after_unpickling():
    built = _site_frame("solar")
    model, evaluation = train_and_evaluate(built, model_type="hist_gradient_boosting",
                                           horizon_minutes=15, feature_set="solar",
                                           estimator_params=FAST["hist_gradient_boosting"])
    assert model.site == {"latitude": SITE.latitude, "longitude": SITE.longitude,
                          "altitude": SITE.altitude, "capacity_w": SITE.capacity_w,
                          "timezone": SITE.timezone}
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(restored.predict(built.frame), model.predict(built.frame))
    assert math.isfinite(evaluation.daylight_skill)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_a_feature_without_any_value_in_the_training_rows_is_left_out(model_type):
    built = _site_frame("solar")
    built.frame["power_lag_15"] = np.nan  # e.g. a cadence the 15-minute lag cannot match
    model, _ = train_and_evaluate(built, model_type=model_type, horizon_minutes=15,
                                  feature_set="solar", n_jobs=1,
                                  estimator_params=FAST[model_type])
    assert "power_lag_15" not in model.features
    assert len(model.features) == len(built.features) - 1


from solar_ml_pipeline.forecasting.training import DEFAULT_TARGETS, RESIDUAL  # noqa: E402


def test_solar_models_learn_the_departure_from_smart_persistence_by_default():
    built = _site_frame("solar")
    model, _ = train_and_evaluate(built, model_type="ridge", horizon_minutes=15,
                                  feature_set="solar")
    assert DEFAULT_TARGETS["solar"] == model.target == RESIDUAL
    raw = model.estimator.predict(built.frame[model.features].astype("float64"))
    np.testing.assert_allclose(model.predict(built.frame),
                               raw + built.frame["smart_persistence"].to_numpy())


def test_a_residual_model_is_exact_where_smart_persistence_is():
    # Clear days at a constant index: the departure to learn is zero by daylight.
    built = _site_frame("solar")
    model, evaluation = train_and_evaluate(built, model_type="ridge", horizon_minutes=15,
                                           feature_set="solar")
    assert evaluation.daylight_mae < 0.05 * evaluation.daylight_persistence_mae


def test_the_power_target_can_still_be_chosen_for_the_solar_set():
    model, _ = train_and_evaluate(_site_frame("solar"), model_type="ridge", horizon_minutes=15,
                                  feature_set="solar", target="power")
    assert model.target == "power"


def test_an_unknown_target_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="power, smart_persistence_residual"):
        train_and_evaluate(_site_frame("solar"), model_type="ridge", horizon_minutes=15,
                           feature_set="solar", target="clear_sky_index")


def test_the_residual_target_without_a_site_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="site"):
        train_and_evaluate(_feature_frame(), model_type="ridge", horizon_minutes=15,
                           feature_set="original", target=RESIDUAL)


def test_a_model_pickled_before_targets_existed_still_forecasts_power():
    model, _ = _train(_feature_frame())
    state = dict(model.__dict__)
    state.pop("target")
    old = ForecastModel.__new__(ForecastModel)
    old.__dict__.update(state)  # what unpickling an older version produces
    frame = _feature_frame().frame
    np.testing.assert_allclose(old.predict(frame), model.predict(frame))


def test_gradient_boosting_fits_the_absolute_error_that_gates_judge():
    assert make_estimator("hist_gradient_boosting").loss == "absolute_error"


def test_boosting_still_learns_when_most_of_the_window_is_dark_night():
    # 16 dark hours a day: the median target is exactly 0, where an absolute-error fit on
    # every row collapses to forecasting 0 for every row.
    minutes = np.arange(0, 3 * 1440, 5.0)
    readings = synthetic_readings(minutes)
    local_hour = (minutes / 60 + 5.5) % 24
    readings.loc[(local_hour < 9) | (local_hour >= 17), ["power", "current"]] = 0.0
    built = build_feature_frame(readings, horizon_minutes=15, timezone="Asia/Colombo")
    assert (built.frame[TARGET] == 0).mean() > 0.6
    model, evaluation = train_and_evaluate(built, model_type="hist_gradient_boosting",
                                           horizon_minutes=15, feature_set="original")
    assert model.predict(built.frame).max() > 0.5 * built.frame[TARGET].max()
    assert evaluation.r2 > 0.5


# -- the champion's daylight score (the smart-persistence fallback decision) -----------------

from solar_ml_pipeline.forecasting.training import daylight_score_on  # noqa: E402


def test_a_models_daylight_score_reproduces_its_daylight_mae_on_its_own_test_window():
    built = _site_frame()
    model, evaluation = _train(built)
    _, test = split_time_ordered(built.frame)
    assert daylight_score_on(model, test, horizon_minutes=15) == pytest.approx(
        evaluation.daylight_mae)
    assert daylight_score_on(model, test) != pytest.approx(score_on(model, test))


def test_the_daylight_score_is_unknown_without_a_daylight_column_or_daylight_rows():
    built = _site_frame()
    model, _ = _train(built)
    _, test = split_time_ordered(built.frame)
    assert daylight_score_on(model, test.drop(columns=["daylight"])) is None
    assert daylight_score_on(model, test.assign(daylight=False)) is None


def test_the_daylight_score_refuses_a_model_of_another_horizon():
    built = _site_frame()
    model, _ = _train(built)
    _, test = split_time_ordered(built.frame)
    with pytest.raises(FeaturesUnavailable, match="15 min ahead"):
        daylight_score_on(model, test, horizon_minutes=30)


def test_threads_per_run_shares_the_cores_among_concurrent_runs(monkeypatch):
    monkeypatch.setattr(training_module.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert threads_per_run(1) == 4
    assert threads_per_run(2) == 2
    assert threads_per_run(3) == 1
    assert threads_per_run(8) == 1  # never zero


def test_a_thread_cap_applies_to_the_fit_and_leaves_the_process_as_it_was(monkeypatch):
    from threadpoolctl import threadpool_info

    seen = []
    original_fit = training_module.HistGradientBoostingRegressor.fit

    def watching_fit(self, *args, **kwargs):
        seen.append([p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"])
        return original_fit(self, *args, **kwargs)

    monkeypatch.setattr(training_module.HistGradientBoostingRegressor, "fit", watching_fit)
    before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"]
    train_and_evaluate(_feature_frame(), model_type="hist_gradient_boosting", horizon_minutes=15,
                       feature_set="original", estimator_params={"max_iter": 20}, threads=1)
    assert seen and all(n == 1 for n in seen[0])
    assert [p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"] == before


def test_a_few_rows_are_forecast_on_one_openmp_thread_and_a_backtest_on_all(monkeypatch):
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingRegressor  # noqa: F401 - loads OpenMP
    from threadpoolctl import threadpool_info

    def openmp_threads() -> int:
        return max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp")

    seen = []

    class Probe:
        def predict(self, features):  # noqa: ANN001, ANN202
            seen.append(openmp_threads())
            return np.zeros(len(features))

    model = training_module.ForecastModel(
        estimator=Probe(), features=["power"], horizon_minutes=15, model_type="probe",
        feature_set="original", trained_at=datetime(2026, 3, 1, tzinfo=UTC))
    everything = openmp_threads()
    model.predict(pd.DataFrame({"power": [1.0]}))  # serving: one row
    model.predict(pd.DataFrame({"power": np.ones(training_module.FEW_ROWS + 1)}))
    assert seen == [1, everything]
    assert openmp_threads() == everything  # the limit ends with the call
