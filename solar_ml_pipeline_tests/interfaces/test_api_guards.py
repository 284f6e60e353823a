"""The API's guards and limits on a real uvicorn server: the read token, the body size cap
(413), the foreground retrain timeout (504, the run going on), `Allow` on 405, one-line 422s,
and an OpenAPI document that states every error, pattern and bound."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import closing

import dagster as dg
import httpx
import pytest

from solar_ml_pipeline.config import ConfigError, settings_from_env
from solar_ml_pipeline.interfaces import api, api_guards
from solar_ml_pipeline.interfaces.api import create_app
from solar_ml_pipeline.orchestration.retraining import resolve_request
from solar_ml_pipeline.storage import open_store
from solar_ml_pipeline_tests.conftest import PERIOD, simulate_into
from solar_ml_pipeline_tests.interfaces.test_api import serving

WRITE = "guard-write-token-0123456789abcdef"
READ = "guard-read-token-0123456789abcdef"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("guards")
    env = {"SOLAR_ML_HOME": str(root / "home"), "MODEL_TYPE": "hist_gradient_boosting",
           "PERIODS_START": "2026-01-01", "REQUIRE_BEAT_PERSISTENCE": "false"}
    store = open_store(settings_from_env(env))
    simulate_into(store, "t1", interval_minutes=5)
    store.close()
    return env


@pytest.fixture(scope="module")
def guarded(home) -> Iterator[str]:
    settings = settings_from_env({**home, "API_TOKEN": WRITE, "API_READ_TOKEN": READ,
                                  "API_MAX_BODY_BYTES": "1024"})
    with serving(settings) as url:
        yield url


# --- settings ---------------------------------------------------------------------------------


def test_the_api_settings_default_and_refuse_bad_values_in_one_line():
    settings = settings_from_env({"API_READ_TOKEN": READ})
    assert (settings.api_max_body_bytes, settings.api_retrain_timeout_s) == (65536, 120.0)
    assert settings.api_read_token == READ and READ not in repr(settings)
    for name, bad in [("API_MAX_BODY_BYTES", "100"), ("API_MAX_BODY_BYTES", "1k"),
                      ("API_RETRAIN_TIMEOUT_S", "0"), ("API_RETRAIN_TIMEOUT_S", "soon"),
                      ("API_RETRAIN_TIMEOUT_S", "inf")]:
        with pytest.raises(ConfigError) as refused:
            settings_from_env({name: bad})
        message = str(refused.value)
        assert message.startswith(f"{name}={bad!r} is invalid: expected") and "\n" not in message


# --- read token -------------------------------------------------------------------------------


def test_with_api_read_token_every_read_needs_a_token_but_healthz(guarded):
    reads = ["/api/ml/runs", "/api/ml/runs/no-such-run", "/api/ml/model/current?device_id=t1",
             "/api/ml/model/history?device_id=t1", "/api/ml/scores?device_id=t1",
             "/api/ml/predict?device_id=t1", "/api/ml/predict/fleet",
             "/api/ml/backtest?device_id=t1&start=2026-03-01T13:00:00Z&end=2026-03-02T13:00:00Z",
             "/openapi.json"]
    with httpx.Client(base_url=guarded, timeout=60) as client:
        assert client.get("/healthz").status_code == 200
        for path in reads[:-1]:
            for headers in ({}, bearer(f"{READ}x"), {"Authorization": f"Basic {READ}"}):
                refused = client.get(path, headers=headers)
                assert refused.status_code == 401, (path, headers, refused.text)
                assert refused.headers["WWW-Authenticate"] == "Bearer"
                assert READ not in refused.text and WRITE not in refused.text
            for token in (READ, WRITE):
                allowed = client.get(path, headers=bearer(token))
                assert allowed.status_code not in (401, 403), (path, allowed.text)
        assert client.get("/api/ml/runs", headers=bearer(READ)).json()["total"] >= 0


def test_the_read_token_cannot_write_and_the_write_token_still_can(guarded):
    with httpx.Client(base_url=guarded, timeout=60) as client:
        refused = client.delete("/api/ml/runs/no-such-run", headers=bearer(READ))
        assert refused.status_code == 403 and "API_READ_TOKEN only reads" in refused.json()["detail"]
        assert client.delete("/api/ml/runs/no-such-run").status_code == 401
        assert client.delete("/api/ml/runs/no-such-run", headers=bearer(WRITE)).status_code == 404


def test_tokens_are_compared_in_constant_time_against_every_accepted_token(guarded, monkeypatch):
    compared = []
    real = api_guards.hmac.compare_digest

    def spy(sent, expected):
        compared.append(expected)
        return real(sent, expected)

    monkeypatch.setattr(api_guards.hmac, "compare_digest", spy)  # the server runs in this process
    assert httpx.get(f"{guarded}/api/ml/runs", headers=bearer(READ)).status_code == 200
    assert sorted(compared) == sorted([READ.encode(), WRITE.encode()])


def test_the_document_declares_read_security_only_when_reads_are_guarded(home, guarded):
    guarded_doc = httpx.get(f"{guarded}/openapi.json", headers=bearer(READ)).json()
    open_doc = create_app(settings_from_env(home)).openapi()
    for doc, reads_guarded in ((guarded_doc, True), (open_doc, False)):
        for path, operations in doc["paths"].items():
            for method, operation in operations.items():
                write = method in ("post", "delete")
                secured = operation.get("security") == [{"bearerAuth": []}]
                assert secured == (path != "/healthz" and (write or reads_guarded)), (path, method)
                assert ("401" in operation["responses"]) == secured, (path, method)


# --- the document -----------------------------------------------------------------------------


def test_the_document_states_every_error_body_pattern_and_bound(home):
    doc = create_app(settings_from_env(home)).openapi()
    error_shapes = {"#/components/schemas/ErrorBody", "#/components/schemas/HealthUnavailable",
                    "#/components/schemas/RetrainTimedOut"}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "$ref" in responses["200"]["content"]["application/json"]["schema"], path
            for status, response in responses.items():
                if status != "200":
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref in error_shapes, (path, method, status)
            if operation.get("parameters") or "requestBody" in operation:
                assert "422" in responses, (path, method)
            for parameter in operation.get("parameters", []):
                schema = parameter["schema"]
                options = schema.get("anyOf", [schema])
                for option in (o for o in options if o.get("type") != "null"):
                    if option["type"] == "string":
                        assert "pattern" in option or "enum" in option, parameter
                    if option["type"] == "integer":
                        assert {"minimum", "maximum"} <= set(option), parameter
    body = doc["components"]["schemas"]["RetrainBody"]["properties"]
    assert body["device_id"]["pattern"] == "^[A-Za-z0-9_-]{1,64}$"
    assert doc["components"]["schemas"]["ErrorBody"]["properties"]["detail"]["type"] == "string"
    assert doc["paths"]["/api/ml/retrain"]["post"]["responses"].keys() >= {
        "401", "403", "413", "422", "504"}


# --- 405 and 422 ------------------------------------------------------------------------------


def test_an_unsupported_method_is_405_with_every_method_of_the_path_in_allow(guarded):
    for method, path, allow in [("PATCH", "/api/ml/runs/some-run", "GET, DELETE"),
                                ("HEAD", "/api/ml/runs/some-run", "GET, DELETE"),
                                ("PUT", "/api/ml/retrain", "POST"),
                                ("OPTIONS", "/api/ml/runs", "GET")]:
        response = httpx.request(method, f"{guarded}{path}", headers=bearer(WRITE))
        assert response.status_code == 405, (method, path)
        assert response.headers["Allow"] == allow
        if method != "HEAD":
            assert response.json()["detail"] == f"method {method} not allowed here: use {allow}"


@pytest.mark.parametrize("path, reason", [
    ("/api/ml/runs?limit=0", "query limit: Input should be greater than or equal to 1"),
    ("/api/ml/runs?skip=-1&limit=x", "query limit: Input should be a valid integer"),
    ("/api/ml/runs?status=done", "invalid status 'done': expected success or failed"),
    ("/api/ml/runs/..x", "invalid run id '..x'"),
    ("/api/ml/model/current", "query device_id: Field required"),
    ("/api/ml/predict?device_id=a%20b", "invalid device id 'a b'"),
    ("/api/ml/backtest?device_id=t1&start=2026-03-01T13&end=2026-03-02T13:00:00Z",
     "invalid start '2026-03-01T13': expected an ISO 8601 date or time from 1970 to 2199"),
    ("/api/ml/backtest?device_id=t1&start=2026-03-02&end=2026-03-01", "is not after start"),
])
def test_validation_errors_are_one_line_strings_in_detail(guarded, path, reason):
    response = httpx.get(f"{guarded}{path}", headers=bearer(READ))
    assert response.status_code == 422, response.text
    assert list(response.json()) == ["detail"]
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and reason in detail, detail


def test_a_body_that_is_not_utf8_json_is_400_and_an_unexpected_error_500_both_one_line(
        guarded, home, monkeypatch):
    from fastapi.testclient import TestClient

    from solar_ml_pipeline.interfaces import operations

    garbled = httpx.post(f"{guarded}/api/ml/retrain", content=b'{"device_id": "\xff\xfe"}',
                         headers={"Content-Type": "application/json", **bearer(WRITE)})
    assert garbled.status_code == 400
    assert garbled.json() == {"detail": "body: not a UTF-8 JSON document: send JSON with "
                                        "Content-Type application/json"}

    def broken(*_, **__):
        raise RuntimeError(f"a bug that must not leak {READ}")

    monkeypatch.setattr(operations, "list_runs", broken)
    with TestClient(create_app(settings_from_env(home)), raise_server_exceptions=False) as client:
        response = client.get("/api/ml/runs")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error (RuntimeError): see the API server's log"}


# --- 413 --------------------------------------------------------------------------------------


def test_a_body_over_the_cap_is_413_before_the_endpoint_runs_declared_or_chunked(guarded, home):
    big = b'{"device_id": "t1", "pad": "' + b"x" * 2000 + b'"}'

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 256):
            yield big[start:start + 256]

    with httpx.Client(base_url=guarded, timeout=60) as client:
        declared = client.post("/api/ml/retrain", content=big,
                               headers={"Content-Type": "application/json"})
        chunked = client.post("/api/ml/retrain", content=chunks(),
                              headers={"Content-Type": "application/json", **bearer(WRITE)})
        # a body under the cap reaches the endpoint: without a token, the usual 401
        small = client.post("/api/ml/retrain", json={"device_id": "t1", "pad": "x" * 900})
    assert "chunked" in chunked.request.headers.get("Transfer-Encoding", "")
    for response in (declared, chunked):  # 413, not 401: refused before auth and the endpoint
        assert response.status_code == 413, response.text
        assert response.json() == {"detail": "request body over API_MAX_BODY_BYTES=1024 bytes: "
                                             "send a smaller body"}
    assert small.status_code == 401
    assert queued_runs(settings_from_env(home)) == []  # the authorised chunked one queued nothing


def queued_runs(settings) -> list:
    if not settings.dagster_home.is_dir():
        return []
    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        return instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))


# --- 504 --------------------------------------------------------------------------------------


def test_a_foreground_retrain_past_the_timeout_is_504_with_its_run_id_and_runs_on(home):
    settings = settings_from_env({**home, "API_TOKEN": WRITE, "API_RETRAIN_TIMEOUT_S": "0.05"})
    with serving(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        started = time.monotonic()
        response = client.post("/api/ml/retrain", headers=bearer(WRITE), json={
            "device_id": "t1", "period": PERIOD, "days": 7, "background": False})
        answered_in = time.monotonic() - started
        assert response.status_code == 504, response.text
        body = response.json()
        run_id = body["run_id"]
        assert set(body) == {"detail", "run_id"} and run_id in body["detail"]
        assert "API_RETRAIN_TIMEOUT_S=0.05 s" in body["detail"]
        deadline = time.monotonic() + 120
        record = client.get(f"/api/ml/runs/{run_id}")
        while record.status_code == 404 and time.monotonic() < deadline:
            time.sleep(0.25)
            record = client.get(f"/api/ml/runs/{run_id}")
        assert record.status_code == 200, record.text
        assert (record.json()["status"], record.json()["device_id"]) == ("success", "t1")
        finished_in = time.monotonic() - started
    assert answered_in < finished_in  # the answer did not wait for the run
    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        run = instance.get_run_by_id(run_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS and run.tags["solar/trigger"] == "api"


def test_a_foreground_retrain_within_the_timeout_answers_its_record(home):
    settings = settings_from_env({**home, "API_TOKEN": WRITE})
    with closing(open_store(settings)) as store:
        run_id, record = api.retrain_within(
            settings, store, resolve_request(settings, "nodata", PERIOD, 7), timeout_s=120)
    assert record is not None and record["run_id"] == run_id
    assert record["status"] == "failed" and "nodata" in record["error"]
