"""Settings from the environment (and `.env`), validated once, in one typed place.

Every process (CLI, webserver, daemon, run workers, API) builds its settings here, so a
bad value fails the same way everywhere: one line naming the variable and the accepted form.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MODEL_TYPES = ("random_forest", "hist_gradient_boosting", "extra_trees", "ridge")
FEATURE_SETS = ("solar", "original")
DEVICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message is one line for the user."""


class InvalidDeviceId(ValueError):
    """A device id that could not safely become a path component or partition key."""


def validate_device_id(device_id: object) -> str:
    """Return the id unchanged, or refuse it: it becomes a path component and partition key."""
    if not isinstance(device_id, str) or not DEVICE_ID_PATTERN.fullmatch(device_id):
        shown = repr(device_id)[:80]
        raise InvalidDeviceId(
            f"invalid device id {shown}: use 1-64 characters from A-Z a-z 0-9 _ -"
        )
    return device_id


def is_valid_device_id(device_id: object) -> bool:
    return isinstance(device_id, str) and DEVICE_ID_PATTERN.fullmatch(device_id) is not None


@dataclass(frozen=True)
class Settings:
    mongodb_uri: str | None = None
    mongodb_db: str = "solar_db"
    collection_readings: str = "readings_raw"
    collection_model_runs: str = "model_runs"
    collection_devices: str = "devices"
    solar_ml_home: Path = field(default_factory=lambda: Path(".solar_ml").absolute())
    model_dir: Path = field(default_factory=lambda: Path(".solar_ml/ml_models").absolute())
    dagster_home: Path = field(default_factory=lambda: Path(".solar_ml/dagster_home").absolute())
    retrain_enabled: bool = True
    retrain_days: int = 30
    retrain_interval_hours: int = 24
    retrain_time: str = "18:30"
    timezone: str = "Asia/Colombo"
    periods_start: date = date(2026, 1, 1)
    mae_threshold_percent: float = 10.0
    require_beat_persistence: bool = True
    horizon_minutes: int = 15
    model_type: str = "hist_gradient_boosting"
    feature_set: str = "solar"
    min_training_rows: int = 100
    min_usable_share: float = 0.5
    keep_versions: int = 30
    site_latitude: float = 6.9271
    site_longitude: float = 79.8612
    mongodb_timeout_ms: int = 5000
    api_token: str | None = field(default=None, repr=False)
    api_read_token: str | None = field(default=None, repr=False)
    api_max_body_bytes: int = 65536
    api_retrain_timeout_s: float = 120.0
    alert_webhook_url: str | None = None
    dagster_webserver_url: str | None = None
    max_concurrent_runs: int = 2
    fleet_batch_size: int = 50
    drift_periods: int = 3
    cold_start_days: float = 7.0
    dagster_pg_url: str | None = field(default=None, repr=False)
    celery_broker_url: str | None = field(default=None, repr=False)
    celery_backend_url: str | None = field(default=None, repr=False)

    @property
    def sqlite_path(self) -> Path:
        return self.solar_ml_home / "solar_ml.db"

    @property
    def backend(self) -> str:
        return "mongodb" if self.mongodb_uri else "sqlite"

    @property
    def retrain_hour_minute(self) -> tuple[int, int]:
        hour, minute = self.retrain_time.split(":")
        return int(hour), int(minute)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)


def _text(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def _text_or(env: Mapping[str, str], name: str, default: str) -> str:
    value = _text(env, name, None)
    return default if value is None else value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, form: str) -> int:
    raw = _text(env, name, None)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is invalid: expected {form}") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} is invalid: expected {form}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, form: str,
           minimum: float | None = None, maximum: float | None = None) -> float:
    raw = _text(env, name, None)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is invalid: expected {form}") from None
    if (not math.isfinite(value) or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)):
        raise ConfigError(f"{name}={raw!r} is invalid: expected {form}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _text(env, name, None)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is invalid: expected true or false")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = _text_or(env, name, default)
    if raw not in choices:
        raise ConfigError(f"{name}={raw!r} is invalid: expected one of {', '.join(choices)}")
    return raw


