"""One upstream's health and load as routing sees them: the breaker, vLLM's /metrics, the prefix key."""

from __future__ import annotations

import time

from app.services.upstreams.breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from app.services.upstreams.load import LoadReport, parse_vllm_metrics
from app.services.upstreams.prefix import prefix_key
from app.services.upstreams.upstream import Upstream
from app.settings import Settings, UpstreamConfig

VLLM_METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 12.0
vllm:num_requests_running{engine="1",model_name="m"} 3.0
vllm:num_requests_waiting{engine="0",model_name="m"} 7.0
vllm:num_requests_waiting{engine="1",model_name="m"} 2.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75
vllm:prompt_tokens_total{engine="0",model_name="m"} 1234.0
"""


def test_a_connect_failure_opens_the_breaker_at_once_5xx_after_a_run_of_them():
    changes: list[str] = []
    b = Breaker(3, 5.0, on_change=changes.append)
    b.failure()
    b.failure()
    assert b.state == CLOSED and b.available()
    b.success()  # a success in between: the count starts again
    b.failure()
    b.failure()
    assert b.state == CLOSED
    b.failure()
    assert b.state == OPEN and not b.available()
    b2 = Breaker(3, 5.0)
    b2.failure(at_once=True)
    assert b2.state == OPEN and changes == ["open"]


def test_after_the_cooldown_one_probe_decides_and_a_failed_probe_doubles_the_wait():
    b = Breaker(1, 0.05)
    b.failure()
    assert not b.available()
    time.sleep(0.06)
    assert b.available() and b.state == HALF_OPEN
    b.probe_started()
    assert not b.available()  # only the one probe while it runs
    b.failure()
    assert b.state == OPEN
    time.sleep(0.06)
    assert not b.available()  # the cooldown is now 0.1 s
    time.sleep(0.06)
    assert b.available()
    b.probe_started()
    b.success()
    assert b.state == CLOSED and b.available()


def test_vllm_gauges_are_summed_over_engines_and_kv_use_is_the_largest():
    r = parse_vllm_metrics(VLLM_METRICS)
    assert r == LoadReport(waiting=9.0, running=15.0, kv_usage=0.75)
    older = parse_vllm_metrics('vllm:gpu_cache_usage_perc{model_name="m"} 0.5\nvllm:num_requests_waiting 1\n')
    assert older == LoadReport(waiting=1.0, running=0.0, kv_usage=0.5)
    assert parse_vllm_metrics("llamacpp:requests_processing 3\n# no vLLM here\n") is None
    assert parse_vllm_metrics("vllm:num_requests_waiting{x=\"a b\"} NaN\n") is None


def _upstream(**kw) -> Upstream:
    return Upstream(UpstreamConfig(url="http://u"), Settings(saturation_queue_threshold=8, **kw))


def test_saturation_needs_two_scrapes_in_a_row():
    u = _upstream()
    u.observe(LoadReport(waiting=100))  # a burst caught by one scrape
    assert u.saturation() == 0
    u.observe(LoadReport(waiting=0))
    assert u.saturation() == 0
    u.observe(LoadReport(waiting=16))
    u.observe(LoadReport(waiting=12))
    assert u.saturation() == 12 / 8  # stayed: saturated
    u.observe(LoadReport(kv_usage=0.95))
    u.observe(LoadReport(kv_usage=0.99))
    assert u.saturation() == 0.95 / 0.9


def test_load_is_the_larger_of_own_and_vllms_count_per_weight():
    u = _upstream()
    u.weight = 2.0
    for _ in range(6):
        u.took()
    assert u.load() == 3.0
    u.observe(LoadReport(running=20, waiting=4))
    u.observe(LoadReport(running=20, waiting=4))
    assert u.load() == 12.0  # other clients' requests count too


def test_the_prefix_key_is_what_calls_share():
    system = {"role": "system", "content": "You extract contacts."}
    a = prefix_key("m", [system, {"role": "user", "content": "one"}], None, None)
    b = prefix_key("m", [system, {"role": "user", "content": "two"}], None, None)
    assert a == b is not None
    assert prefix_key("other", [system, {"role": "user", "content": "one"}], None, None) != a
    assert prefix_key("m", [system, {"role": "user", "content": "one"}], [{"type": "function"}], None) != a
    chat = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "more"}]
    assert prefix_key("m", chat, None, None) == prefix_key("m", chat[:2] + [{"role": "user", "content": "x"}],
                                                           None, None)  # a conversation: its first turn
    assert prefix_key("m", [{"role": "user", "content": "once"}], None, None) is None  # nothing shared
    assert prefix_key("m", [system], None, "s1") == prefix_key("m", chat, None, "s1") != a  # the session wins


def test_a_dropped_connection_is_told_from_a_timeout_and_from_a_refusal():
    import aiohttp
    import httpx

    from app.services.lm.errors import dropped, transport_failure

    def mapped(cause: BaseException, as_: type[httpx.HTTPError]) -> httpx.HTTPError:
        exc = as_(str(cause))
        exc.__cause__ = cause  # as httpx-aiohttp raises it
        return exc

    disconnect = mapped(aiohttp.ServerDisconnectedError(), httpx.ConnectTimeout)
    assert dropped(disconnect)
    assert transport_failure(disconnect, "u").reason == "disconnect"  # not a server that is down
    assert not dropped(httpx.ConnectTimeout("a real one"))  # another transport's connect timeout
    assert not dropped(mapped(aiohttp.ConnectionTimeoutError(), httpx.TimeoutException))
    refused = transport_failure(httpx.ConnectError("refused"), "u")
    assert refused.reason == "connect" and refused.health


def test_a_probe_that_never_reports_does_not_keep_the_upstream_out():
    b = Breaker(1, 0.05)
    b.failure()
    time.sleep(0.06)
    assert b.available()
    b.probe_started()  # its caller left: no success, no failure
    assert not b.available()
    time.sleep(0.06)
    assert b.available()  # another probe may go
