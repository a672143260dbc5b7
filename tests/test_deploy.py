"""The deployable stack without a container runtime: deploy/compose.yaml and deploy/k8s/ checked
against minimal schemas of the keys each kind needs (the Kubernetes JSON schemas are not
available offline), cross-references between them (selectors, ports, probe paths, mounted files,
secrets), `promtool check config/rules` on the compose Prometheus, and the Grafana dashboard's
variables, descriptions and instance filters. The dashboard's PromQL runs against a real
Prometheus in tests/test_qa_service.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "rankiq.json"

# kind -> required key paths ("a.b.c"; "[]" steps into every list item)
K8S_SCHEMA: dict[str, list[str]] = {
    "Namespace": ["metadata.name"],
    "Deployment": [
        "metadata.name", "spec.selector.matchLabels", "spec.template.metadata.labels",
        "spec.template.spec.containers.[].name", "spec.template.spec.containers.[].image",
        "spec.template.spec.containers.[].ports.[].containerPort",
        "spec.template.spec.containers.[].resources.requests.cpu",
        "spec.template.spec.containers.[].resources.requests.memory",
        "spec.template.spec.containers.[].resources.limits.memory",
        "spec.template.spec.containers.[].readinessProbe.httpGet.path",
        "spec.template.spec.containers.[].livenessProbe.httpGet.path"],
    "Service": ["metadata.name", "spec.selector", "spec.ports.[].port", "spec.ports.[].name"],
    "HorizontalPodAutoscaler": [
        "metadata.name", "spec.scaleTargetRef.kind", "spec.scaleTargetRef.name",
        "spec.minReplicas", "spec.maxReplicas", "spec.metrics.[].type"],
    "ServiceMonitor": ["metadata.name", "spec.selector.matchLabels", "spec.endpoints.[].port",
                       "spec.endpoints.[].path"],
}
API_VERSIONS = {"Namespace": "v1", "Deployment": "apps/v1", "Service": "v1",
                "HorizontalPodAutoscaler": "autoscaling/v2",
                "ServiceMonitor": "monitoring.coreos.com/v1"}


def _missing(doc: Any, path: str) -> list[str]:
    """Key paths of ``path`` absent from ``doc`` (empty when all present and non-empty)."""
    head, _, rest = path.partition(".")
    if head == "[]":
        if not isinstance(doc, list) or not doc:
            return [path]
        return [m for item in doc for m in (_missing(item, rest) if rest else [])]
    if not isinstance(doc, dict) or doc.get(head) in (None, "", [], {}):
        return [path]
    return _missing(doc[head], rest) if rest else []


def _k8s() -> dict[str, dict]:
    docs: dict[str, dict] = {}
    for f in sorted(K8S.glob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(f.read_text()):
            assert doc["kind"] not in docs, f"two {doc['kind']}s"
            docs[doc["kind"]] = doc
    return docs


def test_k8s_manifests_have_the_keys_of_their_kind():
    docs = _k8s()
    assert set(docs) == set(K8S_SCHEMA)
    for kind, doc in docs.items():
        assert doc["apiVersion"] == API_VERSIONS[kind]
        missing = [m for path in K8S_SCHEMA[kind] for m in _missing(doc, path)]
        assert not missing, f"{kind} lacks {missing}"
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(
        f.name for f in K8S.glob("*.yaml") if f.name != "kustomization.yaml")


def test_k8s_manifests_refer_to_each_other():
    docs = _k8s()
    dep, svc = docs["Deployment"], docs["Service"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 3000}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert "--host" in container["args"] and "0.0.0.0" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    # a non-loopback bind needs the token: it comes from a secret, never inline
    assert env["RANKIQ_API_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "rankiq-token"
    assert "value" not in env["RANKIQ_API_TOKEN"]
    # one worker x one ONNX thread per requested core (the benchmarks' sizing)
    workers = int(env["RANKIQ_WORKERS"]["value"]) * int(env["RANKIQ_ORT_THREADS"]["value"])
    assert workers == int(container["resources"]["requests"]["cpu"])
    assert _mebibytes(container["resources"]["requests"]["memory"]) >= 256  # ~250 MiB RSS
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] and "/tmp" in mounts
    state = env["RANKIQ_STATE_DIR"]["value"]
    assert any(state.startswith(m) for m in mounts)
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports) | set(ports.values())
    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": dep["metadata"]["name"]}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    sm = docs["ServiceMonitor"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["spec"]["endpoints"][0]["authorization"]["credentials"]["name"] == "rankiq-token"


def _mebibytes(q: str) -> float:
    m = re.fullmatch(r"(\d+)(Mi|Gi)", q)
    assert m, q
    return int(m.group(1)) * (1024 if m.group(2) == "Gi" else 1)


def test_compose_stack_structure():
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = doc["services"]
    assert set(services) == {"rankiq", "prometheus", "grafana", "orthanc"}
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), name
        hc = svc["healthcheck"]
        assert hc["test"][0] in ("CMD", "CMD-SHELL") and hc["interval"], name
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):  # a bind mount of a file of this repository
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in doc["volumes"], f"{name}: volume {source} not declared"
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services and cond["condition"] == "service_healthy"
    rankiq = services["rankiq"]
    assert (REPO / rankiq["build"]["dockerfile"]).exists()
    assert "/readyz" in " ".join(rankiq["healthcheck"]["test"])
    assert rankiq["environment"]["RANKIQ_API_TOKEN"].startswith("${RANKIQ_API_TOKEN:?")
    prom = services["prometheus"]
    config = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file"))
    assert (DEPLOY / "prometheus" / Path(config).name).exists()
    assert doc["secrets"]["rankiq_token"]["environment"] == "RANKIQ_API_TOKEN"
    assert "rankiq_token" in prom["secrets"]
    # Grafana gets the datasource the dashboard expects and the dashboards where the provider
    # looks for them
    ds = yaml.safe_load((DEPLOY / "compose" / "grafana-datasource.yml").read_text())
    assert ds["datasources"][0]["uid"] == "rankiq-prometheus"
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" /
                               "rankiq.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert any(v.split(":")[1] == path for v in services["grafana"]["volumes"])
    # the compose Prometheus scrapes the compose service with the secret
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "compose.yml").read_text())
    job = cfg["scrape_configs"][0]
    assert job["static_configs"][0]["targets"] == ["rankiq:3000"]
    assert job["authorization"]["credentials_file"] == "/run/secrets/rankiq_token"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (make test-deps)")
def test_promtool_accepts_the_compose_prometheus(tmp_path):
    """The compose config as Prometheus sees it in its container: the token file exists there,
    so it is pointed at a local one here (promtool checks that the file exists)."""
    token = tmp_path / "token"
    token.write_text("x" * 32)
    text = (DEPLOY / "prometheus" / "compose.yml").read_text()
    (tmp_path / "compose.yml").write_text(text.replace("/run/secrets/rankiq_token", str(token)))
    shutil.copytree(DEPLOY / "prometheus" / "rules", tmp_path / "rules")
    outputs = []
    for args in (["check", "config", str(tmp_path / "compose.yml")],
                 ["check", "rules", str(tmp_path / "rules" / "rankiq.yml")]):
        out = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        outputs.append(out.stdout + out.stderr)
    assert "1 rule files found" in outputs[0]  # rules/*.yml resolves beside the config


def test_dashboard_has_datasource_and_instance_variables_descriptions_and_thresholds():
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    inst = variables["instance"]
    assert inst["type"] == "query" and inst["includeAll"] and inst["multi"]
    assert inst["allValue"] == ".*"
    assert inst["query"]["query"].startswith("label_values(") and "instance)" in inst["query"][
        "query"]
    assert inst["datasource"]["uid"] == "${datasource}"
    lines = 0
    for panel in dash["panels"]:
        assert len(panel.get("description", "")) >= 30, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            # every raw series is filtered by instance; recorded series (name:with:colons)
            # are sums over instances already
            assert 'instance=~"$instance"' in t["expr"] or re.fullmatch(
                r"[a-z_]+:[a-z0-9_:]+", t["expr"]), t["expr"]
        steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
        if steps:
            assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"
            lines += 1
    assert lines >= 2
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
