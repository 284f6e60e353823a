"""Realised scores and the drift guard: a lost string is caught within DRIFT_PERIODS periods,
and the rule itself is a pure function of the newest scores."""

from __future__ import annotations

from datetime import timedelta

import pytest

from solar_ml_pipeline.forecasting.scoring import (
    ScoreNotReady,
    drift_verdict,
    guard_against_drift,
    score_period,
)
from solar_ml_pipeline_tests.forecasting.test_backtest import (
    DAY,
    DEVICE,
    FIRST_CUTOFF,
    replay_retrains,
)

FAULT = FIRST_CUTOFF + 4 * DAY  # the string is lost at the start of the fifth period


def _score(period: str, version: str | None, mae: float, smart: float, rows: int = 600) -> dict:
    return {"period": period, "served_by": {version or "smart_persistence": 1400},
            "daylight_rows": rows, "daylight_mae": mae, "daylight_smart_persistence_mae": smart}


V0 = "20260228_130000_000000"
V1 = "20260301_130000_000001"


@pytest.mark.parametrize(("scores", "drifted"), [
    ([_score("03-03", V1, 30, 20), _score("03-02", V1, 30, 20), _score("03-01", V1, 30, 20)],
     True),
    ([_score("03-03", V1, 30, 20), _score("03-02", V1, 19, 20), _score("03-01", V1, 30, 20)],
     False),  # one win breaks the run
    ([_score("03-03", V1, 30, 20), _score("03-02", V1, 30, 20)], False),  # too few periods
    ([_score("03-03", None, 30, 20), _score("03-02", V1, 30, 20), _score("03-01", V1, 30, 20)],
     False),  # smart persistence served the newest: nothing to move away from
    ([_score("03-03", V1, 30, 20, rows=0), _score("03-02", V1, 30, 20),
      _score("03-01", V1, 30, 20)], False),  # no daylight, no verdict
    ([{**_score("03-03", V1, 30, 20), "served_by": {V0: 5, V1: 1400}},
      _score("03-02", V1, 30, 20), _score("03-01", V1, 30, 20)],
     True),  # the replaced version's first minutes of a period do not hide the drift
])
def test_drift_is_a_model_losing_to_smart_persistence_every_one_of_the_last_periods(scores,
                                                                                   drifted):
    verdict = drift_verdict(scores, periods=3)
    assert verdict.drifted is drifted
    if drifted:
        assert verdict.periods == ("03-01", "03-02", "03-03")
        assert "lost to smart persistence in realised daylight MAE for 3" in verdict.reason


def test_a_period_is_scored_only_once_its_readings_are_in(tmp_path):
    replay = replay_retrains(tmp_path, [FIRST_CUTOFF], days_after=1)
    end = FIRST_CUTOFF + DAY
    with pytest.raises(ScoreNotReady, match="readings are all in at 2026-03-02T13:18:00Z"):
        score_period(replay.settings, replay.store, replay.registry, DEVICE, "2026-03-01",
                     FIRST_CUTOFF, end, now=end + timedelta(minutes=10))
    score = score_period(replay.settings, replay.store, replay.registry, DEVICE, "2026-03-01",
                         FIRST_CUTOFF, end, now=end + timedelta(hours=1))
    assert replay.store.list_scores(DEVICE) == [score]
    assert score["served_by"] == {replay.records[0]["version"]: score["rows"]}
    assert score["daylight_rows"] > 500 and score["rows_scored"] >= score["daylight_rows"]
    for name in ("daylight_mae", "daylight_skill", "daylight_skill_smart", "skill", "rmse"):
        assert isinstance(score[name], float)


def test_a_lost_string_is_caught_and_the_device_moved_within_drift_periods(tmp_path):
    """Two retrains before the fault, none after (a device whose retrains keep failing): the
    model serving overpredicts by 2x once the string is lost; smart persistence adapts."""
    replay = replay_retrains(tmp_path, [FIRST_CUTOFF - DAY, FIRST_CUTOFF], days_after=8,
                             lost_string_from=FAULT)
    settings, store, registry = replay.settings, replay.store, replay.registry
    serving = registry.read_pointer(DEVICE)["version"]
    versions_before = [v["version"] for v in registry.list_versions(DEVICE)]
    drifts = []
    for day in range(7):
        start = FIRST_CUTOFF + day * DAY
        score = score_period(settings, store, registry, DEVICE, start.strftime("%Y-%m-%d"),
                             start, start + DAY, now=start + DAY + timedelta(hours=1))
        record = guard_against_drift(settings, store, registry, DEVICE)
        drifts.append((start, score, record))
    after_fault = [(s, r) for start, s, r in drifts if start >= FAULT]
    assert all(record is None for start, _, record in drifts if start < FAULT)
    moved = [i for i, (_, record) in enumerate(after_fault) if record is not None]
    # caught on the DRIFT_PERIODS-th period after the fault, once
    assert moved == [settings.drift_periods - 1]
    assert all(score["daylight_skill_smart"] < 0 for score, _ in after_fault[:moved[0] + 1])
    assert all(score["served_by"] != {serving: score["rows"]}
               for score, _ in after_fault[moved[0] + 1:])  # no longer served by it
    record = after_fault[moved[0]][1]
    assert (record["kind"], record["status"], record["champion_version"]) == (
        "drift", "success", serving)
    assert record["decision_reason"].startswith(f"drift: {serving} lost to smart persistence")
    pointer = registry.read_pointer(DEVICE)
    assert pointer.get("version") == record["version"]  # previous version or None (fallback)
    assert store.get_run(record["run_id"])["kind"] == "drift"
    newest = registry.pointer_history(DEVICE)[-1]
    assert (newest["move"], newest["run_id"]) == ("drift", record["run_id"])
    assert [v["version"] for v in registry.list_versions(DEVICE)] == versions_before


def test_a_pointer_moved_since_the_scores_is_left_alone(tmp_path):
    replay = replay_retrains(tmp_path, [FIRST_CUTOFF - DAY, FIRST_CUTOFF], days_after=1)
    version = replay.registry.read_pointer(DEVICE)["version"]
    for day in range(3):
        replay.store.upsert_score({**_score(f"2026-03-0{day + 1}", version, 30, 20),
                                   "device_id": DEVICE,
                                   "period_start": FIRST_CUTOFF + day * DAY,
                                   "period_end": FIRST_CUTOFF + (day + 1) * DAY})
    replay.registry.rollback(DEVICE)  # an operator got there first
    before = replay.registry.read_pointer(DEVICE)
    assert guard_against_drift(replay.settings, replay.store, replay.registry, DEVICE) is None
    assert replay.registry.read_pointer(DEVICE) == before
