"""Service telemetry under Istio's metric names, computed from the access-log lines.

Envoy writes a line per http request and per tcp connection (access_log.py); every line
the agent reads becomes counts here, rendered on the merged metrics endpoint with Istio's
names and labels, so that Istio's dashboards and habits carry over. What each label holds
is in docs/telemetry.md.

Labels come from the line (direction, service, the peer's SPIFFE ID, response code and
flags) and from this sidecar's own identity. A peer's workload is what
``telemetry.workloads`` says for its SPIFFE ID, else the service-account part of the ID:
the same name the peer gives itself when it has no ``app`` label, so the two reporters of
one call agree. Label sets are bounded: past ``telemetry.max_series`` a new set has its
identity labels folded into one ``overflow`` set per service (totals stay right), counted
in ``hostmesh_agent_telemetry_overflow_total``.

Request durations are a histogram with Istio's buckets; body sizes are sums and counts
(a summary without quantiles) rather than histograms: a label set's SPIFFE IDs make each
line some 500 bytes, and three histograms would be 67 lines a set instead of 27: at the
500-set bound, some 17 MiB of text built at every scrape instead of 7 MiB.

The reader thread observes, the status server's thread renders: one lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

from hostmesh_agent.access_log import INBOUND, TCP_CONNECTED, LogEntry
from hostmesh_agent.config import Config, spiffe_id
from hostmesh_agent.prometheus_text import family, histogram_lines, number, open_labels

# Envoy's default histogram buckets, which Istio's proxies use for these metrics.
BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000)  # fmt: skip
UNKNOWN = "unknown"
OVERFLOW = "overflow"

# Who called whom: the workload, namespace and principal of each end.
_ENDS_LABELS = (
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
)
# The labels folded into ``overflow`` past the series bound.
_IDENTITY_LABELS = (*_ENDS_LABELS, "connection_security_policy")
TCP_LABELS = (
    "reporter",
    *_ENDS_LABELS,
    "destination_service",
    "destination_service_name",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
)
HTTP_LABELS = (*TCP_LABELS[:-2], "response_code", *TCP_LABELS[-2:])

# The passthrough and black-hole chains: there is no service, only the cluster's name.
NOT_A_SERVICE = frozenset({"InboundPassthroughCluster", "PassthroughCluster", "BlackHoleCluster"})


@dataclass(frozen=True)
class Identity:
    """This sidecar as its metrics name it, and how peers and services are named."""

    workload: str
    namespace: str
    principal: str
    domain: str
    workloads: Dict[str, str] = field(default_factory=dict)
    outbound_namespaces: Dict[str, str] = field(default_factory=dict)
    max_series: int = 500


def identity(cfg: Config) -> Identity:
    return Identity(
        workload=workload_name(cfg),
        namespace=cfg.node.namespace,
        principal=spiffe_id(cfg),
        domain=cfg.telemetry.domain,
        workloads=dict(cfg.telemetry.workloads),
        outbound_namespaces={s.name: s.namespace or cfg.node.namespace for s in cfg.outbound.services},
        max_series=cfg.telemetry.max_series,
    )


def workload_name(cfg: Config) -> str:
    """The node's ``app`` label, else its service account: what peers call it by default."""
    return cfg.node.labels.get("app") or cfg.node.service_account


def _segment(spiffe: str, name: str) -> str:
    """The value after ``/<name>/`` in a SPIFFE ID's path (``ns``, ``sa``), or ""."""
    parts = spiffe.split("/")[3:] if spiffe.startswith("spiffe://") else []
    for i in range(len(parts) - 1):
        if parts[i] == name and parts[i + 1]:
            return parts[i + 1]
    return ""


def peer_workload(me: Identity, spiffe: str) -> str:
    if not spiffe:
        return UNKNOWN
    return me.workloads.get(spiffe) or _segment(spiffe, "sa") or UNKNOWN


def peer_namespace(spiffe: str) -> str:
    return _segment(spiffe, "ns") or UNKNOWN


def labels(me: Identity, e: LogEntry) -> Dict[str, str]:
    """Istio's labels for one line, as the reporter (this sidecar) sees the call."""
    me_principal_if_mtls = me.principal if e.peer else UNKNOWN
    if e.direction == INBOUND:
        service_ns = me.namespace
        out = {
            "reporter": "destination",
            "source_workload": peer_workload(me, e.peer),
            "source_workload_namespace": peer_namespace(e.peer),
            "source_principal": e.peer or UNKNOWN,
            "destination_workload": me.workload,
            "destination_workload_namespace": me.namespace,
            "destination_principal": me_principal_if_mtls,
            "connection_security_policy": "mutual_tls" if e.peer else "none",
        }
    else:
        service_ns = me.outbound_namespaces.get(e.service, me.namespace)
        out = {
            "reporter": "source",
            "source_workload": me.workload,
            "source_workload_namespace": me.namespace,
            "source_principal": me_principal_if_mtls,
            "destination_workload": peer_workload(me, e.peer),
            "destination_workload_namespace": peer_namespace(e.peer),
            "destination_principal": e.peer or UNKNOWN,
            # As Istio: a client cannot tell how the server authenticated it.
            "connection_security_policy": UNKNOWN,
        }
    service = e.service or UNKNOWN
    out["destination_service_name"] = service
    out["destination_service"] = UNKNOWN if service in NOT_A_SERVICE else f"{service}.{service_ns}.{me.domain}"
    out["request_protocol"] = e.protocol
    out["response_flags"] = e.response_flags or "-"
    if e.protocol == "http":
        out["response_code"] = str(e.response_code)
    return out


