"""The management HTTP API of the original system, over the same operations as the CLI.

Auth: POST and DELETE need `Authorization: Bearer $API_TOKEN`; while API_TOKEN is unset
every write is refused (401 without a token, 403 with one). Reads are open unless
API_READ_TOKEN is set: then every route but /healthz needs a bearer token, API_READ_TOKEN or
API_TOKEN (the read token cannot write: 403). Tokens are compared in constant time, each
against every accepted token, and never echoed. Endpoints are plain `def`s, so FastAPI runs
each in a worker thread.
Limits: a request body over API_MAX_BODY_BYTES is 413 before any endpoint runs; a foreground
retrain still running after API_RETRAIN_TIMEOUT_S is 504 with its run id and goes on in its
own thread until its Dagster run ends and its run-log record is written.

Every error is `{"detail": "<one line>"}`, FastAPI's own validation errors (422) included.
Status codes: 400 a body that is not UTF-8 JSON, 401 missing or wrong token, 403 writes
disabled or a read token on a write, 404 unknown run / no model / nothing to backtest,
405 unsupported method (with an `Allow` naming every method of the path), 409 nothing
current to predict from, 413 body too large, 422 invalid input, 500 a model store fault
(corrupt pointer, checksum mismatch), 503 store unreachable, 504 retrain timeout.
The OpenAPI document (/openapi.json) states them per route, with each parameter's pattern
and bounds and a model for each answer; test_api_contract.py checks it with schemathesis.
"""

import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse

from solar_ml_pipeline.config import InvalidDeviceId, Settings
from solar_ml_pipeline.forecasting.backtest import BacktestUnavailable
from solar_ml_pipeline.forecasting.prediction import (
    FLEET_DEFAULT_LIMIT,
    FLEET_MAX_LIMIT,
    ForecastCache,
    PredictionUnavailable,
    predict_fleet,
    predict_latest,
)
from solar_ml_pipeline.interfaces import accountability, operations
from solar_ml_pipeline.interfaces.api_guards import (
    install_guards,
    json_response,
    read_access,
    write_access,
)
from solar_ml_pipeline.interfaces.api_models import (
    DEVICE_EXAMPLE,
    DEVICE_ID_REGEX,
    INSTANT_REGEX,
    MAX_SKIP,
    RUN_ID_REGEX,
    SPAN_EXAMPLE,
    BacktestResult,
    CurrentModel,
    ErrorBody,
    FleetForecasts,
    Forecast,
    Health,
    HealthUnavailable,
    ModelHistory,
    RetrainBody,
    Retrained,
    RetrainTimedOut,
    RunDeleted,
    RunRecord,
    RunsPage,
    Scores,
)
from solar_ml_pipeline.model_store.registry import (
    InvalidVersion,
    ModelStoreError,
    NoCurrentModel,
    VersionNotFound,
)
from solar_ml_pipeline.model_store.serving import ModelServer
from solar_ml_pipeline.orchestration.partitions import InvalidPeriod
from solar_ml_pipeline.storage import StoreUnavailable, open_store
from solar_ml_pipeline.storage.run_records import one_line

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

# Most specific first is not needed: Starlette picks the handler by the exception's MRO.
ERROR_STATUS: dict[type[Exception], int] = {
    InvalidDeviceId: 422,
    InvalidPeriod: 422,
    InvalidVersion: 422,
    operations.InvalidRequest: 422,
    operations.UnknownRun: 404,
    NoCurrentModel: 404,
    VersionNotFound: 404,
    PredictionUnavailable: 409,
    BacktestUnavailable: 404,
    StoreUnavailable: 503,
    ModelStoreError: 500,
    operations.RetrainFailed: 500,
}

ERROR_MEANING = {
    400: "a request body that is not UTF-8 JSON",
    401: "missing or wrong bearer token",
    403: "writes disabled (API_TOKEN unset), or a read-only token used to write",
    404: "not found (the detail says what)",
    409: "nothing current to answer from (the detail says why)",
    413: "request body over API_MAX_BODY_BYTES",
    422: "invalid input: the detail names the field and the accepted form",
    500: "a model store fault (corrupt pointer, checksum mismatch) or an unexpected error",
    503: "the readings/run-log store is unreachable",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody, "description": ERROR_MEANING[code]} for code in codes}


def _error_handler(status_code: int) -> Callable[[Request, Exception], JSONResponse]:
    def handle(_: Request, exc: Exception) -> JSONResponse:
        return json_response({"detail": one_line(str(exc))}, status_code)

    return handle


# --- foreground retrain with a deadline -------------------------------------------------------


