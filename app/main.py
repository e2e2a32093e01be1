"""Assemble the app: one ``create_app``; the lifespan owns every client; typed exception handlers."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import __version__
from app.errors import VGateError, clean_errors
from app.logging import configure_logging, info_enabled
from app.metrics import Metrics
from app.middleware import AccessMiddleware, BodyLimitMiddleware, RequestContextMiddleware
from app.routers import admin, agent, health, jobs, openai, playground, predict, schemas, tools
from app.routers import evaluate as evaluate_router
from app.routers import optimize as optimize_router
from app.routers.direct import head_routes
from app.services.access import build_keyring
from app.services.agent import AgentService
from app.services.jobs import JobService
from app.services.keys import KeyAdmin, KeyStore
from app.services.limits import MemoryLimitStore, Meter, RedisLimitStore
from app.services.lm import LMClient
from app.services.passthrough import PassthroughService
from app.services.predict import PredictService
from app.services.programs import ProgramRegistry, ProgramRunner, load_programs
from app.services.state import connect as connect_store
from app.services.state.connection import Health, StoreUnavailable, guarded
from app.settings import Settings
from app.tools import build_tool_executor

log = structlog.get_logger("vgate")


def _error_response(request: Request, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
    body["request_id"] = request.scope.get("state", {}).get("request_id")
    if request.url.path.startswith("/v1/"):  # the OpenAI-compatible routes: the fields its clients read too
        body.setdefault("param", None)
        body.setdefault("code", status)
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VGateError)
    async def vgate_error(request: Request, exc: VGateError) -> JSONResponse:
        if exc.status_code >= 500:
            log.warning("request_failed", error_type=exc.type, error=exc.message, status=exc.status_code)
        return _error_response(request, exc.status_code, exc.body(), exc.headers())

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error_response(request, 400, {"type": "invalid_json", "message": "request body is not valid JSON",
                                                  "errors": clean_errors(errors)})
        first = errors[0] if errors else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = first.get("msg", "invalid request")
        return _error_response(request, 422, {"type": "invalid_request",
                                              "message": f"{loc}: {msg}" if loc else msg,
                                              "errors": clean_errors(errors)})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI reading the body
            return _error_response(request, 400, {"type": "invalid_json",
                                                  "message": "request body is not valid JSON (not UTF-8)"})
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(request, exc.status_code, {"type": kind, "message": str(exc.detail)},
                               dict(exc.headers or {}))

    # Unexpected exceptions become a 500 JSON error in RequestContextMiddleware, where the request id
    # is still bound (Starlette runs an app-level Exception handler outside user middleware).


def _install_openapi(app: FastAPI) -> None:
    """The document as the routes declare it, plus the event-stream schemas (FastAPI registers only
    the models of JSON responses), the headers every answer carries, and never FastAPI's
    {"detail": [...]} 422: the gateway's is an ErrorResponse (each route declares it; this also
    covers a route that forgets)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = generate()
            doc.setdefault("paths", {}).update(openai.openapi_paths())  # plain ASGI routes (see routers/openai.py)
            components = doc.setdefault("components", {}).setdefault("schemas", {})
            components.update(schemas.event_stream_components())
            components.update(jobs.event_stream_components())
            if app.state.keyring.enabled:  # how to present a key, on every route that needs one
                doc["components"]["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer"},
                    "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}}
                for path, item in doc["paths"].items():
                    if path not in ("/healthz", "/readyz"):
                        for op in item.values():
                            op["security"] = [{"bearer": []}, {"apiKey": []}]
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            for path, item in doc.get("paths", {}).items():
                for op in item.values():
                    for status, response in op.get("responses", {}).items():
                        headers = response.setdefault("headers", {})
                        headers.update(schemas.COMMON_HEADERS)  # RequestContextMiddleware sets them on every answer
                        if path.startswith("/agent") and status == "200":
                            headers.update(schemas.RUN_ID_HEADER)
                    invalid = op.get("responses", {}).get("422", {})
                    if "HTTPValidationError" in str(invalid.get("content")):
                        invalid["content"] = {"application/json": {"schema": {
                            "$ref": schemas.REF.format(model="ErrorResponse")}}}
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _install_docs(app: FastAPI) -> None:
    """Swagger UI from the gateway itself: FastAPI's /docs loads it from a CDN, so on a host
    without internet the page is blank. The files come from the fastapi-offline package."""
    app.mount("/docs/static", StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}/docs/static/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/static/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/static/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io
        )


