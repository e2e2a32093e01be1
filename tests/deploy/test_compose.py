"""The compose stacks (docker-compose.yml and its overrides), checked without a container engine:
each merged stack parses with compose-spec (the Rust compose_spec crate's model: unknown keys and
malformed values fail), and what refers to something else finds it."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
import yaml
from compose_spec import PyCompose

from tests.deploy.support import DEPLOY, ROOT, STACKS, enabled_services, load_compose_file, load_stack

stacks = pytest.mark.parametrize("stack", sorted(STACKS))


@stacks
def test_the_merged_stack_is_valid_compose(stack):
    PyCompose.from_yaml(yaml.safe_dump(load_stack(stack))).validate()


@stacks
def test_a_typo_is_caught_by_the_validator(stack):
    """The validator is not lenient: a misspelt key in the merged model fails."""
    merged = load_stack(stack)
    merged["services"]["gateway"]["restat"] = "always"
    with pytest.raises(ValueError, match="restat"):
        PyCompose.from_yaml(yaml.safe_dump(merged))


@stacks
def test_references_between_services_resolve(stack):
    merged = load_stack(stack)
    services = merged["services"]
    running = enabled_services(merged)
    hosts = set(running) | {a for s in running.values() for net in (s.get("networks") or {}).values()
                             if isinstance(net, dict) for a in net.get("aliases", [])}
    declared_volumes = set(merged.get("volumes") or {})
    declared_networks = set(merged.get("networks") or {}) | {"default"}
    for name, svc in running.items():
        deps = svc.get("depends_on") or {}
        for dep, cond in (deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)):
            assert dep in services, f"{name} depends on {dep}, which no file defines"
            if dep not in running:
                assert cond.get("required") is False, f"{name} needs {dep}, which is not started in {stack}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep] or dep == "gateway", f"{dep} has no healthcheck to wait for"
        for vol in svc.get("volumes", []):
            source = vol["source"] if isinstance(vol, dict) else vol.split(":")[0]
            if source.startswith("."):  # the repository's files (a host path such as the HF cache is the operator's)
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
            elif not source.startswith("/"):
                assert source in declared_volumes, f"{name} uses volume {source}, not declared"
        for net in svc.get("networks") or {}:
            assert net in declared_networks, f"{name} joins network {net}, not declared"
        if "build" in svc:
            target = svc["build"].get("target")
            assert f" AS {target}" in (ROOT / "Dockerfile").read_text(), f"no Dockerfile stage {target}"
    # what the gateway calls and Prometheus scrapes is on the stack's network
    env = running["gateway"]["environment"]
    urls = [u["url"] for u in json.loads(env["VGATE_UPSTREAMS"])] if "VGATE_UPSTREAMS" in env else [
        env["VGATE_UPSTREAM_URL"]]
    assert {urlsplit(u).hostname for u in urls} <= hosts
    assert urlsplit(env["VGATE_REDIS_URL"]).hostname in hosts
    targets_file = {"replicas": "vllm-replicas.yml"}.get(stack, "vllm.yml")
    mounted = {v.split(":")[0] for v in running["prometheus"]["volumes"] if isinstance(v, str)}
    assert f"./deploy/prometheus/targets/{targets_file}" in mounted or targets_file == "vllm.yml"
    scrape = [t.split(":")[0] for group in yaml.safe_load((DEPLOY / "prometheus/targets" / targets_file).read_text())
              for t in group["targets"]]
    prom = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    scrape += [t.split(":")[0] for job in prom["scrape_configs"] for sc in job.get("static_configs", [])
               for t in sc["targets"]]
    assert set(scrape) <= hosts, f"Prometheus scrapes {set(scrape) - hosts}, not in the {stack} stack"
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert urlsplit(datasource["datasources"][0]["url"]).hostname in hosts
    # every upstream is scraped: a replica the gateway routes to shows on the dashboard too
    assert {urlsplit(u).hostname for u in urls} <= set(scrape)


@stacks
def test_vllm_runs_the_original_setup(stack):
    merged = load_stack(stack)
    vllms = [s for n, s in enabled_services(merged).items() if n.startswith("vllm")]
    if stack == "sim":
        assert not vllms and "vllm" in merged["services"]["sim"]["networks"]["default"]["aliases"]
        return
    assert len(vllms) == (2 if stack == "replicas" else 1)
    for svc in vllms:
        cmd = svc["command"]
        flags = dict(zip(cmd[::2], cmd[1::2], strict=False))
        assert svc["image"].startswith("vllm/vllm-openai:")
        assert flags["--model"] == "Qwen/Qwen3-14B"
        assert flags["--gpu-memory-utilization"] == "0.8" and flags["--max-model-len"] == "60000"
        overrides = json.loads(flags["--hf-overrides"])
        assert overrides == {"rope_scaling": {"rope_type": "linear", "factor": 2.0}, "rope_theta": 1000000}
        assert "--enable-auto-tool-choice" in cmd and cmd[cmd.index("--tool-call-parser") + 1] == "hermes"
        assert cmd[cmd.index("--reasoning-parser") + 1] == "qwen3"
        assert svc["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
        assert svc["healthcheck"]["start_period"] == "20m"
    if stack == "replicas":  # the same server twice, on different GPUs
        a, b = vllms
        assert a["command"] == b["command"] and a["image"] == b["image"]
        gpus = [s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for s in vllms]
        assert gpus[0] != gpus[1]


@stacks
def test_the_model_path_comes_from_the_environment(stack):
    if stack == "sim":
        pytest.skip("the simulator has no model weights")
    merged = load_stack(stack, {"VLLM_MODEL": "/models/qwen3-14b-awq", "VLLM_SERVED_MODEL_NAME": "qwen"})
    vllm = merged["services"]["vllm"]
    assert vllm["command"][vllm["command"].index("--model") + 1] == "/models/qwen3-14b-awq"
    prices = json.loads(merged["services"]["gateway"]["environment"]["VGATE_PRICES"])
    assert set(prices) == {"qwen"}  # the price follows the served name


@stacks
def test_gateway_waits_for_its_upstream_and_restarts(stack):
    gw = load_stack(stack)["services"]["gateway"]
    assert gw["restart"] in ("unless-stopped", "always", "on-failure")
    upstream = {"sim": "sim"}.get(stack, "vllm")
    assert gw["depends_on"][upstream]["condition"] == "service_healthy"
    assert gw["depends_on"]["redis"]["condition"] == "service_healthy"


def test_override_files_add_only_what_they_say():
    """An override that misspelt a service's name would silently define a new one."""
    base = set(load_compose_file(STACKS["gpu"][0])["services"])
    assert set(load_compose_file(STACKS["sim"][1])["services"]) - base == {"sim"}
    assert set(load_compose_file(STACKS["replicas"][1])["services"]) - base == {"vllm-2"}