def retrain_within(settings: Settings, store: Any, request: Any,
                   timeout_s: float) -> tuple[str, dict | None]:
    """Start the foreground retrain in its own (non-daemon) thread and wait up to `timeout_s`:
    (run id, its record), or (run id, None) when it is still running. An abandoned run goes
    on to its end, and the process waits for it before exiting."""
    run_id = str(uuid.uuid4())
    outcome: Future[dict] = Future()

    def work() -> None:
        try:
            outcome.set_result(operations.retrain_now(settings, store, request, trigger="api",
                                                      run_id=run_id))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting request, if any
            outcome.set_exception(exc)
            logger.warning(f"foreground retrain run {run_id} failed: {one_line(str(exc))}")

    threading.Thread(target=work, name=f"retrain-{run_id}", daemon=False).start()
    try:
        return run_id, outcome.result(timeout=timeout_s)
    except FutureTimeout:
        return run_id, None


# --- the app ----------------------------------------------------------------------------------


DeviceId = Annotated[str, Query(
    pattern=DEVICE_ID_REGEX, min_length=1, max_length=64, examples=[DEVICE_EXAMPLE],
    description="tracker id, 1-64 of A-Z a-z 0-9 _ -")]
RunId = Annotated[str, Path(
    pattern=RUN_ID_REGEX, min_length=1, max_length=128,
    description="run id shown by GET /api/ml/runs: a letter or digit, then up to 127 of "
                "A-Z a-z 0-9 _ . : -")]


def _instant(name: str, example: str) -> Any:
    return Query(pattern=INSTANT_REGEX, max_length=40, examples=[example],
                 description=f"{name}: an ISO 8601 date or date and time, years 1970-2199, "
                             "with Z or an offset (none: UTC)")


