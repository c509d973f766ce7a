"""Standalone mode's dynamic resources: listeners, clusters and secrets (pure).

These are the files Envoy watches (LDS/CDS/SDS from files), so a change here
applies without restarting Envoy. Layout follows Istio's sidecar so operators
recognise it: ``virtualInbound`` on 15006 with one filter chain per inbound
port, ``virtualOutbound`` on 15001 passing through to the original
destination unless an upstream service matches.
"""

from __future__ import annotations

import ipaddress
import json
import zlib
from typing import Any, Dict, List, Optional, Tuple

from hostmesh_agent import policy
from hostmesh_agent.access_log import INBOUND, OUTBOUND, stdout_logger, tcp_log_options
from hostmesh_agent.bootstrap import listen_address, socket_address
from hostmesh_agent.config import Config, Endpoint, InboundService, OutboundService, service_fqdns
from hostmesh_agent.rundir import RunDir
from hostmesh_agent.tracing import collector_cluster, hcm_tracing

Json = Dict[str, Any]

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
INBOUND_LISTENER = "virtualInbound"
OUTBOUND_LISTENER = "virtualOutbound"
INBOUND_PASSTHROUGH = "InboundPassthroughCluster"
OUTBOUND_PASSTHROUGH = "PassthroughCluster"
BLACKHOLE = "BlackHoleCluster"
CERT_SECRET = "default"
CA_SECRET = "ROOTCA"
# As Istio's default: a SYN lost to a busy application's full backlog is retried
# after 1 s, so a 1 s timeout would turn a slow accept into a reset.
CONNECT_TIMEOUT = "10s"
# Retried when retries.idempotent_only: the methods RFC 9110 calls idempotent.
IDEMPOTENT_METHODS = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE")
LB_POLICIES = {
    "round_robin": "ROUND_ROBIN",
    "least_request": "LEAST_REQUEST",
    "random": "RANDOM",
    "ring_hash": "RING_HASH",
}
# Listeners whose connections a stop waits for (by stat prefix): the inbound ones it drains.
DRAINED_STAT_PREFIXES = ("inbound",)


def inbound_cluster_name(svc: InboundService) -> str:
    return f"inbound|{svc.port}||{svc.name}"


def outbound_cluster_name(svc: OutboundService) -> str:
    return f"outbound|{svc.port}||{svc.name}"


def discovery_response(type_url: str, resources: List[Json], version: str) -> Json:
    """The file format Envoy reads for path-based LDS/CDS/SDS."""
    return {
        "version_info": version,
        "type_url": type_url,
        "resources": [{"@type": type_url, **r} for r in resources],
    }


def _sds(name: str, run_dir: RunDir) -> Json:
    path = run_dir.sds_default if name == CERT_SECRET else run_dir.sds_rootca
    return {
        "name": name,
        "sds_config": {
            "resource_api_version": "V3",
            "path_config_source": {
                "path": path,
                "watched_directory": {"path": run_dir.dynamic_dir},
            },
        },
    }


def _san_matchers(cfg: Config, spiffe_ids: Tuple[str, ...]) -> List[Json]:
    """Match peers by SPIFFE ID; with none listed, any identity in our trust domain."""
    exact = [{"exact": s} for s in spiffe_ids]
    matchers = exact or [{"prefix": f"spiffe://{cfg.trust_domain}/"}]
    return [{"san_type": "URI", "matcher": m} for m in matchers]


def _common_tls(cfg: Config, run_dir: RunDir, spiffe_ids: Tuple[str, ...]) -> Json:
    return {
        "tls_certificate_sds_secret_configs": [_sds(CERT_SECRET, run_dir)],
        "combined_validation_context": {
            "default_validation_context": {"match_typed_subject_alt_names": _san_matchers(cfg, spiffe_ids)},
            "validation_context_sds_secret_config": _sds(CA_SECRET, run_dir),
        },
        "alpn_protocols": ["istio-peer-exchange", "istio"],
    }


def _tcp_proxy(stat_prefix: str, cluster: str, **extra: Any) -> Json:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": stat_prefix,
            "cluster": cluster,
            **extra,
        },
    }


