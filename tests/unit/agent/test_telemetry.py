"""Access-log lines read back, and the Istio-named metrics made of them (no Envoy).

The sample lines are shaped as Envoy 1.40 writes them for access_log.line_format: keys
sorted, ``null`` for what it does not know, numbers as numbers.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, Optional

import pytest

from hostmesh_agent.access_log import HTTP_END, TCP_CONNECTED, TCP_END, line_format, parse_line
from hostmesh_agent.config import parse_config
from hostmesh_agent.telemetry import BUCKETS, HTTP_LABELS, TCP_LABELS, Telemetry, labels

ME = "spiffe://cluster.local/ns/shop/sa/web"
CLIENT_A = "spiffe://cluster.local/ns/shop/sa/client-a"
DB = "spiffe://cluster.local/ns/data/sa/postgres"
CFG = parse_config(
    {
        "node": {"name": "web-1", "namespace": "shop", "service_account": "web", "labels": {"app": "web"}},
        "telemetry": {"domain": "mesh.example", "workloads": {DB: "postgres-primary"}},
        "outbound": {"services": [{"name": "db", "port": 5432, "endpoints": ["10.0.0.5:5432"], "namespace": "data"}]},
    }
)


def line(**fields: Any) -> bytes:
    doc: Dict[str, Any] = {
        "bytes_received": 0,
        "bytes_sent": 0,
        "connection_termination_details": None,
        "direction": "inbound",
        "downstream_remote_address": "10.77.0.2:40000",
        "duration_ms": 1,
        "peer_spiffe_id": None,
        "protocol": "tcp",
        "response_code": 0,
        "response_code_details": None,
        "response_flags": "-",
        "service": "web",
        "start_time": "2026-12-03T12:59:13.344Z",
        "type": TCP_END,
        "upstream_cluster": "inbound|8080||web",
        "upstream_host": "127.0.0.1:8080",
        "upstream_transport_failure_reason": None,
    }
    doc.update(fields)
    return json.dumps(doc, sort_keys=True).encode()


def http_line(**fields: Any) -> bytes:
    base = {"protocol": "http", "type": HTTP_END, "method": "GET", "path": "/", "authority": "web", "trace_id": None}
    return line(**{**base, "response_code": 200, **fields})


def sample(text: str, name: str, **wanted: str) -> Optional[float]:
    """The value of the one sample of ``name`` with these labels (None when there is none)."""
    found = []
    for row in text.splitlines():
        m = re.match(r"^(\w+)(\{.*\})? (\S+)$", row)
        if not m or m.group(1) != name:
            continue
        labels_text = m.group(2) or ""
        if all(f'{k}="{v}"' in labels_text for k, v in wanted.items()):
            found.append(float(m.group(3)))
    assert len(found) <= 1, (name, wanted, found)
    return found[0] if found else None


def test_every_field_of_the_format_is_an_envoy_command_or_a_constant():
    for direction in ("inbound", "outbound"):
        for protocol in ("tcp", "http"):
            fmt = line_format(direction, "web", protocol)
            assert (fmt["direction"], fmt["service"], fmt["protocol"]) == (direction, "web", protocol)
            dynamic = {k: v for k, v in fmt.items() if k not in ("direction", "service", "protocol")}
            assert all(v.startswith("%") and v.endswith("%") for v in dynamic.values()), dynamic
            assert ("trace_id" in fmt) == (protocol == "http")
    assert line_format("inbound", "web", "tcp")["peer_spiffe_id"] == "%DOWNSTREAM_PEER_URI_SAN%"
    assert line_format("outbound", "web", "tcp")["peer_spiffe_id"] == "%UPSTREAM_PEER_URI_SAN%"


def test_parse_reads_our_lines_and_refuses_anything_else():
    e = parse_line(http_line(peer_spiffe_id=CLIENT_A, response_code=403, bytes_sent=19,
                             response_code_details="rbac_access_denied_matched_policy[none]"))  # fmt: skip
    assert e is not None and e.is_end
    assert (e.kind, e.direction, e.service, e.protocol, e.peer) == (HTTP_END, "inbound", "web", "http", CLIENT_A)
    assert (e.response_code, e.bytes_sent, e.details, e.method) == (
        403,
        19,
        "rbac_access_denied_matched_policy[none]",
        "GET",
    )
    tcp = parse_line(line(type=TCP_CONNECTED, connection_termination_details="x"))
    assert tcp is not None and not tcp.is_end and tcp.details == "x"
    for junk in (
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"type": "TcpConnectionEnd"}',
        line(direction="sideways"),
        line(type="UpstreamPoolReady"),
        line(protocol="udp"),
    ):
        assert parse_line(junk) is None, junk
    # Odd values do not break a line: a negative or textual count reads as 0, a missing flag as "-".
    odd = parse_line(line(bytes_sent=-5, duration_ms="7", response_flags=None))
    assert odd is not None and (odd.bytes_sent, odd.duration_ms, odd.response_flags) == (0, 0, "-")


def test_inbound_labels_name_the_caller_from_its_spiffe_id():
    from hostmesh_agent.telemetry import identity

    me = identity(CFG)
    got = labels(me, parse_line(http_line(peer_spiffe_id=CLIENT_A)))
    assert got == {
        "reporter": "destination",
        "source_workload": "client-a",  # the service-account part: no telemetry.workloads entry
        "source_workload_namespace": "shop",
        "source_principal": CLIENT_A,
        "destination_workload": "web",  # the node's app label
        "destination_workload_namespace": "shop",
        "destination_principal": ME,
        "destination_service": "web.shop.mesh.example",
        "destination_service_name": "web",
        "request_protocol": "http",
        "response_code": "200",
        "response_flags": "-",
        "connection_security_policy": "mutual_tls",
    }
    assert set(got) == set(HTTP_LABELS)
    plain = labels(me, parse_line(line()))
    assert set(plain) == set(TCP_LABELS)
    assert (plain["source_principal"], plain["source_workload"], plain["source_workload_namespace"]) == ("unknown",) * 3
    assert (plain["destination_principal"], plain["connection_security_policy"]) == ("unknown", "none")


def test_outbound_labels_name_the_server_and_its_service():
    from hostmesh_agent.telemetry import identity

    got = labels(identity(CFG), parse_line(line(direction="outbound", service="db", peer_spiffe_id=DB)))
    assert got["reporter"] == "source"
    assert (got["source_workload"], got["source_workload_namespace"], got["source_principal"]) == ("web", "shop", ME)
    assert got["destination_workload"] == "postgres-primary"  # from telemetry.workloads
    assert (got["destination_workload_namespace"], got["destination_principal"]) == ("data", DB)
    assert got["destination_service"] == "db.data.mesh.example"  # the outbound service's namespace
    assert got["connection_security_policy"] == "unknown"  # as Istio: a client cannot know
    passthrough = labels(identity(CFG), parse_line(line(direction="outbound", service="PassthroughCluster")))
    assert (passthrough["destination_service"], passthrough["destination_service_name"]) == (
        "unknown",
        "PassthroughCluster",
    )
    assert passthrough["source_principal"] == "unknown"  # no mTLS, so no identity was shown


def test_http_requests_counts_and_histograms():
    t = Telemetry(CFG)
    for duration, code in ((3, 200), (3, 200), (700, 503)):
        t.observe(parse_line(http_line(peer_spiffe_id=CLIENT_A, duration_ms=duration, response_code=code,
                                       bytes_received=10, bytes_sent=2000)))  # fmt: skip
    text = t.render()
    assert sample(text, "istio_requests_total", response_code="200", source_principal=CLIENT_A) == 2
    assert sample(text, "istio_requests_total", response_code="503") == 1
    base = {"response_code": "200"}
    assert sample(text, "istio_request_duration_milliseconds_bucket", le="1", **base) == 0
    assert sample(text, "istio_request_duration_milliseconds_bucket", le="5", **base) == 2
    assert sample(text, "istio_request_duration_milliseconds_bucket", le="+Inf", **base) == 2
    assert sample(text, "istio_request_duration_milliseconds_sum", **base) == 6
    assert sample(text, "istio_request_duration_milliseconds_count", **base) == 2
    # Body sizes as sums and counts (a summary without quantiles): a series costs 27 lines, not 67.
    assert sample(text, "istio_request_bytes_sum", **base) == 20
    assert sample(text, "istio_request_bytes_count", **base) == 2
    assert sample(text, "istio_response_bytes_sum", **base) == 4000
    assert sample(text, "istio_response_bytes_count", **base) == 2
    assert "istio_response_bytes_bucket" not in text
    assert "# TYPE istio_response_bytes summary" in text
    assert text.count("# TYPE istio_request_duration_milliseconds histogram") == 1
    # Istio's buckets, every one of them, in order.
    les = re.findall(r'istio_request_duration_milliseconds_bucket\{[^}]*response_code="503"[^}]*le="([^"]+)"', text)
    assert les == [*(format(b, "g") if b != int(b) else str(int(b)) for b in BUCKETS), "+Inf"]


def test_tcp_connections_opened_closed_and_bytes():
    t = Telemetry(CFG)
    t.observe(parse_line(line(type=TCP_CONNECTED, peer_spiffe_id=CLIENT_A)))
    text = t.render()
    assert sample(text, "istio_tcp_connections_opened_total", source_principal=CLIENT_A) == 1
    assert sample(text, "istio_tcp_connections_closed_total", source_principal=CLIENT_A) == 0
    t.observe(parse_line(line(peer_spiffe_id=CLIENT_A, bytes_received=100, bytes_sent=7)))
    # A refused connection never reached the application: no "connected" line, counted open and closed.
    t.observe(parse_line(line(peer_spiffe_id=CLIENT_A, upstream_host=None,
                              connection_termination_details="rbac_access_denied_matched_policy[none]")))  # fmt: skip
    text = t.render()
    assert sample(text, "istio_tcp_connections_opened_total", source_principal=CLIENT_A) == 2
    assert sample(text, "istio_tcp_connections_closed_total", source_principal=CLIENT_A) == 2
    assert sample(text, "istio_tcp_received_bytes_total", source_principal=CLIENT_A) == 100
    assert sample(text, "istio_tcp_sent_bytes_total", source_principal=CLIENT_A) == 7
    assert "istio_requests_total" not in text


def test_label_sets_are_bounded_and_totals_stay_right():
    cfg = parse_config({"telemetry": {"max_series": 10}, "node": {"namespace": "shop"}})
    t = Telemetry(cfg)
    for i in range(25):  # 25 callers, each its own label set
        t.observe(parse_line(http_line(peer_spiffe_id=f"spiffe://cluster.local/ns/shop/sa/caller-{i}")))
    text = t.render()
    assert t.series_count() == 11  # ten, plus the one overflow set the rest were folded into
    assert sample(text, "istio_requests_total", source_principal="overflow") == 15
    assert sum(float(v) for v in re.findall(r"^istio_requests_total\{.*\} (\S+)$", text, re.M)) == 25
    assert sample(text, "hostmesh_agent_telemetry_overflow_total") == 15
    assert sample(text, "hostmesh_agent_telemetry_series") == 11


def test_a_reload_renames_from_then_on_and_keeps_the_counts():
    t = Telemetry(CFG)
    t.observe(parse_line(http_line(peer_spiffe_id=CLIENT_A)))
    t.configure(parse_config({"node": {"namespace": "shop", "labels": {"app": "shop-web"}}}))
    t.observe(parse_line(http_line(peer_spiffe_id=CLIENT_A)))
    text = t.render()
    assert sample(text, "istio_requests_total", destination_workload="web") == 1
    assert sample(text, "istio_requests_total", destination_workload="shop-web") == 1


@pytest.mark.parametrize(
    ("value", "escaped"),
    [('a"b', 'a\\"b'), ("a\\b", "a\\\\b"), ("a\nb", "a\\nb")],
)
def test_label_values_are_escaped(value, escaped):
    t = Telemetry(CFG)
    t.observe(parse_line(line(service=value)))
    assert f'destination_service_name="{escaped}"' in t.render()
