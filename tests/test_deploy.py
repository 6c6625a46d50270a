"""Deployment artifacts: Prometheus config, rules and their unit tests (promtool), YAML style (yamllint),
Kubernetes manifests (kubernetes-validate for core kinds, structure for the CRDs), the Grafana dashboards
(generated, well-formed, PromQL that parses, only metrics Keel exports), the compose file and the
Containerfile (structure: no container engine here), and the sample webhook receiver (live)."""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import requests
import yaml

from conftest import ROOT

DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
GRAFANA = ROOT / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
CONTAINER = DEPLOY / "container"
K8S_BASE = DEPLOY / "kubernetes/base"
KSERVE = DEPLOY / "kserve"
# Kubernetes versions the manifests must be valid for (kubernetes-validate's bundled schemas).
K8S_VERSIONS = ["1.30", "1.37"]

# The metric contract: every series the dashboards and rules may read, with its type. Histograms also
# provide _bucket, _sum and _count.
# keel serve: serving (tests/test_metrics.py checks a live server exports each with this type).
SERVING_FAMILIES = {
    "keel_inference_requests_total": "counter",
    "keel_inference_rows_total": "counter",
    "keel_model_rows_total": "counter",
    "keel_request_duration_seconds": "histogram",
    "keel_queue_duration_seconds": "histogram",
    "keel_compute_duration_seconds": "histogram",
    "keel_batch_rows": "histogram",
    "keel_queue_depth": "gauge",
    "keel_inflight_requests": "gauge",
    "keel_model_info": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_cpu_seconds_total": "counter",
    "process_open_fds": "gauge",
    "process_start_time_seconds": "gauge",
}
CONTRACT = {
    **SERVING_FAMILIES,
    # keel serve: hot reload
    "keel_model_version_info": "gauge",
    "keel_model_loads_total": "counter",
    "keel_model_load_duration_seconds": "histogram",
    "keel_model_swaps_total": "counter",
    # keel serve: prediction log
    "keel_prediction_log_records_total": "counter",
    "keel_prediction_log_dropped_total": "counter",
    # the monitor (embedded or `keel monitor`)
    "keel_drift_psi": "gauge",
    "keel_drift_csi": "gauge",
    "keel_drift_window_rows": "gauge",
    "keel_drift_alert": "gauge",
    "keel_model_accuracy": "gauge",
    "keel_model_precision": "gauge",
    "keel_model_recall": "gauge",
    "keel_model_false_positive_rate": "gauge",
    "keel_model_mae": "gauge",
    "keel_model_rmse": "gauge",
    "keel_feedback_window_rows": "gauge",
    "keel_feedback_total": "counter",
    "keel_monitor_records_total": "counter",
    "keel_drift_bin_rows_total": "counter",
    "keel_drift_baseline_proportion": "gauge",
    "keel_drift_js": "gauge",
    "keel_drift_ks": "gauge",
    "keel_drift_wasserstein": "gauge",
    "keel_data_missing_ratio": "gauge",
    "keel_data_out_of_range_ratio": "gauge",
    "keel_data_unseen_category_ratio": "gauge",
    "keel_webhook_deliveries_total": "counter",
    "keel_webhook_pending_events": "gauge",
    # Prometheus' own per-target series
    "up": "gauge",
}
# In the contract but on no dashboard or rule: regression metrics (the example models are classifiers),
# and the process start time.
UNUSED = {"keel_model_mae", "keel_model_rmse", "process_start_time_seconds"}

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan", "atan2", "start", "end"}


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    assert path, f"{name} not found: `make test` installs it (Debian prometheus package / tests/requirements.txt)"
    return path


def run(*cmd, cwd=None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))}:\n{result.stdout}{result.stderr}"
    return result


def yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


# ---------------------------------------------------------------------------------------------- PromQL