def _path(env: Mapping[str, str], name: str, default: Path) -> Path:
    raw = _text(env, name, None)
    return (Path(raw).expanduser() if raw is not None else default).absolute()


def _retrain_time(env: Mapping[str, str]) -> str:
    raw = _text_or(env, "RETRAIN_TIME", "18:30")
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", raw)
    if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise ConfigError(f"RETRAIN_TIME={raw!r} is invalid: expected HH:MM from 00:00 to 23:59")
    return f"{int(match.group(1)):02d}:{match.group(2)}"


def _timezone(env: Mapping[str, str]) -> str:
    raw = _text_or(env, "TIMEZONE", "Asia/Colombo")
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"TIMEZONE={raw!r} is invalid: expected an IANA time zone such as Asia/Colombo or UTC"
        ) from None
    return raw


def _interval(env: Mapping[str, str]) -> int:
    form = "hours that divide 24 (1, 2, 3, 4, 6, 8, 12) or a multiple of 24"
    value = _int(env, "RETRAIN_INTERVAL_HOURS", 24, 1, form)
    if 24 % value != 0 and value % 24 != 0:
        raise ConfigError(f"RETRAIN_INTERVAL_HOURS={value!r} is invalid: expected {form}")
    return value


def _periods_start(env: Mapping[str, str]) -> date:
    raw = _text_or(env, "PERIODS_START", "2026-01-01")
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ConfigError(f"PERIODS_START={raw!r} is invalid: expected a date YYYY-MM-DD") from None


def _mongodb_uri(env: Mapping[str, str]) -> str | None:
    raw = _text(env, "MONGODB_URI", None)
    if raw is not None and not raw.startswith(("mongodb://", "mongodb+srv://")):
        raise ConfigError(
            "MONGODB_URI is invalid: expected mongodb://... or mongodb+srv://..., "
            "or unset it to use the embedded SQLite store"
        )
    return raw


def _service_url(env: Mapping[str, str], name: str, schemes: tuple[str, ...],
                 unset: str) -> str | None:
    raw = _text(env, name, None)
    if raw is not None and not re.fullmatch(rf"({'|'.join(schemes)})://\S+", raw):
        raise ConfigError(f"{name} is invalid: expected {' or '.join(s + '://...' for s in schemes)}"
                          f", or unset it {unset}")
    return raw


def _http_url(env: Mapping[str, str], name: str) -> str | None:
    raw = _text(env, name, None)
    if raw is None:
        return None
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", raw):
        raise ConfigError(f"{name} is invalid: expected an http:// or https:// URL")
    return raw.rstrip("/")


