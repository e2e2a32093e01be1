"""The Kubernetes manifests against the API's JSON schemas (kubernetes-validate ships them, offline),
the ServiceMonitor (a CRD) against the part of its schema it uses, and the references between them."""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest
import yaml

from app.settings import Settings
from tests.deploy.support import DEPLOY, dockerfile_stages, k8s_documents

DOCS = k8s_documents()
BY_KIND = {doc["kind"]: doc for _, doc in DOCS}
K8S_VERSION = "1.33.0"

# The ServiceMonitor fields used here, from the Prometheus Operator's monitoring.coreos.com/v1 CRD.
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "properties": {"matchLabels": {"type": "object"}}},
                "namespaceSelector": {"type": "object"},
                "jobLabel": {"type": "string"},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                   "interval": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                                   "scrapeTimeout": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                                   "scheme": {"enum": ["http", "https"]}, "honorLabels": {"type": "boolean"}}}},
            },
        },
    },
}


@pytest.mark.parametrize("path,doc", [(p, d) for p, d in DOCS if d["kind"] != "ServiceMonitor"],
                         ids=lambda x: getattr(x, "name", None) or x.get("kind"))
def test_manifest_matches_the_api_schema(path, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_schema_check_is_strict():
    bad = copy.deepcopy(BY_KIND["Deployment"])
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_service_monitor_structure_and_target():
    sm = BY_KIND["ServiceMonitor"]
    jsonschema.validate(sm, SERVICE_MONITOR)
    svc = BY_KIND["Service"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"


def test_deployment_service_and_config_fit_together():
    dep, svc = BY_KIND["Deployment"], BY_KIND["Service"]
    pod = dep["spec"]["template"]
    assert dep["spec"]["replicas"] >= 2
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    assert BY_KIND["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert all(p["targetPort"] in ports for p in svc["spec"]["ports"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    refs = {("ConfigMap", e["configMapRef"]["name"]) if "configMapRef" in e else ("Secret", e["secretRef"]["name"])
            for e in container["envFrom"]}
    assert refs == {("ConfigMap", BY_KIND["ConfigMap"]["metadata"]["name"]),
                    ("Secret", BY_KIND["Secret"]["metadata"]["name"])}
    assert int(BY_KIND["ConfigMap"]["data"]["VGATE_PORT"]) == ports["http"]
    # the image's user; a grace period that covers the gateway's own
    user = [rest for w, rest in dockerfile_stages()[-1]["instructions"] if w == "USER"][-1]
    assert pod["spec"]["securityContext"]["runAsUser"] == int(user) and pod["spec"]["securityContext"]["runAsNonRoot"]
    grace = float(BY_KIND["ConfigMap"]["data"].get("VGATE_SHUTDOWN_GRACE_S", Settings().shutdown_grace_s))
    assert pod["spec"]["terminationGracePeriodSeconds"] > grace + 5
    # a read-only root: the workers' metrics files and saved programs go to writable volumes
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] and "/tmp" in mounts
    assert BY_KIND["ConfigMap"]["data"]["VGATE_PROGRAM_VERSIONS_DIR"].startswith(tuple(mounts - {"/tmp"}))


def test_redis_is_a_named_dependency_not_a_manifest():
    assert "VGATE_REDIS_URL" in BY_KIND["Secret"]["stringData"]
    assert not [d for _, d in DOCS if "redis" in d["metadata"]["name"].lower()]
    readme = (DEPLOY / "k8s" / "README.md").read_text()
    assert "bitnami/redis" in readme and "vgate-redis" in BY_KIND["Secret"]["stringData"]["VGATE_REDIS_URL"]


def test_hpa_scales_the_deployment_on_the_adapters_metric():
    hpa, dep = BY_KIND["HorizontalPodAutoscaler"], BY_KIND["Deployment"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": dep["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    pods = next(m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods")
    adapter = yaml.safe_load((DEPLOY / "k8s" / "prometheus-adapter-values.yaml").read_text())
    exposed = {r["name"]["as"] for r in adapter["rules"]["custom"]}
    series = {r["seriesQuery"].split("{")[0] for r in adapter["rules"]["custom"]}
    assert pods["metric"]["name"] in exposed and "vgate_requests_in_flight" in series


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert set(kust["resources"]) == {p.name for p, _ in DOCS}
