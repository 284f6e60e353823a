from datetime import UTC, datetime, timedelta

import pytest

from solar_ml_pipeline.config import settings_from_env
from solar_ml_pipeline.orchestration.partitions import (
    InvalidPeriod,
    partition_key,
    period_bounds,
    period_cron,
    period_key_at,
    training_window,
)

DEFAULTS = settings_from_env({})


def colombo(*args):
    # Asia/Colombo is UTC+05:30 all year
    return datetime(*args, tzinfo=UTC) - timedelta(hours=5, minutes=30)


def test_default_period_starts_at_1830_colombo_and_is_keyed_by_its_local_date():
    start, end = period_bounds(DEFAULTS, "2026-02-24")
    assert start == colombo(2026, 2, 24, 18, 30)
    assert end == colombo(2026, 2, 25, 18, 30)


def test_period_at_a_time_is_the_one_that_began_at_or_before_it():
    assert period_key_at(DEFAULTS, colombo(2026, 2, 24, 18, 30)) == "2026-02-24"
    assert period_key_at(DEFAULTS, colombo(2026, 2, 24, 18, 29, 59)) == "2026-02-23"
    assert period_key_at(DEFAULTS, colombo(2026, 2, 25, 9, 0)) == "2026-02-24"


def test_training_window_ends_at_the_period_start_and_spans_retrain_days():
    window = training_window(DEFAULTS, "t1", "2026-02-24")
    assert window.end == colombo(2026, 2, 24, 18, 30)
    assert window.end - window.start == timedelta(days=DEFAULTS.retrain_days)
    assert training_window(DEFAULTS, "t1", "2026-02-24", days=3).days == 3


def test_sub_daily_periods_use_hourly_keys_anchored_at_retrain_time():
    s = settings_from_env({"RETRAIN_INTERVAL_HOURS": "6"})
    assert period_cron(s) == "30 0,6,12,18 * * *"
    assert period_key_at(s, colombo(2026, 2, 25, 1, 0)) == "2026-02-25-00:30"
    start, end = period_bounds(s, "2026-02-25-06:30")
    assert end - start == timedelta(hours=6)
    with pytest.raises(InvalidPeriod, match="every 6 h"):
        period_bounds(s, "2026-02-25-06:00")


@pytest.mark.parametrize("key", ["2026-02-30", "yesterday", "2026-02-24-18:30", "2025-12-31"])
def test_malformed_or_out_of_range_period_keys_are_refused_with_the_accepted_form(key):
    with pytest.raises(InvalidPeriod) as info:
        period_bounds(DEFAULTS, key)
    assert "\n" not in str(info.value)


def test_partition_key_joins_device_and_period_as_dagster_does():
    assert str(partition_key("t1", "2026-02-24")) == "t1|2026-02-24"


def test_weekly_interval_is_one_cron_day_a_week():
    s = settings_from_env({"RETRAIN_INTERVAL_HOURS": "168", "PERIODS_START": "2026-01-05"})
    assert period_cron(s) == "30 18 * * 1"
    start, end = period_bounds(s, "2026-01-12")
    assert end - start == timedelta(days=7)
