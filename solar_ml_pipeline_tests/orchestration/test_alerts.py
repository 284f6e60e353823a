"""Failure alerts: payload, webhook delivery with retries, and the run-failure sensor."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

from solar_ml_pipeline.orchestration.alerts import (
    RUN_FAILURE_SENSOR,
    AlertNotDelivered,
    FailedRun,
    alert_payload,
    build_run_failure_sensor,
    device_and_period,
    failure_message,
    post_alert,
    run_url,
)
from solar_ml_pipeline.orchestration.batches import RANGE_END_TAG, RANGE_START_TAG
from solar_ml_pipeline.orchestration.definitions import build_definitions
from solar_ml_pipeline.orchestration.failures import DEVICE_TAG, PERIOD_TAG
from solar_ml_pipeline.orchestration.jobs import RETRAIN_JOB
from solar_ml_pipeline.orchestration.partitions import DEVICE_DIMENSION, partition_key
from solar_ml_pipeline.orchestration.resources import StoreResource
from solar_ml_pipeline.storage.run_records import attempt_id
from solar_ml_pipeline_tests.conftest import PERIOD
from solar_ml_pipeline_tests.e2e.webhook_receiver import WebhookReceiver

DEAD_WORKER = "Run worker died: process 4242 exited with signal 9 (SIGKILL)"


class Sleeps(list):
    """Records backoff sleeps instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """The receiver is on loopback; a developer's proxy settings must not reroute the alert."""
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def receiver():
    with WebhookReceiver() as r:
        yield r


def _failed(device_id="tracker01", period=PERIOD, error="No data found for training"):
    return FailedRun(run_id="abc123", job_name=RETRAIN_JOB, device_id=device_id, period=period,
                     error=error)


# payload ------------------------------------------------------------------------------------

def test_device_and_period_come_from_dimension_tags():
    tags = {DEVICE_TAG: "tracker01", PERIOD_TAG: PERIOD, "dagster/partition": "x|y"}
    assert device_and_period(tags) == ("tracker01", PERIOD)


def test_device_and_period_fall_back_to_the_multi_partition_key():
    assert device_and_period({"dagster/partition": f"tracker01|{PERIOD}"}) == ("tracker01", PERIOD)


def test_device_and_period_are_unknown_for_an_unpartitioned_run():
    assert device_and_period({}) == (None, None)
    assert device_and_period({"dagster/partition": "just-one"}) == (None, None)


def test_run_url_is_absolute_with_a_webserver_base_and_relative_without():
    assert run_url("abc123", "http://dagster.local:3000") == "http://dagster.local:3000/runs/abc123"
    assert run_url("abc123", None) == "/runs/abc123"


def test_alert_payload_names_device_period_run_error_and_link():
    assert alert_payload(_failed(), "http://ui:3000") == {
        "device_id": "tracker01",
        "period": PERIOD,
        "run_id": "abc123",
        "error": "No data found for training",
        "run_url": "http://ui:3000/runs/abc123",
        "failed_devices": [],
    }


# delivery -----------------------------------------------------------------------------------

def test_post_alert_delivers_the_payload_as_json_on_the_first_attempt(receiver):
    sleeps = Sleeps()
    payload = alert_payload(_failed(), None)
    assert post_alert(receiver.url, payload, sleep=sleeps) == 1
    assert receiver.payloads() == [payload]
    assert receiver.requests[0]["path"] == "/hooks/solar-ml"
    assert receiver.requests[0]["content_type"] == "application/json"
    assert sleeps == []


def test_post_alert_retries_after_a_server_error_and_backs_off():
    sleeps = Sleeps()
    with WebhookReceiver(statuses=[500]) as receiver:
        assert post_alert(receiver.url, {"run_id": "abc123"}, backoff_s=0.5, sleep=sleeps) == 2
        assert len(receiver.requests) == 2
    assert sleeps == [0.5]


