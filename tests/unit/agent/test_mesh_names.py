"""Mesh names and resilience: the config keys, the rendered listeners and clusters, and the
DNS server kept in step with the config (real sockets on loopback, a fake upstream)."""

from __future__ import annotations

import socket
from typing import Any, Dict

import pytest
from fake_dns import FakeUpstream, answer_addresses, make_query, rcode_of, reply_to
from test_agent_rendering import RUN, check_golden

from hostmesh_agent.config import ConfigError, mesh_names, parse_config
from hostmesh_agent.mesh_dns import MeshDns
from hostmesh_agent.resources import render_dynamic

WEB = {
    "name": "web",
    "namespace": "shop",
    "port": 8080,
    "protocol": "http",
    "vips": ["240.240.12.34", "2001:2::c:22"],
    "endpoints": [
        "10.0.0.5:8080",
        {"address": "10.0.0.6", "port": 8080, "zone": "zone-a"},
        {"address": "10.0.1.7", "port": 8080, "zone": "zone-b"},
    ],
}
# Every new key, with values other than the defaults.
MESH: Dict[str, Any] = {
    "node": {"name": "client-1", "namespace": "shop", "zone": "zone-a"},
    "dns": {"enabled": True, "domain": "corp.internal", "upstreams": ["10.0.0.2", "[2001:db8::53]:5353"], "ttl_s": 5},
    "outbound": {
        "services": [
            {
                **WEB,
                "lb_policy": "least_request",
                "connect_timeout_s": 0.5,
                "outlier_detection": {
                    "consecutive_errors": 3,
                    "interval_s": 1,
                    "base_ejection_s": 10,
                    "max_ejection_percent": 34,
                },
                "health_check": {
                    "type": "http",
                    "path": "/healthz",
                    "interval_s": 2,
                    "timeout_s": 1,
                    "unhealthy_threshold": 3,
                    "healthy_threshold": 2,
                },
                "request_timeout_s": 2.5,
                "retries": {"attempts": 3, "retry_on": "connect-failure,5xx", "per_try_timeout_s": 1},
                "circuit_breakers": {
                    "max_connections": 10,
                    "max_pending_requests": 20,
                    "max_requests": 30,
                    "max_retries": 4,
                },
            },
            {
                "name": "db",
                "namespace": "data",
                "port": 8080,  # the same port as web: told apart by the VIPs
                "vips": ["240.240.0.9"],
                "endpoints": [{"address": "10.0.2.5", "port": 5432, "zone": "zone-b"}],
                "lb_policy": "ring_hash",
                "outlier_detection": {"enabled": False},
                "health_check": {"type": "tcp"},
                "idle_timeout_s": 600,
                "connect_attempts": 3,
            },
            {"name": "legacy", "port": 5432, "endpoints": ["10.9.0.1:5432"], "match_cidrs": ["10.9.0.0/24"]},
        ]
    },
}


def _cluster(files: Dict[str, Any], name: str) -> Dict[str, Any]:
    return next(r for r in files[RUN.cds]["resources"] if r["name"] == name)


def _chain(files: Dict[str, Any], name: str) -> Dict[str, Any]:
    outbound = next(r for r in files[RUN.lds]["resources"] if r["name"] == "virtualOutbound")
    return next(c for c in outbound["filter_chains"] if c["name"] == name)


def test_every_new_key_golden():
    check_golden("dynamic-mesh.json", render_dynamic(parse_config(MESH), RUN))


