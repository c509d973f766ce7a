"""Tracing and the source reporter's telemetry through two sidecars with the real Envoy.

Host app -> host sidecar (15001, http, mTLS origination) -> peer sidecar (15006, http, mTLS)
-> peer app. Each sidecar sends its spans to an OTLP receiver on its own loopback
(tests/tools/otlp_receiver.py), as a collector running next to it would.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from agent_netns import (
    HERE,
    PEER_ID,
    PEER_IP,
    WEB_ID,
    agent_config,
    in_netns,
    mesh_pki,
    metric_sum,
    wait_for,
)

pytestmark = [pytest.mark.netns, pytest.mark.envoy]

RECEIVER = HERE.parents[1] / "tools" / "otlp_receiver.py"
OTLP_PORT = 4317


def start_receiver(topo, ns: str, report: Path) -> None:
    proc = topo.spawn(
        ns, sys.executable, str(RECEIVER), "--report", str(report), "--port", str(OTLP_PORT),
        "--lifetime-s", "300", stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "serving"


def spans(report: Path) -> List[Dict[str, Any]]:
    return [json.loads(x) for x in report.read_text().splitlines()] if report.exists() else []


def get_with_traceparent(ns: str, traceparent: str) -> Dict[str, Any]:
    def call() -> Dict[str, Any]:
        conn = http.client.HTTPConnection(PEER_IP, 9000, timeout=5)
        try:
            headers = {"Connection": "close"}
            if traceparent:
                headers["traceparent"] = traceparent
            conn.request("GET", "/", headers=headers)
            resp = conn.getresponse()
            return {"status": resp.status, "body": resp.read().decode(), "seen": resp.getheader("X-Seen-Traceparent")}
        finally:
            conn.close()

    return in_netns(ns, call)


def test_a_request_through_two_sidecars_yields_spans_of_one_trace_from_both(
    envoy_binary, topo_both_captured, workdir, peer_workdir, start_agent
):
    topo = topo_both_captured
    topo.start_app(9000, ns=topo.peer)
    ca, web, peer = mesh_pki(workdir)
    host_report, peer_report = workdir / "spans-host.jsonl", peer_workdir / "spans-peer.jsonl"
    start_receiver(topo, topo.host, host_report)
    start_receiver(topo, topo.peer, peer_report)
    collector = {"collector": f"127.0.0.1:{OTLP_PORT}", "sampling": 100}
    outbound = {"name": "peer-web", "port": 9000, "protocol": "http", "endpoints": [f"{PEER_IP}:9000"],
                "tls": True, "spiffe_ids": [PEER_ID]}  # fmt: skip
    host_config = agent_config(
        envoy_binary,
        workdir,
        envoy={"file_flush_interval_ms": 100},
        tls={"cert_file": web[0], "key_file": web[1], "ca_file": ca["ca"]},
        tracing=collector,
        outbound={"services": [outbound]},
    )
    host_agent = start_agent(host_config)
    # The peer samples nothing on its own: it follows the decision in the caller's traceparent.
    inbound = {"name": "peer-web", "port": 9000, "protocol": "http", "tls": True,
               "allow": [{"principals": [WEB_ID]}]}  # fmt: skip
    peer_config = agent_config(
        envoy_binary,
        peer_workdir,
        node={"name": "peer-1", "namespace": "demo", "ip": PEER_IP, "service_account": "peer"},
        envoy={"file_flush_interval_ms": 100},
        tls={"cert_file": peer[0], "key_file": peer[1], "ca_file": ca["ca"]},
        tracing={**collector, "sampling": 0},
        inbound={"services": [inbound]},
    )
    peer_agent = start_agent(peer_config, ns=topo.peer, where=peer_workdir)
    host_agent.wait_ready()
    peer_agent.wait_ready()

    # The application's own trace context is kept through both sidecars.
    app_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    answer = get_with_traceparent(topo.host, f"00-{app_trace}-00f067aa0ba902b7-01")
    assert answer["status"] == 200 and answer["body"].split() == ["9000", "127.0.0.6"], answer
    assert answer["seen"].split("-")[1] == app_trace, answer
    # And a request without one gets a trace started by the client's sidecar.
    for _i in range(3):
        assert get_with_traceparent(topo.host, "")["status"] == 200

    def traces(report: Path) -> Dict[str, List[Dict[str, Any]]]:
        out: Dict[str, List[Dict[str, Any]]] = {}
        for s in spans(report):
            out.setdefault(s["trace_id"], []).append(s)
        return out

    wait_for(lambda: len(traces(host_report)) >= 4 and len(traces(peer_report)) >= 4, 20, "spans from both", 0.2)
    host_traces, peer_traces = traces(host_report), traces(peer_report)
    assert set(host_traces) == set(peer_traces), (host_traces.keys(), peer_traces.keys())
    assert app_trace in host_traces
    [client_span] = host_traces[app_trace]
    [server_span] = peer_traces[app_trace]
    assert client_span["parent_span_id"] == "00f067aa0ba902b7"  # the application's span
    assert server_span["parent_span_id"] == client_span["span_id"]  # one hop on from the client's sidecar
    assert (client_span["service_name"], server_span["service_name"]) == ("web-1.demo", "peer-1.demo")
    assert answer["seen"].split("-")[2] == server_span["span_id"]  # the application's work is the server span's child

    # The access log carries the trace id, and the client's sidecar reports as the source.
    time.sleep(0.3)
    text = host_agent.metrics()
    source = {"reporter": "source", "destination_service_name": "peer-web", "destination_principal": PEER_ID,
              "source_principal": WEB_ID, "destination_workload": "peer", "response_code": "200"}  # fmt: skip
    wait_for(lambda: metric_sum(host_agent.metrics(), "istio_requests_total", **source) == 4, 5, "source metrics")
    dest = {"reporter": "destination", "source_principal": WEB_ID, "source_workload": "web",
            "destination_workload": "peer", "destination_service": "peer-web.demo.mesh.internal"}  # fmt: skip
    wait_for(lambda: metric_sum(peer_agent.metrics(), "istio_requests_total", **dest) == 4, 5, "destination metrics")
    assert metric_sum(text, "hostmesh_agent_access_log_lines_total") >= 4
