"""Forecast accountability for the CLI and the API: who served when, realised scores, and
backtests. Same rules as operations.py: validate first (InvalidRequest), JSON-ready dicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from solar_ml_pipeline.config import Settings, validate_device_id
from solar_ml_pipeline.interfaces.operations import InvalidRequest, json_ready, registry_for
from solar_ml_pipeline.storage import Store
from solar_ml_pipeline.storage.run_records import utc_now


def model_history(settings: Settings, device_id: str) -> dict[str, Any]:
    """Who served the device when: every pointer move, newest first, each with its time,
    what it put in service, what it replaced, why, and the run that made it."""
    validate_device_id(device_id)
    moves = registry_for(settings).pointer_history(device_id)
    return json_ready({"device_id": device_id, "total": len(moves),
                       "moves": list(reversed(moves))})


DEFAULT_SCORE_DAYS = 30
MAX_SCORE_DAYS = 3650


def parse_instant(value: object, name: str) -> datetime:
    """An ISO 8601 time for a span bound; without a zone (or a bare date) it is UTC, as the
    stores take naive times."""
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest(f"invalid {name} {str(value)[:40]!r}: expected an ISO 8601 "
                                 "time, e.g. 2026-03-01T13:00:00Z") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def list_scores(store: Store, device_id: str, *, days: int = DEFAULT_SCORE_DAYS,
                now: datetime | None = None) -> dict[str, Any]:
    """The device's realised scores of the last `days` days, newest period first."""
    validate_device_id(device_id)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_SCORE_DAYS:
        raise InvalidRequest(f"invalid days {days!r}: expected a whole number from 1 to "
                             f"{MAX_SCORE_DAYS}")
    since = (now or utc_now()) - timedelta(days=days)
    scores = store.list_scores(device_id, since=since, limit=MAX_SCORE_DAYS * 24)
    return json_ready({"device_id": device_id, "days": days, "total": len(scores),
                       "scores": scores})


def backtest_span(settings: Settings, store: Store, device_id: str, start: object,
                  end: object) -> dict[str, Any]:
    """Every reading of [start, end) forecast by what served it then, and the pooled summary;
    reads only. InvalidRequest for bad bounds, BacktestUnavailable when nothing to score."""
    from solar_ml_pipeline.forecasting.backtest import InvalidSpan, backtest

    validate_device_id(device_id)
    begin, finish = parse_instant(start, "start"), parse_instant(end, "end")
    try:
        result = backtest(settings, store, registry_for(settings), device_id, begin, finish)
    except InvalidSpan as exc:
        raise InvalidRequest(str(exc)) from None
    rows = result.rows.astype({"predicted_power": "float64"}).to_dict("records")
    return json_ready({"summary": result.summary, "rows": rows})