def _name(env: Mapping[str, str], name: str, default: str) -> str:
    raw = _text_or(env, name, default)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", raw):
        raise ConfigError(f"{name}={raw!r} is invalid: expected letters, digits and _ (max 63)")
    return raw


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Build and validate Settings from a mapping of environment variables."""
    home = _path(env, "SOLAR_ML_HOME", Path(".solar_ml"))
    return Settings(
        mongodb_uri=_mongodb_uri(env),
        mongodb_db=_name(env, "MONGODB_DB", "solar_db"),
        collection_readings=_name(env, "COLLECTION_READINGS", "readings_raw"),
        collection_model_runs=_name(env, "COLLECTION_MODEL_RUNS", "model_runs"),
        collection_devices=_name(env, "COLLECTION_DEVICES", "devices"),
        solar_ml_home=home,
        model_dir=_path(env, "MODEL_DIR", home / "ml_models"),
        dagster_home=_path(env, "DAGSTER_HOME", home / "dagster_home"),
        retrain_enabled=_bool(env, "RETRAIN_ENABLED", True),
        retrain_days=_int(env, "RETRAIN_DAYS", 30, 1, "a whole number of days, at least 1"),
        retrain_interval_hours=_interval(env),
        retrain_time=_retrain_time(env),
        timezone=_timezone(env),
        periods_start=_periods_start(env),
        require_beat_persistence=_bool(env, "REQUIRE_BEAT_PERSISTENCE", True),
        mae_threshold_percent=_float(
            env, "MAE_THRESHOLD_PERCENT", 10.0, "a percentage of 0 or more, e.g. 10.0", minimum=0.0
        ),
        horizon_minutes=_int(env, "HORIZON_MINUTES", 15, 1, "whole minutes, at least 1"),
        model_type=_choice(env, "MODEL_TYPE", "hist_gradient_boosting", MODEL_TYPES),
        feature_set=_choice(env, "FEATURE_SET", "solar", FEATURE_SETS),
        min_training_rows=_int(env, "MIN_TRAINING_ROWS", 100, 1, "a whole number, at least 1"),
        min_usable_share=_float(env, "MIN_USABLE_SHARE", 0.5,
                                "a share of the window from 0 to 1, e.g. 0.5", 0.0, 1.0),
        keep_versions=_int(env, "KEEP_VERSIONS", 30, 1, "a whole number, at least 1"),
        site_latitude=_float(env, "SITE_LATITUDE", 6.9271, "degrees from -90 to 90", -90, 90),
        site_longitude=_float(env, "SITE_LONGITUDE", 79.8612, "degrees from -180 to 180", -180, 180),
        mongodb_timeout_ms=_int(
            env, "MONGODB_TIMEOUT_MS", 5000, 100, "milliseconds, at least 100"
        ),
        api_token=_text(env, "API_TOKEN", None),
        api_read_token=_text(env, "API_READ_TOKEN", None),
        api_max_body_bytes=_int(env, "API_MAX_BODY_BYTES", 65536, 1024,
                                "a whole number of bytes, at least 1024"),
        api_retrain_timeout_s=_float(env, "API_RETRAIN_TIMEOUT_S", 120.0,
                                     "seconds, at least 0.001, e.g. 120",
                                     minimum=0.001),
        alert_webhook_url=_http_url(env, "ALERT_WEBHOOK_URL"),
        dagster_webserver_url=_http_url(env, "DAGSTER_WEBSERVER_URL"),
        max_concurrent_runs=_int(env, "MAX_CONCURRENT_RUNS", 2, 1, "a whole number, at least 1"),
        fleet_batch_size=_int(env, "FLEET_BATCH_SIZE", 50, 1,
                              "a whole number of devices per run, at least 1"),
        drift_periods=_int(env, "DRIFT_PERIODS", 3, 1,
                           "a whole number of scored periods, at least 1"),
        cold_start_days=_float(env, "COLD_START_DAYS", 7.0,
                               "days of a device's own readings, 0 or more (0: no cold start)",
                               minimum=0.0),
        dagster_pg_url=_service_url(env, "DAGSTER_PG_URL", ("postgresql", "postgres"),
                                    "to keep the Dagster instance in SQLite under DAGSTER_HOME"),
        celery_broker_url=_service_url(env, "CELERY_BROKER_URL", ("redis", "rediss"),
                                       "to run retrains as child processes of the daemon"),
        celery_backend_url=_service_url(env, "CELERY_BACKEND_URL", ("redis", "rediss"),
                                        "to use CELERY_BROKER_URL"),
    )


def load_settings(env: Mapping[str, str] | None = None, dotenv: bool = True) -> Settings:
    """Settings for this process: `.env` in the working directory fills what the environment lacks."""
    if env is None:
        if dotenv:
            from dotenv import dotenv_values

            merged = {k: v for k, v in dotenv_values(".env").items() if v is not None}
            merged.update(os.environ)
            env = merged
        else:
            env = os.environ
    return settings_from_env(env)
