"""A sidecar in xDS mode: Envoy's listener and cluster come from the test ADS server."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from sandbox_hosts import address_of, controller_of

# Where the scenario's prepare keeps the certificates, the token and the server's report.
STATE_DIR = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "xds"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
# The version the test ADS server gives its resources.
ADS_VERSION = "v1"


@pytest.fixture(scope="module")
def scenario(host1) -> dict:
    """The scenario's inventory variables (molecule.yml)."""
    return host1.ansible.get_variables()


def admin_json(host, path: str) -> dict:
    return json.loads(
        host.check_output(f"curl -sf --max-time 10 --unix-socket /run/hostmesh/admin.sock 'http://localhost{path}'")
    )


def upstream_connections(host) -> int:
    stats = host.check_output(
        "curl -sfg --max-time 10 --unix-socket /run/hostmesh/admin.sock "
        "'http://localhost/stats?filter=^cluster[.]app[.]upstream_cx_total$'"
    )
    return int(stats.rsplit(":", 1)[1])


def test_agent_unit_is_active_and_ready(host1, scenario) -> None:
    unit = host1.service("hostmesh-agent.service")
    assert unit.is_enabled
    assert host1.check_output("systemctl show --property ActiveState --value hostmesh-agent.service") == "active"
    ready = host1.run("curl -s --max-time 10 -w '\\n%{http_code}' http://127.0.0.1:15020/healthz/ready")
    body, code = ready.stdout.rsplit("\n", 1)
    assert code == "200", ready.stdout + ready.stderr
    assert body.startswith("ready: envoy epoch"), body
    config = json.loads(host1.file("/etc/hostmesh/agent.json").content_string)
    assert config["mode"] == "xds"
    assert config["xds"]["address"] == f"{controller_of(host1)}:{scenario['xds_server_port']}"


def test_envoy_got_its_listener_and_cluster_from_ads(host1, scenario) -> None:
    report = json.loads((STATE_DIR / "ads-report.json").read_text())
    # The node the server saw is this host's Envoy, in the agent's form.
    node_id = admin_json(host1, "/server_info")["node"]["id"]
    namespace = scenario["hostmesh_namespace"]
    # hostmesh_node_ip names the host's mesh address (the sandbox has no default route).
    assert node_id == f"sidecar~{address_of(host1)}~host1.{namespace}~{namespace}.svc.cluster.local", node_id
    assert report["node"]["id"] == node_id
    metadata = report["node"]["metadata"]
    assert metadata["CLUSTER_ID"] == scenario["hostmesh_xds_cluster_id"]
    assert metadata["NAMESPACE"] == namespace
    assert metadata["SERVICE_ACCOUNT"] == scenario["hostmesh_service_account"]
    assert metadata["INSTANCE_IPS"] == address_of(host1)
    # The token file the role installed went out as the bearer token.
    token = (STATE_DIR / "token").read_text().strip()
    assert token
    assert report["authorization"] == f"Bearer {token}"
    # Envoy accepted both answers, and holds them at the server's version.
    assert {CDS, LDS} <= set(report["acks"]), report["acks"]
    assert report["nacks"] == []
    dump = {config["@type"].rsplit(".", 1)[1]: config for config in admin_json(host1, "/config_dump")["configs"]}
    listeners = {
        item["name"]: item["active_state"] for item in dump["ListenersConfigDump"].get("dynamic_listeners", [])
    }
    assert listeners["app"]["version_info"] == ADS_VERSION
    address = listeners["app"]["listener"]["address"]["socket_address"]
    assert int(address["port_value"]) == scenario["xds_listener_port"]
    clusters = {item["cluster"]["name"]: item for item in dump["ClustersConfigDump"].get("dynamic_active_clusters", [])}
    assert clusters["app"]["version_info"] == ADS_VERSION


def test_tcp_through_the_ads_listener_reaches_the_app(host1, scenario) -> None:
    before_cx = upstream_connections(host1)
    before_log = int(host1.check_output("journalctl -u echo-app.service --no-pager -o cat | wc -l"))
    with socket.create_connection((address_of(host1), scenario["xds_listener_port"]), timeout=10) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\nHost: host1\r\n\r\n")
        response = b""
        while chunk := conn.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.0 200"), response
    assert response.rstrip().endswith(b"echo from host1"), response
    # Envoy's cluster "app" carried it ...
    assert upstream_connections(host1) == before_cx + 1
    # ... and the app saw the connection come from Envoy on the host, not from the controller.
    new_lines = host1.check_output(
        f"for i in $(seq 50); do journalctl -u echo-app.service --no-pager -o cat | tail -n +{before_log + 1} "
        "| grep -q 'GET / ' && break; sleep 0.1; done; "
        f"journalctl -u echo-app.service --no-pager -o cat | tail -n +{before_log + 1}"
    ).splitlines()
    requests = [line for line in new_lines if '"GET / HTTP/1.0"' in line]
    assert len(requests) == 1, new_lines
    assert requests[0].startswith("127.0.0.1 "), requests[0]


def test_onboarding_turned_capture_on_around_the_xds_sidecar(host1, scenario) -> None:
    """The onboard playbook ran its capture role too: outbound and inbound chains, the listener's port excluded."""
    assert host1.service("hostmesh-capture.service").is_enabled
    nat = host1.check_output("iptables-save -t nat")
    assert "-A HOSTMESH_OUTPUT" in nat, nat
    assert "-j HOSTMESH_IN_REDIRECT" in nat, nat
    assert "--dport %d -j RETURN" % scenario["xds_listener_port"] in nat, nat