def substitute(expr: str) -> str:
    """A dashboard query as Prometheus sees it with every variable at "All"."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "1h")
    return re.sub(r"\$\{?(instance|model|version)\}?", ".+", expr)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (identifiers that are not functions, keywords, labels)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([a-zA-Z_:][\w:]*+)(?!\s*\()", e):
        word = m.group(1)
        if word.lower() not in PROMQL_WORDS and not re.fullmatch(r"\d.*|e\d+", word):
            names.add(word)
    return names


def recorded_names() -> set[str]:
    return {r["record"] for g in yaml.safe_load((PROM / "rules/keel.rules.yml").read_text())["groups"]
            for r in g["rules"] if "record" in r}


def in_contract(name: str) -> bool:
    if name in CONTRACT or name in recorded_names():
        return True
    base, _, suffix = name.rpartition("_")
    return suffix in ("bucket", "sum", "count") and CONTRACT.get(base) == "histogram"


def contract_name(name: str) -> str:
    base, _, suffix = name.rpartition("_")
    if suffix in ("bucket", "sum", "count") and CONTRACT.get(base) == "histogram":
        return base
    return name


def test_metric_name_extraction():
    assert metric_names('histogram_quantile(0.99, sum by (le, model) (rate(a_bucket{x=~"$m"}[5m]))) > 0.5') \
        == {"a_bucket"}
    assert metric_names("sum(rate(a[1m])) / on (model) group_left () b or c * 0 unless up == 1") \
        == {"a", "b", "c", "up"}
    assert metric_names("keel:x:10m > 1e-4 and clamp_min(y, 1e-4)") == {"keel:x:10m", "y"}


def rule_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load((PROM / "rules/keel.rules.yml").read_text())
    return [(r.get("alert") or r["record"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def alerts() -> dict[str, dict]:
    rules = yaml.safe_load((PROM / "rules/keel.rules.yml").read_text())
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}


# ------------------------------------------------------------------------------------------ Prometheus


def test_promtool_check_config():
    run(tool("promtool"), "check", "config", PROM / "prometheus.yml")


def test_promtool_check_rules():
    run(tool("promtool"), "check", "rules", *sorted((PROM / "rules").glob("*.yml")))


def test_promtool_rule_unit_tests():
    tests = sorted((PROM / "tests").glob("*.yml"))
    assert tests
    run(tool("promtool"), "test", "rules", *tests, cwd=PROM)


def test_every_alert_is_unit_tested_firing_and_not_firing():
    fired, quiet = set(), set()
    for path in sorted((PROM / "tests").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert set(alerts()) <= fired, f"never tested firing: {set(alerts()) - fired}"
    assert set(alerts()) <= quiet, f"never tested quiet: {set(alerts()) - quiet}"
    tested_exprs = {case["expr"].split("{")[0] for path in (PROM / "tests").glob("*.yml")
                    for group in yaml.safe_load(path.read_text())["tests"]
                    for case in group.get("promql_expr_test", [])}
    assert "keel:drift_fleet_psi:10m" in tested_exprs


def test_alerts_have_for_severity_and_annotations():
    required = {"KeelHighErrorRate", "KeelHighLatencyP99", "KeelDriftDetected", "KeelPredictionLogDropping",
                "KeelModelLoadFailed", "KeelTargetDown"}
    assert required <= set(alerts())
    for name, rule in alerts().items():
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), name


def test_rules_read_only_contract_metrics():
    for name, expr in rule_exprs():
        unknown = {m for m in metric_names(expr) if not in_contract(m)}
        assert not unknown, f"{name} reads metrics outside the contract: {unknown}"


def test_target_down_alert_matches_scrape_jobs():
    jobs = {c["job_name"] for c in yaml.safe_load((PROM / "prometheus.yml").read_text())["scrape_configs"]}
    assert jobs == {"keel", "keel-monitor"}
    expr = alerts()["KeelTargetDown"]["expr"]
    assert all(re.search(rf"\b{job}\b", expr) for job in jobs)
    monitor = yaml_docs(K8S_BASE / "podmonitor.yaml")[0]
    relabelled = {r["replacement"] for ep in monitor["spec"]["podMetricsEndpoints"] for r in ep["relabelings"]
                  if r.get("targetLabel") == "job"}
    assert relabelled == jobs


# ---------------------------------------------------------------------------------------------- yamllint


def test_yamllint_strict():
    run(tool("yamllint"), "--strict", "-c", DEPLOY / ".yamllint", DEPLOY, GRAFANA)


# ------------------------------------------------------------------------------------------- Kubernetes

K8S_TLS = DEPLOY / "kubernetes/overlays/tls"
TLS_COMPONENT = DEPLOY / "kubernetes/components/tls"


def kustomize(directory: Path, accumulated: list[dict] | None = None) -> list[dict]:
    """The few kustomize features the manifests use, rendered in Python: resources (files and directories),
    components, inline JSON 6902 patches, images and namespace. A Component is built on `accumulated`, the
    resources of the kustomization that includes it."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(k) - {"apiVersion", "kind", "resources", "components", "patches", "images", "namespace"}
    assert not unsupported, f"teach tests/test_deploy.py's kustomize() these fields: {unsupported}"
    out = list(accumulated or [])
    for resource in k.get("resources", []):
        path = directory / resource
        out.extend(kustomize(path) if path.is_dir() else yaml_docs(path))
    for component in k.get("components", []):
        out = kustomize(directory / component, out)
    for patch in k.get("patches", []):
        ops = yaml.safe_load(patch["patch"])
        assert isinstance(ops, list), "teach kustomize() strategic-merge patches"
        targets = [d for d in out if all(d["kind"] == value if key == "kind" else d["metadata"].get(key) == value
                                         for key, value in patch["target"].items())]
        assert targets, patch["target"]
        for doc in targets:
            for op in ops:
                json_patch(doc, op)
    images = {i["name"]: i for i in k.get("images", [])}
    for doc in out:
        if "namespace" in k:
            doc["metadata"]["namespace"] = k["namespace"]
        for containers in pod_container_lists(doc):
            for c in containers:
                name, _, tag = c["image"].partition(":")
                if name in images:
                    new = images[name]
                    c["image"] = f"{new.get('newName', name)}:{new.get('newTag', tag or 'latest')}"
    return out


def json_patch(doc: dict, op: dict) -> None:
    """One RFC 6902 operation (add, remove, replace) on doc, in place."""
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    node = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if op["op"] == "remove":
        del node[int(last) if isinstance(node, list) else last]
    elif op["op"] == "add" and isinstance(node, list):
        node.append(op["value"]) if last == "-" else node.insert(int(last), op["value"])
    elif op["op"] in ("add", "replace"):
        if op["op"] == "replace":
            assert (int(last) < len(node)) if isinstance(node, list) else last in node, op
        node[int(last) if isinstance(node, list) else last] = op["value"]
    else:
        raise AssertionError(f"teach json_patch() {op['op']}")


def pod_container_lists(doc: dict) -> list[list[dict]]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec") if doc["kind"] == "Deployment" else None
    if doc["kind"] == "ServingRuntime":
        return [spec.get("containers", [])]
    if pod is None:
        return []
    return [pod.get("initContainers", []), pod["containers"]]


CORE_KINDS = {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
              "NetworkPolicy"}
CRD_KINDS = {"PodMonitor", "ServingRuntime", "InferenceService", "Certificate"}


