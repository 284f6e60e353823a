"""The backtest: every reading of a span forecast by what served it at that moment, scored
against persistence and smart persistence on the same rows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from solar_ml_pipeline.config import Settings, settings_from_env
from solar_ml_pipeline.forecasting.attempt import retrain_device
from solar_ml_pipeline.forecasting.backtest import (
    ROW_FIELDS,
    BacktestUnavailable,
    InvalidSpan,
    backtest,
)
from solar_ml_pipeline.forecasting.features import (
    DAYLIGHT,
    SMART_PERSISTENCE,
    TARGET,
    build_feature_frame,
)
from solar_ml_pipeline.interfaces.operations import registry_for
from solar_ml_pipeline.model_store.registry import ModelRegistry
from solar_ml_pipeline.readings.simulator import simulate_readings
from solar_ml_pipeline.readings.sites import DEFAULT_SITE
from solar_ml_pipeline.storage import open_store

DEVICE = "tracker01"
FIRST_CUTOFF = datetime(2026, 3, 1, 13, 0, tzinfo=UTC)  # 18:30 Asia/Colombo, a period start
DAY = timedelta(days=1)


@dataclass
class Replay:
    """A store whose device was retrained at a series of period starts, each move dated at
    its cutoff (what the schedule does live), with the versions it made."""

    settings: Settings
    store: object
    registry: ModelRegistry
    records: list[dict]
    readings: pd.DataFrame


def shaded_readings(device_id: str, start: datetime, end: datetime, *, seed: int = 3,
                    lost_string_from: datetime | None = None) -> pd.DataFrame:
    """One-minute simulated readings with fixed obstructions (a row of poles) shading the
    panel for 30 minutes every two hours from 08:00 local (what a model learns and smart
    persistence cannot foresee), and from `lost_string_from` on half the power (an inverter
    string lost)."""
    frame = simulate_readings(device_id, start=start, end=end, interval_minutes=1, seed=seed,
                              site=DEFAULT_SITE)
    local = frame["timestamp"].dt.tz_convert(DEFAULT_SITE.timezone)
    hours = local.dt.hour + local.dt.minute / 60
    frame.loc[(hours >= 8) & (hours < 17) & (hours % 2 < 0.5), "power"] *= 0.3
    if lost_string_from is not None:
        frame.loc[frame["timestamp"] >= lost_string_from, "power"] *= 0.5
    return frame


def replay_retrains(home, cutoffs: list[datetime], *, days_after: int = 2,
                    lost_string_from: datetime | None = None,
                    env: dict[str, str] | None = None) -> Replay:
    settings = settings_from_env({"SOLAR_ML_HOME": str(home), "RETRAIN_DAYS": "7",
                                  "PERIODS_START": "2026-01-01",
                                  "REQUIRE_BEAT_PERSISTENCE": "false", **(env or {})})
    store, registry = open_store(settings), registry_for(settings)
    readings = shaded_readings(DEVICE, cutoffs[0] - timedelta(days=8),
                               cutoffs[-1] + timedelta(days=days_after),
                               lost_string_from=lost_string_from)
    store.write_readings(readings.to_dict("records"))
    records = []
    for cutoff in cutoffs:
        registry.clock = lambda at=cutoff: at
        records.append(retrain_device(settings, store, registry, DEVICE,
                                      cutoff.strftime("%Y-%m-%d"), cutoff,
                                      run_id=str(uuid.uuid4())))
    return Replay(settings, store, registry, records, readings)


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> Replay:
    """Three daily retrains, each promoted (the persistence gate is off here)."""
    return replay_retrains(tmp_path_factory.mktemp("backtest"),
                           [FIRST_CUTOFF + i * DAY for i in range(3)])


def served_each_day(replay: Replay) -> list[tuple[datetime, str]]:
    """(cutoff, version serving from it): a version not promoted leaves the one before."""
    serving, out = None, []
    for record in replay.records:
        if record["promoted"]:
            serving = record["version"]
        out.append((record["window_end"], serving))
    return out


def expected_daylight_skills(replay: Replay, start: datetime, end: datetime) -> tuple[float, float]:
    """The benchmark's way (benchmarks/forecast_quality.py): features over the whole series,
    each version predicting the day it served, errors pooled in daylight."""
    frame = build_feature_frame(replay.readings, horizon_minutes=15, timezone="Asia/Colombo",
                                feature_set="solar", site=DEFAULT_SITE).frame
    errors = {"served": [], "persistence": [], "smart": []}
    for cutoff, version in served_each_day(replay):
        day = frame[(frame["timestamp"] >= max(cutoff, start))
                    & (frame["timestamp"] < min(cutoff + DAY, end))]
        if day.empty:
            continue
        model = replay.registry.load_model(DEVICE, version)
        daylight = day[DAYLIGHT].to_numpy(dtype=bool)
        actual = day[TARGET].to_numpy()
        for name, forecast in (("served", model.predict(day)),
                               ("persistence", day["power"].to_numpy()),
                               ("smart", day[SMART_PERSISTENCE].to_numpy())):
            errors[name].append(np.abs(forecast - actual)[daylight])
    mae = {name: np.concatenate(parts).mean() for name, parts in errors.items()}
    return 1 - mae["served"] / mae["persistence"], 1 - mae["served"] / mae["smart"]


def test_rows_name_what_served_each_reading_and_reproduce_the_benchmarks_pooled_skill(replay):
    start, end = FIRST_CUTOFF, FIRST_CUTOFF + 3 * DAY
    result = backtest(replay.settings, replay.store, replay.registry, DEVICE, start, end)
    rows = result.rows
    assert list(rows.columns) == list(ROW_FIELDS)
    assert rows["timestamp"].between(start, end, inclusive="left").all()
    for i, (_, version) in enumerate(served_each_day(replay)):
        served = rows[(rows["timestamp"] >= start + i * DAY)
                      & (rows["timestamp"] < start + (i + 1) * DAY)]["served_by"]
        assert set(served) == {version}
    skill, skill_smart = expected_daylight_skills(replay, start, end)
    assert result.summary["daylight_skill"] == pytest.approx(skill, abs=0.005)
    assert result.summary["daylight_skill_smart"] == pytest.approx(skill_smart, abs=0.005)
    # ...and from the rows themselves, as a reader of `--json` would pool them
    scored = rows[rows["daylight"] & rows["power_at_target"].notna()]
    pooled = 1 - ((scored["predicted_power"] - scored["power_at_target"]).abs().sum()
                  / (scored["persistence"] - scored["power_at_target"]).abs().sum())
    assert pooled == pytest.approx(result.summary["daylight_skill"], abs=1e-9)
    assert (rows["forecast_for"] - rows["timestamp"] == pd.Timedelta(minutes=15)).all()


def test_a_fallback_period_is_forecast_by_smart_persistence(replay, tmp_path):
    # The history as if smart persistence had served the second day.
    history = replay.registry.pointer_history(DEVICE)
    as_if = [history[0], {"at": (FIRST_CUTOFF + DAY).isoformat(), "version": None,
                          "serving": "smart_persistence"}, *history[2:]]
    result = backtest(replay.settings, replay.store, replay.registry, DEVICE,
                      FIRST_CUTOFF + DAY, FIRST_CUTOFF + 2 * DAY, history=as_if)
    rows = result.rows
    assert set(rows["served_by"]) == {"smart_persistence"}
    np.testing.assert_array_equal(rows["predicted_power"], rows["smart_persistence"])
    assert result.summary["daylight_skill_smart"] == pytest.approx(0.0)


def test_readings_before_anything_served_are_listed_unserved_and_not_scored(replay):
    start = FIRST_CUTOFF - DAY
    result = backtest(replay.settings, replay.store, replay.registry, DEVICE, start,
                      FIRST_CUTOFF + DAY)
    before = result.rows["timestamp"] < FIRST_CUTOFF
    assert result.rows.loc[before, "served_by"].isna().all()
    assert result.rows.loc[before, "predicted_power"].isna().all()
    assert result.summary["rows_unserved"] == int(before.sum()) > 0
    assert result.summary["rows_scored"] <= int((~before).sum())


@pytest.mark.parametrize(("start", "end", "error", "message"), [
    (FIRST_CUTOFF - 5 * DAY, FIRST_CUTOFF - 4 * DAY, BacktestUnavailable,
     "nothing served device tracker01"),
    (FIRST_CUTOFF + 30 * DAY, FIRST_CUTOFF + 31 * DAY, BacktestUnavailable, "has no readings in"),
    (FIRST_CUTOFF + DAY, FIRST_CUTOFF, InvalidSpan, "is not after start"),
    (FIRST_CUTOFF.replace(tzinfo=None), FIRST_CUTOFF + DAY, InvalidSpan, "need a time zone"),
    (FIRST_CUTOFF, FIRST_CUTOFF + 401 * DAY, InvalidSpan, "longer than 400 days"),
])
def test_a_span_that_cannot_be_backtested_says_why(replay, start, end, error, message):
    with pytest.raises(error, match=message):
        backtest(replay.settings, replay.store, replay.registry, DEVICE, start, end)


def test_a_stuck_sensor_segment_is_flagged_and_left_out_of_the_scores(replay, tmp_path):
    """Readings frozen for two hours of daylight (Fault('stuck')) are flagged; their rows and
    the rows scored against them count in no skill."""
    from solar_ml_pipeline.readings.faults import Fault

    day = FIRST_CUTOFF + DAY  # 18:30 Colombo: the stuck hours are the next morning
    stuck = Fault("stuck", start=day + timedelta(hours=16), end=day + timedelta(hours=18))
    frozen = simulate_readings("stuck01", start=day - DAY, end=day + 2 * DAY,
                               interval_minutes=1, seed=3, site=DEFAULT_SITE, faults=[stuck])
    replay.store.write_readings(frozen.to_dict("records"))
    as_if = [{"at": (day - DAY).isoformat(), "version": None, "serving": "smart_persistence"}]
    result = backtest(replay.settings, replay.store, replay.registry, "stuck01", day,
                      day + DAY, history=as_if)
    rows = result.rows
    inside = rows["timestamp"].between(stuck.start, stuck.end, inclusive="left")
    assert rows.loc[inside, "flagged"].mean() > 0.9  # the first minutes are not yet "stuck"
    assert result.summary["quality_flags"]["stuck"] >= 100
    assert result.summary["rows_flagged"] == int(rows["flagged"].sum())
    kept = rows[~rows["flagged"] & rows["power_at_target"].notna()]
    assert result.summary["rows_scored"] == len(kept)


def test_a_backtest_writes_nothing(replay):
    pointer = replay.registry.pointer_path(DEVICE).read_bytes()
    history = replay.registry.history_path(DEVICE).read_bytes()
    runs = replay.store.list_runs().total
    backtest(replay.settings, replay.store, replay.registry, DEVICE, FIRST_CUTOFF,
             FIRST_CUTOFF + DAY)
    assert replay.registry.pointer_path(DEVICE).read_bytes() == pointer
    assert replay.registry.history_path(DEVICE).read_bytes() == history
    assert replay.store.list_runs().total == runs
    assert replay.store.list_scores(DEVICE) == []
