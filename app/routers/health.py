"""Liveness, readiness, Prometheus metrics and the upstream's models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.routers.deps import LMDep, MetricsDep
from app.routers.schemas import HealthResponse, ModelList, ReadyResponse, error_responses

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthResponse, responses=error_responses())
async def healthz() -> dict[str, str]:
    """The process is alive and serving."""
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadyResponse, responses={
    503: {"model": ReadyResponse, "description": "The upstream does not answer its /health",
          "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}},
    **error_responses(),
})
async def readyz(lm: LMDep, response: Response) -> dict[str, str]:
    """Ready when the upstream answers its /health."""
    if await lm.health():
        return {"status": "ready", "upstream": "reachable"}
    response.status_code = 503
    response.headers["Retry-After"] = "5"
    return {"status": "unready", "upstream": "unreachable"}


@router.get("/metrics", include_in_schema=False)
async def metrics(m: MetricsDep) -> Response:
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", response_model=ModelList, responses=error_responses(
    502, 503, 504, _503="the upstream cannot be reached (upstream_unavailable)"))
async def models(lm: LMDep) -> dict[str, Any]:
    """The upstream's served models (refreshed on every call)."""
    listed = await lm.list_models(refresh=True)
    return {"object": "list", "data": [m.raw for m in listed]}
