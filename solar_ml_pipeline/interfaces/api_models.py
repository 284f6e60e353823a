"""What the HTTP API answers, as pydantic models: the OpenAPI document is built from them.

The endpoints return their JSON directly (the shapes the CLI prints), so these models
document and never filter: every model allows fields beyond the ones it names, so a field a
later release adds breaks no client, and the contract test (schemathesis) checks every
answer against them. Errors are always `{"detail": "<one line>"}`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from solar_ml_pipeline.config import DEVICE_ID_PATTERN
from solar_ml_pipeline.interfaces import accountability, operations

# As JSON Schema (ECMA-262) reads them: `$` is the end of the text, as in fullmatch.
DEVICE_ID_REGEX = DEVICE_ID_PATTERN.pattern
RUN_ID_REGEX = operations.RUN_ID_PATTERN.pattern
# Span bounds: a date, or a date and time (T or space; minutes, seconds, up to 6 decimals)
# with Z, an offset or neither (UTC), years 1970-2199: what accountability.parse_instant reads.
INSTANT_REGEX = (r"^(19[7-9]\d|2[01]\d\d)-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
                 r"([T ]([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,6})?)?"
                 r"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)?)?$")
# Period keys: the local start date (RETRAIN_INTERVAL_HOURS >= 24) or date-HH:MM.
PERIOD_REGEX = r"^\d{4}-\d{2}-\d{2}(-\d{2}:\d{2})?$"
MAX_SKIP = 1_000_000_000
MAX_RETRAIN_DAYS = 3650

DEVICE_EXAMPLE = "tracker01"
SPAN_EXAMPLE = ("2026-03-01T13:00:00Z", "2026-03-02T13:00:00Z")

Number = float | None
Text = str | None


class Open(BaseModel):
    """Names the fields it knows; any other field may appear too."""

    model_config = ConfigDict(extra="allow")


class ErrorBody(BaseModel):
    """Every error: one line saying what went wrong and what to do."""

    detail: str = Field(description="one line: what was wrong and the fix")


class RetrainTimedOut(BaseModel):
    """A foreground retrain still running when API_RETRAIN_TIMEOUT_S ran out."""

    detail: str
    run_id: str = Field(description="poll GET /api/ml/runs/{run_id} for its record")


class Health(Open):
    status: Literal["ok"]
    store: Literal["sqlite", "mongodb"]


class HealthUnavailable(Open):
    status: Literal["unavailable"]
    store: Literal["sqlite", "mongodb"]
    detail: str


class RetrainBody(BaseModel):
    """What to retrain; `background` (default) queues it for the Dagster daemon."""

    model_config = ConfigDict(extra="ignore")

    device_id: str = Field(pattern=DEVICE_ID_REGEX, min_length=1, max_length=64,
                           description="tracker id, 1-64 of A-Z a-z 0-9 _ -",
                           examples=[DEVICE_EXAMPLE])
    days: int | None = Field(default=None, ge=1, le=MAX_RETRAIN_DAYS,
                             description="days of readings (default RETRAIN_DAYS)")
    period: str | None = Field(default=None, pattern=PERIOD_REGEX,
                               description="period key, e.g. 2026-02-24 (default: current); "
                                           "a period that does not start at RETRAIN_TIME or is "
                                           "before PERIODS_START is 422")
    background: bool = Field(default=True,
                             description="queue for the Dagster daemon instead of waiting")


class RunRecord(Open):
    """One attempt of the run log: a retrain, a rollback or a drift move."""

    run_id: str
    device_id: str
    kind: Text = Field(default=None, description="retrain, rollback or drift")
    status: Text = Field(default=None, description="success or failed")
    error: Text = None
    promoted: bool | None = None
    trained_at: Text = Field(default=None, description="ISO 8601, UTC (Z)")
    finished_at: Text = None
    partition_key: Text = None
    period: Text = None
    window_start: Text = None
    window_end: Text = None
    days_used: Number = None
    horizon_minutes: int | None = None
    rows_used: int | None = None
    model_type: Text = None
    version: Text = None
    model_path: Text = None
    features: list[str] | None = None
    mae: Number = None
    rmse: Number = None
    r2: Number = None
    persistence_mae: Number = None
    skill: Number = None
    champion_version: Text = None
    decision_reason: Text = None
    duration_s: Number = None


class Retrained(RunRecord):
    """Background: the queued Dagster run. Foreground: the finished run's record."""

    success: bool
    background: bool
    message: Text = None
    days: int | None = Field(default=None, description="background: days of readings")


class RunsPage(BaseModel):
    total: int = Field(ge=0, description="records matching the filters, all pages")
    runs: list[RunRecord] = Field(description="newest first")


class RunDeleted(Open):
    success: bool
    message: str
    run_id: str