_ORIGINAL_DST_FILTER = {
    "name": "envoy.filters.listener.original_dst",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"},
}


def _seconds(value: float) -> str:
    """A protobuf Duration in JSON: whole seconds stay short ("10s"), fractions keep ms."""
    return f"{int(value)}s" if float(value).is_integer() else f"{value:.3f}s"


def _routes(cluster: str, svc: Optional[OutboundService], zone: str = "") -> List[Json]:
    """One route to the cluster, with no timeout (inbound); for an outbound service, its
    request timeout and retries: with ``idempotent_only`` a first route for the idempotent
    methods carries the retry policy and a second one, for the rest, has none."""
    if svc is None:
        return [{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}]
    action: Json = {"cluster": cluster, "timeout": _seconds(svc.request_timeout_s)}
    if svc.retries.attempts == 0:
        return [{"match": {"prefix": "/"}, "route": action}]
    retrying = {**action, "retry_policy": _retry_policy(svc, zone)}
    if not svc.retries.idempotent_only:
        return [{"match": {"prefix": "/"}, "route": retrying}]
    methods = {"name": ":method", "string_match": {"safe_regex": {"regex": f"^({'|'.join(IDEMPOTENT_METHODS)})$"}}}
    return [
        {"name": "idempotent", "match": {"prefix": "/", "headers": [methods]}, "route": retrying},
        {"name": "other", "match": {"prefix": "/"}, "route": action},
    ]


def _retry_policy(svc: OutboundService, zone: str) -> Json:
    """Retry on another replica (previous_hosts), and on the other priority when the cluster
    has one (previous_priorities), so that a retry after the local zone's replica failed
    goes to another zone even before outlier detection has ejected it."""
    r = svc.retries
    policy: Json = {
        "retry_on": r.retry_on,
        "num_retries": r.attempts,
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 5,
    }
    if r.per_try_timeout_s:
        policy["per_try_timeout"] = _seconds(r.per_try_timeout_s)
    if _prefers_zone(svc, zone):
        policy["retry_priority"] = {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3."
                "PreviousPrioritiesConfig",
                "update_frequency": 1,
            },
        }
    return policy


def _prefers_zone(svc: OutboundService, zone: str) -> bool:
    """Whether the service's endpoints are split into this zone's (priority 0) and the rest."""
    zones = {e.zone for e in svc.endpoints}
    return bool(zone) and zone in zones and len(zones) > 1


def _http_proxy(
    stat_prefix: str,
    cluster: str,
    http_filters: Tuple[Json, ...] = (),
    outbound: Optional[OutboundService] = None,
    zone: str = "",
    **extra: Any,
) -> Json:
    """HTTP-aware proxying: while draining, Envoy answers with ``Connection: close`` so that
    keep-alive clients move to the new epoch between requests instead of losing one."""
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",
            "route_config": {
                "name": stat_prefix,
                "virtual_hosts": [
                    {
                        "name": stat_prefix,
                        "domains": ["*"],
                        "routes": _routes(cluster, outbound, zone),
                    }
                ],
            },
            "http_filters": [
                *http_filters,
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                },
            ],
            **extra,
        },
    }


def _filters(
    cfg: Config,
    direction: str,
    service: str,
    protocol: str,
    cluster: str,
    inbound: Optional[InboundService] = None,
    outbound: Optional[OutboundService] = None,
) -> List[Json]:
    """A filter chain's filters: the proxy with its access log and tracing, after the
    service's policy (inbound services only, see policy.py); an outbound service's
    timeouts and retries (http) or idle timeout and connect attempts (tcp)."""
    guarded = inbound if inbound is not None and policy.has_policy(cfg, inbound) else None
    logs = [stdout_logger(direction, service, protocol)] if cfg.telemetry.enabled or cfg.access_log.enabled else []
    extra: Json = {}
    if protocol == "http":
        if logs:
            extra["access_log"] = logs
        tracing = hcm_tracing(cfg)
        if tracing:
            extra["tracing"] = tracing
        if guarded is None:
            return [_http_proxy(cluster, cluster, outbound=outbound, zone=cfg.node.zone, **extra)]
        extra.update(policy.path_normalisation(guarded))
        return [_http_proxy(cluster, cluster, (policy.http_filter(guarded),), **extra)]
    if logs:
        extra.update(access_log=logs, access_log_options=tcp_log_options())
    if outbound is not None:
        extra.update(idle_timeout=_seconds(outbound.idle_timeout_s), max_connect_attempts=outbound.connect_attempts)
    if guarded is None:
        return [_tcp_proxy(cluster, cluster, **extra)]
    extra.update(policy.tcp_proxy_options(guarded))
    return [policy.network_filter(guarded, cluster), _tcp_proxy(cluster, cluster, **extra)]