def test_post_alert_gives_up_after_three_failed_attempts_with_growing_backoff():
    sleeps = Sleeps()
    with WebhookReceiver(default_status=503) as receiver:
        with pytest.raises(AlertNotDelivered, match=r"after 3 attempt\(s\): HTTP 503"):
            post_alert(receiver.url, {"run_id": "abc123"}, backoff_s=1.0, sleep=sleeps)
        assert len(receiver.requests) == 3
    assert sleeps == [1.0, 2.0]


def test_post_alert_does_not_retry_a_client_error():
    with WebhookReceiver(default_status=404) as receiver:
        with pytest.raises(AlertNotDelivered, match="HTTP 404"):
            post_alert(receiver.url, {"run_id": "abc123"}, sleep=Sleeps())
        assert len(receiver.requests) == 1


def test_post_alert_times_out_a_receiver_that_does_not_answer():
    with WebhookReceiver(delay_s=1.0) as receiver:
        with pytest.raises(AlertNotDelivered, match="after 2 attempt"):
            post_alert(receiver.url, {"run_id": "abc123"}, timeout_s=0.2, attempts=2,
                       sleep=Sleeps())
        assert len(receiver.requests) == 2


def test_post_alert_reports_an_unreachable_receiver_without_leaking_the_url_path():
    with WebhookReceiver() as receiver:
        url = receiver.url + "?token=secret"
    # the server is closed now: connection refused
    with pytest.raises(AlertNotDelivered) as excinfo:
        post_alert(url, {"run_id": "abc123"}, sleep=Sleeps())
    assert "http://127.0.0.1" in str(excinfo.value)
    assert "secret" not in str(excinfo.value) and "hooks" not in str(excinfo.value)


def test_post_alert_refuses_a_url_that_is_not_http():
    with pytest.raises(AlertNotDelivered, match="ALERT_WEBHOOK_URL is invalid"):
        post_alert("file:///etc/passwd", {"run_id": "abc123"}, sleep=Sleeps())


# the sensor ---------------------------------------------------------------------------------

def _evaluate(sensor, settings, instance, run, event):
    context = dg.build_run_status_sensor_context(
        sensor_name=RUN_FAILURE_SENSOR, dagster_event=event, dagster_instance=instance,
        dagster_run=run, resources={"store": StoreResource.from_settings(settings)},
    )
    return sensor(context.for_run_failure())


def _run_that_died(instance, settings, device_id="tracker01"):
    """A run whose worker was killed: no step ran, so nothing recorded the attempt."""
    job = build_definitions(settings).resolve_job_def(RETRAIN_JOB)
    key = partition_key(device_id, PERIOD)
    run = instance.create_run_for_job(
        job, tags={"dagster/partition": str(key), DEVICE_TAG: device_id, PERIOD_TAG: PERIOD},
    )
    event = instance.report_run_failed(run, message=DEAD_WORKER)
    return instance.get_run_by_id(run.run_id), event


def test_a_batch_whose_worker_died_mid_way_records_only_its_unrecorded_devices(
        settings, store, receiver):
    sensor = build_run_failure_sensor(settings.with_overrides(alert_webhook_url=receiver.url))
    job = build_definitions(settings).resolve_job_def(RETRAIN_JOB)
    devices = ["tracker01", "tracker02", "tracker03"]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("device", devices)
        run = instance.create_run_for_job(job, tags={
            RANGE_START_TAG: f"tracker01|{PERIOD}", RANGE_END_TAG: f"tracker03|{PERIOD}"})
        done = attempt_id(run.run_id, "tracker01", PERIOD, batch=True)
        store.upsert_run({"run_id": done, "device_id": "tracker01", "status": "success",
                          "trained_at": datetime(2026, 3, 10, 13, 5, tzinfo=UTC)})
        event = instance.report_run_failed(run, message=DEAD_WORKER)
        _evaluate(sensor, settings, instance, instance.get_run_by_id(run.run_id), event)
    assert store.get_run(done)["status"] == "success"  # a finished attempt is never overwritten
    for device_id in ("tracker02", "tracker03"):
        record = store.get_run(attempt_id(run.run_id, device_id, PERIOD, batch=True))
        assert record["status"] == "failed" and record["error"] == DEAD_WORKER
        assert record["dagster_run_id"] == run.run_id
    assert store.list_runs().total == 3
    [payload] = receiver.payloads()
    assert payload["failed_devices"] == ["tracker02", "tracker03"]
    assert payload["device_id"] is None and payload["run_id"] == run.run_id


