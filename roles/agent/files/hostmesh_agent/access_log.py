"""The access-log line: what Envoy is told to write, and reading it back (pure).

Envoy writes one JSON object per line to its standard output, which the agent reads
(envoy_stdout.py): one line per tcp connection and per http request, plus, for tcp, a
line when the application is connected (so that opened connections are counted as they
open). Each filter chain writes its own constant ``direction``, ``service`` and
``protocol``, so a line says which service it was about without the agent having to
remember which config wrote it. Field by field in docs/telemetry.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Optional

Json = Dict[str, Any]

STDOUT_LOGGER_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
INBOUND = "inbound"
OUTBOUND = "outbound"

# Envoy's %ACCESS_LOG_TYPE% values for the lines we ask for.
TCP_CONNECTED = "TcpUpstreamConnected"
TCP_END = "TcpConnectionEnd"
HTTP_END = "DownstreamEnd"
ENDS = (TCP_END, HTTP_END)

# The longest line the agent reads as one; Envoy is told to cut the few long fields first.
MAX_LINE_BYTES = 16384

_COMMON = {
    "start_time": "%START_TIME%",
    "type": "%ACCESS_LOG_TYPE%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "duration_ms": "%DURATION%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
}
_HTTP = {
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):2048%",
    "authority": "%REQ(:AUTHORITY):256%",
    "request_id": "%REQ(X-REQUEST-ID):64%",
    "trace_id": "%TRACE_ID%",
}
# The other side's identity: the caller's on an inbound chain, the server's on an outbound one.
_PEER = {INBOUND: "%DOWNSTREAM_PEER_URI_SAN%", OUTBOUND: "%UPSTREAM_PEER_URI_SAN%"}


def line_format(direction: str, service: str, protocol: str) -> Json:
    """The ``json_format`` of one filter chain's lines."""
    fields = {"direction": direction, "service": service, "protocol": protocol, "peer_spiffe_id": _PEER[direction]}
    fields.update(_COMMON)
    if protocol == "http":
        fields.update(_HTTP)
    return fields


def stdout_logger(direction: str, service: str, protocol: str) -> Json:
    """An ``access_log`` entry: JSON lines on Envoy's standard output."""
    return {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": STDOUT_LOGGER_TYPE,
            "log_format": {"json_format": line_format(direction, service, protocol)},
        },
    }


def tcp_log_options() -> Json:
    """A tcp line when the application is connected, as well as the one when the connection ends."""
    return {"flush_access_log_on_connected": True}


@dataclass(frozen=True)
class LogEntry:
    """What telemetry needs of one line (the line itself is forwarded as Envoy wrote it)."""

    kind: str  # TCP_CONNECTED, TCP_END or HTTP_END
    direction: str
    service: str
    protocol: str
    peer: str  # SPIFFE ID of the other side, "" without mTLS
    upstream_host: str
    response_code: int
    response_flags: str
    details: str  # the response code details (http) or the connection termination details (tcp)
    duration_ms: int
    bytes_received: int
    bytes_sent: int
    method: str = ""
    path: str = ""
    downstream: str = ""  # the caller's address

    @property
    def is_end(self) -> bool:
        return self.kind in ENDS


def _text(doc: Json, key: str) -> str:
    value = doc.get(key)
    return value if isinstance(value, str) else ""


def _count(doc: Json, key: str) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return 0
    return int(value)


def parse_line(line: bytes) -> Optional[LogEntry]:
    """A line this module's format wrote, or None for anything else (passed through as it is)."""
    try:
        doc = json.loads(line)
    except ValueError:  # not JSON, or not UTF-8
        return None
    if not isinstance(doc, dict):
        return None
    kind, direction, protocol = _text(doc, "type"), _text(doc, "direction"), _text(doc, "protocol")
    if kind not in (TCP_CONNECTED, *ENDS) or direction not in (INBOUND, OUTBOUND) or protocol not in ("tcp", "http"):
        return None
    details = _text(doc, "response_code_details") if protocol == "http" else ""
    return LogEntry(
        kind=kind,
        direction=direction,
        service=_text(doc, "service"),
        protocol=protocol,
        peer=_text(doc, "peer_spiffe_id"),
        upstream_host=_text(doc, "upstream_host"),
        response_code=_count(doc, "response_code"),
        response_flags=_text(doc, "response_flags") or "-",
        details=details or _text(doc, "connection_termination_details"),
        duration_ms=_count(doc, "duration_ms"),
        bytes_received=_count(doc, "bytes_received"),
        bytes_sent=_count(doc, "bytes_sent"),
        method=_text(doc, "method"),
        path=_text(doc, "path"),
        downstream=_text(doc, "downstream_remote_address"),
    )