def test_defaults_of_the_contract():
    cfg = parse_config({"outbound": {"services": [WEB]}})
    svc = cfg.outbound.services[0]
    assert (cfg.node.zone, cfg.ports.dns) == ("", 15053)
    assert (cfg.dns.enabled, cfg.dns.domain, cfg.dns.address, cfg.dns.upstreams, cfg.dns.ttl_s) == (
        False,
        "mesh.internal",
        "127.0.0.1",
        (),
        30,
    )
    assert (svc.lb_policy, svc.connect_timeout_s, svc.request_timeout_s, svc.idle_timeout_s) == (
        "round_robin",
        10.0,
        15.0,
        3600.0,
    )
    assert svc.connect_attempts == 1
    assert svc.outlier_detection.enabled and svc.outlier_detection.consecutive_errors == 5
    assert svc.health_check.type == "none"
    assert svc.retries.attempts == 2 and svc.retries.idempotent_only
    assert svc.circuit_breakers.max_retries == 3
    assert [(e.address, e.port, e.zone) for e in svc.endpoints] == [
        ("10.0.0.5", 8080, ""),
        ("10.0.0.6", 8080, "zone-a"),
        ("10.0.1.7", 8080, "zone-b"),
    ]


def test_telemetry_domain_follows_the_dns_domain_unless_given():
    assert parse_config({"dns": {"domain": "corp.internal"}}).telemetry.domain == "corp.internal"
    assert parse_config({}).telemetry.domain == "mesh.internal"
    cfg = parse_config({"dns": {"domain": "corp.internal"}, "telemetry": {"domain": "other.internal"}})
    assert cfg.telemetry.domain == "other.internal"


def test_mesh_names_are_short_and_namespaced_names_of_services_with_vips():
    zone = mesh_names(parse_config(MESH))
    assert zone == {
        "web.corp.internal": (["240.240.12.34"], ["2001:2::c:22"]),
        "web.shop.corp.internal": (["240.240.12.34"], ["2001:2::c:22"]),
        "db.corp.internal": (["240.240.0.9"], []),
        "db.data.corp.internal": (["240.240.0.9"], []),
    }


def _svc(**extra: Any) -> Dict[str, Any]:
    return {"outbound": {"services": [{**WEB, **extra}]}}


