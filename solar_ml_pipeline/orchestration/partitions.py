"""Device x period partitions: a partition is the model that serves period P for device D.

Period arithmetic lives here as pure functions (no Dagster) so the schedule, the CLI and the
assets agree on what "the current period" and "the training window" are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from solar_ml_pipeline.config import Settings

DEVICE_DIMENSION = "device"
PERIOD_DIMENSION = "period"
DAILY_FMT = "%Y-%m-%d"
SUB_DAILY_FMT = "%Y-%m-%d-%H:%M"


class InvalidPeriod(ValueError):
    """A period key that is malformed or does not start at a retrain time."""


@dataclass(frozen=True)
class TrainingWindow:
    device_id: str
    period_key: str
    start: datetime  # inclusive, UTC
    end: datetime  # exclusive, UTC (= cutoff = period start)

    @property
    def days(self) -> float:
        return (self.end - self.start).total_seconds() / 86400


def period_format(settings: Settings) -> str:
    return DAILY_FMT if settings.retrain_interval_hours >= 24 else SUB_DAILY_FMT


def period_cron(settings: Settings) -> str:
    """Cron of period starts: every interval, anchored at RETRAIN_TIME local time.

    Multiples of 24 hours other than one week use a day-of-month step, so the last period of
    a month can be shorter (cron cannot express "every N days" across month ends).
    """
    hour, minute = settings.retrain_hour_minute
    interval = settings.retrain_interval_hours
    if interval < 24:
        hours = sorted({(hour + k * interval) % 24 for k in range(24 // interval)})
        return f"{minute} {','.join(str(h) for h in hours)} * * *"
    days = interval // 24
    if days == 1:
        return f"{minute} {hour} * * *"
    if days == 7:
        weekday = (settings.periods_start.isoweekday()) % 7  # cron: 0 = Sunday
        return f"{minute} {hour} * * {weekday}"
    return f"{minute} {hour} */{days} * *"


def _first_period_start(settings: Settings) -> datetime:
    hour, minute = settings.retrain_hour_minute
    start = settings.periods_start
    return datetime(start.year, start.month, start.day, hour, minute, tzinfo=ZoneInfo(settings.timezone))


def period_partitions(settings: Settings) -> dg.TimeWindowPartitionsDefinition:
    """Retrain periods; end_offset=1 makes the period that has just begun targetable."""
    return dg.TimeWindowPartitionsDefinition(
        cron_schedule=period_cron(settings),
        start=_first_period_start(settings).strftime(period_format(settings)),
        fmt=period_format(settings),
        timezone=settings.timezone,
        end_offset=1,
    )


device_partitions = dg.DynamicPartitionsDefinition(name=DEVICE_DIMENSION)


def retrain_partitions(settings: Settings) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition(
        {DEVICE_DIMENSION: device_partitions, PERIOD_DIMENSION: period_partitions(settings)}
    )


def partition_key(device_id: str, period_key: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({DEVICE_DIMENSION: device_id, PERIOD_DIMENSION: period_key})


def period_key_at(settings: Settings, when: datetime) -> str:
    """Key of the period containing `when` (the period that began at or before it)."""
    partitions = period_partitions(settings)
    with dg.partition_loading_context(effective_dt=when):
        window = partitions.get_last_partition_window()
    if window is None:
        raise InvalidPeriod(
            f"{when.isoformat()} is before the first period ({settings.periods_start}); "
            "set PERIODS_START earlier"
        )
    # last window with end_offset=1 is the one containing `when`
    return window.start.strftime(period_format(settings))


def period_bounds(settings: Settings, period_key: str) -> tuple[datetime, datetime]:
    """[start, end) of a period in UTC; refuses keys that are not period starts."""
    partitions = period_partitions(settings)
    fmt = period_format(settings)
    try:
        naive = datetime.strptime(period_key, fmt)
    except ValueError:
        example = datetime(2026, 2, 24, *settings.retrain_hour_minute).strftime(fmt)
        raise InvalidPeriod(
            f"invalid period {period_key!r}: expected a period key like {example} "
            f"(local start date{' and time' if fmt == SUB_DAILY_FMT else ''} in {settings.timezone})"
        ) from None
    if naive.date() < settings.periods_start:
        raise InvalidPeriod(
            f"period {period_key!r} is before PERIODS_START={settings.periods_start}; "
            "set PERIODS_START earlier to train it"
        )
    try:
        window = partitions.time_window_for_partition_key(period_key)
    except Exception:  # noqa: BLE001 - dagster raises several types for keys off the cron
        raise InvalidPeriod(
            f"invalid period {period_key!r}: periods start at {settings.retrain_time} "
            f"every {settings.retrain_interval_hours} h in {settings.timezone}"
        ) from None
    if window.start.strftime(fmt) != period_key:
        raise InvalidPeriod(
            f"invalid period {period_key!r}: periods start at {settings.retrain_time} "
            f"every {settings.retrain_interval_hours} h in {settings.timezone}"
        )
    utc = ZoneInfo("UTC")
    return window.start.astimezone(utc), window.end.astimezone(utc)


def training_window(settings: Settings, device_id: str, period_key: str,
                    days: int | None = None) -> TrainingWindow:
    """[cutoff - RETRAIN_DAYS, cutoff) with cutoff = start of the period."""
    cutoff, _ = period_bounds(settings, period_key)
    span = timedelta(days=days if days is not None else settings.retrain_days)
    return TrainingWindow(device_id, period_key, cutoff - span, cutoff)
