"""The metric names a sidecar's status port really serves, rendered by the agent's own code.

Nothing is listed by hand: the agent's metrics, the access-log pipeline's counts, the
istio_* telemetry (after one http request and one tcp connection), the policy counters
and the certificate's expiry are rendered as the merged endpoint renders them, and the
names read back from the text. Envoy's own stats (envoy_*) and Prometheus' ``up`` come
on top; the alerts and the dashboard use none of Envoy's.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Set

from hostmesh_agent.access_log import HTTP_END, TCP_END, parse_line
from hostmesh_agent.capture_repairs import capture_repairs
from hostmesh_agent.cli import mesh_metrics
from hostmesh_agent.config import parse_config
from hostmesh_agent.envoy_stdout import EnvoyStdout
from hostmesh_agent.mesh_metrics import rbac_stat_names, render_rbac
from hostmesh_agent.metrics import AgentMetrics
from hostmesh_agent.telemetry import Telemetry

# What Prometheus adds to every target it scrapes.
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? \S+$")


def _line(**fields) -> bytes:
    doc = {
        "bytes_received": 10,
        "bytes_sent": 20,
        "connection_termination_details": None,
        "direction": "inbound",
        "downstream_remote_address": "10.77.0.2:40000",
        "duration_ms": 3,
        "peer_spiffe_id": "spiffe://cluster.local/ns/default/sa/client-a",
        "protocol": "tcp",
        "response_code": 0,
        "response_code_details": None,
        "response_flags": "-",
        "service": "db",
        "start_time": "2026-12-03T12:59:13.344Z",
        "type": TCP_END,
        "upstream_cluster": "inbound|5432||db",
        "upstream_host": "127.0.0.1:5432",
        "upstream_transport_failure_reason": None,
    }
    doc.update(fields)
    return json.dumps(doc, sort_keys=True).encode()


def _certificate(directory: Path) -> Path:
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "3", "-subj", "/CN=web"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert


def merged_metrics_text(tmp_dir: Path) -> str:
    """The agent's part of ``/stats/prometheus`` for a sidecar with a policy, tls and traffic."""
    cert = _certificate(tmp_dir)
    ca = tmp_dir / "ca.pem"
    ca.write_bytes(cert.read_bytes())
    cfg = parse_config(
        {
            "node": {"name": "server", "namespace": "default", "service_account": "server"},
            "tls": {"cert_file": str(cert), "key_file": str(tmp_dir / "key.pem"), "ca_file": str(ca)},
            "policy": {"default": "deny"},
            "inbound": {
                "services": [
                    {"name": "web", "port": 8080, "protocol": "http", "tls": True},
                    {"name": "db", "port": 5432, "tls": True},
                ]
            },
        }
    )
    telemetry = Telemetry(cfg)
    stdout = EnvoyStdout(cfg, telemetry, io.BytesIO(), time.monotonic)
    http = _line(
        protocol="http", type=HTTP_END, service="web", response_code=200, method="GET", path="/",
        authority="web", request_id="1", trace_id=None, upstream_cluster="inbound|8080||web",
    )  # fmt: skip
    for raw in (http, _line()):
        entry = parse_line(raw)
        assert entry is not None, raw
        telemetry.observe(entry)
    names = rbac_stat_names(cfg)
    rbac = render_rbac(names, {name: 1 for name in names})
    own = AgentMetrics(started_at=0.0).render(1.0)
    repairs = tmp_dir / "repairs"
    repairs.write_text("3\n")
    return own + mesh_metrics(telemetry, stdout)(cfg) + rbac + capture_repairs(str(repairs))


def exported_names(text: str) -> Set[str]:
    """The metric names of the samples in a Prometheus text exposition."""
    names = set()
    for row in text.splitlines():
        match = _SAMPLE.match(row)
        if match:
            names.add(match.group(1))
    return names


# --- PromQL, just enough to find the metric names an expression reads -----------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    }
)
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables given values Prometheus can parse."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def metric_names(expr: str) -> Set[str]:
    """The metric names an expression selects (not functions, label names or keywords)."""
    text = _STRING.sub('""', expr)
    text = _GROUPING.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    found = set()
    for match in _IDENT.finditer(text):
        if match.group(2) or match.group(1) in _KEYWORDS:
            continue
        found.add(match.group(1))
    return found