@pytest.mark.parametrize(
    "doc, message",
    [
        (_svc(lb_policy="maglev"), '\'outbound.services[0].lb_policy\': got "maglev"; expected one of "round_robin"'),
        (_svc(vips=["240.240.1"]), "'outbound.services[0].vips[0]': got \"240.240.1\"; expected an IP address"),
        (
            _svc(endpoints=[{"address": "10.0.0.5", "port": 0}]),
            "'outbound.services[0].endpoints[0].port': got 0; expected an integer from 1 to 65535",
        ),
        (
            _svc(endpoints=[{"address": "10.0.0.5", "port": 80, "region": "x"}]),
            "unknown config key 'outbound.services[0].endpoints[0].region'",
        ),
        (
            _svc(endpoints=[{"address": "10.0.0.5", "port": 80, "zone": "Zone A"}]),
            "'outbound.services[0].endpoints[0].zone': got \"Zone A\"",
        ),
        (_svc(endpoints=[{"port": 80}]), "config key 'outbound.services[0].endpoints[0].address' is required"),
        (
            _svc(health_check={"type": "grpc"}),
            '\'outbound.services[0].health_check.type\': got "grpc"; expected one of "none", "tcp", "http"',
        ),
        (
            _svc(health_check={"type": "http", "path": "healthz"}),
            "'outbound.services[0].health_check.path': got \"healthz\"; expected an absolute request path",
        ),
        (
            _svc(outlier_detection={"max_ejection_percent": 101}),
            "'outbound.services[0].outlier_detection.max_ejection_percent': got 101; expected an integer from 0 to 100",
        ),
        (
            _svc(retries={"retry_on": "5xx,sometimes"}),
            "'outbound.services[0].retries.retry_on': got \"5xx,sometimes\"; expected a comma-separated list",
        ),
        (_svc(retries={"attempts": -1}), "'outbound.services[0].retries.attempts': got -1"),
        (_svc(connect_attempts=0), "'outbound.services[0].connect_attempts': got 0; expected an integer from 1"),
        (_svc(request_timeout_s="15s"), "'outbound.services[0].request_timeout_s': got \"15s\"; expected a number"),
        (
            _svc(circuit_breakers={"max_connections": 0}),
            "'outbound.services[0].circuit_breakers.max_connections': got 0",
        ),
        ({"node": {"zone": "eu west"}}, "'node.zone': got \"eu west\""),
        ({"ports": {"dns": 15021}}, "'ports.dns': 15021 is already used by 'ports.health'"),
        ({"dns": {"ttl_s": -1}}, "'dns.ttl_s': got -1; expected an integer from 0 to 86400"),
        ({"dns": {"domain": "Mesh"}}, "'dns.domain': got \"Mesh\""),
        ({"dns": {"upstreams": ["dns.example:53"]}}, "'dns.upstreams[0]': got \"dns.example:53\"; expected an IP"),
        ({"dns": {"upstreams": ["2001:db8::1:53:x"]}}, "'dns.upstreams[0]'"),
        (
            {"dns": {"enabled": True, "upstreams": ["10.0.0.2", "127.0.0.1:15053"]}},
            "'dns.upstreams[1]': got \"127.0.0.1:15053\"; expected a resolver other than the agent itself",
        ),
        (
            {"dns": {"enabled": True, "address": "127.0.0.2", "upstreams": ["127.0.0.2:15053"]}},
            "'dns.upstreams[0]': got \"127.0.0.2:15053\"",
        ),
        (
            {"node": {"ip": "10.0.0.7"}, "dns": {"enabled": True, "upstreams": ["10.0.0.7:15053"]}},
            "'dns.upstreams[0]': got \"10.0.0.7:15053\"",
        ),
        ({"dns": {"enabled": True, "address": "0.0.0.0"}}, "'dns.address': got \"0.0.0.0\"; expected one address"),
        (
            {"outbound": {"services": [WEB, {**WEB, "name": "web2", "vips": ["240.240.12.34"]}]}},
            "'outbound.services[1].vips[0]': \"240.240.12.34\" with port 8080 is already used by "
            "'outbound.services[0]'",
        ),
        (
            {
                "dns": {"enabled": True},
                "outbound": {"services": [WEB, {**WEB, "name": "web.shop", "namespace": "", "vips": ["240.1.1.1"]}]},
            },
            "'outbound.services[1].name': \"web.shop\" gives the mesh name 'web.shop.mesh.internal', which "
            "'outbound.services[0]' has already",
        ),
        (
            {"dns": {"enabled": True}, "outbound": {"services": [{**WEB, "name": "a" * 64}]}},
            "has a label longer than 63 characters",
        ),
    ],
)
def test_bad_values_name_key_value_and_accepted(doc, message):
    with pytest.raises(ConfigError) as exc:
        parse_config(doc)
    assert message in str(exc.value)


def test_upstreams_in_every_accepted_form():
    cfg = parse_config({"dns": {"upstreams": ["10.0.0.2", "10.0.0.3:5353", "2001:db8::1", "[2001:db8::2]:53"]}})
    assert len(cfg.dns.upstreams) == 4
    # The agent's own port on another host is another resolver, not a loop.
    parse_config({"dns": {"enabled": True, "upstreams": ["10.0.0.9:15053"]}})


def test_services_sharing_a_port_are_told_apart_by_their_vips():
    files = render_dynamic(parse_config(MESH), RUN)
    web = _chain(files, "outbound|8080||web")["filter_chain_match"]
    db = _chain(files, "outbound|8080||db")["filter_chain_match"]
    assert web == {
        "destination_port": 8080,
        "prefix_ranges": [
            {"address_prefix": "240.240.12.34", "prefix_len": 32},
            {"address_prefix": "2001:2::c:22", "prefix_len": 128},
        ],
    }
    assert db["prefix_ranges"] == [{"address_prefix": "240.240.0.9", "prefix_len": 32}]
    legacy = _chain(files, "outbound|5432||legacy")["filter_chain_match"]
    assert legacy["prefix_ranges"] == [{"address_prefix": "10.9.0.0", "prefix_len": 24}]


