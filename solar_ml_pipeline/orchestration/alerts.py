"""Failure alerts: a run-failure sensor that logs, records and posts to ALERT_WEBHOOK_URL.

The sensor is the last of the three paths that record a `failed` attempt (see failures.py):
it is the only one that still runs when the run's worker died (OOM kill, daemon restart, run
monitoring timeout), because it is evaluated by the daemon, not inside the run.

Delivery is best effort: a webhook that is down or slow is retried a few times with backoff
and then logged; it never fails the sensor, so later failures are still alerted.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import dagster as dg

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.orchestration.failures import (
    DEVICE_TAG,
    PERIOD_TAG,
    failure_message,
    record_failed_run,
)
from solar_ml_pipeline.orchestration.resources import StoreResource
from solar_ml_pipeline.storage.run_records import one_line

RUN_FAILURE_SENSOR = "run_failure_alert_sensor"
PARTITION_TAG = "dagster/partition"
WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_ATTEMPTS = 3
WEBHOOK_BACKOFF_S = 1.0


class AlertNotDelivered(RuntimeError):
    """The webhook refused or never answered the alert; the message says why (one line)."""


@dataclass(frozen=True)
class FailedRun:
    """What an alert says about one failed run."""

    run_id: str
    job_name: str
    device_id: str | None
    period: str | None
    error: str
    devices: tuple[str, ...] = ()  # every device of the run whose attempt failed


def device_and_period(tags: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The partition a run targeted, from its dimension tags or its `device|period` key."""
    device_id, period = tags.get(DEVICE_TAG), tags.get(PERIOD_TAG)
    if device_id and period:
        return device_id, period
    parts = tags.get(PARTITION_TAG, "").split("|")
    if len(parts) == 2 and all(parts):  # multi-partition keys: dimensions in name order
        return parts[0], parts[1]
    return device_id, period


def run_url(run_id: str, base_url: str | None) -> str:
    """A link to the run in the UI; relative when the UI's address is unknown."""
    return f"{base_url or ''}/runs/{run_id}"


def alert_payload(failed: FailedRun, base_url: str | None) -> dict[str, Any]:
    return {
        "device_id": failed.device_id,
        "period": failed.period,
        "run_id": failed.run_id,
        "error": failed.error,
        "run_url": run_url(failed.run_id, base_url),
        "failed_devices": list(failed.devices),
    }


def _where(url: str) -> str:
    """The webhook's scheme and host, for logs: the path or query may hold a secret token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}"


def _is_retryable(status: int) -> bool:
    return status >= 500 or status in (408, 429)


def post_alert(url: str, payload: Mapping[str, Any], *, timeout_s: float = WEBHOOK_TIMEOUT_S,
               attempts: int = WEBHOOK_ATTEMPTS, backoff_s: float = WEBHOOK_BACKOFF_S,
               sleep: Callable[[float], None] = time.sleep) -> int:
    """POST the payload as JSON; returns the attempt that succeeded, else AlertNotDelivered.

    Timeouts, connection errors, 5xx, 408 and 429 are retried after backoff_s, 2 x backoff_s,
    ...; any other 4xx is a configuration problem and is not retried.
    """
    if attempts < 1:
        raise ValueError(f"attempts={attempts} is invalid: expected at least 1")
    if urlsplit(url).scheme not in ("http", "https"):
        raise AlertNotDelivered(
            f"ALERT_WEBHOOK_URL is invalid: expected an http:// or https:// URL, got "
            f"{urlsplit(url).scheme or 'no'} scheme"
        )
    body = json.dumps(payload).encode()
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(  # noqa: S310 - scheme checked above (http/https only)
            url, data=body, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "solar-ml-alerts"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - scheme checked above
                response.read()
            return attempt
        except urllib.error.HTTPError as exc:
            last_problem = f"HTTP {exc.code} {exc.reason}"
            if not _is_retryable(exc.code):
                break
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets, garbage
            reason = getattr(exc, "reason", exc)
            last_problem = f"{type(reason).__name__}: {reason}"
        if attempt < attempts:
            sleep(backoff_s * 2 ** (attempt - 1))
    raise AlertNotDelivered(
        f"alert not delivered to {_where(url)} after {attempt} attempt(s): {last_problem}; "
        "check ALERT_WEBHOOK_URL and that the receiver is up"
    )


def _run_duration_s(instance: dg.DagsterInstance, run_id: str) -> float | None:
    stats = instance.get_run_stats(run_id)
    if stats.start_time and stats.end_time:
        return round(stats.end_time - stats.start_time, 3)
    return None


def cancel_reason(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """Why the run was being cancelled when it failed: run monitoring's runtime limit.

    A run over max_runtime_seconds whose worker cannot be reached to stop it (it died with the
    daemon or the host) is failed with a message that only says it was "forcibly marked as
    failed"; the first cancel event names the limit.
    """
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.RUN_CANCELING, limit=1).records
    message = records[0].event_log_entry.message if records else ""
    return one_line(message).rstrip(".") or None


def launch_error(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """Why the daemon could not hand the run to its launcher (a broker that is down, say):
    Dagster fails such a run with a message that only says it failed "from outside the
    execution context"; the error is on the run's engine event."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, ascending=False, limit=20).records
    for record in records:
        event = record.event_log_entry.dagster_event
        error = getattr(event.event_specific_data, "error", None) if event else None
        if error is not None and "dequeuing" in (record.event_log_entry.message or ""):
            cause = _innermost(error)
            return one_line(f"the run could not be launched ({cause}): check "
                            "CELERY_BROKER_URL and that the broker is up, then launch it again")
    return None


