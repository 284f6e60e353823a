"""The API's guards: bearer tokens, the body size cap, one-line validation errors and a 405
that names every method of its path. api.py builds the routes on them."""

import hmac
from collections import deque
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from solar_ml_pipeline.config import Settings, validate_device_id
from solar_ml_pipeline.interfaces import operations
from solar_ml_pipeline.storage.run_records import one_line


def json_response(payload: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(operations.json_ready(payload), status_code=status_code)


# --- validation errors: one line, in the words the operations use ----------------------------


def _domain_message(settings: Settings, name: str, value: object) -> str | None:
    """The operation's own refusal of a value FastAPI refused first, if it has one."""
    try:
        if name == "device_id":
            validate_device_id(value)
        elif name == "run_id":
            operations.validate_run_id(value)
        elif name == "status":
            return (f"invalid status {str(value)[:40]!r}: expected "
                    f"{' or '.join(operations.RUN_STATUSES)}")
        elif name == "period" and isinstance(value, str):
            from solar_ml_pipeline.orchestration.partitions import period_bounds

            period_bounds(settings, value)
        elif name in ("start", "end"):
            return (f"invalid {name} {str(value)[:40]!r}: expected an ISO 8601 date or "
                    "time from 1970 to 2199, e.g. 2026-03-01T13:00:00Z (no zone: UTC)")
    except (ValueError, LookupError) as exc:
        return str(exc)
    return None


def validation_detail(settings: Settings, errors: list[Mapping[str, Any]]) -> str:
    """FastAPI's list of validation errors as the one line every other error is."""
    parts: list[str] = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        name = loc[-1] if len(loc) > 1 else ""
        message = None
        if error.get("type") == "json_invalid":
            message = f"body: invalid JSON ({error.get('ctx', {}).get('error', 'decode error')})"
        elif error.get("type") != "missing" and name:
            message = _domain_message(settings, name, error.get("input"))
        if message is None:
            where = " ".join([loc[0], ".".join(loc[1:])]).strip() if loc else "request"
            message = f"{where}: {error.get('msg', 'invalid')}"
        if message not in parts:
            parts.append(message)
    return one_line("; ".join(parts) or "invalid request")


# --- auth -------------------------------------------------------------------------------------


def _matches(sent: str, *tokens: str | None) -> bool:
    """Whether `sent` is one of the tokens; every one is compared, each in constant time."""
    sent_bytes = sent.encode()
    results = [hmac.compare_digest(sent_bytes, token.encode()) for token in tokens if token]
    return any(results)


def _bearer(settings: Settings) -> HTTPBearer:
    reads = ("reads need API_READ_TOKEN or API_TOKEN" if settings.api_read_token
             else "reads are open")
    return HTTPBearer(auto_error=False, scheme_name="bearerAuth",
                      description=f"API_TOKEN of the server for writes; {reads}")


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


def write_access(settings: Settings) -> Callable[..., None]:
    """Dependency for POST/DELETE: a constant-time match against API_TOKEN, never echoed."""
    bearer = _bearer(settings)

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        disabled = ("writes are disabled on this server: set API_TOKEN in its environment and "
                    "send it as `Authorization: Bearer ...`")
        if credentials is None:  # 401 first: no credentials is what a client can fix
            raise _unauthorized("missing bearer token: send `Authorization: Bearer $API_TOKEN`"
                                + ("" if settings.api_token else f" ({disabled})"))
        if settings.api_token is None:
            raise HTTPException(403, disabled)
        if _matches(credentials.credentials, settings.api_token):
            return
        if _matches(credentials.credentials, settings.api_read_token):
            raise HTTPException(403, "API_READ_TOKEN only reads: send the server's API_TOKEN "
                                     "to write")
        raise _unauthorized("wrong bearer token: send the server's API_TOKEN")

    return require_token


def read_access(settings: Settings) -> Callable[..., None]:
    """Dependency for reads while API_READ_TOKEN is set: that token or API_TOKEN."""
    bearer = _bearer(settings)

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if credentials is None:
            raise _unauthorized("missing bearer token: send `Authorization: Bearer "
                                "$API_READ_TOKEN` (or $API_TOKEN)")
        if not _matches(credentials.credentials, settings.api_read_token, settings.api_token):
            raise _unauthorized("wrong bearer token: send the server's API_READ_TOKEN or "
                                "API_TOKEN")

    return require_token


# --- limits -----------------------------------------------------------------------------------


class BodySizeLimit:
    """Pure ASGI: a body over `max_bytes` (declared or, when chunked, counted) is 413 before
    the app sees any of it; a smaller one is buffered and replayed to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return
        messages: deque[Message] = deque()
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.popleft() if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body over API_MAX_BODY_BYTES={self.max_bytes} bytes: send a "
                       "smaller body"}, status_code=413, headers={"Connection": "close"})
        await response(scope, _nothing_to_receive, send)


async def _nothing_to_receive() -> Message:
    return {"type": "http.disconnect"}


def _allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route serves at the request's path (the router's own 405 names only
    the first route that matched the path)."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    return sorted(methods, key=lambda m: (order.index(m) if m in order else len(order), m))


# --- installing them --------------------------------------------------------------------------


def install_guards(app: FastAPI, settings: Settings) -> None:
    """The 413 middleware and the handlers that keep every error `{"detail": "<one line>"}`:
    FastAPI's validation errors, its HTTP errors (405 with a complete `Allow`) and any
    unexpected exception (500, the traceback in the server log)."""

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, RequestValidationError):
            raise exc
        return json_response({"detail": validation_detail(settings, list(exc.errors()))}, 422)

    async def on_http_error(request: Request, exc: Exception) -> Any:
        if not isinstance(exc, StarletteHTTPException):
            raise exc
        if exc.status_code == 405:
            exc.headers = {**(exc.headers or {}),
                           "Allow": ", ".join(_allowed_methods(app, request.scope))}
            exc.detail = f"method {request.method} not allowed here: use {exc.headers['Allow']}"
        elif exc.status_code == 400 and request.method in ("POST", "PUT", "PATCH"):
            # FastAPI's answer to a body it cannot even decode (not UTF-8, say)
            exc.detail = ("body: not a UTF-8 JSON document: send JSON with Content-Type "
                          "application/json")
        return await http_exception_handler(request, exc)

    def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        return json_response({"detail": f"internal error ({type(exc).__name__}): see the API "
                                        "server's log"}, 500)

    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)