def create_app(settings: Settings | None = None, *, lm_transport: httpx.AsyncBaseTransport | None = None,
               freeze_gc: bool = False) -> FastAPI:
    """The app. ``freeze_gc`` (``vgate serve``): once started, everything built so far — the app, its
    clients, the server, the modules — lives as long as the process, so it is moved out of the
    collector's sight, or every collection walks it again (0.55x -> 0.77x a minimal proxy's
    requests/s, RESULTS.md section 6). Not for tests, which build hundreds of apps in one process
    (frozen cycles are never collected)."""
    settings = settings or Settings()
    configure_logging(settings.log_format, settings.log_level)
    metrics = Metrics()
    # fail at start on a broken program file
    programs = ProgramRegistry(load_programs(settings.programs_dir, settings.versions_dir),
                               directory=settings.versions_dir)  # where saved versions go (without Redis)
    keyring = build_keyring(settings)
    meter = Meter(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = connect_store(settings)  # None: state in this process's memory
        health = Health(metrics)
        app.state.redis = redis
        if redis is not None:
            programs.use_redis(redis, health)  # saved program versions are shared by every replica
        meter.store = RedisLimitStore(redis, health) if redis is not None else MemoryLimitStore()
        keyring.store = KeyStore(redis, health)
        app.state.keys = KeyAdmin(keyring)
        lm = LMClient(settings, metrics, transport=lm_transport, meter=meter)
        lm.start()
        tools_http = httpx.AsyncClient(timeout=settings.tool_timeout_s, follow_redirects=False)
        app.state.lm = lm
        app.state.predict = PredictService(lm, settings, metrics)
        app.state.runner = ProgramRunner(app.state.predict, programs)
        app.state.passthrough = PassthroughService(lm, settings, metrics)
        executor = build_tool_executor(settings, metrics, tools_http)
        app.state.tools = executor
        app.state.agent = AgentService(lm, executor, settings, metrics, redis=redis, health=health)
        app.state.jobs = JobService(settings, metrics, redis=redis, health=health)
        log.info("startup", version=__version__, upstreams=[u.url for u in settings.upstream_configs()],
                 programs=programs.names(), api_keys=len(settings.api_keys),
                 store="redis" if redis is not None else "memory")
        if redis is not None:  # say now, not at the first request, that Redis is not there
            try:
                await guarded(redis.ping(), "startup_ping", health)
            except StoreUnavailable:
                pass  # logged (store_unreachable) and counted; requests get a clear 503 until it answers
        if not keyring.enabled:
            log.warning("access_control_off", message="no API keys configured (VGATE_API_KEYS or [[api_keys]]): "
                        "anyone who can reach the gateway can use it")
        if freeze_gc:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await app.state.agent.aclose()
            await app.state.jobs.aclose()
            await lm.aclose()
            await meter.aclose()
            await tools_http.aclose()
            executor.close()
            if redis is not None:
                await redis.aclose()
            log.info("shutdown")

    app = FastAPI(title="vgate", version=__version__, lifespan=lifespan,
                  description="HTTP gateway in front of vLLM: /predict, /agent, /tools, and vLLM's own API.",
                  docs_url=None, redoc_url=None,  # /docs is served offline by _install_docs
                  # FastAPI's OpenTelemetry hooks ask the OTel API for its providers on every request
                  # (~5 % of the passthrough's CPU, a profile); the gateway's metrics and logs are its own.
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.programs = programs
    app.state.keyring = keyring
    app.state.meter = meter
    _install_error_handlers(app)
    _install_openapi(app)
    _install_docs(app)
    # Requests are matched against the routes in order, and in FastAPI 0.165 an included router's every
    # route costs a scope update to test: the hot routes go first, as plain routes (the passthrough's, then
    # POST /predict's direct handler; its FastAPI route stays for the document). At the end of the list, the
    # passthrough's requests spent a fifth of their CPU being matched.
    app.router.routes[0:0] = [*openai.routes, *head_routes(predict.router)]
    app.include_router(health.router)
    app.include_router(predict.router)
    app.include_router(agent.router)
    app.include_router(tools.router)
    app.include_router(openai.router)
    app.include_router(admin.router)
    app.include_router(jobs.router)
    app.include_router(evaluate_router.router)
    app.include_router(optimize_router.router)
    app.include_router(playground.router)
    # Added innermost first: RequestContext (request id) > CORS (headers on every answer, 401 and 413 included;
    # preflights answered before any key is asked for) > Access (API keys) > BodyLimit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_body_bytes)
    app.add_middleware(AccessMiddleware, keyring=keyring, meter=meter, metrics_public=settings.metrics_public)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            # readable by a browser script: the run id to resume an /agent stream, the retry hint
            expose_headers=["x-request-id", "x-vgate-overhead-ms", "x-vgate-run-id", "x-vgate-job-id", "location",
                            "retry-after"],
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics,  # outermost: the request id is bound first
                       access_log=info_enabled(settings.log_level))
    return app
