"""Prometheus' config and alert rules through promtool (Debian's prometheus package: `make system-deps`),
and the Grafana provisioning and dashboard: JSON, datasource, and every query valid PromQL."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.deploy.support import DEPLOY, ROOT, dashboard, dashboard_queries

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed: `make system-deps`")


def promtool(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_config_is_valid():
    r = promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 rule files found" in r.stdout + r.stderr


@needs_promtool
def test_rules_are_valid():
    r = promtool("check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"))
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_alerts_fire_as_their_unit_tests_say():
    r = promtool("test", "rules", "tests/deploy/alerts_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_alerts_the_issue_names_are_there():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"VgateUpstreamDown", "VgateHighErrorRate", "VgateHighLatency", "VgateBudgetRefusals",
            "VgateSheddingRequests"} <= names


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path):
    """Each query as a recording rule, so promtool's parser checks it (Grafana's $__rate_interval as 5m)."""
    queries = dashboard_queries()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": q.replace("$__rate_interval", "5m")} for i, q in enumerate(queries)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    r = promtool("check", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(queries)} rules found" in r.stdout


def test_dashboard_is_provisioned_with_the_panels_the_issue_names():
    d = dashboard()
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/vgate.yml").read_text())["providers"][0]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in compose["volumes"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        assert p["datasource"]["uid"] == ds["uid"] and p["targets"], p["title"]
    text = " ".join(dashboard_queries())
    for needed in ("vgate_requests_total", "vgate_request_duration_seconds_bucket",
                   "vgate_upstream_ttft_seconds_bucket", "vgate_prompt_tokens_total",
                   "vgate_completion_tokens_total", "vgate_cost_usd_total",
                   "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vgate_upstream_picks_total",
                   "vgate_tool_calls_total", "vgate_shed_total"):
        assert needed in text, needed
    for q in (0.5, 0.95, 0.99):
        assert f"histogram_quantile({q}, sum by (le, route) (rate(vgate_request_duration_seconds_bucket" in text
