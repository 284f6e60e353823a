"""`solar-ml scores`, `solar-ml backtest` and `solar-ml model history` on a replayed store,
and their API twins (`/api/ml/scores`, `/api/ml/backtest`)."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import pytest

from solar_ml_pipeline.forecasting.scoring import score_period
from solar_ml_pipeline.interfaces import cli
from solar_ml_pipeline_tests.forecasting.test_backtest import (
    DAY,
    DEVICE,
    FIRST_CUTOFF,
    replay_retrains,
)
from solar_ml_pipeline_tests.interfaces.test_api import serving


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    replay = replay_retrains(tmp_path_factory.mktemp("cli_forecasts") / "home",
                             [FIRST_CUTOFF + i * DAY for i in range(2)])
    for day in range(2):
        start = FIRST_CUTOFF + day * DAY
        score_period(replay.settings, replay.store, replay.registry, DEVICE,
                     start.strftime("%Y-%m-%d"), start, start + DAY,
                     now=start + DAY + timedelta(hours=1))
    return replay


def test_scores_lists_the_realised_periods_newest_first(home_env, capsys):
    assert cli.main(["scores", "--device", DEVICE, "--days", "3650", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [s["period"] for s in listing["scores"]] == ["2026-03-02", "2026-03-01"]
    assert cli.main(["scores", "--device", DEVICE, "--days", "3650"]) == 0
    text = capsys.readouterr().out
    assert "2026-03-02" in text and "vs smart" in text
    assert cli.main(["scores", "--device", DEVICE, "--days", "1"]) == 0
    assert "no realised scores in the last 1 days" in capsys.readouterr().out


def test_backtest_prints_json_lines_then_a_summary_matching_its_rows(home_env, capsys):
    code = cli.main(["backtest", "--device", DEVICE, "--start", "2026-03-01T13:00:00Z",
                     "--end", "2026-03-03T13:00:00Z", "--json"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rows, summary = lines[:-1], lines[-1]["summary"]
    assert set(rows[0]) == {"timestamp", "forecast_for", "predicted_power", "p10", "p90",
                            "power_at_target",
                            "persistence", "smart_persistence", "served_by", "daylight",
                            "flagged"}
    scored = [r for r in rows if r["daylight"] and not r["flagged"]
              and r["predicted_power"] is not None
              and r["power_at_target"] is not None]
    model = sum(abs(r["predicted_power"] - r["power_at_target"]) for r in scored)
    smart = sum(abs(r["smart_persistence"] - r["power_at_target"]) for r in scored)
    assert 1 - model / smart == pytest.approx(summary["daylight_skill_smart"], abs=1e-9)
    assert len(rows) == summary["rows"]


def test_backtest_text_ends_with_the_pooled_skills(home_env, capsys):
    assert cli.main(["backtest", "--device", DEVICE, "--start", "2026-03-01T13:00",
                     "--end", "2026-03-01T15:00"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("timestamp") and "served_by" in out[0]
    assert "against smart persistence" in out[-1]


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--start", "2026-02-22", "--end", "2026-02-23"], 1, "nothing served device tracker01"),
    (["--start", "2025-01-01", "--end", "2025-01-02"], 1, "has no readings in"),
    (["--start", "2026-03-02", "--end", "2026-03-01"], 2, "is not after start"),
    (["--start", "yesterday", "--end", "2026-03-01"], 2, "invalid start 'yesterday'"),
])
def test_backtest_refusals_are_one_line_with_the_fix(home_env, capsys, args, code, message):
    assert cli.main(["backtest", "--device", DEVICE, *args]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_model_history_shows_each_promotion_with_its_run(home_env, replay, capsys):
    assert cli.main(["model", "history", "--device", DEVICE, "--json"]) == 0
    moves = json.loads(capsys.readouterr().out)["moves"]
    promoted = [r for r in replay.records if r["promoted"]]
    assert [m["run_id"] for m in moves] == [r["run_id"] for r in reversed(promoted)]
    assert moves[-1]["at"] == "2026-03-01T13:00:00.000000Z"


def test_api_serves_scores_and_backtests_with_404_for_an_empty_span(replay):
    with serving(replay.settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        scores = client.get("/api/ml/scores", params={"device_id": DEVICE, "days": 3650})
        assert scores.status_code == 200 and scores.json()["total"] == 2
        result = client.get("/api/ml/backtest", params={
            "device_id": DEVICE, "start": "2026-03-01T13:00:00Z", "end": "2026-03-01T14:00:00Z"})
        assert result.status_code == 200
        assert result.json()["summary"]["rows"] == len(result.json()["rows"]) > 0
        empty = client.get("/api/ml/backtest", params={
            "device_id": DEVICE, "start": "2025-01-01", "end": "2025-01-02"})
        assert empty.status_code == 404 and "no readings" in empty.json()["detail"]
        bad = client.get("/api/ml/backtest", params={
            "device_id": DEVICE, "start": "2026-03-02", "end": "2026-03-01"})
        assert bad.status_code == 422
