"""The hot routes are matched first: a request is tested against the app's routes in order, and each
route of an included FastAPI router costs a scope update to test (benchmarks/RESULTS.md section 9)."""

from __future__ import annotations

from starlette.routing import Match

from app.main import create_app
from app.settings import Settings


def _first_match(app, method: str, path: str) -> int:
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": [], "query_string": b""}
    for i, route in enumerate(app.router.routes):
        if route.matches(scope)[0] == Match.FULL:
            return i
    raise AssertionError(f"nothing matched {method} {path}")


def test_the_passthrough_and_predict_are_the_first_routes_tested():
    app = create_app(Settings())
    assert [getattr(r, "path", None) for r in app.router.routes[:5]] == [
        "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/predict"]
    assert _first_match(app, "POST", "/predict") == 4
