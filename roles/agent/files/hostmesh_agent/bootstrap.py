"""The Envoy bootstrap and command line, rendered from the config (pure).

The bootstrap carries only what needs a new process to change: node identity,
admin, the stats (15090) and health (15021) listeners, and where dynamic
config comes from (watched files in standalone mode, ADS in xDS mode).

Envoy's admin API listens on a Unix socket in the run directory, mode 0600: Envoy runs as
the proxy user, so only that user and root can reach it. The stats listener (and, when
``listen.admin_tcp`` asks for it, a loopback TCP listener on ``ports.admin``) reaches it
through a cluster whose one endpoint is that socket.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from hostmesh_agent.config import (
    Config,
    node_domain,
    service_cluster,
    service_node,
    spiffe_id,
)
from hostmesh_agent.rundir import RunDir

Json = Dict[str, Any]

XDS_CLUSTER = "xds-grpc"
AGENT_CLUSTER = "agent"
PROMETHEUS_CLUSTER = "prometheus_stats"
ADMIN_CLUSTER = "envoy_admin"
ADMIN_SOCKET_MODE = 0o600


def socket_address(address: str, port: int) -> Json:
    return {"socket_address": {"address": address, "port_value": port}}


def listen_address(address: str, port: int) -> Json:
    """A listener's address; ``::`` also takes IPv4 (dual stack, one socket)."""
    sock = socket_address(address, port)
    if address == "::":
        sock["socket_address"]["ipv4_compat"] = True
    return sock


def _loopback_for(address: str) -> str:
    """Where Envoy should connect to reach a service bound to ``address``."""
    return {"0.0.0.0": "127.0.0.1", "::": "127.0.0.1"}.get(address, address)  # "::" is dual stack


def pipe_address(path: str) -> Json:
    return {"pipe": {"path": path}}


def static_cluster(name: str, address: str, port: int, http2: bool = False) -> Json:
    return _one_endpoint_cluster(name, socket_address(address, port), http2)


def _one_endpoint_cluster(name: str, address: Json, http2: bool = False) -> Json:
    cluster: Json = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = _http2_options()
    return cluster


def _http2_options() -> Json:
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }


def _route_listener(name: str, address: str, port: int, path: str, cluster: str) -> Json:
    """A tiny HTTP listener that forwards one exact path to one cluster."""
    return {
        "name": name,
        "address": listen_address(address, port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                            "http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": name,
                            "codec_type": "AUTO",
                            "route_config": {
                                "virtual_hosts": [
                                    {
                                        "name": name,
                                        "domains": ["*"],
                                        "routes": [
                                            {
                                                "match": {"path": path},
                                                "route": {"cluster": cluster, "timeout": "5s"},
                                            }
                                        ],
                                    }
                                ]
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                    },
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }


def _tcp_forward_listener(name: str, address: str, port: int, cluster: str) -> Json:
    """A listener that hands every connection, as it is, to one cluster."""
    return {
        "name": name,
        "address": listen_address(address, port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                            "stat_prefix": name,
                            "cluster": cluster,
                        },
                    }
                ]
            }
        ],
    }


def node_metadata(cfg: Config, ip: str) -> Json:
    """Node metadata; in xDS mode the keys an Istio control plane reads."""
    meta: Json = {
        "HOSTMESH_MODE": cfg.mode,
        "TRUST_DOMAIN": cfg.trust_domain,
        "SPIFFE_ID": spiffe_id(cfg),
        "INSTANCE_IPS": ip,
        "NAMESPACE": cfg.node.namespace,
        "NAME": cfg.node.name,
        "LABELS": dict(cfg.node.labels),
        "SERVICE_ACCOUNT": cfg.node.service_account,
        "INTERCEPTION_MODE": cfg.inbound.interception.upper(),  # REDIRECT or TPROXY, as Istio spells them
        "ENVOY_STATUS_PORT": cfg.ports.health,
        "ENVOY_PROMETHEUS_PORT": cfg.ports.prometheus,
    }
    if cfg.mode == "xds":
        meta.update(
            {
                "CLUSTER_ID": cfg.xds.cluster_id,
                "WORKLOAD_NAME": cfg.node.labels.get("app", cfg.node.name),
                "ISTIO_VERSION": cfg.xds.istio_version,
                "MESH_ID": cfg.xds.mesh_id or cfg.trust_domain,
                "NETWORK": cfg.xds.network,
                "DNS_DOMAIN": node_domain(cfg),
                "PROXY_CONFIG": {
                    "binaryPath": cfg.envoy.binary,
                    "concurrency": cfg.envoy.concurrency,
                    "drainDuration": f"{cfg.envoy.drain_time_s}s",
                    "parentShutdownDuration": f"{cfg.envoy.parent_shutdown_time_s}s",
                    "discoveryAddress": cfg.xds.address,
                    "statusPort": cfg.ports.status,
                    "proxyAdminPort": cfg.ports.admin,
                },
            }
        )
        meta.update(cfg.xds.metadata)
    return meta


def _file_source(path: str, watch_dir: str) -> Json:
    return {
        "resource_api_version": "V3",
        "path_config_source": {"path": path, "watched_directory": {"path": watch_dir}},
    }


