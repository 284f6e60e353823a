from datetime import date
from pathlib import Path

import pytest

from solar_ml_pipeline.config import (
    ConfigError,
    InvalidDeviceId,
    load_settings,
    settings_from_env,
    validate_device_id,
)


def test_defaults_follow_the_original_system():
    s = settings_from_env({})
    assert s.mongodb_uri is None and s.backend == "sqlite"
    assert (s.mongodb_db, s.collection_readings, s.collection_model_runs) == (
        "solar_db", "readings_raw", "model_runs")
    assert (s.retrain_interval_hours, s.retrain_time) == (24, "18:30")
    assert s.timezone == "Asia/Colombo"
    assert s.mae_threshold_percent == 10.0
    assert (s.horizon_minutes, s.min_training_rows, s.keep_versions) == (15, 100, 30)
    assert s.min_usable_share == 0.5 and settings_from_env(
        {"MIN_USABLE_SHARE": "0.8"}).min_usable_share == 0.8
    assert s.retrain_enabled is True


def test_model_defaults_are_the_ones_that_beat_persistence_on_real_data():
    # benchmarks/RESULTS.md "Forecast quality": +22.8 % (June) / +8.6 % (December) daylight skill
    s = settings_from_env({})
    assert (s.model_type, s.feature_set, s.retrain_days) == ("hist_gradient_boosting", "solar", 30)
    assert s.require_beat_persistence is True


def test_paths_derive_from_solar_ml_home(tmp_path):
    s = settings_from_env({"SOLAR_ML_HOME": str(tmp_path / "h")})
    assert s.sqlite_path == tmp_path / "h" / "solar_ml.db"
    assert s.model_dir == tmp_path / "h" / "ml_models"
    assert s.dagster_home == tmp_path / "h" / "dagster_home"
    s2 = settings_from_env({"SOLAR_ML_HOME": str(tmp_path), "MODEL_DIR": "rel/models"})
    assert s2.model_dir == Path("rel/models").absolute()


def test_mongodb_uri_selects_the_production_backend():
    s = settings_from_env({"MONGODB_URI": "mongodb://u:p@db.example:27017", "MONGODB_DB": "x"})
    assert s.backend == "mongodb" and s.mongodb_db == "x"


@pytest.mark.parametrize(
    ("name", "value", "expected_hint"),
    [
        ("RETRAIN_TIME", "25:99", "HH:MM"),
        ("RETRAIN_TIME", "noon", "HH:MM"),
        ("TIMEZONE", "Mars/Base", "IANA time zone"),
        ("RETRAIN_DAYS", "0", "at least 1"),
        ("RETRAIN_DAYS", "seven", "whole number"),
        ("RETRAIN_INTERVAL_HOURS", "7", "divide 24"),
        ("RETRAIN_INTERVAL_HOURS", "30", "divide 24"),
        ("MAE_THRESHOLD_PERCENT", "-1", "0 or more"),
        ("MAE_THRESHOLD_PERCENT", "nan", "0 or more"),
        ("MODEL_TYPE", "xgboost", "random_forest"),
        ("RETRAIN_ENABLED", "maybe", "true or false"),
        ("MONGODB_URI", "postgres://x", "mongodb://"),
        ("HORIZON_MINUTES", "0", "at least 1"),
        ("PERIODS_START", "2026-13-01", "YYYY-MM-DD"),
        ("COLLECTION_READINGS", "readings; drop", "letters"),
        ("ALERT_WEBHOOK_URL", "ftp://hooks.example/x", "http://"),
        ("DAGSTER_WEBSERVER_URL", "ui:3000", "http://"),
        ("MIN_USABLE_SHARE", "1.5", "from 0 to 1"),
        ("MIN_USABLE_SHARE", "half", "from 0 to 1"),
    ],
)
def test_invalid_value_fails_with_one_line_naming_variable_and_form(name, value, expected_hint):
    with pytest.raises(ConfigError) as info:
        settings_from_env({name: value})
    message = str(info.value)
    assert name in message and expected_hint in message
    assert "\n" not in message


@pytest.mark.parametrize("hours", [1, 2, 3, 4, 6, 8, 12, 24, 48, 168])
def test_interval_hours_that_divide_or_are_multiples_of_a_day_are_accepted(hours):
    assert settings_from_env({"RETRAIN_INTERVAL_HOURS": str(hours)}).retrain_interval_hours == hours


def test_dotenv_fills_what_the_environment_lacks(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("RETRAIN_DAYS=3\nTIMEZONE=UTC\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TIMEZONE", "Europe/Berlin")
    monkeypatch.delenv("RETRAIN_DAYS", raising=False)
    s = load_settings()
    assert s.retrain_days == 3
    assert s.timezone == "Europe/Berlin"


def test_periods_start_is_configurable():
    assert settings_from_env({"PERIODS_START": "2025-06-01"}).periods_start == date(2025, 6, 1)


@pytest.mark.parametrize("device_id", ["tracker01", "A-b_9", "x" * 64])
def test_valid_device_ids_pass(device_id):
    assert validate_device_id(device_id) == device_id


@pytest.mark.parametrize("device_id", ["", "../x", "a/b", "a|b", "a,b", "x" * 65, "tr acker", None, 5])
def test_device_ids_that_could_escape_a_path_or_break_a_key_are_refused(device_id):
    with pytest.raises(InvalidDeviceId, match="1-64 characters"):
        validate_device_id(device_id)