def _inbound_listener(cfg: Config, run_dir: RunDir) -> Json:
    chains = []
    for svc in cfg.inbound.services:
        chain: Json = {
            "name": f"inbound|{svc.port}",
            "filter_chain_match": {"destination_port": svc.port},
            "filters": _filters(cfg, INBOUND, svc.name, svc.protocol, inbound_cluster_name(svc), svc),
        }
        if svc.tls:
            chain["transport_socket"] = {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": True,
                    "common_tls_context": _common_tls(cfg, run_dir, svc.allowed_spiffe_ids),
                },
            }
        chains.append(chain)
    fallback = INBOUND_PASSTHROUGH if cfg.inbound.passthrough else BLACKHOLE
    listener: Json = {
        "name": INBOUND_LISTENER,
        "stat_prefix": "inbound",
        "address": listen_address(cfg.listen.inbound_address, cfg.ports.inbound),
        "traffic_direction": "INBOUND",
        "listener_filters": [_ORIGINAL_DST_FILTER],
        "filter_chains": chains,
        "default_filter_chain": {
            "name": "inbound-passthrough",
            "filters": _filters(cfg, INBOUND, fallback, "tcp", fallback),
        },
    }
    if cfg.inbound.tproxy:
        # The kernel hands a TPROXY-diverted connection only to a socket with
        # IP_TRANSPARENT; Envoy then connects upstream from the client's address,
        # its packets marked so that the application's replies route back to Envoy
        # (the capture rules' ip rule: fwmark -> local table) rather than out to the client.
        listener["transparent"] = True
        listener["listener_filters"] = [_ORIGINAL_DST_FILTER, _original_src_filter(cfg.inbound.tproxy_mark)]
    return listener


def _original_src_filter(mark: int) -> Json:
    return {
        "name": "envoy.filters.listener.original_src",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc",
            "mark": mark,
        },
    }


def _prefix_range(cidr: str) -> Json:
    net = ipaddress.ip_network(cidr, strict=False)
    return {"address_prefix": str(net.network_address), "prefix_len": net.prefixlen}


def _outbound_listener(cfg: Config) -> Json:
    """One filter chain per service, matching its port, and where that is not enough its VIPs
    (a /32 or /128 each) and ``match_cidrs``: services that share a port are told apart by
    where the client dialed. A service alone on its port matches every address on it, so a
    client that dials a replica's own address still goes through the mesh, as one that
    dials the service's name (its VIPs) does."""
    chains = []
    on_port: Dict[int, int] = {}
    for svc in cfg.outbound.services:
        on_port[svc.port] = on_port.get(svc.port, 0) + 1
    for svc in cfg.outbound.services:
        match: Json = {"destination_port": svc.port}
        ranges = [_prefix_range(v) for v in svc.vips] + [_prefix_range(c) for c in svc.match_cidrs]
        if ranges and (svc.match_cidrs or on_port[svc.port] > 1):
            match["prefix_ranges"] = ranges
        name = outbound_cluster_name(svc)
        chains.append(
            {
                "name": name,
                "filter_chain_match": match,
                "filters": _filters(cfg, OUTBOUND, svc.name, svc.protocol, name, outbound=svc),
            }
        )
    fallback = OUTBOUND_PASSTHROUGH if cfg.outbound.passthrough else BLACKHOLE
    return {
        "name": OUTBOUND_LISTENER,
        "stat_prefix": "outbound",
        "address": listen_address(cfg.listen.outbound_address, cfg.ports.outbound),
        "traffic_direction": "OUTBOUND",
        "use_original_dst": True,
        "listener_filters": [_ORIGINAL_DST_FILTER],
        "filter_chains": chains,
        "default_filter_chain": {
            "name": "outbound-passthrough",
            "filters": _filters(cfg, OUTBOUND, fallback, "tcp", fallback),
        },
    }


