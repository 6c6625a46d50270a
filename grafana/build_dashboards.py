#!/usr/bin/env python3
"""Writes the Grafana dashboards in grafana/dashboards/ from the panel lists below.

    python3 grafana/build_dashboards.py           # rewrite the JSON
    python3 grafana/build_dashboards.py --check   # exit 1 if the committed JSON differs (tests run this)

Edit the panel lists here, not the JSON: the output is deterministic (fixed ids, layout and key order),
so the committed JSON always equals what this script writes. Standard library only.

Every query filters on the dashboard's template variables ($instance, $model, $version, each multi-value
with "All" = ".*"), and every panel reads the Prometheus data source chosen by the $datasource variable.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


def sel(*, version: bool = True, model: bool = True, extra: str = "") -> str:
    """Label matchers for the template variables (plus `extra` matchers)."""
    parts = ['instance=~"$instance"']
    if model:
        parts.append('model=~"$model"')
    if version:
        parts.append('version=~"$version"')
    if extra:
        parts.append(extra)
    return "{" + ", ".join(parts) + "}"


def quantile(q: float, metric: str, by: str = "model, version", **kw) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{sel(**kw)}[{RATE}])))"


def target(expr: str, legend: str = "", instant: bool = False, fmt: str = "time_series") -> dict:
    t = {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend or "__auto", "range": not instant,
         "instant": instant, "format": fmt}
    return t


def timeseries(title, targets, unit="short", description="", stack=False, bars=False, thresholds=None,
               min_zero=True, w=12, h=8):
    custom = {"drawStyle": "bars" if bars else "line", "lineWidth": 1, "fillOpacity": 40 if bars else 10,
              "showPoints": "never", "spanNulls": False,
              "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    defaults = {"unit": unit, "custom": custom}
    if min_zero:
        defaults["min"] = 0
    if thresholds:
        defaults["thresholds"] = thresholds
        custom["thresholdsStyle"] = {"mode": "line"}
    return {"type": "timeseries", "title": title, "description": description, "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                                   "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
            "_size": (w, h)}


def steps(*pairs) -> dict:
    return {"mode": "absolute",
            "steps": [{"color": "green", "value": None}] + [{"color": c, "value": v} for v, c in pairs]}


def stat(title, targets, unit="short", description="", thresholds=None, no_value="0", w=6, h=8):
    return {"type": "stat", "title": title, "description": description, "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit, "noValue": no_value,
                                         "thresholds": thresholds or steps()},
                            "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "area", "textMode": "auto",
                        "justifyMode": "auto", "orientation": "auto"},
            "_size": (w, h)}


def table(title, targets, description="", hide_value=False, sort_by_value=False, w=12, h=8):
    hidden = {"Time": True, "Value": True} if hide_value else {"Time": True}
    options = {"showHeader": True, "cellHeight": "sm"}
    if sort_by_value:
        options["sortBy"] = [{"displayName": "Value", "desc": True}]
    return {"type": "table", "title": title, "description": description, "targets": targets,
            "fieldConfig": {"defaults": {}, "overrides": []},
            "options": options,
            "transformations": [{"id": "merge", "options": {}},
                                {"id": "organize", "options": {"excludeByName": hidden}}],
            "_size": (w, h)}


def state_timeline(title, targets, mappings, description="", w=12, h=8):
    return {"type": "state-timeline", "title": title, "description": description, "targets": targets,
            "fieldConfig": {"defaults": {"mappings": mappings, "thresholds": steps(),
                                         "color": {"mode": "thresholds"}},
                            "overrides": []},
            "options": {"showValue": "auto", "mergeValues": True, "rowHeight": 0.9,
                        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
            "_size": (w, h)}


def heatmap(title, targets, description="", w=24, h=10):
    return {"type": "heatmap", "title": title, "description": description, "targets": targets,
            "fieldConfig": {"defaults": {"custom": {"scaleDistribution": {"type": "linear"}}},
                            "overrides": []},
            "options": {"calculate": False, "cellGap": 1,
                        "color": {"mode": "scheme", "scheme": "Oranges", "fill": "dark-orange",
                                  "scale": "exponential", "exponent": 0.5, "steps": 64, "reverse": False,
                                  "min": 0},
                        "rowsFrame": {"layout": "auto"},
                        "yAxis": {"axisPlacement": "left", "reverse": False},
                        "tooltip": {"mode": "single", "yHistogram": False, "showColorScale": True},
                        "legend": {"show": True},
                        "exemplars": {"color": "rgba(255,0,255,0.7)"}},
            "_size": (w, h)}


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_size": (24, 1)}


def layout(panels: list) -> list:
    """Ids in order, and grid positions filled left to right, top to bottom (rows span the width)."""
    out, x, y, line_h = [], 0, 0, 0
    for i, p in enumerate(panels, start=1):
        w, h = p.pop("_size")
        if p["type"] == "row" or x + w > 24:
            x, y, line_h = 0, y + line_h, 0
        panel = {"id": i, "gridPos": {"h": h, "w": w, "x": x, "y": y}}
        if p["type"] != "row":
            panel["datasource"] = DATASOURCE
            for ref, t in zip("ABCDEFGH", p["targets"]):
                t["refId"] = ref
        panel.update(p)
        out.append(panel)
        x += w
        line_h = max(line_h, h)
        if p["type"] == "row":
            x, y, line_h = 0, y + h, 0
    return out


def variable(name: str, label: str, query: str) -> dict:
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE,
            "definition": query, "query": query, "refresh": 2, "sort": 1, "regex": "",
            "multi": True, "includeAll": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "options": [], "hide": 0}


def dashboard(uid: str, title: str, description: str, panels: list, instance_source: str,
              model_source: str) -> dict:
    return {
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [{"title": "Keel dashboards", "type": "dashboards", "tags": ["keel"], "asDropdown": False,
                   "includeVars": True, "keepTime": True}],
        "panels": layout(panels),
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["keel"],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "refresh": 1, "regex": "", "hide": 0, "options": []},
            variable("instance", "Instance", f"label_values({instance_source}, instance)"),
            variable("model", "Model", f'label_values({model_source}{{instance=~"$instance"}}, model)'),
            variable("version", "Version",
                     f'label_values({model_source}{{instance=~"$instance", model=~"$model"}}, version)'),
        ]},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
    }


MV = "{{model}} v{{version}}"
SERVER_FAILURES = 'outcome=~"error|timeout|overloaded"'
LOAD_FAILURE = 'outcome="failure"'


def serving() -> dict:
    req = "keel_inference_requests_total"
    panels = [
        row("Traffic"),
        timeseries("Request rate by outcome", [
            target(f"sum by (outcome) (rate({req}{sel()}[{RATE}]))", "{{outcome}}")],
            unit="reqps", stack=True,
            description="Requests per second over HTTP and gRPC, by how they ended: success, invalid "
                        "(client errors), overloaded (queue full), timeout, cancelled, error."),
        timeseries("Server failure ratio", [
            target(f"sum by (model, version) (rate({req}{sel(extra=SERVER_FAILURES)}[{RATE}]))"
                   f" / sum by (model, version) (rate({req}{sel()}[{RATE}]))", MV)],
            unit="percentunit", thresholds=steps((0.01, "orange"), (0.05, "red")),
            description="Share of requests that ended in error, timeout or overloaded (the KeelHighErrorRate "
                        "alert fires above 5%). Invalid requests are the client's fault and are left out."),
        timeseries("Rows per second", [
            target(f"sum by (model, version) (rate(keel_inference_rows_total{sel()}[{RATE}]))", MV),
            target(f"sum by (model) (rate(keel_model_rows_total{sel(version=False)}[{RATE}]))",
                   "{{model}} all versions")],
            unit="short", description="Rows inferred successfully (a request may carry many rows); per version, "
                                      "and per model across swaps (a retired version's series end with it)."),
        timeseries("Requests by protocol", [
            target(f"sum by (protocol) (rate({req}{sel()}[{RATE}]))", "{{protocol}}")],
            unit="reqps", stack=True),
        row("Latency"),
        timeseries("Request latency p50 / p95 / p99", [
            target(quantile(0.5, "keel_request_duration_seconds"), "p50 " + MV),
            target(quantile(0.95, "keel_request_duration_seconds"), "p95 " + MV),
            target(quantile(0.99, "keel_request_duration_seconds"), "p99 " + MV)],
            unit="s", w=24, thresholds=steps((0.5, "red")),
            description="Successful requests, from the decoded request to its outputs (queue wait + "
                        "compute). The KeelHighLatencyP99 alert fires when p99 stays above 500ms."),
        timeseries("Queue wait p50 / p99", [
            target(quantile(0.5, "keel_queue_duration_seconds"), "p50 " + MV),
            target(quantile(0.99, "keel_queue_duration_seconds"), "p99 " + MV)],
            unit="s", description="Time requests waited in the scheduler queue before an instance took them."),
        timeseries("Backend compute p50 / p99", [
            target(quantile(0.5, "keel_compute_duration_seconds"), "p50 " + MV),
            target(quantile(0.99, "keel_compute_duration_seconds"), "p99 " + MV)],
            unit="s", description="One backend execution of a whole batch."),
        row("Scheduler"),
        timeseries("Queue depth", [
            target(f"sum by (model, version) (keel_queue_depth{sel()})", MV)],
            w=8, description="Requests waiting per model version (max_queue_size refuses beyond it)."),
        timeseries("In-flight requests", [
            target(f"sum by (model, version) (keel_inflight_requests{sel()})", MV)], w=8),
        timeseries("Rows per batch (mean, p99)", [
            target(f"sum by (model, version) (rate(keel_batch_rows_sum{sel()}[{RATE}]))"
                   f" / sum by (model, version) (rate(keel_batch_rows_count{sel()}[{RATE}]))", "mean " + MV),
            target(quantile(0.99, "keel_batch_rows"), "p99 " + MV)],
            w=8, description="How full the dynamic batches are."),
        row("Models"),
        timeseries("Model versions by state", [
            target(f"sum by (model, state) (keel_model_version_info{sel()})", "{{model}} {{state}}")],
            stack=True, description="Versions per model in each state (READY, LOADING, UNAVAILABLE) over "
                                    "time: a hot reload shows as a LOADING step, a failed one as UNAVAILABLE."),
        table("Served versions", [
            target(f"max by (model, version, backend) (keel_model_info{sel()})", instant=True, fmt="table")],
            description="Every model version being served and its backend.", hide_value=True),
        timeseries("Model loads by outcome", [
            target(f"sum by (model, outcome) (increase(keel_model_loads_total{sel(version=False)}[{RATE}]))",
                   "{{model}} {{outcome}}")],
            bars=True, w=8, description="Loads and reloads (registry polls, admin load calls)."),
        stat("Load failures (1h)", [
            target(f"sum by (model) (increase(keel_model_loads_total{sel(version=False, extra=LOAD_FAILURE)}[1h]))",
                   "{{model}}")],
            thresholds=steps((1, "red")), w=8,
            description="Failed loads in the last hour; the serving versions stay in place."),
        timeseries("Model swaps and load time", [
            target(f"sum by (model) (increase(keel_model_swaps_total{sel(version=False)}[{RATE}]))",
                   "swaps {{model}}"),
            target(quantile(0.99, "keel_model_load_duration_seconds", by="model", version=False),
                   "p99 load time {{model}}")],
            w=8, description="Atomic swaps to newly loaded versions, and how long loads take (seconds)."),
        row("Process"),
        timeseries("Resident memory", [
            target('process_resident_memory_bytes{instance=~"$instance"}', "{{instance}}")],
            unit="bytes", w=8),
        timeseries("CPU", [
            target(f'rate(process_cpu_seconds_total{{instance=~"$instance"}}[{RATE}])', "{{instance}}")],
            unit="percentunit", w=8, description="CPU seconds per second (1 = one core)."),
        timeseries("Open file descriptors", [
            target('process_open_fds{instance=~"$instance"}', "{{instance}}")], w=8),
    ]
    return dashboard("keel-serving", "Keel serving",
                     "Keel inference server: traffic, latency, batching, model versions and hot reload.",
                     panels, "keel_inference_requests_total", "keel_inference_requests_total")


def drift() -> dict:
    alert_mappings = [{"type": "value", "options": {
        "0": {"text": "OK", "color": "green", "index": 0},
        "1": {"text": "FIRING", "color": "red", "index": 1}}}]
    psi_steps = steps((0.1, "orange"), (0.25, "red"))
    panels = [
        row("Drift"),
        timeseries("Output PSI", [
            target(f"max by (model, version, output) (keel_drift_psi{sel()})", MV + " {{output}}")],
            thresholds=psi_steps,
            description="Population stability index of each output over the monitor's rolling window "
                        "against the baseline: < 0.1 stable, 0.1-0.25 moderate, > 0.25 significant shift."),
        timeseries("Fleet-wide PSI per feature (all replicas, 10m)", [
            target('keel:drift_fleet_psi:10m{model=~"$model", version=~"$version"}',
                   MV + " {{feature}}")],
            thresholds=psi_steps,
            description="Recorded by deploy/prometheus/rules/keel.rules.yml from every replica's per-bin "
                        "counters: the PSI of the whole fleet's traffic, which no single replica sees."),
        heatmap("Feature CSI", [
            target(f"max by (feature) (keel_drift_csi{sel()})", "{{feature}}")],
            description="Characteristic stability index per input feature over time (one row per "
                        "feature; darker = more drift). Pick one model and version above."),
        table("Most drifted features", [
            target(f"topk(10, max by (model, version, feature) (keel_drift_csi{sel()}))",
                   instant=True, fmt="table")],
            description="The ten features with the highest CSI right now.", sort_by_value=True),
        timeseries("Jensen-Shannon distance (top 10)", [
            target(f"topk(10, max by (model, version, feature) (keel_drift_js{sel()}))", MV + " {{feature}}")],
            w=8, description="Jensen-Shannon distance (base 2, 0 = same, 1 = disjoint) of each feature and "
                             "output over the window's bins, NaN and \"other\" included."),
        timeseries("Kolmogorov-Smirnov statistic (top 10)", [
            target(f"topk(10, max by (model, version, feature) (keel_drift_ks{sel()}))", MV + " {{feature}}")],
            w=8, description="Largest gap between the window's and the baseline's CDFs at the bin edges "
                             "(numeric columns, NaN left out); the exact statistic is at most one bin's "
                             "mass higher (docs/monitoring.md)."),
        timeseries("Wasserstein-1 distance (top 10)", [
            target(f"topk(10, max by (model, version, feature) (keel_drift_wasserstein{sel()}))",
                   MV + " {{feature}}")],
            w=8, description="Earth mover's distance between the window and the baseline from the binned "
                             "CDFs, in each feature's own units (numeric columns whose baseline records "
                             "min and max)."),
        row("Data quality"),
        timeseries("Missing values (NaN / null)", [
            target(f"topk(10, max by (model, version, feature) (keel_data_missing_ratio{sel()}))",
                   MV + " {{feature}}")],
            unit="percentunit", w=8, thresholds=steps((0.05, "orange"), (0.2, "red")),
            description="Share of each feature's and output's values in the window that are NaN or null."),
        timeseries("Outside the training range", [
            target(f"topk(10, max by (model, version, feature) (keel_data_out_of_range_ratio{sel()}))",
                   MV + " {{feature}}")],
            unit="percentunit", w=8, thresholds=steps((0.05, "orange"), (0.2, "red")),
            description="Share of each numeric column's values below the training minimum or above the "
                        "maximum (baseline min/max)."),
        timeseries("Unseen categories", [
            target(f"topk(10, max by (model, version, feature) (keel_data_unseen_category_ratio{sel()}))",
                   MV + " {{feature}}")],
            unit="percentunit", w=8, thresholds=steps((0.05, "orange"), (0.2, "red")),
            description="Share of each categorical column's values that are none of the baseline's "
                        "categories (its \"other\" bin)."),
        row("Alerts and window"),
        state_timeline("Alert state", [
            target(f"max by (model, version, rule) (keel_drift_alert{sel()})", MV + " {{rule}}")],
            alert_mappings,
            description="The monitor's retraining rules (0 OK, 1 firing); each transition is also sent to "
                        "the webhook."),
        timeseries("Window rows", [
            target(f"sum by (model, version) (keel_drift_window_rows{sel()})", "drift " + MV),
            target(f"sum by (model, version) (keel_feedback_window_rows{sel()})", "feedback " + MV)],
            description="Rows in the rolling drift window and labelled rows in the feedback window; "
                        "metrics over few rows are noisy."),
        timeseries("Monitored records per second", [
            target(f"sum by (model, version) (rate(keel_monitor_records_total{sel()}[{RATE}]))", MV)]),
        row("Model quality (feedback)"),
        timeseries("Accuracy, precision, recall", [
            target(f"max by (model, version) (keel_model_accuracy{sel()})", "accuracy " + MV),
            target(f"max by (model, version) (keel_model_precision{sel()})", "precision " + MV),
            target(f"max by (model, version) (keel_model_recall{sel()})", "recall " + MV)],
            unit="percentunit", w=8, min_zero=False,
            description="Over the feedback window: predictions joined with their ground truth by request id."),
        timeseries("False-positive rate", [
            target(f"max by (model, version) (keel_model_false_positive_rate{sel()})", MV)],
            unit="percentunit", w=8),
        timeseries("Feedback matched / unmatched", [
            target(f"sum by (model, outcome) (rate(keel_feedback_total{sel(version=False)}[{RATE}]))",
                   "{{model}} {{outcome}}")],
            stack=True, w=8,
            description="Feedback per second; unmatched feedback names a request the monitor no longer holds."),
        row("Delivery"),
        timeseries("Webhook deliveries by outcome", [
            target(f'sum by (outcome) (increase(keel_webhook_deliveries_total{{instance=~"$instance"}}[{RATE}]))',
                   "{{outcome}}")],
            bars=True, w=8, description="delivered, retry, failed, gone (410 from the receiver), expired."),
        timeseries("Webhook events pending", [
            target('sum by (instance) (keel_webhook_pending_events{instance=~"$instance"})', "{{instance}}")],
            w=8),
        timeseries("Prediction log: records and drops per second", [
            target(f"sum by (model) (rate(keel_prediction_log_records_total{sel(version=False)}[{RATE}]))",
                   "written {{model}}"),
            target(f"sum by (model) (rate(keel_prediction_log_dropped_total{sel(version=False)}[{RATE}]))",
                   "dropped {{model}}")],
            w=8, description="Dropped records never reach the monitor (KeelPredictionLogDropping alert)."),
    ]
    return dashboard("keel-drift", "Keel drift",
                     "Keel drift monitor: output PSI, feature CSI, fleet-wide PSI, retraining alerts, "
                     "feedback metrics, webhook delivery and the prediction log.",
                     panels, '{__name__=~"keel_monitor_records_total|keel_prediction_log_records_total"}',
                     "keel_monitor_records_total")


DASHBOARDS = {"keel-serving.json": serving, "keel-drift.json": drift}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n" for name, build in DASHBOARDS.items()}


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for name, text in render().items():
        path = OUT / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            OUT.mkdir(exist_ok=True)
            path.write_text(text)
    if stale:
        print("out of date (run python3 grafana/build_dashboards.py):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