@pytest.mark.parametrize("path", sorted(K8S_BASE.glob("*.yaml")) + sorted(KSERVE.glob("*.yaml"))
                         + sorted(TLS_COMPONENT.glob("*.yaml")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_each_manifest_file_validates_on_its_own(path):
    import kubernetes_validate

    for doc in yaml_docs(path):
        if doc["kind"] in ("Kustomization", "Component"):
            continue
        assert doc["kind"] in CORE_KINDS | CRD_KINDS, doc["kind"]
        if doc["kind"] in CORE_KINDS:
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)


def test_kustomize_base_renders_and_validates():
    import kubernetes_validate

    docs = kustomize(K8S_BASE)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ConfigMap", "ConfigMap", "ConfigMap", "Deployment", "Service",
                            "HorizontalPodAutoscaler", "PodDisruptionBudget", "PodMonitor", "NetworkPolicy"])
    for doc in docs:
        if doc["kind"] in CORE_KINDS:
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)
    images = {c["image"] for d in docs for cs in pod_container_lists(d) for c in cs}
    assert images == {"localhost/keel:dev"}


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl not installed (the Python render is checked)")
def test_python_render_matches_kubectl_kustomize():
    for directory in (K8S_BASE, K8S_TLS, KSERVE):
        out = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True)
        if out.returncode != 0 and "unknown command" in out.stderr:
            pytest.skip("this kubectl has no kustomize")
        assert out.returncode == 0, out.stderr
        key = lambda d: (d["kind"], d["metadata"]["name"])
        assert sorted(yaml.safe_load_all(out.stdout), key=key) == sorted(kustomize(directory), key=key), directory


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


