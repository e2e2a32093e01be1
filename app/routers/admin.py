"""``/admin``: API keys made at run time (create, list, change, revoke) and usage per key, model and day.

Every route needs the admin scope (``AccessMiddleware``). A key is shown once, in the answer that
creates it.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel

from app.errors import InvalidRequestError
from app.routers.deps import KeysDep, MeterDep
from app.routers.json_body import JSONBodyRoute
from app.routers.schemas import error_responses
from app.services.keys import KeyCreate, KeyCreated, KeyInfo, KeyUpdate

router = APIRouter(prefix="/admin", tags=["admin"], route_class=JSONBodyRoute)
MAX_USAGE_DAYS = 366


class KeyList(BaseModel):
    """Every API key, configured and made at run time, without their secrets."""
    keys: list[KeyInfo]


class UsageRow(BaseModel):
    """One key's upstream calls, tokens and cost for one model on one UTC day."""
    day: str
    key: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class UsageTotals(BaseModel):
    """The sums over the report's rows."""
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class UsageReport(BaseModel):
    """Usage by key, model and day over a range of UTC days, with totals."""
    since: str
    until: str
    usage: list[UsageRow]
    totals: UsageTotals


_ERRORS = (401, 403, 503)


@router.post("/keys", status_code=201, response_model=KeyCreated,
             responses=error_responses(*_ERRORS, 400, 409, 413, 422,
                                       _409="the id is taken, or access control is off (key_conflict, "
                                            "access_control_off)"))
async def create_key(body: KeyCreate, keys: KeysDep) -> KeyCreated:
    """A new key; the answer carries it (``key``) this once: only its SHA-256 is kept."""
    return await keys.create(body)


@router.get("/keys", response_model=KeyList, responses=error_responses(*_ERRORS))
async def list_keys(keys: KeysDep) -> KeyList:
    """Every key: configured ones (``source: config``) and those made here (``source: admin``)."""
    return KeyList(keys=await keys.list())


@router.get("/keys/{key_id}", response_model=KeyInfo, responses=error_responses(*_ERRORS, 404))
async def get_key(key_id: str, keys: KeysDep) -> KeyInfo:
    """One API key's settings (never its secret); 404 for an unknown id."""
    return await keys.get(key_id)


@router.patch("/keys/{key_id}", response_model=KeyInfo,
              responses=error_responses(*_ERRORS, 400, 404, 409, 413, 422,
                                        _409="a configured key is changed in the configuration (key_from_config)"))
async def update_key(key_id: str, body: KeyUpdate, keys: KeysDep) -> KeyInfo:
    """Change a key's limits, scopes, models, tools or alias; every replica applies it within
    ``key_cache_s``."""
    return await keys.update(key_id, body)


@router.delete("/keys/{key_id}", status_code=204, response_class=Response,
               responses=error_responses(*_ERRORS, 404, 409,
                                         _409="a configured key is removed from the configuration (key_from_config)"))
async def revoke_key(key_id: str, keys: KeysDep) -> Response:
    """Revoke a key: every replica refuses it within ``key_cache_s``."""
    await keys.revoke(key_id)
    return Response(status_code=204)


@router.get("/usage", response_model=UsageReport, responses=error_responses(*_ERRORS, 422))
async def usage(meter: MeterDep, key: str | None = None, model: str | None = None,
                since: Annotated[dt.date | None, Query(description="first UTC day (default: until - 29 days)")] = None,
                until: Annotated[dt.date | None, Query(description="last UTC day (default: today)")] = None,
                ) -> UsageReport:
    """Tokens, cost and upstream calls by key, model and UTC day, from the gateway's own accounting."""
    last = until or dt.datetime.now(dt.UTC).date()
    first = since or (last - dt.timedelta(days=29) if last.toordinal() > 29 else dt.date.min)
    if first > last or (last - first).days >= MAX_USAGE_DAYS:
        raise InvalidRequestError(f"since..until must be in order and span at most {MAX_USAGE_DAYS} days")
    rows = [UsageRow(**r) for r in await meter.usage(first.isoformat(), last.isoformat(), key, model)]
    totals = UsageTotals(requests=sum(r.requests for r in rows), prompt_tokens=sum(r.prompt_tokens for r in rows),
                         completion_tokens=sum(r.completion_tokens for r in rows),
                         cost_usd=sum(r.cost_usd for r in rows))
    return UsageReport(since=first.isoformat(), until=last.isoformat(), usage=rows, totals=totals)