def _bind_source(address: str) -> Json:
    return {"upstream_bind_config": {"source_address": {"address": address, "port_value": 0}}}


def _locality_endpoints(svc: OutboundService, zone: str) -> List[Json]:
    """The endpoints grouped by zone; with ``node.zone`` set, its own zone's at priority 0 and
    the others' at priority 1, so Envoy sends to the others only when too few of its own
    are healthy. No preference when this host has no zone or the service none there."""
    zones: Dict[str, List[Endpoint]] = {}
    for e in svc.endpoints:
        zones.setdefault(e.zone, []).append(e)
    prefer = _prefers_zone(svc, zone)
    groups = []
    for name in sorted(zones, key=lambda z: (not (prefer and z == zone), z)):
        group: Json = {
            "lb_endpoints": [{"endpoint": {"address": socket_address(e.address, e.port)}} for e in zones[name]]
        }
        if name:
            group["locality"] = {"zone": name}
        if prefer and name != zone:
            group["priority"] = 1
        groups.append(group)
    return groups


def _resilience(svc: OutboundService, domain: str) -> Json:
    """A cluster's load balancing, outlier detection, active health checks and limits.

    Envoy's panic mode is off (a healthy panic threshold of 0, Istio's default): by
    default, once fewer than half of a cluster's replicas are healthy, Envoy spreads
    requests over all of them, the dead included; here a replica known to be down
    never gets traffic while any other is up."""
    out: Json = {
        "lb_policy": LB_POLICIES[svc.lb_policy],
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": svc.circuit_breakers.max_connections,
                    "max_pending_requests": svc.circuit_breakers.max_pending_requests,
                    "max_requests": svc.circuit_breakers.max_requests,
                    "max_retries": svc.circuit_breakers.max_retries,
                }
            ]
        },
    }
    od = svc.outlier_detection
    if od.enabled:
        # Connect failures count as 5xx (split_external_local_origin_errors is off), so a
        # stopped tcp replica is ejected as a failing http one is. Success-rate ejection is
        # off, as in Istio: it needs many hosts and requests to mean anything.
        out["outlier_detection"] = {
            "consecutive_5xx": od.consecutive_errors,
            "consecutive_gateway_failure": od.consecutive_errors,
            "interval": _seconds(od.interval_s),
            "base_ejection_time": _seconds(od.base_ejection_s),
            "max_ejection_percent": od.max_ejection_percent,
            "enforcing_consecutive_5xx": 100,
            "enforcing_consecutive_gateway_failure": 100,
            "enforcing_success_rate": 0,
        }
    hc = svc.health_check
    if hc.type != "none":
        check: Json = {
            "timeout": _seconds(hc.timeout_s),
            "interval": _seconds(hc.interval_s),
            "no_traffic_interval": _seconds(hc.interval_s),
            "unhealthy_threshold": hc.unhealthy_threshold,
            "healthy_threshold": hc.healthy_threshold,
        }
        if hc.type == "tcp":
            check["tcp_health_check"] = {}
        else:
            # The service's mesh name as the Host: Envoy's default, the cluster's name
            # (outbound|8080||web), is no valid authority, and the replica's sidecar
            # answers it 400, so every replica would fail its checks.
            check["http_health_check"] = {"host": service_fqdns(svc, domain)[0], "path": hc.path}
        out["health_checks"] = [check]
    return out


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _original_dst_cluster(name: str, **extra: Any) -> Json:
    return {
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": CONNECT_TIMEOUT,
        **extra,
    }