def test_deployment_runs_serve_and_monitor_sidecar_hardened():
    docs = kustomize(K8S_BASE)
    deploy = by_kind(docs)["Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"keel", "monitor"}
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], c["name"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", c["name"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), c["name"]

    keel, monitor = containers["keel"], containers["monitor"]
    assert keel["args"][0] == "serve" and monitor["args"][0] == "monitor"
    args = " ".join(keel["args"])
    for flag in ("--model-repository=", "--http-addr=0.0.0.0:8000", "--grpc-addr=0.0.0.0:8001",
                 "--metrics-addr=0.0.0.0:8002", "--monitor-endpoint=http://127.0.0.1:8011", "--prediction-log-dir="):
        assert flag in args, flag
    margs = " ".join(monitor["args"])
    for flag in ("--listen=127.0.0.1:8011", "--metrics-addr=0.0.0.0:8012", "--webhook-url=", "--webhook-secret-file="):
        assert flag in margs, flag
    ports = {p["name"]: p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002, "monitor-metrics": 8012}
    assert keel["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert keel["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert monitor["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert monitor["readinessProbe"]["httpGet"]["path"] == "/healthz"

    # Every volume mounted exists, every ConfigMap referenced is in the base, and with a read-only root
    # the writable paths Keel needs are volumes.
    volumes = {v["name"]: v for v in pod["volumes"]}
    configmaps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    for c in pod["containers"] + pod["initContainers"]:
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, m
        for e in c.get("envFrom", []):
            assert e["configMapRef"]["name"] in configmaps
    for v in volumes.values():
        if "configMap" in v:
            assert v["configMap"]["name"] in configmaps
    mounts = {m["mountPath"] for m in keel["volumeMounts"]}
    assert {"/repository", "/var/lib/keel/predictions", "/var/cache/keel", "/tmp"} <= mounts
    # Keel creates its cache folder (0700) and refuses one owned by another user: an emptyDir's mount point
    # belongs to root, so the cache is a folder inside it.
    (cache,) = flag_values(keel, "--cache-dir")
    assert cache.startswith("/var/cache/keel/") and cache.rstrip("/") != "/var/cache/keel"
    (log,) = flag_values(keel, "--prediction-log-dir")
    assert log.startswith("/var/lib/keel/predictions/") and log.rstrip("/") != "/var/lib/keel/predictions"


def test_service_hpa_pdb_podmonitor_select_the_pods():
    docs = by_kind(kustomize(K8S_BASE))
    deploy = docs["Deployment"]
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    selects = lambda sel: all(pod_labels.get(k) == v for k, v in sel.items())
    assert selects(deploy["spec"]["selector"]["matchLabels"])
    assert selects(docs["Service"]["spec"]["selector"])
    assert selects(docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"])
    assert selects(docs["PodMonitor"]["spec"]["selector"]["matchLabels"])
    ports = {(p["name"], p["port"]) for p in docs["Service"]["spec"]["ports"]}
    assert ports == {("http", 8000), ("grpc", 8001), ("metrics", 8002)}
    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "keel"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2  # so the PDB can let one go


def test_podmonitor_structure():
    pm = by_kind(kustomize(K8S_BASE))["PodMonitor"]
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(pm["spec"]) <= {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel"}
    container_ports = {p["name"] for c in by_kind(kustomize(K8S_BASE))["Deployment"]["spec"]["template"]["spec"]
                       ["containers"] for p in c["ports"]}
    for ep in pm["spec"]["podMetricsEndpoints"]:
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings"}
        assert ep["port"] in container_ports and ep["path"] == "/metrics"
        assert re.fullmatch(r"\d+[smh]", ep["interval"])
    assert {ep["port"] for ep in pm["spec"]["podMetricsEndpoints"]} == {"metrics", "monitor-metrics"}


# Security (issue 17): NetworkPolicy, credentials as read-only files, preStop, nothing of the sidecar exposed.

# Flags naming a credential or key file; the same flag with `=VALUE` but without -file would carry the secret.
CREDENTIAL_FILE_FLAGS = ("--api-token-file", "--admin-token-file", "--monitor-token-file", "--webhook-secret-file",
                         "--tls-cert", "--tls-key", "--tls-client-ca")
SECRET_VALUE_FLAGS = ("--api-token=", "--admin-token=", "--monitor-token=", "--webhook-secret=")
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE_KEY|API_KEY", re.I)


def keel_pod(docs: list[dict]) -> dict:
    return by_kind(docs)["Deployment"]["spec"]["template"]["spec"]


def pod_specs() -> dict[str, dict]:
    """Every pod spec the manifests produce (the KServe runtime's as a pod of its containers and volumes)."""
    rt = by_kind(kustomize(KSERVE))["ServingRuntime"]["spec"]
    return {"base": keel_pod(kustomize(K8S_BASE)), "tls": keel_pod(kustomize(K8S_TLS)),
            "kserve": {"containers": rt["containers"], "volumes": rt.get("volumes", [])}}


def named_port(pod: dict, port) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for c in pod["containers"] for p in c.get("ports", []) if p["name"] == port]
    return number


def flag_values(container: dict, flag: str) -> list[str]:
    return [a.split("=", 1)[1] for a in container.get("args", []) if a.startswith(flag + "=")]


def test_networkpolicy_selects_the_pods_and_restricts_metrics():
    docs = kustomize(K8S_BASE)
    policy, pod = by_kind(docs)["NetworkPolicy"], keel_pod(docs)
    labels = by_kind(docs)["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector and all(labels.get(k) == v for k, v in selector.items())
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}

    allowed: dict[int, list[list[dict]]] = {}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from") and rule.get("ports"), "an ingress rule without peers or ports admits everything"
        for p in rule["ports"]:
            allowed.setdefault(named_port(pod, p["port"]), []).append(rule["from"])
    assert set(allowed) == {8000, 8001, 8002, 8012}, "only serving and metrics ports are reachable"
    assert 8011 not in allowed
    # Metrics (plain HTTP, no token): only Prometheus pods in the monitoring namespace.
    for port in (8002, 8012):
        for peers in allowed[port]:
            for peer in peers:
                assert "ipBlock" not in peer, port
                assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
                assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    # Serving ports: this namespace and labelled clients, never an ipBlock open to the world.
    for port in (8000, 8001):
        for peers in allowed[port]:
            for peer in peers:
                assert "ipBlock" not in peer, port
                if "namespaceSelector" in peer:
                    assert peer["podSelector"]["matchLabels"], "a bare namespaceSelector admits whole namespaces"

    egress_ports = {(p["port"], p.get("protocol", "TCP")) for rule in policy["spec"]["egress"]
                    for p in rule.get("ports", [])}
    assert {(53, "UDP"), (53, "TCP"), (443, "TCP")} <= egress_ports
    (dns,) = [r for r in policy["spec"]["egress"] if any(p["port"] == 53 for p in r["ports"])]
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert all(rule.get("ports") for rule in policy["spec"]["egress"]), "an egress rule without ports"


def test_sidecar_is_not_exposed_by_the_service():
    docs = kustomize(K8S_BASE)
    pod, service = keel_pod(docs), by_kind(docs)["Service"]
    containers = {c["name"]: c for c in pod["containers"]}
    keel_ports = {p["name"]: p["containerPort"] for p in containers["keel"]["ports"]}
    monitor_ports = {p["name"]: p["containerPort"] for p in containers["monitor"].get("ports", [])}
    for port in service["spec"]["ports"]:
        target = port["targetPort"]
        assert target in keel_ports or target in keel_ports.values(), port
        assert target not in monitor_ports and target not in monitor_ports.values(), port
        assert port["port"] not in (8011, 8012)
    # The record stream is on the pod's loopback only; keel serve reaches it there with a token.
    assert flag_values(containers["monitor"], "--listen") == ["127.0.0.1:8011"]
    assert "8011" not in {str(p["containerPort"]) for c in pod["containers"] for p in c.get("ports", [])}
    assert flag_values(containers["keel"], "--monitor-endpoint") == ["http://127.0.0.1:8011"]
    assert flag_values(containers["keel"], "--monitor-token-file") and flag_values(containers["monitor"],
                                                                                   "--api-token-file")


@pytest.mark.parametrize("name", ["base", "tls", "kserve"])
def test_no_credential_in_environment_or_args(name):
    """Tokens, secrets and passwords reach the containers only as files: no env value, no secretKeyRef, no
    envFrom of a Secret, no token on the command line, no ConfigMap entry."""
    pod = pod_specs()[name]
    for c in pod["containers"] + pod.get("initContainers", []):
        for e in c.get("env", []):
            assert "secretKeyRef" not in e.get("valueFrom", {}), (c["name"], e["name"])
            if SECRET_NAME.search(e["name"]):
                assert e["name"].endswith("_FILE") and e.get("value", "").startswith("/"), (c["name"], e)
        for e in c.get("envFrom", []):
            assert "secretRef" not in e, (c["name"], e)
        for arg in c.get("args", []) + c.get("command", []):
            assert not arg.startswith(SECRET_VALUE_FLAGS), (c["name"], arg)
    docs = {"base": kustomize(K8S_BASE), "tls": kustomize(K8S_TLS), "kserve": kustomize(KSERVE)}[name]
    for cm in (d for d in docs if d["kind"] == "ConfigMap"):
        for key in cm.get("data", {}):
            assert not SECRET_NAME.search(key) or key.endswith("_FILE"), (cm["metadata"]["name"], key)
    # Nothing checked in can be a live credential: the Secrets are created out of band.
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert "secretGenerator" not in (K8S_BASE / "kustomization.yaml").read_text()


@pytest.mark.parametrize("name", ["base", "tls", "kserve"])
def test_credential_files_come_from_read_only_secret_mounts(name):
    pod = pod_specs()[name]
    secret_volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    assert secret_volumes
    for c in pod["containers"] + pod.get("initContainers", []):
        mounts = [m for m in c.get("volumeMounts", []) if m["name"] in secret_volumes]
        for m in mounts:
            assert m.get("readOnly") is True, (c["name"], m)
            # A subPath mount is never updated by the kubelet: rotation would need a restart.
            assert "subPath" not in m and "subPathExpr" not in m, (c["name"], m)
        for flag in CREDENTIAL_FILE_FLAGS:
            for path in flag_values(c, flag):
                directory, _, file = path.rpartition("/")
                (mount,) = [m for m in mounts if m["mountPath"] == directory] or [None]
                assert mount, f"{c['name']} {flag}={path} is not in a Secret volume"
                items = secret_volumes[mount["name"]].get("items")
                assert items is None or file in {i["path"] for i in items}, (flag, path)
                assert not secret_volumes[mount["name"]].get("optional"), "a missing Secret must stop the pod"


def test_tokens_wired_and_least_privilege():
    pod = keel_pod(kustomize(K8S_BASE))
    containers = {c["name"]: c for c in pod["containers"]}
    keel, monitor = containers["keel"], containers["monitor"]
    for flag in ("--api-token-file", "--admin-token-file", "--monitor-token-file"):
        assert len(flag_values(keel, flag)) == 1, flag
    secret_volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}

    def keys(container):
        out = set()
        for m in container.get("volumeMounts", []):
            if m["name"] in secret_volumes:
                s = secret_volumes[m["name"]]
                assert s.get("items"), f"{m['name']}: list the keys the container needs"
                out |= {(s["secretName"], i["key"]) for i in s["items"]}
        return out

    assert keys(keel) == {("keel-tokens", "api-tokens"), ("keel-tokens", "admin-tokens"),
                          ("keel-tokens", "monitor-token")}
    # The sidecar sees the token it checks and the webhook secret, not the API or admin tokens.
    assert keys(monitor) == {("keel-tokens", "monitor-token"), ("keel-webhook", "secret")}
    assert all("volumeMounts" not in c or not keys(c) for c in pod["initContainers"])
    assert flag_values(monitor, "--webhook-secret-file")
    # Both sides read the same key: keel serve presents its first line, the monitor accepts every line.
    key_of = lambda c, path: next(
        (secret_volumes[m["name"]]["secretName"], path.rpartition("/")[2]) for m in c["volumeMounts"]
        if m["name"] in secret_volumes and path.rpartition("/")[0] == m["mountPath"])
    assert key_of(keel, flag_values(keel, "--monitor-token-file")[0]) == \
        key_of(monitor, flag_values(monitor, "--api-token-file")[0]) == ("keel-tokens", "monitor-token")


def prestop_seconds(container: dict) -> int:
    pre = container["lifecycle"]["preStop"]
    if "sleep" in pre:
        return pre["sleep"]["seconds"]
    command = pre["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    return int(command[1])


def test_prestop_delay_and_grace_period():
    pod = keel_pod(kustomize(K8S_BASE))
    grace = pod["terminationGracePeriodSeconds"]
    containers = {c["name"]: c for c in pod["containers"]}
    delays = {name: prestop_seconds(c) for name, c in containers.items()}
    assert all(d >= 3 for d in delays.values()), delays
    # Room after the longest preStop for Keel's own drain of in-flight requests.
    assert grace >= max(delays.values()) + 15, (grace, delays)
    # The sidecar outlives keel serve's drain, so the rows it flushes at shutdown still arrive.
    assert delays["monitor"] > delays["keel"]
    # Probes: readiness (traffic) on ready, liveness (restarts) on live, the startup probe on live too so a
    # slow model load never restarts the pod.
    keel = containers["keel"]
    assert keel["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert keel["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert keel["startupProbe"]["httpGet"]["path"] == "/v2/health/live"

    isvc = by_kind(kustomize(KSERVE))["InferenceService"]["spec"]["predictor"]
    assert isvc["terminationGracePeriodSeconds"] >= prestop_seconds(isvc["model"]) + 15


def test_tls_overlay():
    import kubernetes_validate

    base, tls = kustomize(K8S_BASE), kustomize(K8S_TLS)
    assert sorted(d["kind"] for d in tls) == sorted([d["kind"] for d in base] + ["Certificate"])
    for doc in tls:
        if doc["kind"] in CORE_KINDS:
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)
    base_keel = {c["name"]: c for c in keel_pod(base)["containers"]}["keel"]
    assert not [a for a in base_keel["args"] if a.startswith("--tls-")], "the base runs without TLS"

    pod = keel_pod(tls)
    containers = {c["name"]: c for c in pod["containers"]}
    keel, monitor = containers["keel"], containers["monitor"]
    cert = by_kind(tls)["Certificate"]
    assert cert["apiVersion"] == "cert-manager.io/v1"
    assert cert["spec"]["issuerRef"]["name"] and cert["spec"]["dnsNames"]
    volume_of = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in keel["volumeMounts"]
                if volume_of[m["name"]].get("secret", {}).get("secretName") == cert["spec"]["secretName"]]
    assert mount["readOnly"] is True
    assert flag_values(keel, "--tls-cert") == [f"{mount['mountPath']}/tls.crt"]
    assert flag_values(keel, "--tls-key") == [f"{mount['mountPath']}/tls.key"]
    # Plain text is refused with TLS on: every probe of 8000 speaks HTTPS; the monitor's stay HTTP.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert keel[probe]["httpGet"]["scheme"] == "HTTPS", probe
        assert keel[probe]["httpGet"] == dict(base_keel[probe]["httpGet"], scheme="HTTPS"), probe
    assert "scheme" not in monitor["readinessProbe"]["httpGet"]
    # No other change to the pod: the same args and mounts otherwise.
    assert [a for a in keel["args"] if not a.startswith("--tls-")] == base_keel["args"]
    grpc = {p["name"]: p for p in by_kind(tls)["Service"]["spec"]["ports"]}["grpc"]
    assert grpc.get("appProtocol") != "kubernetes.io/h2c"



def test_security_doc_covers_the_manifests():
    """docs/security.md names every credential and TLS flag the manifests use, and the files it points to exist."""
    doc = (ROOT / "docs/security.md").read_text()
    compose = yaml.safe_load((CONTAINER / "compose.yaml").read_text())["services"]
    args = [a for pod in pod_specs().values() for c in pod["containers"] for a in c.get("args", [])]
    args += [str(a) for s in compose.values() for a in s.get("command", [])]
    flags = {a.split("=", 1)[0] for a in args if a.startswith(CREDENTIAL_FILE_FLAGS)}
    assert {"--api-token-file", "--admin-token-file", "--monitor-token-file", "--webhook-secret-file",
            "--tls-cert", "--tls-key"} <= flags
    for flag in flags | {"--tls-client-ca", "--tls-reload-interval", "--ca-bundle"}:
        assert f"`{flag}" in doc, flag
    paths = re.findall(r"`(deploy/[^`\s]+)`", doc)
    assert paths
    for path in paths:
        assert (ROOT / path).exists(), path

def test_kserve_runtime_and_inference_service():
    import kubernetes_validate

    docs = by_kind(kustomize(KSERVE))
    rt, isvc = docs["ServingRuntime"], docs["InferenceService"]
    assert rt["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert set(rt["spec"]) <= {"annotations", "supportedModelFormats", "protocolVersions", "multiModel",
                               "containers", "volumes", "nodeSelector", "tolerations", "affinity", "labels",
                               "disabled", "builtInAdapter", "grpcEndpoint", "grpcDataEndpoint", "imagePullSecrets"}
    formats = {f["name"]: f for f in rt["spec"]["supportedModelFormats"]}
    assert "onnx" in formats and formats["onnx"]["autoSelect"] is True
    assert {"v2", "grpc-v2"} <= set(rt["spec"]["protocolVersions"])
    assert rt["spec"]["annotations"]["prometheus.kserve.io/port"] == "8002"
    (container,) = rt["spec"]["containers"]
    assert container["name"] == "kserve-container"
    args = " ".join(container["args"])
    assert container["args"][0] == "serve" and "--model-repository=/mnt/models" in args
    assert "--http-addr=0.0.0.0:8080" in args and container["ports"][0]["containerPort"] == 8080
    # Inference needs the API token (a file from the keel-tokens Secret); no admin token: repository control
    # stays disabled, KServe provides the models. Probes use the open health endpoints.
    assert flag_values(container, "--api-token-file") == ["/var/run/secrets/keel/api-tokens"]
    assert not flag_values(container, "--admin-token-file") and not flag_values(container, "--admin-token")
    (tokens,) = rt["spec"]["volumes"]
    assert tokens["secret"]["secretName"] == "keel-tokens"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    # The container is a core Container: validate it inside a Pod.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime"},
           "spec": {"containers": [container], "volumes": rt["spec"]["volumes"]}}
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)

    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == rt["metadata"]["name"]
    assert model["modelFormat"]["name"] == "onnx" and model["protocolVersion"] == "v2"
    assert re.match(r"(s3|gs|pvc|https?)://", model["storageUri"])


# ---------------------------------------------------------------------------------------------- Grafana


def load_dashboards() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in DASHBOARDS}


def panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_dashboards_are_generated():
    run(sys.executable, GRAFANA / "build_dashboards.py", "--check")
    assert [p.name for p in DASHBOARDS] == ["keel-drift.json", "keel-serving.json"]


def test_dashboard_structure():
    titles = set()
    for name, d in load_dashboards().items():
        titles.add(d["title"])
        ids = [p["id"] for p in panels(d)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        for var in ("instance", "model", "version"):
            assert variables[var]["type"] == "query"
            assert variables[var]["query"].startswith("label_values("), var
            assert variables[var]["datasource"]["uid"] == "${datasource}"
        for p in panels(d):
            if p["type"] == "row":
                continue
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], f"{name}: panel {p['title']!r} has no query"
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]
            for t in p["targets"]:
                assert t.get("expr", "").strip(), f"{name}: panel {p['title']!r} has a target without expr"
                assert t["datasource"]["uid"] == "${datasource}"
                # Multi-value variables need regex matchers.
                assert not re.search(r'[^=!]=\s*"\$', t["expr"]), t["expr"]
            # Panels stay inside the 24-column grid.
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24
    assert titles == {"Keel serving", "Keel drift"}
    types = {p["type"] for p in panels(load_dashboards()["keel-drift"])}
    assert "heatmap" in types


def dashboard_queries() -> list[tuple[str, str]]:
    out = []
    for name, d in load_dashboards().items():
        for p in panels(d):
            for t in p.get("targets", []):
                out.append((f"{name}: {p['title']} [{t['refId']}]", t["expr"]))
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", v["query"])
                assert inner, v["query"]
                out.append((f"{name}: variable {v['name']}", inner.group(1)))
    return out


