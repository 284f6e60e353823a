"""The management HTTP API of the original system, over the same operations as the CLI.

Reads are open; POST and DELETE need `Authorization: Bearer $API_TOKEN` and are refused
outright while API_TOKEN is unset. Endpoints are plain `def`s, so FastAPI runs each in a
worker thread: a foreground retrain blocks its own request, never the server.
Status codes: 422 invalid input, 404 unknown run / no model, 409 nothing current to predict
from, 503 store unreachable, 500 a model store fault (corrupt pointer, checksum mismatch).
"""

import hmac
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from solar_ml_pipeline.config import InvalidDeviceId, Settings
from solar_ml_pipeline.forecasting.backtest import BacktestUnavailable
from solar_ml_pipeline.forecasting.prediction import PredictionUnavailable, predict_latest
from solar_ml_pipeline.interfaces import accountability, operations
from solar_ml_pipeline.model_store.registry import (
    InvalidVersion,
    ModelStoreError,
    NoCurrentModel,
    VersionNotFound,
)
from solar_ml_pipeline.model_store.serving import ModelServer
from solar_ml_pipeline.orchestration.partitions import InvalidPeriod
from solar_ml_pipeline.storage import StoreUnavailable, open_store

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


class RetrainBody(BaseModel):
    device_id: str = Field(description="tracker id, 1-64 of A-Z a-z 0-9 _ -")
    days: int | None = Field(default=None, ge=1, le=3650,
                             description="days of readings (default RETRAIN_DAYS)")
    period: str | None = Field(default=None,
                               description="period key, e.g. 2026-02-24 (default: current)")
    background: bool = Field(default=True,
                             description="queue for the Dagster daemon instead of waiting")


def _json(payload: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(operations.json_ready(payload), status_code=status_code)


def _error_handler(status_code: int) -> Callable[[Request, Exception], JSONResponse]:
    def handle(_: Request, exc: Exception) -> JSONResponse:
        return _json({"detail": str(exc)}, status_code)

    return handle


def write_access(settings: Settings) -> Callable[..., None]:
    """Dependency for POST/DELETE: a constant-time match against API_TOKEN, never echoed."""
    bearer = HTTPBearer(auto_error=False, description="API_TOKEN of the server")

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if settings.api_token is None:
            raise HTTPException(403, "writes are disabled on this server: set API_TOKEN in its "
                                     "environment and send it as `Authorization: Bearer ...`")
        if credentials is None:
            raise HTTPException(401, "missing bearer token: send `Authorization: Bearer "
                                     "$API_TOKEN`", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.credentials.encode(),
                                   settings.api_token.encode()):
            raise HTTPException(401, "wrong bearer token: send the server's API_TOKEN",
                                headers={"WWW-Authenticate": "Bearer"})

    return require_token


def create_app(settings: Settings) -> FastAPI:
    store = open_store(settings)
    server = ModelServer(operations.registry_for(settings))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()

    app = FastAPI(
        title="solar-ml management API",
        description="Retrain, audit and query the per-tracker power forecast models.",
        version="1.0",
        lifespan=lifespan,
    )
    for error, status_code in ERROR_STATUS.items():
        app.add_exception_handler(error, _error_handler(status_code))
    writer = [Depends(write_access(settings))]

    @app.get("/healthz", tags=["health"])
    def healthz() -> JSONResponse:
        """200 when the store answers, 503 with the reason when it does not."""
        try:
            return _json(operations.health(settings, store))
        except StoreUnavailable as exc:
            return _json({"status": "unavailable", "store": settings.backend,
                          "detail": str(exc)}, 503)

    @app.post("/api/ml/retrain", tags=["retraining"], dependencies=writer)
    def retrain(body: RetrainBody) -> JSONResponse:
        """Queue a retrain for the daemon (`background`, default) or run it and wait."""
        from solar_ml_pipeline.orchestration.retraining import resolve_request

        request = resolve_request(settings, body.device_id, body.period, body.days)
        if body.background:
            queued = operations.queue_retrain(settings, store, request, trigger="api")
            return _json({"success": True, "message": "Retraining started in background",
                          "background": True, **queued})
        record = operations.retrain_now(settings, store, request, trigger="api")
        return _json({"success": record.get("status") == "success", "background": False,
                      **record})

    @app.get("/api/ml/runs", tags=["runs"])
    def list_runs(
        device_id: str | None = None,
        status: str | None = Query(default=None, description="success or failed"),
        promoted: bool | None = None,
        limit: int = Query(default=operations.DEFAULT_LIMIT, ge=1, le=operations.MAX_LIMIT),
        skip: int = Query(default=0, ge=0),
    ) -> JSONResponse:
        """Run records newest first: `{"total": N, "runs": [...]}`."""
        return _json(operations.list_runs(store, device_id=device_id, status=status,
                                          promoted=promoted, limit=limit, skip=skip))

    @app.get("/api/ml/runs/{run_id}", tags=["runs"])
    def show_run(run_id: str) -> JSONResponse:
        return _json(operations.show_run(store, run_id))

    @app.delete("/api/ml/runs/{run_id}", tags=["runs"], dependencies=writer)
    def delete_run(run_id: str) -> JSONResponse:
        """Deletes the run-log record (not the model version, not the Dagster run)."""
        return _json(operations.delete_run(store, run_id))

    @app.get("/api/ml/model/current", tags=["models"])
    def current_model(device_id: str) -> JSONResponse:
        """The pointer of the device: `model_exists` false when it has no model yet."""
        return _json(operations.current_model(settings, device_id))

    @app.get("/api/ml/model/history", tags=["models"])
    def model_history(device_id: str) -> JSONResponse:
        """Who served the device when: every pointer move, newest first."""
        return _json(accountability.model_history(settings, device_id))

    @app.get("/api/ml/scores", tags=["forecasts"])
    def scores(device_id: str,
               days: int = Query(default=accountability.DEFAULT_SCORE_DAYS, ge=1,
                                 le=accountability.MAX_SCORE_DAYS)) -> JSONResponse:
        """Realised scores of the device's periods that started in the last `days` days,
        newest first: what served, MAE, RMSE and skill against both baselines."""
        return _json(accountability.list_scores(store, device_id, days=days))

    @app.get("/api/ml/backtest", tags=["forecasts"])
    def backtest_span(device_id: str, start: str, end: str) -> JSONResponse:
        """Every reading of [start, end) forecast by what served it then, and the summary;
        404 when the span has no readings or nothing served."""
        return _json(accountability.backtest_span(settings, store, device_id, start, end))

    @app.get("/api/ml/predict", tags=["models"])
    def predict(device_id: str) -> JSONResponse:
        """Power forecast HORIZON_MINUTES after the device's newest reading."""
        return _json(predict_latest(settings, store, server, device_id))

    return app


def serve(settings: Settings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
