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


def kustomize(directory: Path) -> list[dict]:
    """The few kustomize features the bases use (resources, images, namespace), rendered in Python."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(k) - {"apiVersion", "kind", "resources", "images", "namespace"}
    assert not unsupported, f"teach tests/test_deploy.py's kustomize() these fields: {unsupported}"
    images = {i["name"]: i for i in k.get("images", [])}
    out = []
    for resource in k["resources"]:
        for doc in yaml_docs(directory / resource):
            if "namespace" in k:
                doc["metadata"]["namespace"] = k["namespace"]
            for containers in pod_container_lists(doc):
                for c in containers:
                    name, _, tag = c["image"].partition(":")
                    if name in images:
                        new = images[name]
                        c["image"] = f"{new.get('newName', name)}:{new.get('newTag', tag or 'latest')}"
            out.append(doc)
    return out


def pod_container_lists(doc: dict) -> list[list[dict]]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec") if doc["kind"] == "Deployment" else None
    if doc["kind"] == "ServingRuntime":
        return [spec.get("containers", [])]
    if pod is None:
        return []
    return [pod.get("initContainers", []), pod["containers"]]


CORE_KINDS = {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
CRD_KINDS = {"PodMonitor", "ServingRuntime", "InferenceService"}


@pytest.mark.parametrize("path", sorted(K8S_BASE.glob("*.yaml")) + sorted(KSERVE.glob("*.yaml")),
                         ids=lambda p: str(p.relative_to(DEPLOY)))
def test_each_manifest_file_validates_on_its_own(path):
    import kubernetes_validate

    for doc in yaml_docs(path):
        if doc["kind"] == "Kustomization":
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
                            "HorizontalPodAutoscaler", "PodDisruptionBudget", "PodMonitor"])
    for doc in docs:
        if doc["kind"] in CORE_KINDS:
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)
    images = {c["image"] for d in docs for cs in pod_container_lists(d) for c in cs}
    assert images == {"localhost/keel:dev"}


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl not installed (the Python render is checked)")
def test_python_render_matches_kubectl_kustomize():
    for directory in (K8S_BASE, KSERVE):
        out = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True)
        if out.returncode != 0 and "unknown command" in out.stderr:
            pytest.skip("this kubectl has no kustomize")
        assert out.returncode == 0, out.stderr
        key = lambda d: (d["kind"], d["metadata"]["name"])
        assert sorted(yaml.safe_load_all(out.stdout), key=key) == sorted(kustomize(directory), key=key)


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
    assert "--cache-dir=/var/cache/keel" in keel["args"]


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
    # The container is a core Container: validate it inside a Pod.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime"}, "spec": {"containers": [container]}}
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
    published = lambda s: {p.split(":")[0] for p in services[s].get("ports", [])}
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


def test_containerfile_structure():
    text = (CONTAINER / "Containerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(stages) == 3
    assert "rust:" in stages[0][0] and "python:" in stages[1][0] and "debian:" in stages[2][0]
    assert stages[2][0].endswith("-slim")
    assert "cargo build --release --locked --bin keel" in text
    # The same ONNX Runtime the Makefile pins for `make serve` and the tests.
    pin = re.search(r"^ONNXRUNTIME := onnxruntime==(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert re.search(rf"^ARG ONNXRUNTIME_VERSION={re.escape(pin)}$", text, re.M)
    assert 'libonnxruntime.so.${ONNXRUNTIME_VERSION}' in text
    lib = re.search(r"KEEL_ORT_LIBRARY=(\S+)", text).group(1)
    assert lib == "/opt/onnxruntime/lib/libonnxruntime.so.${ONNXRUNTIME_VERSION}"
    assert "COPY --from=onnxruntime /out/ /opt/onnxruntime/lib/" in text
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and not user[-1].startswith(("0", "root"))
    assert re.search(r"^EXPOSE 8000 8001 8002$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*/v2/health/ready", text, re.M)
    assert "COPY --chown=keel:keel models/ /models/" in text
    # The ignore file keeps everything the Rust build needs.
    ignore = (CONTAINER / "Containerfile.dockerignore").read_text().split()
    for member in tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]:
        assert f"!{member}/" in ignore, member
    for needed in ("!Cargo.toml", "!Cargo.lock", "!models/"):
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
