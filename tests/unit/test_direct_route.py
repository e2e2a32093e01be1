"""``head_routes``: a route FastAPI documents and a hand-written handler runs, as a plain route matched
first, must answer every request exactly as FastAPI's own handler of the same declaration does (bodies
good and bad, the response model's validation and ``exclude_unset``), and give the same OpenAPI document."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from app.routers.direct import direct, head_routes
from app.routers.json_body import JSONBodyRoute


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    n: int = Field(1, ge=1)
    tags: list[str] | None = None


class Answer(BaseModel):
    greeting: str
    n: int
    note: str | None = None  # left out unless set (exclude_unset)


async def _dep(request: Request) -> str:
    return "dep"


async def _work(body: Body, extra: str) -> dict[str, Any]:
    if body.name == "bad-answer":
        return {"greeting": 5}  # not an Answer: a response validation error either way
    out: dict[str, Any] = {"greeting": f"hi {body.name}", "n": str(body.n)}  # "3" validated into 3
    if body.tags:
        out["note"] = ",".join(body.tags)
    return out


async def _run_direct(request: Request, body: Body) -> dict[str, Any]:
    return await _work(body, "dep")


def _app(head: bool = False) -> FastAPI:
    """The declaration, run by FastAPI; ``head``: its direct handler also as a plain route first."""
    router = APIRouter(route_class=JSONBodyRoute)

    @router.post("/thing", response_model=Answer, response_model_exclude_unset=True)
    @direct(_run_direct)
    async def thing(body: Body, extra: str = Depends(_dep)) -> dict[str, Any]:
        """Do the thing."""
        return await _work(body, extra)

    app = FastAPI()
    if head:
        app.router.routes[0:0] = head_routes(router)
    app.include_router(router)
    return app


VARIANTS = [False, True]  # FastAPI's first: the reference

BODIES = [
    (b'{"name": "ada"}', "application/json"),
    (b'{"name": "ada", "n": 3, "tags": ["x", "y"]}', "application/json"),
    (b'{"name": "ada", "n": "3"}', "text/plain"),  # read as JSON whatever the content type
    (b'{"name": "ada"}', None),
    (b"", "application/json"),  # no body: "Field required"
    (b"{not json", "application/json"),
    (b'{"name": "ada",}', "application/x-www-form-urlencoded"),
    (b"\xff\xfe", "application/json"),  # not UTF-8
    (b"[1, 2]", "application/json"),
    (b'"ada"', "application/json"),
    (b"null", "application/json"),
    (b'{"n": 0}', "application/json"),  # two errors: name missing, n too small
    (b'{"name": "ada", "surprise": 1}', "application/json"),  # extra="forbid"
    (b'{"name": ["not", "a", "string"]}', "application/json"),
]


@pytest.mark.parametrize("raw,content_type", BODIES)
async def test_every_body_gets_the_answer_fastapi_gives(raw: bytes, content_type: str | None):
    answers = []
    for head in VARIANTS:
        transport = httpx.ASGITransport(app=_app(head))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            headers = {"content-type": content_type} if content_type else {}
            r = await client.post("/thing", content=raw, headers=headers)
            answers.append((r.status_code, r.headers.get("content-type"), r.content))
    assert answers[1] == answers[0]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_another_method_is_answered_as_fastapi_answers_it(method: str):
    answers = []
    for head in VARIANTS:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(head)),
                                     base_url="http://t") as client:
            r = await client.request(method, "/thing")
            answers.append((r.status_code, r.headers.get("allow"), r.content))
    assert answers[0][0] == 405 and answers[1] == answers[0]


async def test_an_answer_that_does_not_match_the_response_model_fails_as_in_fastapi():
    from fastapi.exceptions import ResponseValidationError

    for head in VARIANTS:
        transport = httpx.ASGITransport(app=_app(head), raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            with pytest.raises(ResponseValidationError):
                await client.post("/thing", json={"name": "bad-answer"})


def test_the_openapi_document_is_fastapis():
    assert _app(True).openapi() == _app().openapi()


async def test_an_endpoint_without_a_direct_call_gets_no_head_route_and_runs_as_fastapis():
    router = APIRouter(route_class=JSONBodyRoute)

    @router.post("/plain")
    async def plain(body: Body, extra: str = Depends(_dep)) -> dict[str, Any]:
        return {"extra": extra, "name": body.name}

    assert head_routes(router) == []
    app = FastAPI()
    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        r = await client.post("/plain", json={"name": "ada"})
    assert r.json() == {"extra": "dep", "name": "ada"}
