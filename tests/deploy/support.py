"""Reading the deployment files the way their tools do: compose's interpolation and override merge,
the Dockerfile's stages, every VGATE_* variable the files set."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
# Each stack the docs tell an operator to start: the files, in `docker compose -f ... -f ...` order.
STACKS = {
    "gpu": [COMPOSE],
    "sim": [COMPOSE, ROOT / "docker-compose.sim.yml"],
    "replicas": [COMPOSE, ROOT / "docker-compose.replicas.yml"],
}

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}"
                  r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ``${X}``, ``${X:-default}``, ``${X-default}``, ``$X``, ``$$``."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op in (":?", "?"):
            if not value:
                raise ValueError(f"${{{name}}} is required: {arg}")
            return value
        if op in (":+", "+"):
            return arg if value else ""
        return value or ""

    return _VAR.sub(sub, text)


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    """Substitution as compose does it: in the parsed file's string values (and keys), so a value
    that becomes ``[]`` stays the string "[]"."""
    if isinstance(node, dict):
        return {interpolate(k, env) if isinstance(k, str) else k: interpolate_tree(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    return interpolate(node, env) if isinstance(node, str) else node


def load_compose_file(path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    return interpolate_tree(yaml.safe_load(path.read_text()), env or {})


# Sequences compose merges by a key instead of appending (compose-spec merge rules).
def _volume_target(v: Any) -> str:
    return v["target"] if isinstance(v, dict) else v.split(":")[1]


def _port_key(p: Any) -> str:
    return str(p["target"]) if isinstance(p, dict) else str(p).rsplit(":", 1)[-1]


_REPLACED = {"command", "entrypoint", "test", "devices"}


def merge(base: Any, over: Any, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base[k], v, k) if k in base else v
        return out
    if isinstance(base, list) and isinstance(over, list):
        if key in _REPLACED:
            return over
        if key in ("volumes", "ports"):
            keyf = _volume_target if key == "volumes" else _port_key
            kept = {keyf(x): x for x in base}
            kept.update({keyf(x): x for x in over})
            return list(kept.values())
        return base + [x for x in over if x not in base]
    return over


def load_stack(name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The merged, interpolated model of one stack (what `docker compose config` prints)."""
    files = STACKS[name]
    model = load_compose_file(files[0], env)
    for f in files[1:]:
        model = merge(model, load_compose_file(f, env))
    for svc in model["services"].values():  # compose resolves ~ in a bind mount's source to the home directory
        svc["volumes"] = [f"/home/operator{v[1:]}" if isinstance(v, str) and v.startswith("~/") else v
                          for v in svc.get("volumes", [])] or svc.pop("volumes", None) or []
        if not svc["volumes"]:
            del svc["volumes"]
    return model


def enabled_services(model: dict[str, Any], profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    return {n: s for n, s in model["services"].items()
            if not s.get("profiles") or set(s["profiles"]) & set(profiles)}


def dockerfile_stages(text: str | None = None) -> list[dict[str, Any]]:
    """The Dockerfile's stages in order: name, base and instructions (continuations joined)."""
    text = text if text is not None else (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    stages: list[dict[str, Any]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), re.I)
            assert m, line
            stages.append({"base": m[1], "name": m[2], "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((word, rest.strip()))
    return stages


def dockerfile_env(stage: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in stage["instructions"]:
        if word == "ENV":
            for m in re.finditer(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)', rest):
                env[m[1]] = m[2].strip('"')
    return env


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object under deploy/k8s (Helm values and kustomization left out)."""
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc and doc.get("kind") != "Kustomization":
                docs.append((path, doc))
    return docs


def k8s_gateway_env() -> dict[str, str]:
    """The environment of the gateway's pods: the ConfigMap's data and the Secret's stringData."""
    env: dict[str, str] = {}
    for _, doc in k8s_documents():
        if doc["kind"] == "ConfigMap":
            env.update(doc["data"])
        elif doc["kind"] == "Secret":
            env.update(doc.get("stringData", {}))
    return env


def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "vgate.json").read_text())


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def alert_queries() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


METRIC = re.compile(r"\b(vgate_[a-z0-9_]+|vllm:[a-z0-9_:]+)")


def metric_names(queries: list[str]) -> set[str]:
    return {name for q in queries for name in METRIC.findall(q)}
