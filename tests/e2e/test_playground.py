"""GET /playground in a real headless Chromium (Debian's ``chromium``, driven by Playwright with its
executable path set: no browser is downloaded) against gateways on the simulator: the page fills its
forms, runs predictions, an evaluation and agent runs, and shows what the gateway answered.

Two gateways: one with an API key in front of the zero-latency simulator (predict, evaluate), one in
front of a simulator that decodes slowly and reasons first (agent runs last a few seconds, so a run
can be stopped or the page reloaded mid-run), with a disconnect grace so a reload can resume the run.
Screenshots go to pytest's tmp dir; the path is printed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support import free_port, live_gateway, spawn

CHROMIUM = os.environ.get("VGATE_CHROMIUM", "/usr/bin/chromium")
if not os.path.exists(CHROMIUM) and shutil.which("chromium"):
    CHROMIUM = shutil.which("chromium")

KEY = "playground-test-key-0123456789"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
WAIT_MS = 20_000  # a busy 2-core machine
GRACE_S = 3  # a run with no client left is cancelled after this: a reload is back well within it


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("playground-screenshots"))
    print(f"\nplayground screenshots: {path}")
    return path


@pytest.fixture(scope="module")
def keyed_gateway(sim_url: str) -> Iterator[str]:
    with live_gateway(sim_url, api_keys=[{"id": "play", "key": KEY}]) as (url, _app):
        yield url


@pytest.fixture(scope="module")
def agent_gateway() -> Iterator[tuple[str, object]]:
    port = free_port()
    # ~30 ms per token, 250-token answers after a reasoning part: a run lasts about 8 s
    with spawn(["sim", "--step-ms", "30", "--output-tokens", "250", "--reasoning", "--port", str(port)], port) as sim:
        with live_gateway(sim, agent_disconnect_grace_s=GRACE_S) as (url, app):
            yield url, app


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"chromium is not installed at {CHROMIUM} (`make system-deps` installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra: pip install .[test]")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "401" not in m.text else None)
    yield page
    context.close()
    assert not errors, f"the page logged errors: {errors}"


def test_the_page_is_open_on_a_keyed_gateway_and_only_its_own_files_are_served(keyed_gateway):
    with httpx.Client(base_url=keyed_gateway, timeout=10) as c:
        assert c.post("/predict", json={}).status_code == 401  # the API needs the key; the page does not
        for path, kind in [("/playground", "text/html"), ("/playground/playground.js", "text/javascript"),
                           ("/playground/playground.css", "text/css")]:
            r = c.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith(kind), path
            assert r.headers["content-security-policy"].startswith("default-src 'self'")
            assert r.headers["x-content-type-options"] == "nosniff"
        assert "innerHTML" not in c.get("/playground/playground.js").text
        for path in ("/playground/index.html", "/playground/..%2Fpyproject.toml", "/playground/nope.js"):
            r = c.get(path)
            assert r.status_code == 404 and r.json()["error"]["type"] == "not_found", path
        assert not [p for p in c.get("/openapi.json").json()["paths"] if p.startswith("/playground")]


def tid(name: str) -> str:
    return f'[data-testid="{name}"]'


def open_page(page, url: str) -> None:
    response = page.goto(f"{url}/playground")
    assert response.status == 200
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    page.wait_for_selector('body[data-ready="true"]')


def test_predict_shows_typed_outputs_usage_cost_and_latency(page, keyed_gateway, shots):
    open_page(page, keyed_gateway)
    page.fill(tid("predict-signature"), "question -> answer: int, sure: bool")
    page.fill(tid("predict-inputs"), json.dumps({"question": "What is 6 times 7?"}))
    page.click(tid("predict-run"))  # no key yet: the gateway's 401, shown as it is
    page.wait_for_selector(f"{tid('predict-error')}:not([hidden])")
    assert page.text_content(tid("predict-error")).startswith("401")

    page.fill(tid("api-key"), KEY)
    page.dispatch_event(tid("api-key"), "change")
    page.click(tid("predict-run"))
    page.wait_for_selector(f"{tid('predict-outputs')}:not([hidden])")
    assert page.is_hidden(tid("predict-error"))
    answer = page.locator(tid("output-answer"))
    assert answer.get_attribute("data-type") == "integer"
    assert isinstance(json.loads(page.text_content(tid("output-answer-value"))), int)
    assert page.locator(tid("output-sure")).get_attribute("data-type") == "boolean"
    assert page.text_content(tid("output-sure-value")) in ("true", "false")
    assert "tokens" in page.text_content(tid("meta-usage"))
    assert float(page.text_content(tid("meta-latency_ms"))) >= 0
    assert page.locator(tid("meta-cost_usd")).count() == 1
    page.screenshot(path=f"{shots}/predict.png", full_page=True)

    # a named program, from the list the page loaded with the key (GET /predict/programs)
    page.check(tid("predict-kind-program"))
    page.wait_for_selector(f'{tid("predict-program")} option[value="math"]', state="attached")
    page.select_option(tid("predict-program"), "math")
    page.fill(tid("predict-inputs"), json.dumps({"problem": "Tom has 3 apples and buys 4 more."}))
    page.click(tid("predict-run"))
    page.wait_for_selector(tid("meta-program"))
    assert page.text_content(tid("meta-program")) == "math"
    assert page.locator(tid("output-answer")).get_attribute("data-type") == "integer"
    assert page.text_content(tid("meta-reasoning"))  # chain_of_thought


def test_evaluation_shows_each_example(page, keyed_gateway, shots):
    open_page(page, keyed_gateway)
    page.fill(tid("api-key"), KEY)
    page.click(tid("tab-evaluate"))
    dataset = [{"inputs": {"question": f"{i} + {i}?"}, "outputs": {"answer": 2 * i}} for i in range(3)]
    page.fill(tid("evaluate-dataset"), json.dumps(dataset))
    page.fill(tid("evaluate-metric"), '{"name": "numeric", "tolerance": 1000000}')  # every int within it
    page.click(tid("evaluate-run"))
    page.wait_for_selector(f"{tid('evaluate-results')}:not([hidden])")
    rows = page.locator(f"{tid('evaluate-results')} tbody tr")
    assert rows.count() == 3
    for i in range(3):
        row = page.locator(tid(f"evaluate-row-{i}"))
        assert json.loads(row.locator("td").nth(2).text_content()) == {"answer": 2 * i}  # expected
        assert isinstance(json.loads(row.locator(tid("evaluate-prediction")).text_content())["answer"], int)
        assert row.get_attribute("data-score") == "1"
    assert page.text_content(tid("meta-count")) == "3"
    assert page.text_content(tid("meta-score")) == "1"
    page.screenshot(path=f"{shots}/evaluate.png", full_page=True)

    # The same evaluation as a job: the page follows /jobs/{id}/events and shows the job's result.
    page.check(tid("evaluate-job"))
    page.click(tid("evaluate-run"))
    page.wait_for_selector(tid("meta-job_id"))
    page.wait_for_selector(tid("meta-score"))
    assert page.text_content(tid("meta-job_id")).startswith("job_")
    assert page.text_content(tid("meta-count")) == "3" and page.text_content(tid("meta-score")) == "1"
    assert page.locator(f"{tid('evaluate-results')} tbody tr").count() == 3
    assert not page.is_visible(tid("evaluate-error"))


def agent_tab(page, url: str) -> None:
    open_page(page, url)
    page.click(tid("tab-agent"))


def test_agent_streams_reasoning_a_tool_call_its_result_and_the_answer(page, agent_gateway, shots):
    agent_tab(page, agent_gateway[0])
    page.fill(tid("agent-input"), 'CALL calculator {"expression": "6 * 7"}')
    page.fill(tid("agent-tools"), "calculator")
    page.click(tid("agent-run"))
    page.wait_for_selector(f'{tid("agent-status")}:text-is("done")')
    call = page.locator(tid("agent-tool-call"))
    assert call.count() == 1 and call.get_attribute("data-name") == "calculator"
    assert "6 * 7" in call.text_content()
    result = page.locator(tid("agent-tool-result"))
    assert result.get_attribute("data-call-id") == call.get_attribute("data-call-id")
    assert '"result":42' in result.text_content()
    assert page.locator(tid("agent-reasoning")).count() >= 1
    answer = page.text_content(tid("meta-answer"))
    assert answer and "42" in answer
    assert page.text_content(tid("meta-stop_reason")) == "answer"
    assert "".join(page.locator(f'{tid("agent-delta")}[data-step="2"]').all_text_contents()) == answer
    page.screenshot(path=f"{shots}/agent-tool-call.png", full_page=True)


def cancelled_runs(app) -> float:
    return app.state.metrics.registry.get_sample_value("vgate_agent_runs_total", {"outcome": "cancelled"}) or 0.0


def test_a_stopped_run_is_cancelled_and_stays_stopped_after_a_reload(page, agent_gateway, shots):
    url, app = agent_gateway
    before = cancelled_runs(app)
    agent_tab(page, url)
    page.fill(tid("agent-input"), "Tell me a long story.")
    page.click(tid("agent-run"))
    page.wait_for_selector(tid("agent-delta"))
    assert page.is_enabled(tid("agent-stop"))
    page.click(tid("agent-stop"))
    page.wait_for_selector(f'{tid("agent-status")}:text-is("stopped")')
    shown = page.text_content(tid("agent-transcript"))
    assert page.is_hidden(tid("agent-meta"))  # no final
    run_id = page.get_attribute(tid("agent-transcript"), "data-run-id")
    page.screenshot(path=f"{shots}/agent-stopped.png", full_page=True)
    deadline = time.monotonic() + 30  # the gateway cancels it once the disconnect grace is over
    while cancelled_runs(app) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cancelled_runs(app) == before + 1
    events = httpx.get(f"{url}/agent/runs/{run_id}/events", timeout=10).text
    assert '"type":"cancelled"' in events.replace(" ", "")
    page.reload()  # the stopped run is shown again, not resumed
    page.wait_for_selector('body[data-ready="true"]')
    assert page.text_content(tid("agent-status")) == "stopped"
    assert page.text_content(tid("agent-transcript")) == shown


def test_a_reload_mid_run_resumes_it_with_last_event_id(page, agent_gateway, shots):
    agent_tab(page, agent_gateway[0])
    page.fill(tid("agent-input"), "Tell me a long story.")
    page.click(tid("agent-run"))
    page.wait_for_selector(tid("agent-delta"))
    run_id = page.get_attribute(tid("agent-transcript"), "data-run-id")
    page.reload()
    page.wait_for_selector('body[data-ready="true"]')
    page.wait_for_selector(f'{tid("agent-status")}[data-resumed="true"]')
    assert page.text_content(tid("agent-status")) == "done"
    assert page.get_attribute(tid("agent-transcript"), "data-run-id") == run_id  # the same run, followed on
    answer = page.text_content(tid("meta-answer"))
    assert len(answer.split()) > 20
    # what was shown before the reload plus what came after it: the answer exactly once, no event twice
    assert "".join(page.locator(tid("agent-delta")).all_text_contents()) == answer
    assert page.locator(tid("agent-user")).count() == 1
    page.screenshot(path=f"{shots}/agent-resumed.png", full_page=True)
