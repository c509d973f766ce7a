"""Prometheus on prom (monitoring.yml): it scrapes every sidecar, its per-service request
counts equal what the clients sent, every dashboard query runs on what it scraped, and a
stopped sidecar's alert fires.

prom scrapes and evaluates every 2 s and the alerts fire after 10 s (the scenario's
group_vars). Runs after test_mesh_policy.py; stopping client-b's sidecar comes last and
starts it again. Prometheus is asked through its HTTP API on prom itself.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from pathlib import Path

import pytest
from sandbox_hosts import REPO_ROOT, address_of
from test_mesh_policy import WEB, db_call, http_status, metrics

MESH = ("client-a", "client-b", "server")
JOB = "hostmesh-sidecar"
DASHBOARD = REPO_ROOT / "roles" / "prometheus" / "files" / "grafana" / "hostmesh.json"


def api(prom, path: str, **params: str) -> dict:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    reply = json.loads(prom.check_output(f"curl -sf --max-time 10 'http://127.0.0.1:9090/api/v1/{path}{query}'"))
    assert reply["status"] == "success", reply
    return reply["data"]


def promql(prom, expr: str) -> dict:
    """An instant query's vector, as {frozenset of labels: value}."""
    data = api(prom, "query", query=expr)
    assert data["resultType"] == "vector", data
    return {frozenset(s["metric"].items()): float(s["value"][1]) for s in data["result"]}


def one_value(prom, expr: str) -> float:
    result = promql(prom, expr)
    assert len(result) <= 1, (expr, result)
    return next(iter(result.values()), 0.0)


def wait_for(what: str, check, timeout: float = 60.0, every: float = 1.0):
    """check() until it returns something true; its last value is in the failure."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f}s (last: {value!r})")
        time.sleep(every)


def firing(prom, alert: str) -> set[str]:
    return {
        a["labels"].get("host", "") + "/" + a["labels"].get("service", a["labels"].get("destination_service_name", ""))
        for a in api(prom, "alerts")["alerts"]
        if a["labels"]["alertname"] == alert and a["state"] == "firing"
    }


def direct_value(server, name: str, **labels: str) -> float:
    """The sum of a counter's samples with these labels, read from server's own status port."""
    total = 0.0
    for line in metrics(server).splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rpartition(" ")[2])
    return total


def test_prometheus_scrapes_every_sidecar(prom, client_a, client_b, server) -> None:
    def targets():
        active = [t for t in api(prom, "targets")["activeTargets"] if t["labels"]["job"] == JOB]
        return {t["labels"]["host"]: (t["labels"]["instance"], t["health"]) for t in active}

    expected = {host.backend.host: (f"{address_of(host)}:15020", "up") for host in (client_a, client_b, server)}
    assert set(expected) == set(MESH)
    wait_for("every sidecar scraped and up", lambda: targets() == expected or None, timeout=30)
    # The agent's own metrics reached Prometheus, labelled with each host's name.
    ready = promql(prom, f'hostmesh_agent_ready{{job="{JOB}"}}')
    assert {dict(labels)["host"]: value for labels, value in ready.items()} == dict.fromkeys(MESH, 1.0)


def test_per_service_request_counts_equal_what_the_clients_sent(prom, client_a, client_b, server) -> None:
    served, refused, connections = 5, 3, 4
    http = f'istio_requests_total{{job="{JOB}", host="server", reporter="destination", destination_service_name="web"'
    tcp = (
        f'istio_tcp_connections_opened_total{{job="{JOB}", host="server", reporter="destination",'
        ' destination_service_name="db"}'
    )
    queries = {
        "web 200": f'sum({http}, response_code="200"}})',
        "web 403": f'sum({http}, response_code="403"}})',
        "db opened": f"sum({tcp})",
    }

    def direct() -> dict:
        return {
            "web 200": direct_value(server, "istio_requests_total", reporter="destination",
                                    destination_service_name="web", response_code="200"),
            "web 403": direct_value(server, "istio_requests_total", reporter="destination",
                                    destination_service_name="web", response_code="403"),
            "db opened": direct_value(server, "istio_tcp_connections_opened_total", reporter="destination",
                                      destination_service_name="db"),
        }  # fmt: skip

    def scraped() -> dict:
        return {what: one_value(prom, expr) for what, expr in queries.items()}

    # Earlier tests' calls: counted by the sidecar (within a second) and scraped.
    time.sleep(2)
    before = direct()
    wait_for("Prometheus in step with server's sidecar", lambda: scraped() == before or None, timeout=30)
    url = f"http://{address_of(server)}:{WEB}/"
    for _call in range(served):
        client_a.check_output(f"curl -sf --max-time 10 {url}")
    for _call in range(refused):
        assert http_status(client_b, url) == "403"
    for index in range(connections):
        assert db_call(client_a, server, f"m{index}").rc == 0
    sent = {"web 200": served, "web 403": refused, "db opened": connections}
    want = {what: before[what] + count for what, count in sent.items()}
    wait_for("the clients' calls in Prometheus, per service", lambda: scraped() == want or None, timeout=30)
    assert direct() == want
    # The same counts by service and code, as the dashboard's query groups them.
    by_service = promql(
        prom,
        f'sum by (destination_service_name, response_code) (istio_requests_total{{job="{JOB}", host="server",'
        ' reporter="destination"})',
    )
    grouped = {tuple(sorted(dict(k).values())): v for k, v in by_service.items()}
    assert grouped[("200", "web")] == want["web 200"] and grouped[("403", "web")] == want["web 403"]
    # client-b's refusals fire the denials alert for server's web (and db, refused before).
    wait_for("HostmeshRequestsDenied for server/web", lambda: "server/web" in firing(prom, "HostmeshRequestsDenied"))


def test_every_dashboard_query_runs_on_what_prometheus_scraped(prom) -> None:
    dashboard = json.loads(Path(DASHBOARD).read_text())
    names = set(api(prom, "label/__name__/values"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:
        promql_expr = expr.replace("$__rate_interval", "1m")
        promql_expr = re.sub(r"\$\{?\w+\}?", ".*", promql_expr)
        data = api(prom, "query", query=promql_expr)
        assert data["resultType"] in ("vector", "scalar"), expr
    for name in ("istio_requests_total", "istio_tcp_connections_opened_total", "hostmesh_agent_ready",
                 "hostmesh_rbac_denied_total", "hostmesh_agent_certificate_expiry_timestamp_seconds"):  # fmt: skip
        assert name in names, name


def test_a_stopped_sidecar_fires_its_alert(prom, client_b) -> None:
    assert not firing(prom, "HostmeshSidecarDown")
    client_b.run_expect([0], "systemctl stop hostmesh-agent.service")
    try:
        started = time.monotonic()
        down = wait_for("HostmeshSidecarDown for client-b", lambda: firing(prom, "HostmeshSidecarDown"), timeout=60)
        took = time.monotonic() - started
        assert down == {"client-b/"}, down
        print(f"HostmeshSidecarDown fired {took:.1f}s after client-b's sidecar stopped (for: 10s)")
        assert one_value(prom, f'up{{job="{JOB}", host="client-b"}}') == 0
    finally:
        client_b.run_expect([0], "systemctl start hostmesh-agent.service")
        client_b.run_expect(
            [0], "for i in $(seq 60); do curl -sf http://127.0.0.1:15020/healthz/ready && exit 0; sleep 1; done; exit 1"
        )
    wait_for("HostmeshSidecarDown resolved", lambda: not firing(prom, "HostmeshSidecarDown") or None, timeout=60)
