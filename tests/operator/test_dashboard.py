"""The chart's Grafana dashboard against a real Prometheus: every query of
every panel, and every template variable, returns data for a real backend on
a pod's IP and for the operator, each scraped with the labels the Prometheus
Operator gives them through their ServiceMonitors (the one the operator
builds for the backend, the chart's for the operator)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
from collections import Counter

import pytest
import requests
import yaml
from openai import BadRequestError, OpenAI, RateLimitError

from conftest import (CHART, LEASE_NAMESPACE, SAMPLE, SAMPLE_NAME, backend_on_pod_ip, cluster_bin,
                      condition, free_port, terminate, wait_for)

DASHBOARD = CHART / "dashboards" / "specdec.json"
SCRAPE_INTERVAL_S = 1
#: Grafana's $__rate_interval is at least four scrape intervals; a few more
#: keep a late scrape on a loaded machine from leaving gaps.
RATE_INTERVAL = "15s"
#: Step of the range queries, and $__interval.
STEP_S = 2
#: Where each variable's value is found: on the backend's series (the target
#: labels of a ServiceMonitor scrape) and on the operator's per-deployment
#: series (its own labels; its target `namespace` is the operator's).
BACKEND_LABELS = {"namespace": "namespace", "deployment": "service", "language": "language"}
OPERATOR_LABELS = {"namespace": "specdeployment_namespace", "deployment": "specdeployment",
                   "language": "language"}
#: The chart's release, as its README installs it.
OPERATOR_RELEASE = "specdec"


# --- the dashboard --------------------------------------------------------

def all_panels(node: dict):
    """Every panel, with those nested in (collapsed) rows."""
    for panel in node.get("panels", []):
        yield panel
        yield from all_panels(panel)


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel."""
    out = []
    for panel in all_panels(dashboard):
        if panel["type"] in ("row", "text"):
            assert not panel.get("targets"), f"{panel['type']} {panel.get('title')!r} has targets"
            continue
        targets = panel.get("targets", [])
        assert targets, f"panel {panel.get('title')!r} has no query"
        for target in targets:
            assert target.get("expr"), f"panel {panel.get('title')!r}: target without expr: {target}"
            out.append((panel["title"], target["expr"]))
    return out


def every_expr(node, path="$") -> list[tuple[str, str]]:
    """(JSON path, value) of every `expr` anywhere in the dashboard: what the
    panel walk must account for."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                found.append((f"{path}.{key}", value))
            else:
                found += every_expr(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += every_expr(value, f"{path}[{i}]")
    return found


def variable_query(variable: dict) -> str:
    query = variable.get("query")
    return query["query"] if isinstance(query, dict) else query


def substitute(expr: str, selection: dict[str, str]) -> str:
    """`expr` as Grafana sends it with the variables set to `selection`."""
    builtin = {"__rate_interval": RATE_INTERVAL, "__interval": f"{STEP_S}s"}

    def value(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name in builtin:
            return builtin[name]
        assert name in selection, f"unknown variable ${name} in {expr}"
        return selection[name]
    return re.sub(r"\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)", value, expr)


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, matchers) of every specdec metric the expression reads."""
    return re.findall(r"\b(specdec_\w+)\s*(?:\{([^}]*)\})?", expr)


# --- Prometheus -----------------------------------------------------------

def labels_match(labels: dict | None, wanted: dict) -> bool:
    return all((labels or {}).get(k) == v for k, v in wanted.items())


