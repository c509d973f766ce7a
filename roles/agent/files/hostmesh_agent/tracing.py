"""OpenTelemetry tracing of http services: Envoy's tracer and its collector cluster (pure).

Every http connection manager, inbound and outbound, gets Envoy's OpenTelemetry tracer,
sending spans over gRPC OTLP to ``tracing.collector`` through the ``opentelemetry_collector``
cluster (in the watched CDS file, as the tracer config is in LDS: turning tracing on, off
or to another collector needs no restart). The trace context travels in W3C
``traceparent`` headers: the client's sidecar starts the trace (or continues the
application's), the server's sidecar continues it, so both report spans of one trace.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from hostmesh_agent.bootstrap import socket_address
from hostmesh_agent.config import Config, service_cluster

Json = Dict[str, Any]

COLLECTOR_CLUSTER = "opentelemetry_collector"
OTEL_TYPE = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"


def hcm_tracing(cfg: Config) -> Optional[Json]:
    """The connection manager's ``tracing``: sample ``tracing.sampling`` percent of the
    requests that arrive without a decision; a request whose ``traceparent`` carries one
    (from the calling sidecar) keeps it, so a trace is whole or absent."""
    if not cfg.tracing.enabled:
        return None
    return {
        "random_sampling": {"value": cfg.tracing.sampling},
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": OTEL_TYPE,
                "grpc_service": {"envoy_grpc": {"cluster_name": COLLECTOR_CLUSTER}, "timeout": "1s"},
                "service_name": service_cluster(cfg),
            },
        },
    }


def collector_cluster(cfg: Config) -> Optional[Json]:
    """The collector over HTTP/2 (gRPC); a host name is resolved by Envoy."""
    if not cfg.tracing.enabled:
        return None
    host, _sep, port = cfg.tracing.collector.rpartition(":")
    host = host.strip("[]")
    return {
        "name": COLLECTOR_CLUSTER,
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": COLLECTOR_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(host, int(port))}}]}],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }
