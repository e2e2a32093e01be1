"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.routers.deps import LMDep, MetricsDep
from app.routers.schemas import HealthResponse, ReadyResponse, error_responses

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthResponse, responses=error_responses())
async def healthz() -> dict[str, str]:
    """The process is alive and serving."""
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadyResponse, responses={
    503: {"model": ReadyResponse, "description": "No upstream answers its /health",
          "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}},
    **error_responses(),
})
async def readyz(lm: LMDep, response: Response) -> dict[str, str]:
    """Ready when at least one upstream answers its /health."""
    if await lm.health():
        return {"status": "ready", "upstream": "reachable"}
    response.status_code = 503
    response.headers["Retry-After"] = "5"
    return {"status": "unready", "upstream": "unreachable"}


@router.get("/metrics", include_in_schema=False)
async def metrics(m: MetricsDep) -> Response:
    """This app's metrics; with several workers (multiprocess mode), all the workers' together."""
    return Response(m.exposition(), media_type=CONTENT_TYPE_LATEST)
