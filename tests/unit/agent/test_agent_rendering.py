"""Bootstrap, command line and dynamic resources against golden files.

Regenerate after an intended change with ``HOSTMESH_UPDATE_GOLDEN=1 pytest tests/unit/agent``
and review the diff: it is exactly what changes in what Envoy is given.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from hostmesh_agent.bootstrap import envoy_args, render_bootstrap
from hostmesh_agent.config import parse_config
from hostmesh_agent.resources import render_dynamic
from hostmesh_agent.rundir import RunDir, bootstrap_epoch

GOLDEN = Path(__file__).resolve().parent / "golden"
RUN = RunDir("/run/hostmesh")

STANDALONE = {
    "node": {"name": "web-1", "namespace": "shop", "service_account": "web", "labels": {"app": "web"}},
    "inbound": {
        "services": [
            {"name": "web", "port": 8080, "protocol": "http"},
            {"name": "api", "port": 9090, "target_port": 9091, "tls": True},
        ]
    },
    "outbound": {
        "services": [
            {
                "name": "db",
                "port": 5432,
                "endpoints": ["10.1.0.5:5432", "10.1.0.6:5432"],
                "match_cidrs": ["10.1.0.0/24"],
                "tls": True,
                "spiffe_ids": ["spiffe://cluster.local/ns/shop/sa/db"],
            },
            {"name": "cache", "port": 6379, "endpoints": ["cache.internal:6379"]},
        ]
    },
    "tls": {
        "cert_file": "/etc/hostmesh/certs/cert.pem",
        "key_file": "/etc/hostmesh/certs/key.pem",
        "ca_file": "/etc/hostmesh/certs/ca.pem",
    },
}
XDS = {
    "mode": "xds",
    "node": {"name": "web-1", "namespace": "shop", "service_account": "web"},
    "xds": {
        "address": "istiod.istio-system.svc:15012",
        "sni": "istiod.istio-system.svc",
        "ca_file": "/etc/hostmesh/certs/root.pem",
        "cert_file": "/etc/hostmesh/certs/cert.pem",
        "key_file": "/etc/hostmesh/certs/key.pem",
        "cluster_id": "vms",
        "istio_version": "1.24.0",
    },
}


def check_golden(name: str, doc: Any) -> None:
    path = GOLDEN / name
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if os.environ.get("HOSTMESH_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"golden file {name} missing; set HOSTMESH_UPDATE_GOLDEN=1 to create it"
    assert json.loads(text) == json.loads(path.read_text())


def test_standalone_bootstrap():
    check_golden("bootstrap-standalone.json", render_bootstrap(parse_config(STANDALONE), RUN, "10.0.0.7"))


def test_xds_bootstrap():
    doc = render_bootstrap(parse_config(XDS), RUN, "10.0.0.7", token="tok3n")
    check_golden("bootstrap-xds.json", doc)


def test_standalone_dynamic_resources():
    files = render_dynamic(parse_config(STANDALONE), RUN, tls_fingerprint="f00d")
    check_golden("dynamic-standalone.json", files)


def test_command_line():
    cfg = parse_config({**STANDALONE, "envoy": {"extra_args": ["--disable-hot-restart"]}})
    check_golden("envoy-args.json", envoy_args(cfg, RUN.bootstrap(3), 3, "10.0.0.7"))


def test_bootstrap_invariants():
    """What must hold whatever the golden files say."""
    boot = render_bootstrap(parse_config(STANDALONE), RUN, "10.0.0.7")
    assert boot["node"]["id"] == "sidecar~10.0.0.7~web-1.shop~shop.svc.cluster.local"
    assert boot["node"]["cluster"] == "web-1.shop"
    # The admin API is a Unix socket only the proxy user (and root) can open; no TCP port.
    assert boot["admin"]["address"] == {"pipe": {"path": "/run/hostmesh/admin.sock", "mode": 0o600}}
    stats = [c for c in boot["static_resources"]["clusters"] if c["name"] == "prometheus_stats"]
    [endpoint] = stats[0]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"] == {"pipe": {"path": "/run/hostmesh/admin.sock"}}
    ports = {
        lst["name"]: lst["address"]["socket_address"]["port_value"] for lst in boot["static_resources"]["listeners"]
    }
    assert ports == {"prometheus": 15090, "health": 15021}
    lds = boot["dynamic_resources"]["lds_config"]["path_config_source"]
    assert lds == {"path": "/run/hostmesh/dynamic/lds.json", "watched_directory": {"path": "/run/hostmesh/dynamic"}}
    assert boot["node"]["metadata"]["TRUST_DOMAIN"] == "cluster.local"


def test_xds_node_metadata_has_what_istiod_reads():
    meta = render_bootstrap(parse_config(XDS), RUN, "10.0.0.7")["node"]["metadata"]
    for key in (
        "CLUSTER_ID",
        "NAMESPACE",
        "SERVICE_ACCOUNT",
        "LABELS",
        "ISTIO_VERSION",
        "INSTANCE_IPS",
        "INTERCEPTION_MODE",
        "WORKLOAD_NAME",
        "MESH_ID",
        "PROXY_CONFIG",
    ):
        assert key in meta
    assert meta["CLUSTER_ID"] == "vms"


def test_dynamic_file_versions_change_only_with_content():
    cfg = parse_config(STANDALONE)
    a = render_dynamic(cfg, RUN, "one")
    b = render_dynamic(cfg, RUN, "two")
    assert a[RUN.lds] == b[RUN.lds]
    assert a[RUN.sds_default]["version_info"] != b[RUN.sds_default]["version_info"]
    more = parse_config({**STANDALONE, "inbound": {"services": [{"name": "web", "port": 8081}]}})
    assert render_dynamic(more, RUN, "one")[RUN.lds]["version_info"] != a[RUN.lds]["version_info"]


@pytest.mark.parametrize(("name", "epoch"), [("envoy-rev0.json", 0), ("envoy-rev12.json", 12), ("lds.json", -1)])
def test_bootstrap_file_names(name, epoch):
    assert bootstrap_epoch(name) == epoch


def test_opt_in_tcp_admin_forwards_a_loopback_port_to_the_admin_socket():
    from hostmesh_agent.resources import expected_listener_count

    cfg = parse_config({**STANDALONE, "listen": {"admin_tcp": True}})
    boot = render_bootstrap(cfg, RUN, "10.0.0.7")
    listeners = {lst["name"]: lst for lst in boot["static_resources"]["listeners"]}
    assert listeners["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 15000}
    proxy = listeners["admin"]["filter_chains"][0]["filters"][0]["typed_config"]
    [admin] = [c for c in boot["static_resources"]["clusters"] if c["name"] == proxy["cluster"]]
    [endpoint] = admin["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"] == {"pipe": {"path": "/run/hostmesh/admin.sock"}}
    assert boot["admin"]["address"]["pipe"]["mode"] == 0o600  # the socket stays, for the agent
    assert (expected_listener_count(cfg), expected_listener_count(parse_config(STANDALONE))) == (5, 4)
    # Off by default: no listener on ports.admin at all.
    default = render_bootstrap(parse_config(STANDALONE), RUN, "10.0.0.7")
    assert "admin" not in {lst["name"] for lst in default["static_resources"]["listeners"]}
