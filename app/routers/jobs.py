"""GET /jobs/{job_id} (status, progress, result), GET /jobs/{job_id}/events (SSE; Last-Event-ID
resumes; through any replica with Redis) and DELETE /jobs/{job_id} (cancel)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Response
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.routers.agent import last_event_id_value
from app.routers.deps import JobsDep, SettingsDep
from app.routers.schemas import REF, ErrorInfo, Omittable, _omitted, error_responses, sse_components
from app.services.agent.runs import event_json

router = APIRouter(tags=["jobs"])


class JobProgress(BaseModel):
    """How far the job is; the work may add its own keys (e.g. ``score_so_far``)."""

    model_config = ConfigDict(extra="allow")

    done: int = Field(description="items (examples) done so far")
    total: int = Field(description="items in all")


class JobError(ErrorInfo):
    """Why a job failed or stopped: the error a request doing the same work would have answered
    (``internal_error`` with no details for a bug: they are in the gateway's log); ``job_cancelled``
    (DELETE), ``shutting_down`` (its replica stopped), ``job_lost`` (its replica vanished)."""

    status: int | Omittable = _omitted("the HTTP status the same error has as a JSON response")


class JobView(BaseModel):
    """A job's state as GET /jobs/{id} answers it: status, progress, and its result or error once finished."""
    job_id: str = Field(description="job_ followed by 32 hex digits")
    kind: str = Field(description="what runs: evaluate, optimize")
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: JobProgress
    result: dict[str, Any] | Omittable = _omitted("what the work returned, once succeeded (as its route answers)")
    error: JobError | Omittable = _omitted("why it failed or was cancelled")
    created_at: float = Field(description="Unix time, seconds")
    finished_at: float | Omittable = _omitted("Unix time, seconds, once finished")


class JobResultEvent(BaseModel):
    """The ``result`` event: the job's result (its route's response body)."""

    model_config = ConfigDict(extra="allow")


_EVENTS: dict[str, type[BaseModel]] = {"progress": JobProgress, "result": JobResultEvent, "error": JobError}

JOB_EVENTS_DESCRIPTION = (
    "Server-sent events, each with an `id` (1, 2, 3, ...; resume with `Last-Event-ID`), an `event` name and "
    "JSON `data`: `progress` (at most a few a second), then `result` or `error` last. A client that joins late "
    "gets every event from the first. Comment lines keep the connection alive."
)
JOB_EVENTS_RESPONSE: dict[str, Any] = {
    "description": JOB_EVENTS_DESCRIPTION,
    "content": {"text/event-stream": {"itemSchema": {"$ref": REF.format(model="JobEvent")}}},
}


def event_stream_components() -> dict[str, Any]:
    """The job event stream's component schemas."""
    return sse_components(_EVENTS, "JobEvent", "job")


_NOT_FOUND = "unknown or expired job, or another key's (job_not_found)"
_STORE = "the job is not on this replica and the shared store (Redis) is unreachable (store_unavailable)"


@router.get("/jobs/{job_id}", response_model=JobView, response_model_exclude_unset=True,
            responses=error_responses(404, 503, _404=_NOT_FOUND, _503=_STORE))
async def get_job(job_id: str, jobs: JobsDep) -> dict[str, Any]:
    """A job's status and progress; its result (or error) once finished."""
    return await jobs.get(job_id)


@router.get("/jobs/{job_id}/events", response_model=None, response_class=EventSourceResponse,
            responses={200: JOB_EVENTS_RESPONSE, **error_responses(
                404, 422, 503, _404=_NOT_FOUND, _503=_STORE,
                _422="Last-Event-ID is not an event id (ASCII digits, 0 to 2**53)")})
async def job_events(job_id: str, jobs: JobsDep, settings: SettingsDep,
                     last_event_id: Annotated[str | None, Header()] = None) -> EventSourceResponse:
    """The job's events after ``Last-Event-ID`` (all of them without it), then the live ones until
    its last (``result`` or ``error``)."""
    after = last_event_id_value(last_event_id)
    job = await jobs.find(job_id)

    async def events() -> AsyncIterator[ServerSentEvent]:
        async with aclosing(jobs.follow(job, after)) as followed:
            async for ev in followed:
                yield ServerSentEvent(data=event_json(ev.data), event=ev.event, id=str(ev.id))

    return EventSourceResponse(events(), ping=settings.sse_heartbeat_s, sep="\n",
                               headers={"x-vgate-job-id": job.job_id})


@router.delete("/jobs/{job_id}", response_model=JobView, response_model_exclude_unset=True,
               responses={202: {"model": JobView, "description": "the job runs on another replica, which was "
                                "asked to cancel it (it is cancelled there within about a second)"},
                          **error_responses(404, 503, _404=_NOT_FOUND, _503=_STORE)})
async def cancel_job(job_id: str, jobs: JobsDep, response: Response) -> dict[str, Any]:
    """Cancel a running job (its work stops; status ``cancelled``). A finished job is left as it is."""
    view = await jobs.cancel(job_id)
    if view["status"] in ("queued", "running"):
        response.status_code = 202
    return view
