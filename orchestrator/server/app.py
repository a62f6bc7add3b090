"""The HTTP app: Starlette in the orchestrator's own process (docs/serving.md says why not Ray Serve).

    app = build_app(ServeSettings(model="model/demo/pd"))    # then any ASGI server; `plandiff serve` runs uvicorn

Routes: POST /v1/completions, POST /v1/chat/completions (OpenAI wire format, SSE when stream is
true), GET /v1/models, GET /v1/models/{id}, GET /health (200 ready, 503 starting or draining),
GET /metrics (Prometheus). With an API key set, /v1/* needs `Authorization: Bearer KEY`.
"""

from __future__ import annotations

import hmac
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..settings import ServeSettings
from .completions import handle, send_json
from .errors import APIError
from .service import Service


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def on_api_error(request: Request, err: APIError) -> Response:
    return error_response(err)


async def on_http_error(request: Request, err: HTTPException) -> Response:
    messages = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
    return error_response(APIError(err.status_code, messages.get(err.status_code, str(err.detail)), None, code,
                                   dict(err.headers or {})))


async def on_unexpected(request: Request, err: Exception) -> Response:
    service: Service = request.app.state.service
    service.log.error("request_internal_error", path=request.url.path, error=f"{type(err).__name__}: {str(err)[:300]}")
    return error_response(APIError(500, "internal error; the server log has the details", None, "internal_error"))


async def completions(request: Request):
    return await handle(request, "completion")


async def chat_completions(request: Request):
    return await handle(request, "chat")


def _model_card(service: Service) -> dict:
    card = {"id": service.model_name, "object": "model", "created": service.created, "owned_by": "plandiff"}
    if service.codec is not None and service.codec.max_positions:
        card["max_model_len"] = service.codec.max_positions
    return card


async def models(request: Request) -> Response:
    service: Service = request.app.state.service
    return JSONResponse({"object": "list", "data": [_model_card(service)]})


async def model(request: Request) -> Response:
    service: Service = request.app.state.service
    name = request.path_params["model"]
    if name != service.model_name:
        raise APIError(404, f"the model {name!r} does not exist; this server serves {service.model_name!r}", "model",
                       "model_not_found")
    return JSONResponse(_model_card(service))


async def health(request: Request) -> Response:
    service: Service = request.app.state.service
    body = {"status": service.state, "model": service.model_name, "requests_running": service.admission.running,
            "requests_waiting": service.admission.waiting}
    if service.state == "ready":
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers=service.retry_after())


async def metrics(request: Request) -> Response:
    service: Service = request.app.state.service
    return Response(service.metrics.exposition(), media_type=service.metrics.content_type)


class APIKeyCheck:
    """Pure ASGI: /v1/* needs `Authorization: Bearer KEY` (compared in constant time); /health and
    /metrics stay open for probes and scrapers."""

    def __init__(self, app, service: Service, key: str):
        self.app = app
        self.service = service
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                self.service.metrics.reject("unauthorized")
                message = "missing API key" if not given else "invalid API key"
                err = APIError(401, f"{message}: send 'Authorization: Bearer <key>'", None, "invalid_api_key",
                               {"WWW-Authenticate": "Bearer"})
                await send_json(send, 401, err.body(), err.headers)
                return
        await self.app(scope, receive, send)


def build_app(settings: ServeSettings, served_model_name: str | None = None) -> Starlette:
    """The app of one model. It answers at once; the model loads in the background (503 until then)."""
    service = Service(settings, served_model_name)

    @asynccontextmanager
    async def lifespan(app):
        service.begin()
        try:
            yield
        finally:
            await service.stop()

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        APIError: on_api_error, HTTPException: on_http_error, Exception: on_unexpected})
    app.state.service = service
    if settings.api_key:
        app.add_middleware(APIKeyCheck, service=service, key=settings.api_key)
    return app