def _inbound_clusters(cfg: Config) -> Tuple[List[Json], Json]:
    """Envoy's ways to the application, and to other captured ports (passthrough).

    redirect: to ``app_address`` from ``source_address`` (127.0.0.6), an address the
    capture rules let through. tproxy: to the address the client dialed (the
    original destination, on the service's target port), from the client's address
    (the listener's original_src filter): a loopback hop would leave the application
    answering a peer's address from 127.0.0.1, which the kernel cannot route.
    """
    if cfg.inbound.tproxy:
        clusters = [
            _original_dst_cluster(
                inbound_cluster_name(svc), original_dst_lb_config={"upstream_port_override": svc.app_port}
            )
            for svc in cfg.inbound.services
        ]
        return clusters, _original_dst_cluster(INBOUND_PASSTHROUGH)
    source = cfg.inbound.source_address
    clusters: List[Json] = []
    for svc in cfg.inbound.services:
        name = inbound_cluster_name(svc)
        clusters.append(
            {
                "name": name,
                "type": "STATIC",
                "connect_timeout": CONNECT_TIMEOUT,
                "load_assignment": {
                    "cluster_name": name,
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {"endpoint": {"address": socket_address(cfg.inbound.app_address, svc.app_port)}}
                            ]
                        }
                    ],
                },
                **_bind_source(source),
            }
        )
    return clusters, _original_dst_cluster(INBOUND_PASSTHROUGH, **_bind_source(source))


def _clusters(cfg: Config, run_dir: RunDir) -> List[Json]:
    clusters, inbound_passthrough = _inbound_clusters(cfg)
    for svc in cfg.outbound.services:
        name = outbound_cluster_name(svc)
        static = all(_is_ip(e.address) for e in svc.endpoints)
        cluster: Json = {
            "name": name,
            "type": "STATIC" if static else "STRICT_DNS",
            "connect_timeout": _seconds(svc.connect_timeout_s),
            "load_assignment": {"cluster_name": name, "endpoints": _locality_endpoints(svc, cfg.node.zone)},
            **_resilience(svc, cfg.dns.domain),
        }
        if svc.tls:
            cluster["transport_socket"] = {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "common_tls_context": _common_tls(cfg, run_dir, svc.spiffe_ids),
                },
            }
        clusters.append(cluster)
    collector = collector_cluster(cfg)
    if collector:
        clusters.append(collector)
    clusters += [
        inbound_passthrough,
        _original_dst_cluster(OUTBOUND_PASSTHROUGH),
        {"name": BLACKHOLE, "type": "STATIC", "connect_timeout": CONNECT_TIMEOUT},
    ]
    return clusters


def _version(resources: List[Json], extra: str = "") -> str:
    return f"{zlib.crc32((json.dumps(resources, sort_keys=True) + extra).encode()):08x}"


def _response(type_url: str, resources: List[Json], extra: str = "") -> Json:
    return discovery_response(type_url, resources, _version(resources, extra))


def render_dynamic(cfg: Config, run_dir: RunDir, tls_fingerprint: str = "") -> Dict[str, Json]:
    """Every watched file's content, keyed by its path, in the order to write them.

    Secrets, then clusters, then listeners: a listener never names a cluster or a
    secret Envoy has not been given yet.

    Each file's version is a digest of its own resources, so a file changes (and
    Envoy reloads it) only when what it describes changes. ``tls_fingerprint``
    digests the certificate files' contents: a rotated certificate changes the
    SDS files' version, which makes Envoy read the certificate files again.
    """
    files: Dict[str, Json] = {}
    if cfg.tls.configured:
        cert = {
            "name": CERT_SECRET,
            "tls_certificate": {
                "certificate_chain": {"filename": cfg.tls.cert_file},
                "private_key": {"filename": cfg.tls.key_file},
            },
        }
        ca = {"name": CA_SECRET, "validation_context": {"trusted_ca": {"filename": cfg.tls.ca_file}}}
        files[run_dir.sds_default] = _response(SECRET_TYPE, [cert], tls_fingerprint)
        files[run_dir.sds_rootca] = _response(SECRET_TYPE, [ca], tls_fingerprint)
    files[run_dir.cds] = _response(CLUSTER_TYPE, _clusters(cfg, run_dir))
    files[run_dir.lds] = _response(LISTENER_TYPE, [_inbound_listener(cfg, run_dir), _outbound_listener(cfg)])
    return files


def expected_listener_count(cfg: Config) -> int:
    """Listeners Envoy must have active before standalone mode counts as ready."""
    return (4 if cfg.mode == "standalone" else 2) + int(cfg.listen.admin_tcp)