class Histogram:
    """Counts per bucket (not cumulated; the last one is above every bound) and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        i = 0
        while i < len(BUCKETS) and value > BUCKETS[i]:
            i += 1
        self.counts[i] += 1
        self.total += value


class HttpSeries:
    """One label set's requests; the body sizes as sums (see the module's docs for why)."""

    __slots__ = ("duration", "labels", "request_bytes", "requests", "response_bytes")

    def __init__(self, labels: str) -> None:
        self.labels = labels
        self.requests = 0
        self.duration = Histogram()
        self.request_bytes = 0
        self.response_bytes = 0


class TcpSeries:
    __slots__ = ("closed", "labels", "opened", "received", "sent")

    def __init__(self, labels: str) -> None:
        self.labels = labels
        self.opened = self.closed = self.sent = self.received = 0


LabelValues = Tuple[str, ...]
_BOUNDS = tuple(number(b) for b in BUCKETS)


class Telemetry:
    """Istio's request and connection metrics, from the lines of every Envoy epoch."""

    def __init__(self, cfg: Config) -> None:
        self._lock = threading.Lock()
        self._me = identity(cfg)
        self._http: Dict[LabelValues, HttpSeries] = {}
        self._tcp: Dict[LabelValues, TcpSeries] = {}
        self.overflow = 0

    def configure(self, cfg: Config) -> None:
        """A reloaded config: new names from now on; the counts so far stay."""
        me = identity(cfg)
        with self._lock:
            self._me = me

    def observe(self, e: LogEntry) -> None:
        with self._lock:
            values = labels(self._me, e)
            if e.protocol == "http":
                if e.is_end:
                    self._observe_http(self._series(self._http, HTTP_LABELS, values, HttpSeries), e)
            else:
                self._observe_tcp(self._series(self._tcp, TCP_LABELS, values, TcpSeries), e)

    def _series(self, table: Dict, names: Sequence[str], values: Dict[str, str], make: type):
        key = tuple(values[n] for n in names)
        series = table.get(key)
        if series is None:
            if len(self._http) + len(self._tcp) >= self._me.max_series:
                self.overflow += 1
                key = tuple(OVERFLOW if n in _IDENTITY_LABELS else values[n] for n in names)
                series = table.get(key)
            if series is None:
                series = table[key] = make(open_labels(list(zip(names, key))))
        return series

    @staticmethod
    def _observe_http(s: HttpSeries, e: LogEntry) -> None:
        s.requests += 1
        s.duration.observe(e.duration_ms)
        s.request_bytes += e.bytes_received
        s.response_bytes += e.bytes_sent

    @staticmethod
    def _observe_tcp(s: TcpSeries, e: LogEntry) -> None:
        if e.kind == TCP_CONNECTED:
            s.opened += 1
            return
        if not e.upstream_host:  # never reached the application (refused, or no upstream): no open line
            s.opened += 1
        s.closed += 1
        s.sent += e.bytes_sent
        s.received += e.bytes_received

    def series_count(self) -> int:
        with self._lock:
            return len(self._http) + len(self._tcp)

    def render(self) -> str:
        with self._lock:
            http, tcp = list(self._http.values()), list(self._tcp.values())
            lines: List[str] = []
            if http:
                lines += _header("istio_requests_total", "counter", "Requests handled by this sidecar.")
                lines += [f"istio_requests_total{s.labels}}} {s.requests}" for s in http]
                name = "istio_request_duration_milliseconds"
                lines += _header(name, "histogram", "Request duration in milliseconds.")
                for s in http:
                    lines += histogram_lines(name, s.labels, _BOUNDS, s.duration.counts, s.duration.total)
                for name, attr, what in (
                    ("istio_request_bytes", "request_bytes", "Request body sizes in bytes"),
                    ("istio_response_bytes", "response_bytes", "Response body sizes in bytes"),
                ):
                    lines += _header(name, "summary", f"{what} (sum and count; no quantiles).")
                    for s in http:
                        lines += [
                            f"{name}_sum{s.labels}}} {getattr(s, attr)}",
                            f"{name}_count{s.labels}}} {s.requests}",
                        ]
            for name, attr, help_text in _TCP_COUNTERS:
                if tcp:
                    lines += _header(name, "counter", help_text)
                    lines += [f"{name}{s.labels}}} {getattr(s, attr)}" for s in tcp]
            lines += family(
                "hostmesh_agent_telemetry_series",
                "gauge",
                f"Label sets of the istio_* metrics (at most telemetry.max_series = {self._me.max_series}).",
                [((), len(http) + len(tcp))],
            )
            lines += family(
                "hostmesh_agent_telemetry_overflow_total",
                "counter",
                "Lines counted in an overflow label set because telemetry.max_series was reached.",
                [((), self.overflow)],
            )
        return "\n".join(lines) + "\n"


def _header(name: str, kind: str, help_text: str) -> List[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


_TCP_COUNTERS = (
    ("istio_tcp_connections_opened_total", "opened", "TCP connections opened."),
    ("istio_tcp_connections_closed_total", "closed", "TCP connections closed."),
    ("istio_tcp_sent_bytes_total", "sent", "Bytes sent to the caller (the response) on TCP connections."),
    ("istio_tcp_received_bytes_total", "received", "Bytes received from the caller (the request) on TCP connections."),
)