def endpoints_discovery(monitor: dict, services: list[dict], pods: list[dict]) -> list[dict]:
    """What Prometheus' Kubernetes discovery with role=endpoints finds for
    the ServiceMonitor `monitor` among `services` and `pods`, as file_sd
    target groups: one target per pod behind each selected Service's port,
    with the discovery's meta labels.

    Prometheus' own discovery cannot run here: Debian builds Prometheus
    without it, and the test API server refuses Endpoints and EndpointSlices
    that hold the pods' loopback IPs. So this plays the endpoints controller
    and the discovery: the pods a Service selects, on its target port."""
    spec = monitor["spec"]
    namespaces = spec.get("namespaceSelector", {}).get("matchNames", [monitor["metadata"]["namespace"]])
    groups = []
    for service in services:
        meta = service["metadata"]
        if meta["namespace"] not in namespaces or not labels_match(meta.get("labels"),
                                                                   spec["selector"]["matchLabels"]):
            continue
        selected = [pod for pod in pods if pod["metadata"]["namespace"] == meta["namespace"]
                    and labels_match(pod["metadata"].get("labels"), service["spec"]["selector"])]
        for port in service["spec"]["ports"]:
            for pod in selected:
                ip = pod.get("status", {}).get("podIP")
                found = [(c["name"], p["containerPort"]) for c in pod["spec"]["containers"]
                         for p in c.get("ports", [])
                         if port["targetPort"] in (p.get("name"), p["containerPort"])]
                if not ip or not found:
                    continue
                container, container_port = found[0]
                ready = condition(pod, "Ready").get("status") == "True"
                groups.append({"targets": [f"{ip}:{container_port}"], "labels": {
                    "__meta_kubernetes_namespace": meta["namespace"],
                    "__meta_kubernetes_service_name": meta["name"],
                    "__meta_kubernetes_endpoint_port_name": port["name"],
                    "__meta_kubernetes_endpoint_ready": str(ready).lower(),
                    "__meta_kubernetes_endpoint_address_target_kind": "Pod",
                    "__meta_kubernetes_endpoint_address_target_name": pod["metadata"]["name"],
                    "__meta_kubernetes_pod_name": pod["metadata"]["name"],
                    "__meta_kubernetes_pod_container_name": container,
                    "__meta_kubernetes_pod_phase": pod["status"].get("phase", ""),
                }})
    assert groups, f"ServiceMonitor {monitor['metadata']['name']} selects no pod"
    return groups


def service_monitor_scrape(monitor: dict, groups: list[dict], work) -> dict:
    """The scrape job the Prometheus Operator (v0.85) generates for the
    ServiceMonitor `monitor`'s first endpoint, relabeling included (less its
    sharding), with file_sd of the discovered `groups` in place of
    role=endpoints discovery and a scrape interval short enough for rates
    within a short test."""
    meta = monitor["metadata"]
    targets_file = work / f"targets-{meta['namespace']}-{meta['name']}.json"
    targets_file.write_text(json.dumps(groups))
    endpoint = monitor["spec"]["endpoints"][0]
    target = ["__meta_kubernetes_endpoint_address_target_kind",
              "__meta_kubernetes_endpoint_address_target_name"]
    return {
        "job_name": f"serviceMonitor/{meta['namespace']}/{meta['name']}/0",
        "honor_labels": False,
        "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
        "metrics_path": endpoint["path"],
        "file_sd_configs": [{"files": [str(targets_file)]}],
        "relabel_configs": [
            {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
            {"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"],
             "regex": endpoint["port"]},
            {"source_labels": target, "separator": ";", "regex": "Node;(.*)",
             "replacement": "${1}", "target_label": "node"},
            {"source_labels": target, "separator": ";", "regex": "Pod;(.*)",
             "replacement": "${1}", "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"],
             "regex": "(Failed|Succeeded)"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job",
             "replacement": "${1}"},
            {"target_label": "endpoint", "replacement": endpoint["port"]},
        ],
    }


def operator_scrape(operator, work) -> dict:
    """The session's operator scraped through the chart's ServiceMonitor:
    the chart rendered with it on, the operator process standing in for the
    pod that the chart's Deployment makes (its template, at the process's
    address). Its `namespace` target label is the operator's own."""
    rendered = subprocess.run(
        [str(cluster_bin() / "helm"), "template", OPERATOR_RELEASE, str(CHART), "-n", LEASE_NAMESPACE,
         "--set", "serviceMonitor.enabled=true", "--show-only", "templates/servicemonitor.yaml",
         "--show-only", "templates/service.yaml", "--show-only", "templates/deployment.yaml"],
        capture_output=True, text=True, check=True).stdout
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    services = [o for o in objects if o["kind"] == "Service"]
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    template = deployment["spec"]["template"]
    for container in template["spec"]["containers"]:
        for port in container.get("ports", []):
            port["containerPort"] = operator.port
    pod = {"metadata": {**template["metadata"], "namespace": LEASE_NAMESPACE,
                        "name": f"{deployment['metadata']['name']}-{operator.identity}"},
           "spec": template["spec"],
           "status": {"podIP": "127.0.0.1", "phase": "Running",
                      "conditions": [{"type": "Ready", "status": "True"}]}}
    return service_monitor_scrape(monitor, endpoints_discovery(monitor, services, [pod]), work)