def test_own_zone_first_then_the_others():
    files = render_dynamic(parse_config(MESH), RUN)
    groups = _cluster(files, "outbound|8080||web")["load_assignment"]["endpoints"]
    assert [(g.get("locality", {}).get("zone", ""), g.get("priority", 0)) for g in groups] == [
        ("zone-a", 0),
        ("", 1),
        ("zone-b", 1),
    ]
    # No zone on this host, or none of the service's endpoints in it: no preference.
    for node in ({"name": "c"}, {"name": "c", "zone": "zone-c"}):
        files = render_dynamic(parse_config({**MESH, "node": node}), RUN)
        groups = _cluster(files, "outbound|8080||web")["load_assignment"]["endpoints"]
        assert [g.get("priority", 0) for g in groups] == [0, 0, 0]


def test_a_replica_known_down_gets_no_traffic_however_few_are_up():
    """Envoy's panic mode (at fewer than 50% healthy, send to all, the dead too) is off."""
    files = render_dynamic(parse_config(MESH), RUN)
    for name in ("outbound|8080||web", "outbound|8080||db", "outbound|5432||legacy"):
        assert _cluster(files, name)["common_lb_config"] == {"healthy_panic_threshold": {"value": 0}}


def test_http_health_checks_ask_for_the_services_mesh_name():
    """Envoy's default Host, the cluster's name, is no valid authority: a replica's sidecar
    answers it 400 and every replica fails its checks."""
    web = _cluster(render_dynamic(parse_config(MESH), RUN), "outbound|8080||web")
    assert web["health_checks"][0]["http_health_check"] == {"host": "web.corp.internal", "path": "/healthz"}


