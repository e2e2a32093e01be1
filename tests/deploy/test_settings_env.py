"""Every VGATE_* variable the compose files, the Dockerfile and the Kubernetes manifests set is one the
gateway reads, and the values they set make valid settings (a misspelt name would be silently ignored:
Settings has extra="ignore")."""

from __future__ import annotations

import pytest

from app.settings import Settings
from tests.deploy.support import (
    STACKS,
    dockerfile_env,
    dockerfile_stages,
    enabled_services,
    k8s_documents,
    k8s_gateway_env,
    load_stack,
)

PREFIX = Settings.model_config["env_prefix"]
DELIM = Settings.model_config["env_nested_delimiter"]
OTHER = {"VGATE_CONFIG_FILE"}  # read by settings_customise_sources, not a field


def unknown(names) -> list[str]:
    fields = set(Settings.model_fields)
    return sorted(n for n in names if n.startswith(PREFIX) and n not in OTHER
                  and n[len(PREFIX):].lower().split(DELIM)[0] not in fields)


def settings_from(env: dict[str, str], monkeypatch) -> Settings:
    for name in list(__import__("os").environ):
        if name.startswith(PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith(PREFIX):
            monkeypatch.setenv(name, str(value))
    return Settings()


def test_the_check_catches_a_misspelt_name():
    assert unknown(["VGATE_WORKER", "VGATE_WORKERS", "VGATE_PRICES__X__INPUT_PER_1K", "OTHER"]) == ["VGATE_WORKER"]


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_compose_sets_only_settings_and_valid_values(stack, monkeypatch):
    services = enabled_services(load_stack(stack))
    for name, svc in services.items():
        env = svc.get("environment") or {}
        assert unknown(env) == [], f"{stack}: {name} sets variables the gateway does not read"
    s = settings_from(services["gateway"]["environment"], monkeypatch)
    assert s.workers >= 2 and s.redis_url is not None  # several workers share state through Redis
    assert s.default_model in s.prices  # the self-hosted model has its price, not default_price
    if stack == "replicas":
        assert [u.name for u in s.upstream_configs()] == ["vllm-1", "vllm-2"]


def test_dockerfile_sets_only_settings_and_valid_values(monkeypatch):
    for stage in dockerfile_stages():
        env = dockerfile_env(stage)
        assert unknown(env) == [], stage["name"]
    gateway = dockerfile_stages()[-1]
    s = settings_from(dockerfile_env(gateway), monkeypatch)
    assert s.host == "0.0.0.0" and s.port == 8080 and s.workers == 1


def test_k8s_sets_only_settings_and_valid_values(monkeypatch):
    env = k8s_gateway_env()
    assert unknown(env) == []
    for _, doc in k8s_documents():
        for c in (doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])):
            assert unknown(e["name"] for e in c.get("env", [])) == []
    s = settings_from(env, monkeypatch)
    assert s.workers == 2 and s.redis_url is not None and len(s.upstream_configs()) == 2
    assert s.default_model in s.prices and s.api_keys and s.metrics_public