class CurrentModel(Open):
    """The device's pointer: `serving` says whether a model or smart persistence forecasts."""

    model_exists: bool
    device_id: str
    serving: Literal["model", "smart_persistence"] | None
    version: Text
    updated_at: Text
    model_path: Text
    metrics: dict[str, Any] | None
    reason: Text = Field(default=None, description="why smart persistence serves")
    previous_version: Text = None
    cold_start: bool | None = Field(default=None, description="a fleet model serves until "
                                    "the device has COLD_START_DAYS of its own readings")
    trained_on: list[str] | None = Field(default=None, description="cold start: the devices "
                                         "whose readings taught it")


class PointerMove(Open):
    at: str = Field(description="from when it served, ISO 8601 UTC")
    move: str = Field(description="promotion, rollback, fallback, drift, restore, unrecorded")
    serving: Literal["model", "smart_persistence"] | None = None
    version: Text = None
    replaced: Text = None
    reason: Text = None
    run_id: Text = None


class ModelHistory(BaseModel):
    device_id: str
    total: int = Field(ge=0)
    moves: list[PointerMove] = Field(description="newest first")


class Score(Open):
    """One period's realised score: what served it and how it did against both baselines."""

    device_id: str
    period: str
    period_start: str
    period_end: Text = None
    scored_at: Text = None
    served_by: dict[str, int] | None = None
    rows: int | None = None
    rows_scored: int | None = None
    mae: Number = None
    rmse: Number = None
    persistence_mae: Number = None
    smart_persistence_mae: Number = None
    skill: Number = None
    skill_smart: Number = None
    daylight_mae: Number = None
    daylight_skill: Number = None
    daylight_skill_smart: Number = None
    daylight_interval_coverage: Number = Field(
        default=None, description="share of daylight readings inside the served P10-P90")
    daylight_interval_width: Number = None


class Scores(BaseModel):
    device_id: str
    days: int = Field(ge=1, le=accountability.MAX_SCORE_DAYS)
    total: int = Field(ge=0)
    scores: list[Score] = Field(description="newest period first")


class BacktestRow(Open):
    timestamp: str
    forecast_for: str
    predicted_power: Number = Field(description="what served forecast; null when unserved")
    p10: Number = Field(default=None, description="the served band's P10; null without one")
    p90: Number = Field(default=None, description="the served band's P90; null without one")
    power_at_target: Number
    persistence: Number
    smart_persistence: Number
    served_by: Text = Field(description="a version, smart_persistence, or null")
    daylight: bool
    flagged: bool | None = Field(default=None, description="a data-quality flag touches the "
                                 "reading or the one it is scored against: scored in no skill")


class BacktestSummary(Open):
    device_id: str
    start: str
    end: str
    horizon_minutes: int
    rows: int
    rows_unserved: int
    rows_scored: int
    served_by: dict[str, int]
    unavailable: list[str]
    mae: Number = None
    rmse: Number = None
    persistence_mae: Number = None
    smart_persistence_mae: Number = None
    skill: Number = None
    skill_smart: Number = None
    rows_flagged: int | None = None
    quality_flags: dict[str, int] | None = None
    daylight_rows: int | None = None
    daylight_mae: Number = None
    daylight_skill: Number = None
    daylight_skill_smart: Number = None
    daylight_interval_coverage: Number = None
    daylight_interval_width: Number = None


class BacktestResult(BaseModel):
    summary: BacktestSummary
    rows: list[BacktestRow]


class Forecast(Open):
    """Power HORIZON_MINUTES after the newest reading, by the model or smart persistence."""

    device_id: str
    serving: Literal["model", "smart_persistence"]
    version: Text
    model_type: Text
    horizon_minutes: int
    based_on: str
    forecast_for: str
    predicted_power: Number = Field(description="the point forecast, equal to p50")
    p10: Number = Field(default=None, description="10 % quantile; null for a version "
                                                  "trained before intervals")
    p50: Number = None
    p90: Number = Field(default=None, description="90 % quantile")
    current_power: Number
    readings_used: int
    generated_at: str
    cold_start: bool | None = Field(default=None, description="a fleet model serves (cold start)")
    reason: Text = Field(default=None, description="smart persistence: why no model serves")


class ForecastUnavailable(Open):
    device_id: str
    kind: Literal["no_model", "no_recent_readings", "model_store_error"]
    reason: str = Field(description="what predict would answer for this device")


class FleetForecasts(BaseModel):
    """A page of the fleet: every device with readings, in id order."""

    total: int = Field(ge=0, description="devices with readings, all pages")
    limit: int
    skip: int
    generated_at: str
    forecasts: list[Forecast] = Field(description="the page's devices with a forecast")
    unavailable: list[ForecastUnavailable] = Field(
        description="the page's devices without one, with the reason")