class Prometheus:
    def __init__(self, scrape_configs: list[dict], work):
        binary = shutil.which("prometheus")
        assert binary, "prometheus missing: scripts/test installs the Debian package"
        config = {"global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                             "scrape_timeout": f"{SCRAPE_INTERVAL_S}s",
                             "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
                  "scrape_configs": scrape_configs}
        # JSON is YAML, which Prometheus reads.
        (work / "prometheus.yml").write_text(json.dumps(config, indent=1))
        self.log = work / "prometheus.log"
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process = subprocess.Popen(
            [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address={self.url.removeprefix('http://')}"],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
        )

    def api(self, path: str, **params):
        assert self.process.poll() is None, self.log.read_text()[-3000:]
        reply = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = reply.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    def up(self, job: str) -> bool:
        targets = self.api("targets", state="active")["activeTargets"]
        return any(t["labels"]["job"] == job and t["health"] == "up" for t in targets)

    def stop(self):
        terminate(self.process)


# --- the test -------------------------------------------------------------

def finite(series: dict) -> bool:
    return any(math.isfinite(float(v)) for _, v in series["values"])


def positive(series: dict) -> bool:
    return any(float(v) > 0 for _, v in series["values"])


@pytest.fixture
def deployed(cluster, operator, namespace, service_monitor_crd):
    obj = yaml.safe_load(SAMPLE.read_text())
    # One pod: the one that runs a real backend.
    obj["spec"]["replicas"] = 1
    cluster("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))

    def ready():
        got = cluster.json("get", "specdep", SAMPLE_NAME, "-n", namespace)
        return (condition(got, "Ready").get("status") == "True"
                and got["status"].get("readyReplicas") == 1)
    wait_for("the sample to become Ready", ready, timeout=120)
    wait_for("its ServiceMonitor", lambda: cluster.exists("servicemonitor", SAMPLE_NAME, "-n", namespace),
             timeout=60)
    return namespace


def test_every_dashboard_query_returns_data(cluster, operator, deployed, tmp_path, monkeypatch):
    ns = deployed
    dashboard = json.loads(DASHBOARD.read_text())
    queries = panel_queries(dashboard)
    # An expr outside the panels' targets (an annotation, a library panel...)
    # would go unchecked.
    anywhere = every_expr(dashboard)
    assert Counter(e for _, e in anywhere) == Counter(e for _, e in queries), (
        "queries the test does not evaluate: "
        f"{[path for path, e in anywhere if e not in {q for _, q in queries}]}")
    variables = dashboard["templating"]["list"]
    for v in variables:
        assert v["type"] in ("datasource", "query"), f"variable {v['name']}: type {v['type']} not checked"
    query_variables = [v for v in variables if v["type"] == "query"]
    assert {v["name"] for v in query_variables} == {"namespace", "deployment", "language"}

    # One slot and no waiting place: a second request at once is shed (429).
    monkeypatch.setenv("SPECDEC_SLOTS", "1")
    monkeypatch.setenv("SPECDEC_MAX_WAITING", "0")
    # The ServiceMonitor the operator built, as the Prometheus Operator reads it.
    monitor = cluster.json("get", "servicemonitor", SAMPLE_NAME, "-n", ns)
    backend = service_monitor_scrape(monitor, endpoints_discovery(
        monitor, cluster.json("get", "services", "-n", ns)["items"],
        cluster.json("get", "pods", "-n", ns)["items"]), tmp_path)
    with backend_on_pod_ip(cluster, ns, tmp_path) as url:
        prometheus = Prometheus([backend, operator_scrape(operator, tmp_path)], tmp_path)
        try:
            # A ServiceMonitor's job label is the Service's name.
            wait_for("Prometheus to scrape the backend and the operator",
                     lambda: prometheus.up(SAMPLE_NAME) and prometheus.up(f"{OPERATOR_RELEASE}-metrics"),
                     timeout=60)
            start = time.time()
            served = serve_traffic(url)
            languages = sorted({s["language"] for s in served})
            assert languages == ["de", "en"], served
            assert any(s["language"] == "de" and s["draft_tokens"] > 0 for s in served), served
            check_dashboard(prometheus, dashboard, queries, query_variables, ns, start, languages)
        finally:
            prometheus.stop()
            print(f"prometheus log: {prometheus.log}", file=sys.stderr)


def serve_traffic(url: str) -> list[dict]:
    """Requests in German and English through the OpenAI client, two shed by
    load (429) and two refused (400). What a panel shows as a rate happens
    twice a few scrapes apart: a counter's series appears with its first
    increment already in it, so only the second makes a rate.
    Returns the `usage.speculative` of the served requests."""
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)

    def chat(content, language, max_tokens, **speculative):
        extra = {"language": language}
        if speculative:
            extra["speculative"] = speculative
        reply = client.chat.completions.create(
            model=SAMPLE_NAME, max_tokens=max_tokens, temperature=0, extra_body=extra,
            messages=[{"role": "user", "content": content}])
        return reply.usage.model_extra["speculative"]

    german = "Übersetze ins Englische: Das Debian-Projekt ist eine Gemeinschaft von Menschen, die freie Software entwickeln."
    served = []
    for _ in range(2):
        # A fixed draft length: adaptive drafting (the sample's setting)
        # decodes this translation plainly on a CPU, and acceptance needs drafts.
        served.append(chat(german, "de", 16, max=4, adaptive=False))
        time.sleep(3 * SCRAPE_INTERVAL_S)
    # Adaptive, as the sample sets it: its expected speedup and draft length.
    served.append(chat(german, "de", 12))
    served.append(chat("Repeat after me: the quick brown fox jumps over the lazy dog. The quick brown fox",
                       "en", 12))
    # The one slot held by a long stream; requests meanwhile are shed.
    stream = client.chat.completions.create(
        model=SAMPLE_NAME, max_tokens=1000, temperature=0, stream=True, extra_body={"language": "en"},
        messages=[{"role": "user", "content": "Count from 1 to 500, separated by commas."}])
    try:
        next(iter(stream))
        for _ in range(2):
            with pytest.raises(RateLimitError):
                chat(german, "de", 4)
            time.sleep(3 * SCRAPE_INTERVAL_S)
    finally:
        stream.close()
    for _ in range(2):
        with pytest.raises(BadRequestError, match="language"):
            chat(german, "xx", 4)
        time.sleep(3 * SCRAPE_INTERVAL_S)
    return served


def check_dashboard(prometheus, dashboard, queries, variables, ns, start, languages):
    """Every variable lists what was served, and every query, with the
    variables set to one value each and then to All, returns data."""
    one = {"namespace": ns, "deployment": SAMPLE_NAME, "language": languages[0]}
    every = {v["name"]: v["allValue"] for v in variables}
    expected = {"namespace": [ns], "deployment": [SAMPLE_NAME], "language": languages}

    def variable_values(v, selection):
        query = substitute(variable_query(v), selection)
        m = re.fullmatch(r"\s*label_values\((?:(.*),)?\s*([A-Za-z_]\w*)\s*\)\s*", query, re.S)
        assert m, f"variable {v['name']}: only label_values(...) is checked, not {query}"
        params = {"start": start, "end": time.time()}
        if m.group(1):
            params["match[]"] = m.group(1).strip()
        return sorted(prometheus.api(f"label/{m.group(2)}/values", **params))

    def failures() -> list[str]:
        out = []
        for v in variables:
            for selection in (one, every):
                got = variable_values(v, selection)
                if got != expected[v["name"]]:
                    out.append(f"variable {v['name']} ({variable_query(v)}): {got}, "
                               f"expected {expected[v['name']]}")
        for title, expr in queries:
            for selection in (one, every):
                query = substitute(expr, selection)
                result = prometheus.api("query_range", query=query, start=start, end=time.time(),
                                        step=STEP_S)["result"]
                if not any(finite(s) for s in result):
                    out.append(f"panel {title!r}: no data from {query}")
                # The 429s and 400s the test provoked show, not a flat zero.
                elif "specdec_requests_total" in expr and not any(positive(s) for s in result):
                    out.append(f"panel {title!r}: only zeros from {query}")
        return out

    # The operator publishes acceptance on its status timer, and every
    # scrape lags a little: retry until all show, then report what never did.
    deadline = time.time() + 60
    while (missing := failures()) and time.time() < deadline:
        time.sleep(2)
    assert not missing, "\n".join(missing)

    # Every metric a panel reads is filtered by every variable its series
    # carry the label of.
    unfiltered = []
    for title, expr in queries:
        for metric, matchers in selectors(expr):
            series = prometheus.api("series", **{"match[]": metric, "start": start, "end": time.time()})
            present = set().union(*(s.keys() for s in series)) if series else set()
            wanted = OPERATOR_LABELS if metric.startswith("specdec_operator_") else BACKEND_LABELS
            for variable, label in wanted.items():
                if label in present and f'{label}=~"${variable}"' not in matchers:
                    unfiltered.append(f"panel {title!r}: {metric} not filtered by ${variable} ({label})")
    assert not unfiltered, "\n".join(unfiltered)