def test_dashboard_queries_parse(tmp_path):
    """promtool parses every query (variables substituted) as the expression of a recording rule."""
    queries = dashboard_queries()
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard_query_{i}", "expr": substitute(expr)} for i, (_, expr) in enumerate(queries)]}]}
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([tool("promtool"), "check", "rules", path], capture_output=True, text=True)
    if result.returncode != 0:
        bad = [f"{where}: {expr}" for i, (where, expr) in enumerate(queries)
               if f"dashboard_query_{i}" in result.stdout + result.stderr]
        pytest.fail(result.stdout + result.stderr + "\n".join(bad))


def test_dashboards_read_only_contract_metrics():
    used = set()
    for where, expr in dashboard_queries():
        names = metric_names(substitute(expr))
        unknown = {m for m in names if not in_contract(m)}
        assert not unknown, f"{where} reads metrics outside the contract: {unknown}"
        used |= {contract_name(m) for m in names}
    for _, expr in rule_exprs():
        used |= {contract_name(m) for m in metric_names(expr)}
    missing = set(CONTRACT) - used - UNUSED
    assert not missing, f"contract metrics on no dashboard and in no rule: {missing}"


def test_grafana_provisioning():
    (ds,) = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["uid"] == "prometheus" and ds["isDefault"] is True
    (provider,) = yaml.safe_load((GRAFANA / "provisioning/dashboards/keel.yaml").read_text())["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load((CONTAINER / "compose.yaml").read_text())
    # The provider reads the directory compose mounts grafana/dashboards at.
    by_target = {target: source for source, target in map(volume, compose["services"]["grafana"]["volumes"])}
    assert (CONTAINER / by_target[provider["options"]["path"]]).resolve() == GRAFANA / "dashboards"
    assert (CONTAINER / by_target["/etc/grafana/provisioning"]).resolve() == GRAFANA / "provisioning"
    # The data source points at the compose Prometheus.
    assert ds["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]


# -------------------------------------------------------------------------------------------- container


def volume(spec: str) -> tuple[str, str]:
    """(source, target) of a compose short-syntax volume "source:target[:mode]"."""
    source, target, *_ = spec.split(":")
    return source, target


def port(spec: str) -> tuple[str | None, str, str]:
    """(host ip, published, target) of a compose short-syntax port "[ip:]published:target"."""
    parts = str(spec).split(":")
    assert len(parts) in (2, 3), f"{spec}: give the published port explicitly"
    ip = parts[0] if len(parts) == 3 else None
    return ip, parts[-2], parts[-1]


def test_compose_structure():
    compose = yaml.safe_load((CONTAINER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"keel", "monitor", "prometheus", "grafana", "mlflow", "postgres", "webhook"} <= set(services)
    for name, s in services.items():
        assert "image" in s, name
        assert s.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for source, _ in map(volume, s.get("volumes", [])):
            if source.startswith("."):
                assert (CONTAINER / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose.get("volumes", {}), f"{name}: undeclared volume {source}"
        for secret in s.get("secrets", []):
            assert secret in compose["secrets"]
    published = lambda s: {port(p)[1] for p in services[s].get("ports", [])}
    assert published("keel") == {"8000", "8001", "8002"}
    assert "9090" in published("prometheus") and "3000" in published("grafana") and "5000" in published("mlflow")

    keel = services["keel"]
    assert keel["build"]["dockerfile"] == "deploy/container/Containerfile"
    assert (CONTAINER / keel["build"]["context"]).resolve() == ROOT
    assert keel["command"][0] == "serve"
    assert "--monitor-endpoint=http://monitor:8011" in keel["command"]
    assert "/v2/health/ready" in " ".join(keel["healthcheck"]["test"])
    monitor = services["monitor"]
    assert monitor["command"][0] == "monitor"
    assert {"--listen=0.0.0.0:8011", "--metrics-addr=0.0.0.0:8012"} <= set(monitor["command"])
    assert any(a.startswith("--webhook-url=http://webhook:") for a in monitor["command"])
    assert "/healthz" in " ".join(monitor["healthcheck"]["test"])

    # Prometheus scrapes exactly the compose services' metrics ports.
    targets = {t for c in yaml.safe_load((PROM / "prometheus.yml").read_text())["scrape_configs"]
               for sc in c["static_configs"] for t in sc["targets"]}
    assert targets == {"keel:8002", "monitor:8012"}
    prom_mounts = {target: source for source, target in map(volume, services["prometheus"]["volumes"])}
    assert (CONTAINER / prom_mounts["/etc/prometheus/prometheus.yml"]).resolve() == PROM / "prometheus.yml"
    assert (CONTAINER / prom_mounts["/etc/prometheus/rules"]).resolve() == PROM / "rules"

    mlflow = " ".join(services["mlflow"]["command"])
    for needle in ("mlflow==3.18.0", "psycopg2-binary", "--serve-artifacts", "postgresql://", "@postgres:5432"):
        assert needle in mlflow, needle
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["postgres"]["image"].split("/")[-1].startswith("postgres:")
    assert "webhook_receiver.py" in " ".join(services["webhook"]["command"])


def test_compose_binds_loopback_and_has_no_default_credentials():
    text = (CONTAINER / "compose.yaml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    # Published ports are reachable from this machine only.
    for name, s in services.items():
        for spec in s.get("ports", []):
            assert isinstance(spec, str) and port(spec)[0] == "127.0.0.1", f"{name}: {spec}"
    # No credential has a default: not in ${VAR:-default} / ${VAR-default} form, not as a literal value.
    for m in re.finditer(r"\$\{(\w+)(:?[-?])([^}]*)\}", text):
        if SECRET_NAME.search(m.group(1)):
            assert "?" in m.group(2) and m.group(3).strip(), f"{m.group(0)} has a default"
    for name, s in services.items():
        env = s.get("environment", {})
        assert isinstance(env, dict), f"{name}: use the mapping form of environment"
        for key, value in env.items():
            if SECRET_NAME.search(key):
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), f"{name}: {key}"
                assert value.rpartition("/")[2] in s.get("secrets", []), f"{name}: {key} names no secret it mounts"
        for arg in s.get("command", []):
            assert not str(arg).startswith(SECRET_VALUE_FLAGS), f"{name}: {arg}"
    # Every credential is a compose secret taken from a variable of the caller's environment (compose refuses
    # to create a container whose variable is unset), mounted as a file.
    assert {"api_token", "admin_token", "monitor_token", "webhook_secret", "grafana_admin_password",
            "mlflow_db_password"} <= set(compose["secrets"])
    for name, secret in compose["secrets"].items():
        assert set(secret) == {"environment"}, name
    args = lambda s, flag: [a.split("=", 1)[1] for a in services[s]["command"] if a.startswith(flag + "=")]
    mounted = lambda s, path: path.startswith("/run/secrets/") and \
        path.removeprefix("/run/secrets/") in services[s]["secrets"]
    for flag in ("--api-token-file", "--admin-token-file", "--monitor-token-file"):
        (path,) = args("keel", flag)
        assert mounted("keel", path), flag
    # keel serve presents the token the sidecar checks.
    assert args("monitor", "--api-token-file") == args("keel", "--monitor-token-file")
    assert mounted("monitor", args("monitor", "--webhook-secret-file")[0])
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == \
        "/run/secrets/grafana_admin_password"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/mlflow_db_password"
    assert "/run/secrets/mlflow_db_password" in " ".join(services["mlflow"]["command"])
    assert "mlflow_db_password" in services["mlflow"]["secrets"]


def test_containerfile_structure():
    text = (CONTAINER / "Containerfile").read_text()
    stages = {name or "runtime": base
              for base, name in re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)}
    assert list(stages) == ["builder", "onnxruntime", "host", "keel", "onnxruntime-lib", "runtime"]
    assert "rust:" in stages["builder"] and "python:" in stages["onnxruntime"] and stages["host"] == "scratch"
    # Without build args everything comes from source: make image's `host` stage only when asked for. The
    # stage names are ${...:-defaults}, not ARG defaults (podman 4 would skip the stage; deploy/README.md).
    assert stages["keel"] == "${KEEL_FROM:-builder}"
    assert stages["onnxruntime-lib"] == "${ONNXRUNTIME_FROM:-onnxruntime}"
    assert re.search(r"^ARG KEEL_FROM=$", text, re.M) and re.search(r"^ARG ONNXRUNTIME_FROM=$", text, re.M)
    assert stages["runtime"] == "${RUNTIME_BASE}"
    base = re.search(r"^ARG RUNTIME_BASE=(\S+)$", text, re.M).group(1)
    assert base.startswith("docker.io/library/debian:") and base.endswith("-slim")
    assert "cargo build --release --locked --bin keel" in text
    # The same ONNX Runtime the Makefile pins for `make serve` and the tests.
    pin = re.search(r"^ONNXRUNTIME := onnxruntime==(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert re.search(rf"^ARG ONNXRUNTIME_VERSION={re.escape(pin)}$", text, re.M)
    assert 'libonnxruntime.so.${ONNXRUNTIME_VERSION}' in text
    lib = re.search(r"KEEL_ORT_LIBRARY=(\S+)", text).group(1)
    assert lib == "/opt/onnxruntime/lib/libonnxruntime.so.${ONNXRUNTIME_VERSION}"
    assert "COPY --from=keel /out/keel /usr/local/bin/keel" in text
    assert "COPY --from=onnxruntime-lib /out/libonnxruntime.so.${ONNXRUNTIME_VERSION} /opt/onnxruntime/lib/" in text
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and not user[-1].startswith(("0", "root"))
    assert re.search(r"^EXPOSE 8000 8001 8002$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*/v2/health/ready", text, re.M)
    assert "COPY --chown=keel:keel models/ /models/" in text
    # rustls verifies https peers (MLflow, webhook receivers) against the system's roots.
    runtime = text[text.rindex("\nFROM "):]
    install = re.search(r"apt-get install[^\n]*", runtime).group(0)
    assert re.search(r"\bca-certificates\b", install)
    # The ignore file keeps everything the Rust build needs, and lets in the host stage's files.
    ignore = (CONTAINER / "Containerfile.dockerignore").read_text().split()
    for member in tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]:
        assert f"!{member}/" in ignore, member
    for needed in ("!Cargo.toml", "!Cargo.lock", "!models/", "!target/image/", "!target/image-test/"):
        assert needed in ignore


# ------------------------------------------------------------------------------------- webhook receiver

sys.path.insert(0, str(CONTAINER))
_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in deploy/
import webhook_receiver  # noqa: E402

sys.dont_write_bytecode = _bytecode
sys.path.remove(str(CONTAINER))


def test_webhook_signature_matches_standard_webhooks_vector():
    # The test vector of the Standard Webhooks reference libraries.
    key = webhook_receiver.signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    sig = webhook_receiver.sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body)
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
               "webhook-signature": "v1,bm90IGl0 " + sig}
    assert webhook_receiver.verify(key, headers, body, now=1614265330 + 10) == "msg_p5jXN8AQM9LWM0D4loKWxJek"
    with pytest.raises(webhook_receiver.InvalidSignature):
        webhook_receiver.verify(key, headers, body + b" ", now=1614265330)
    with pytest.raises(webhook_receiver.InvalidSignature):
        webhook_receiver.verify(key, headers, body, now=1614265330 + 301)


def test_webhook_receiver_live(tmp_path):
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    (tmp_path / "secret").write_text(secret + "\n")
    proc = subprocess.Popen([sys.executable, str(CONTAINER / "webhook_receiver.py"), "--host", "127.0.0.1",
                             "--port", "0", "--secret-file", str(tmp_path / "secret")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        port = int(re.search(r"listening on \S+:(\d+)", line).group(1))
        url = f"http://127.0.0.1:{port}"
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
        key = webhook_receiver.signing_key(secret)
        event = {"specversion": "1.0", "type": "dev.keel.drift.detected", "source": "keel", "id": "evt-1",
                 "data": {"model": "breast-cancer", "version": 1, "rule": "psi", "value": 0.31,
                          "top_features": [["f3", 0.4]]}}
        body = json.dumps(event).encode()
        ts = str(int(time.time()))
        headers = {"webhook-id": "evt-1", "webhook-timestamp": ts,
                   "webhook-signature": webhook_receiver.sign(key, "evt-1", ts, body),
                   "content-type": "application/json"}
        assert requests.post(f"{url}/keel", data=body, headers=headers, timeout=5).status_code == 204
        assert requests.post(f"{url}/keel", data=body + b" ", headers=headers, timeout=5).status_code == 401
        stale = str(int(time.time()) - 3600)
        old = dict(headers, **{"webhook-timestamp": stale,
                               "webhook-signature": webhook_receiver.sign(key, "evt-1", stale, body)})
        assert requests.post(f"{url}/keel", data=body, headers=old, timeout=5).status_code == 401
        assert requests.post(f"{url}/keel", data=body, headers={"content-type": "application/json"},
                             timeout=5).status_code == 401
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "event evt-1: dev.keel.drift.detected model=breast-cancer version=1 rule=psi value=0.31" in out
    assert out.count("rejected:") == 3
