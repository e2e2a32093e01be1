"""Liveness, readiness, Prometheus metrics and the upstream's models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.routers.deps import LMDep, MetricsDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and serving."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(lm: LMDep) -> JSONResponse:
    """Ready when the upstream answers its /health."""
    ok = await lm.health()
    body: dict[str, Any] = {"status": "ready" if ok else "unready", "upstream": "reachable" if ok else "unreachable"}
    return JSONResponse(body, status_code=200 if ok else 503, headers=None if ok else {"Retry-After": "5"})


@router.get("/metrics", include_in_schema=False)
async def metrics(m: MetricsDep) -> Response:
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
async def models(lm: LMDep) -> dict[str, Any]:
    """The upstream's served models (refreshed on every call)."""
    listed = await lm.list_models(refresh=True)
    return {"object": "list", "data": [m.raw for m in listed]}
