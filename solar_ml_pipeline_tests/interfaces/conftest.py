"""Fixtures shared by the interface tests of a replayed store (scores, backtest, report)."""

import pytest

# The settings of forecasting/test_backtest.py's replay_retrains, for CLI calls on its store.
ENV = {"RETRAIN_DAYS": "7", "PERIODS_START": "2026-01-01", "REQUIRE_BEAT_PERSISTENCE": "false"}


@pytest.fixture
def home_env(replay, monkeypatch):
    """The CLI's environment pointed at the module's `replay` store."""
    monkeypatch.setenv("SOLAR_ML_HOME", str(replay.settings.solar_ml_home))
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