def test_only_idempotent_methods_are_retried_unless_told():
    files = render_dynamic(parse_config(MESH), RUN)
    hcm = _chain(files, "outbound|8080||web")["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert [r["name"] for r in routes] == ["idempotent", "other"]
    regex = routes[0]["match"]["headers"][0]["string_match"]["safe_regex"]["regex"]
    assert regex == "^(GET|HEAD|OPTIONS|PUT|DELETE|TRACE)$"
    assert routes[0]["route"]["retry_policy"]["num_retries"] == 3
    assert routes[0]["route"]["retry_policy"]["per_try_timeout"] == "1s"
    assert "retry_policy" not in routes[1]["route"]
    # Split into zones: a retry goes to the other priority, before an ejection.
    assert routes[0]["route"]["retry_policy"]["retry_priority"]["name"] == "envoy.retry_priorities.previous_priorities"
    assert routes[0]["route"]["timeout"] == routes[1]["route"]["timeout"] == "2.500s"
    retry_all = _svc(retries={"idempotent_only": False})
    hcm = _chain(render_dynamic(parse_config(retry_all), RUN), "outbound|8080||web")["filters"][0]["typed_config"]
    (route,) = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert "headers" not in route["match"] and route["route"]["retry_policy"]["num_retries"] == 2
    assert "retry_priority" not in route["route"]["retry_policy"]  # no node.zone: one priority
    no_retry = _svc(retries={"attempts": 0}, request_timeout_s=0)
    hcm = _chain(render_dynamic(parse_config(no_retry), RUN), "outbound|8080||web")["filters"][0]["typed_config"]
    (route,) = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert route["route"] == {"cluster": "outbound|8080||web", "timeout": "0s"}


def test_tcp_service_idle_timeout_and_connect_attempts():
    files = render_dynamic(parse_config(MESH), RUN)
    tcp = _chain(files, "outbound|8080||db")["filters"][-1]["typed_config"]
    assert (tcp["idle_timeout"], tcp["max_connect_attempts"]) == ("600s", 3)
    db = _cluster(files, "outbound|8080||db")
    assert db["lb_policy"] == "RING_HASH" and "outlier_detection" not in db
    assert db["health_checks"][0]["tcp_health_check"] == {}


# --- the DNS server following the config ---------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        tcp.bind(("127.0.0.1", port))
        return port


def _ask(port: int, name: str, qtype: int = 1) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(make_query(name, qtype), ("127.0.0.1", port))
        return s.recv(65535)


def _dns_config(port: int, upstream: FakeUpstream, services: Any, **dns: Any) -> Any:
    return parse_config(
        {
            "ports": {"dns": port},
            "dns": {"enabled": True, "upstreams": [f"{upstream.address}:{upstream.port}"], **dns},
            "outbound": {"services": services},
        }
    )


def test_dns_answers_the_zone_and_follows_reloads_in_place():
    upstream = FakeUpstream(lambda q, _proto: reply_to(q, ipv4=("192.0.2.80",)))
    dns = MeshDns()
    port = _free_port()
    try:
        dns.configure(_dns_config(port, upstream, [WEB]), strict=True)
        server = dns.server
        assert answer_addresses(_ask(port, "web.shop.mesh.internal")) == ["240.240.12.34"]
        assert answer_addresses(_ask(port, "web.mesh.internal", 28)) == ["2001:2::c:22"]
        assert answer_addresses(_ask(port, "www.example.com")) == ["192.0.2.80"]
        assert rcode_of(_ask(port, "api.mesh.internal")) == 3  # NXDOMAIN
        # A new service: the same server answers it (no restart), the removed one is gone.
        api = {**WEB, "name": "api", "vips": ["240.240.7.7"]}
        dns.configure(_dns_config(port, upstream, [api]))
        assert dns.server is server
        assert answer_addresses(_ask(port, "api.shop.mesh.internal")) == ["240.240.7.7"]
        assert rcode_of(_ask(port, "web.mesh.internal")) == 3
        # A new domain needs a new server, on the same port.
        dns.configure(_dns_config(port, upstream, [api], domain="corp.internal"))
        assert dns.server is not server
        assert answer_addresses(_ask(port, "api.corp.internal")) == ["240.240.7.7"]
        assert "hostmesh_agent_dns_zone_answers_total 1" in dns.render_metrics()
        dns.configure(parse_config({}))
        assert dns.server is None and dns.render_metrics() == ""
    finally:
        dns.stop()
        upstream.close()


def test_dns_port_taken_fails_the_start_and_keeps_the_old_server_on_reload(caplog):
    upstream = FakeUpstream(lambda q, _proto: reply_to(q))
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    taken = blocker.getsockname()[1]
    dns = MeshDns()
    port = _free_port()
    try:
        with pytest.raises(OSError, match=f"cannot listen for DNS on 127.0.0.1 port {taken}"):
            dns.configure(_dns_config(taken, upstream, [WEB]), strict=True)
        dns.configure(_dns_config(port, upstream, [WEB]), strict=True)
        dns.configure(_dns_config(taken, upstream, [WEB]))
        assert "config reload not applied to DNS" in caplog.text
        assert answer_addresses(_ask(port, "web.mesh.internal")) == ["240.240.12.34"]
    finally:
        dns.stop()
        blocker.close()
        upstream.close()


def test_zone_is_the_nodes_locality_and_dns_changes_need_no_envoy_restart():
    from hostmesh_agent.bootstrap import render_bootstrap
    from hostmesh_agent.config import restart_relevant

    cfg = parse_config(MESH)
    assert render_bootstrap(cfg, RUN, "10.0.0.7")["node"]["locality"] == {"zone": "zone-a"}
    assert "locality" not in render_bootstrap(parse_config({}), RUN, "10.0.0.7")["node"]
    other_dns = parse_config({**MESH, "ports": {"dns": 5353}, "dns": {**MESH["dns"], "ttl_s": 60}})
    assert restart_relevant(other_dns) == restart_relevant(cfg)
    assert restart_relevant(parse_config({**MESH, "ports": {"inbound": 16006}})) != restart_relevant(cfg)


def test_a_service_alone_on_its_port_is_reached_by_name_and_by_a_replicas_address():
    # Matching its VIPs only would send a client that dials a replica's own address
    # past the mesh (passthrough, no mTLS); alone on its port, any address on it matches.
    files = render_dynamic(parse_config(_svc()), RUN)
    assert _chain(files, "outbound|8080||web")["filter_chain_match"] == {"destination_port": 8080}