def _ads_source(cfg: Config) -> Json:
    return {
        "resource_api_version": "V3",
        "ads": {},
        "initial_fetch_timeout": f"{cfg.xds.initial_fetch_timeout_s:g}s",
    }


def _xds_cluster(cfg: Config) -> Json:
    host, _sep, port = cfg.xds.address.rpartition(":")
    host = host.strip("[]")
    cluster: Json = {
        "name": XDS_CLUSTER,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "dns_lookup_family": "V4_PREFERRED",
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(host, int(port))}}]}],
        },
        "typed_extension_protocol_options": _http2_options(),
    }
    x = cfg.xds
    if x.ca_file or x.cert_file:
        common: Json = {}
        if x.cert_file:
            common["tls_certificates"] = [
                {
                    "certificate_chain": {"filename": x.cert_file},
                    "private_key": {"filename": x.key_file},
                }
            ]
        if x.ca_file:
            validation: Json = {"trusted_ca": {"filename": x.ca_file}}
            if x.sni:  # the control plane must present a certificate for the name we dial
                validation["match_typed_subject_alt_names"] = [{"san_type": "DNS", "matcher": {"exact": x.sni}}]
            common["validation_context"] = validation
        tls: Json = {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": common,
        }
        if x.sni:
            tls["sni"] = x.sni
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls}
    return cluster


def render_bootstrap(cfg: Config, run_dir: RunDir, ip: str, token: Optional[str] = None) -> Json:
    """The whole bootstrap as a dict; ``ip`` is the node IP already resolved."""
    status_target = _loopback_for(cfg.listen.status_address)
    listeners = [
        _route_listener(
            "prometheus",
            cfg.listen.status_address,
            cfg.ports.prometheus,
            "/stats/prometheus",
            PROMETHEUS_CLUSTER,
        ),
        _route_listener("health", cfg.listen.status_address, cfg.ports.health, "/healthz/ready", AGENT_CLUSTER),
    ]
    clusters = [
        _one_endpoint_cluster(PROMETHEUS_CLUSTER, pipe_address(run_dir.admin_socket)),
        static_cluster(AGENT_CLUSTER, status_target, cfg.ports.status),
    ]
    if cfg.listen.admin_tcp:  # opt-in: every local user can reach a loopback port
        listeners.append(_tcp_forward_listener("admin", cfg.listen.admin_address, cfg.ports.admin, ADMIN_CLUSTER))
        clusters.append(_one_endpoint_cluster(ADMIN_CLUSTER, pipe_address(run_dir.admin_socket)))
    if cfg.mode == "xds":
        clusters.append(_xds_cluster(cfg))
        grpc_service: Json = {"envoy_grpc": {"cluster_name": XDS_CLUSTER}}
        if token:
            grpc_service["initial_metadata"] = [{"key": "authorization", "value": f"Bearer {token}"}]
        dynamic: Json = {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [grpc_service],
                "set_node_on_first_message_only": True,
            },
            "lds_config": _ads_source(cfg),
            "cds_config": _ads_source(cfg),
        }
    else:
        dynamic = {
            "lds_config": _file_source(run_dir.lds, run_dir.dynamic_dir),
            "cds_config": _file_source(run_dir.cds, run_dir.dynamic_dir),
        }
    node: Dict[str, Any] = {
        "id": service_node(cfg, ip),
        "cluster": service_cluster(cfg),
        "metadata": node_metadata(cfg, ip),
    }
    if cfg.node.zone:
        node["locality"] = {"zone": cfg.node.zone}  # what a control plane reads as this proxy's zone
    return {
        "node": node,
        "admin": {"address": {"pipe": {"path": run_dir.admin_socket, "mode": ADMIN_SOCKET_MODE}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
        "dynamic_resources": dynamic,
        "stats_config": {"use_all_default_tags": True},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                        "downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": cfg.envoy.max_downstream_connections,
                    },
                }
            ]
        },
    }


def envoy_args(cfg: Config, bootstrap_path: str, epoch: int, ip: str) -> List[str]:
    """Envoy's command line, flag for flag as pilot-agent builds it."""
    e = cfg.envoy
    args = [
        "-c",
        bootstrap_path,
        "--restart-epoch",
        str(epoch),
        "--drain-time-s",
        str(e.drain_time_s),
        "--drain-strategy",
        "immediate",
        "--parent-shutdown-time-s",
        str(e.parent_shutdown_time_s),
        "--service-cluster",
        service_cluster(cfg),
        "--service-node",
        service_node(cfg, ip),
        "--local-address-ip-version",
        e.local_address_ip_version,
        "--log-format",
        e.log_format,
        "-l",
        e.log_level,
    ]
    if e.component_log_level:
        args += ["--component-log-level", e.component_log_level]
    args += ["--concurrency", str(e.concurrency), "--base-id", str(e.base_id)]
    # Access-log lines reach the agent (telemetry) at most this long after Envoy wrote them.
    args += ["--file-flush-interval-msec", str(e.file_flush_interval_ms)]
    return args + list(e.extra_args)