def _innermost(error: Any) -> str:
    while error.cause is not None:
        error = error.cause
    return f"{error.cls_name}: {error.message.strip()}" if error.cls_name else error.message


def build_run_failure_sensor(settings: Settings) -> dg.SensorDefinition:
    """Alert on failed runs of this code location: the retrain job and ad-hoc asset runs."""

    @dg.run_failure_sensor(
        name=RUN_FAILURE_SENSOR,
        # No monitored_jobs: every job of this code location, including the implicit asset job
        # that UI "Materialize" clicks launch. Runs of other code locations are not ours.
        monitor_all_code_locations=False,
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "On every failed run of this code location: logs the error, records the attempt "
            "as failed in the run log when the run died before it could, and POSTs "
            "{device_id, period, run_id, error, run_url} to ALERT_WEBHOOK_URL when it is set "
            f"({WEBHOOK_ATTEMPTS} tries, {WEBHOOK_TIMEOUT_S:g} s timeout each)."
        ),
        tags={"domain": "solar-forecasting"},
    )
    def run_failure_alert_sensor(context: dg.RunFailureSensorContext, store: StoreResource) -> None:
        run = context.dagster_run
        device_id, period = device_and_period(run.tags)
        error = failure_message(context.failure_event, list(context.get_step_failure_events()))
        if reason := cancel_reason(context.instance, run.run_id):
            error = f"{reason}: {error}"
        elif not list(context.get_step_failure_events()):
            error = launch_error(context.instance, run.run_id) or error
        failed = FailedRun(run_id=run.run_id, job_name=run.job_name, device_id=device_id,
                           period=period, error=error)
        subject = f"{device_id} {period}" if device_id else run.job_name
        context.log.error(f"run {run.run_id} ({subject}) failed: {failed.error}")

        try:
            failed_devices = record_failed_run(
                store.open(), settings, context.instance, run, failed.error,
                _run_duration_s(context.instance, run.run_id))
            failed = replace(failed, devices=tuple(failed_devices))
        except Exception as exc:
            context.log.error(f"could not record the failed attempts of run {run.run_id}: "
                              f"{one_line(str(exc))}")

        if settings.alert_webhook_url:
            payload = alert_payload(failed, settings.dagster_webserver_url)
            try:
                attempt = post_alert(settings.alert_webhook_url, payload, timeout_s=WEBHOOK_TIMEOUT_S,
                                     attempts=WEBHOOK_ATTEMPTS, backoff_s=WEBHOOK_BACKOFF_S)
                context.log.info(f"alert for run {run.run_id} delivered "
                                 f"to {_where(settings.alert_webhook_url)} (attempt {attempt})")
            except Exception as exc:
                context.log.error(one_line(str(exc)))
        # None (not a SkipReason): the sensor goes on to the next failed run in this tick.

    return run_failure_alert_sensor