def create_app(settings: Settings) -> FastAPI:
    store = open_store(settings)
    server = ModelServer(operations.registry_for(settings))
    forecasts = ForecastCache()  # per process: keyed by the pointer read on every call

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()

    app = FastAPI(
        title="solar-ml management API",
        description="Retrain, audit and query the per-tracker power forecast models. Every "
                    "error is `{\"detail\": \"<one line>\"}`.",
        version="1.1",
        lifespan=lifespan,
    )
    for error, status_code in ERROR_STATUS.items():
        app.add_exception_handler(error, _error_handler(status_code))

    install_guards(app, settings)

    writer = [Depends(write_access(settings))]
    reads_guarded = settings.api_read_token is not None
    reader = [Depends(read_access(settings))] if reads_guarded else []
    read_errors = (401,) if reads_guarded else ()
    store_errors = (422, 500, 503)

    @app.get("/healthz", tags=["health"], response_model=Health,
             responses={503: {"model": HealthUnavailable,
                              "description": "the store does not answer"}, **_errors(500)})
    def healthz() -> JSONResponse:
        """200 when the store answers, 503 with the reason when it does not. Always open."""
        try:
            return json_response(operations.health(settings, store))
        except StoreUnavailable as exc:
            return json_response({"status": "unavailable", "store": settings.backend,
                                  "detail": one_line(str(exc))}, 503)

    @app.post("/api/ml/retrain", tags=["retraining"], dependencies=writer,
              response_model=Retrained,
              responses={**_errors(400, 401, 403, 413, *store_errors),
                         504: {"model": RetrainTimedOut,
                               "description": "foreground retrain still running after "
                                              "API_RETRAIN_TIMEOUT_S; it goes on, poll "
                                              "GET /api/ml/runs/{run_id}"}})
    def retrain(body: RetrainBody) -> JSONResponse:
        """Queue a retrain for the daemon (`background`, default) or run it and wait, at most
        API_RETRAIN_TIMEOUT_S: 504 with the run id after that, the run going on."""
        from solar_ml_pipeline.orchestration.retraining import resolve_request

        request = resolve_request(settings, body.device_id, body.period, body.days)
        if body.background:
            queued = operations.queue_retrain(settings, store, request, trigger="api")
            return json_response({"success": True, "background": True,
                                  "message": "Retraining started in background", **queued})
        store.ping()  # the usual outage is 503 before anything starts
        run_id, record = retrain_within(settings, store, request,
                                        settings.api_retrain_timeout_s)
        if record is None:
            waited = f"API_RETRAIN_TIMEOUT_S={settings.api_retrain_timeout_s:g} s"
            return json_response({"detail": f"retrain run {run_id} still running after "
                                            f"{waited}; it goes on: poll GET /api/ml/runs/"
                                            f"{run_id}", "run_id": run_id}, 504)
        return json_response({"success": record.get("status") == "success",
                              "background": False, **record})

    @app.get("/api/ml/runs", tags=["runs"], dependencies=reader, response_model=RunsPage,
             responses=_errors(*read_errors, *store_errors))
    def list_runs(
        device_id: Annotated[str | None, Query(
            pattern=DEVICE_ID_REGEX, min_length=1, max_length=64,
            description="only this tracker's runs")] = None,
        status: Annotated[Literal["success", "failed"] | None, Query(
            description="success or failed")] = None,
        promoted: bool | None = None,
        limit: Annotated[int, Query(ge=1, le=operations.MAX_LIMIT)] = operations.DEFAULT_LIMIT,
        skip: Annotated[int, Query(ge=0, le=MAX_SKIP)] = 0,
    ) -> JSONResponse:
        """Run records newest first: `{"total": N, "runs": [...]}`."""
        return json_response(operations.list_runs(store, device_id=device_id, status=status,
                                                  promoted=promoted, limit=limit, skip=skip))

    @app.get("/api/ml/runs/{run_id}", tags=["runs"], dependencies=reader,
             response_model=RunRecord, responses=_errors(*read_errors, 404, *store_errors))
    def show_run(run_id: RunId) -> JSONResponse:
        return json_response(operations.show_run(store, run_id))

    @app.delete("/api/ml/runs/{run_id}", tags=["runs"], dependencies=writer,
                response_model=RunDeleted, responses=_errors(401, 403, 404, *store_errors))
    def delete_run(run_id: RunId) -> JSONResponse:
        """Deletes the run-log record (not the model version, not the Dagster run)."""
        return json_response(operations.delete_run(store, run_id))

    @app.get("/api/ml/model/current", tags=["models"], dependencies=reader,
             response_model=CurrentModel, responses=_errors(*read_errors, 422, 500))
    def current_model(device_id: DeviceId) -> JSONResponse:
        """The pointer of the device: `model_exists` false when it has no model yet."""
        return json_response(operations.current_model(settings, device_id))

    @app.get("/api/ml/model/history", tags=["models"], dependencies=reader,
             response_model=ModelHistory, responses=_errors(*read_errors, 422, 500))
    def model_history(device_id: DeviceId) -> JSONResponse:
        """Who served the device when: every pointer move, newest first."""
        return json_response(accountability.model_history(settings, device_id))

    @app.get("/api/ml/scores", tags=["forecasts"], dependencies=reader, response_model=Scores,
             responses=_errors(*read_errors, *store_errors))
    def scores(device_id: DeviceId,
               days: Annotated[int, Query(ge=1, le=accountability.MAX_SCORE_DAYS,
                                          examples=[365])] = accountability.DEFAULT_SCORE_DAYS,
               ) -> JSONResponse:
        """Realised scores of the device's periods that started in the last `days` days,
        newest first: what served, MAE, RMSE and skill against both baselines."""
        return json_response(accountability.list_scores(store, device_id, days=days))

    @app.get("/api/ml/backtest", tags=["forecasts"], dependencies=reader,
             response_model=BacktestResult, responses=_errors(*read_errors, 404, *store_errors))
    def backtest_span(device_id: DeviceId,
                      start: Annotated[str, _instant("start", SPAN_EXAMPLE[0])],
                      end: Annotated[str, _instant("end, exclusive", SPAN_EXAMPLE[1])],
                      ) -> JSONResponse:
        """Every reading of [start, end) forecast by what served it then, and the summary;
        422 unless end is after start and at most 400 days later, 404 when the span has no
        readings or nothing served."""
        return json_response(accountability.backtest_span(settings, store, device_id, start,
                                                          end))

    @app.get("/api/ml/predict", tags=["models"], dependencies=reader, response_model=Forecast,
             responses=_errors(*read_errors, 404, 409, *store_errors))
    def predict(device_id: DeviceId) -> JSONResponse:
        """Power forecast HORIZON_MINUTES after the device's newest reading."""
        return json_response(predict_latest(settings, store, server, device_id,
                                            cache=forecasts))

    @app.get("/api/ml/predict/fleet", tags=["models"], dependencies=reader,
             response_model=FleetForecasts, responses=_errors(*read_errors, *store_errors))
    def predict_all(
        limit: Annotated[int, Query(ge=1, le=FLEET_MAX_LIMIT)] = FLEET_DEFAULT_LIMIT,
        skip: Annotated[int, Query(ge=0, le=MAX_SKIP)] = 0,
    ) -> JSONResponse:
        """The latest forecast of every device with readings, in id order, a page at a time;
        the page's devices without one are in `unavailable` with the reason."""
        return json_response(predict_fleet(settings, store, server, limit=limit, skip=skip,
                                           cache=forecasts))

    return app


def app_from_environment() -> FastAPI:
    """The app on the settings of the environment: what each uvicorn worker process builds."""
    from solar_ml_pipeline.config import load_settings

    return create_app(load_settings())


def serve(settings: Settings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          workers: int = 1) -> None:
    """One process, or `workers` uvicorn worker processes sharing the port, each with its own
    model and forecast caches (both keyed by the pointer each call reads)."""
    import uvicorn

    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
        return
    uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=workers, host=host,
                port=port, log_level="info")