def test_the_sensor_is_part_of_the_code_location_and_starts_running(settings):
    sensor = build_definitions(settings).resolve_sensor_def(RUN_FAILURE_SENSOR)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.description


def test_a_run_that_died_gets_its_failed_record_and_an_alert_from_the_sensor(
        settings, store, receiver, monkeypatch):
    sensor = build_run_failure_sensor(settings.with_overrides(
        alert_webhook_url=receiver.url, dagster_webserver_url="http://ui.example:3000"))
    with dg.instance_for_test() as instance:
        run, event = _run_that_died(instance, settings)
        assert store.get_run(run.run_id) is None
        _evaluate(sensor, settings, instance, run, event)
    record = store.get_run(run.run_id)
    assert record["status"] == "failed"
    assert record["error"] == DEAD_WORKER
    assert record["device_id"] == "tracker01" and record["period"] == PERIOD
    assert receiver.payloads() == [{
        "device_id": "tracker01", "period": PERIOD, "run_id": run.run_id,
        "error": DEAD_WORKER, "run_url": f"http://ui.example:3000/runs/{run.run_id}",
        "failed_devices": ["tracker01"],
    }]


def test_a_failed_step_is_alerted_with_the_assets_own_message_and_its_record_kept(
        settings, store, receiver):
    defs = build_definitions(settings)
    sensor = build_run_failure_sensor(settings.with_overrides(alert_webhook_url=receiver.url))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(DEVICE_DIMENSION, ["ghost01"])
        result = defs.resolve_job_def(RETRAIN_JOB).execute_in_process(
            instance=instance, partition_key=partition_key("ghost01", PERIOD), raise_on_error=False,
        )
        assert not result.success
        recorded_by_the_asset = store.get_run(result.run_id)
        run = instance.get_run_by_id(result.run_id)
        event = next(
            r.event_log_entry.dagster_event
            for r in instance.get_records_for_run(
                result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
        )
        _evaluate(sensor, settings, instance, run, event)
    assert store.get_run(result.run_id) == recorded_by_the_asset
    (payload,) = receiver.payloads()
    assert payload["device_id"] == "ghost01" and payload["period"] == PERIOD
    assert payload["error"].startswith("No data found for training: device ghost01")
    assert payload["run_url"] == f"/runs/{result.run_id}"


def test_a_webhook_that_is_down_is_logged_and_does_not_fail_the_sensor(settings, store, capfd,
                                                                      monkeypatch):
    monkeypatch.setattr("solar_ml_pipeline.orchestration.alerts.WEBHOOK_BACKOFF_S", 0.01)
    with WebhookReceiver() as receiver:
        url = receiver.url
    sensor = build_run_failure_sensor(settings.with_overrides(alert_webhook_url=url))
    with dg.instance_for_test() as instance:
        run, event = _run_that_died(instance, settings)
        _evaluate(sensor, settings, instance, run, event)
    assert store.get_run(run.run_id)["status"] == "failed"
    assert "alert not delivered to http://127.0.0.1 after 3 attempt(s)" in capfd.readouterr().err


def test_without_a_webhook_the_sensor_only_logs_and_records(settings, store, capfd):
    sensor = build_run_failure_sensor(settings)
    with dg.instance_for_test() as instance:
        run, event = _run_that_died(instance, settings)
        _evaluate(sensor, settings, instance, run, event)
    assert store.get_run(run.run_id)["status"] == "failed"
    assert f"run {run.run_id} (tracker01 {PERIOD}) failed: {DEAD_WORKER}" in capfd.readouterr().err


def test_failure_message_without_any_error_points_to_the_run_logs():
    assert "see the run's logs" in failure_message(None, [])
