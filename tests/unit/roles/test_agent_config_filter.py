"""The agent's config as the agent role writes it, from the role's variables: golden files and bad input.

Regenerate the golden files after an intended change with
``HOSTMESH_UPDATE_GOLDEN=1 pytest tests/unit/roles`` and review the diff: it is
exactly what changes in /etc/hostmesh/agent.json on the hosts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.hostmesh.sidecar.plugins.filter.agent_config import agent_config, deep_merge
from hostmesh_agent.config import parse_config

GOLDEN = Path(__file__).resolve().parent / "golden"
CERTS = "/etc/hostmesh/certs"

# The role's defaults (defaults/main.yml, vars/main.yml) as the role hands them over.
ROLE = {
    "host": "web1",
    "hostmesh_mode": "standalone",
    "hostmesh_trust_domain": "cluster.local",
    "hostmesh_namespace": "default",
    "hostmesh_service_account": "web1",
    "hostmesh_node_name": "",
    "hostmesh_node_labels": {},
    "hostmesh_node_ip": "",
    "hostmesh_services": [],
    "hostmesh_outbound_services": [],
    "hostmesh_inbound_passthrough": True,
    "hostmesh_outbound_passthrough": True,
    "hostmesh_tls_cert_src": "",
    "hostmesh_tls_key_src": "",
    "hostmesh_tls_ca_src": "",
    "hostmesh_xds_address": "",
    "hostmesh_xds_sni": "",
    "hostmesh_xds_cluster_id": "Kubernetes",
    "hostmesh_xds_network": "",
    "hostmesh_capture_mode": "redirect",
    "hostmesh_capture_options": {},
    "hostmesh_ports": {},
    "hostmesh_envoy_bin": "/usr/local/bin/envoy",
    "hostmesh_agent_config_extra": {},
    "hostmesh_agent_run_dir": "/run/hostmesh",
    "hostmesh_policy_default": "allow",
    "hostmesh_mesh_identities": {},
    "hostmesh_access_log_enabled": False,
    "hostmesh_access_log_sampling": 1,
    "hostmesh_access_log_destination": "journal",
    "hostmesh_telemetry_enabled": True,
    "hostmesh_tracing_collector": "",
    "hostmesh_tracing_sampling": 1,
}
TLS_SOURCES = {
    "hostmesh_tls_cert_src": "/ca/hosts/web1/cert-chain.pem",
    "hostmesh_tls_key_src": "/ca/hosts/web1/key.pem",
    "hostmesh_tls_ca_src": "/ca/ca-cert.pem",
}


def role(**changes) -> dict:
    """The role's variables with ``changes``, and its file lists built from them as vars/main.yml does."""
    values = {**ROLE, **changes}
    values["hostmesh_agent_tls_files"] = [
        {"src": values["hostmesh_tls_cert_src"], "dest": f"{CERTS}/cert.pem", "key": "cert_file"},
        {"src": values["hostmesh_tls_key_src"], "dest": f"{CERTS}/key.pem", "key": "key_file"},
        {"src": values["hostmesh_tls_ca_src"], "dest": f"{CERTS}/ca.pem", "key": "ca_file"},
    ]
    values["hostmesh_agent_xds_files"] = [
        {"src": values.pop("xds_ca_src", ""), "dest": f"{CERTS}/xds-ca.pem", "key": "ca_file"},
        {"src": values.pop("xds_cert_src", ""), "dest": f"{CERTS}/xds-cert.pem", "key": "cert_file"},
        {"src": values.pop("xds_key_src", ""), "dest": f"{CERTS}/xds-key.pem", "key": "key_file"},
        {"src": values.pop("xds_token_src", ""), "dest": f"{CERTS}/xds-token", "key": "token_file"},
    ]
    return values


CASES = {
    "standalone-tls": role(
        hostmesh_services=[
            {"name": "web", "port": 8080, "protocol": "http"},
            {
                "name": "db",
                "port": "5432",
                "target_port": 15432,
                "allowed_spiffe_ids": ["spiffe://cluster.local/ns/default/sa/app"],
                "owner": "ops",
            },
            {"name": "metrics", "port": 9100, "tls": False},
        ],
        hostmesh_outbound_services=[
            {
                "name": "pg",
                "port": 5432,
                "protocol": "tcp",
                "endpoints": ["10.0.0.12:5432"],
                "tls": True,
                "spiffe_ids": ["spiffe://cluster.local/ns/default/sa/db1"],
            }
        ],
        hostmesh_namespace="shop",
        hostmesh_node_name="web-1",
        hostmesh_node_ip="10.0.0.11",
        hostmesh_node_labels={"app": "web", "version": "v1"},
        **TLS_SOURCES,
    ),
    "xds-files": role(
        hostmesh_mode="xds",
        hostmesh_xds_address="istiod.istio-system.svc:15012",
        hostmesh_xds_sni="istiod.istio-system.svc",
        hostmesh_xds_network="net1",
        hostmesh_services=[{"name": "web", "port": 8080, "protocol": "http"}],
        xds_ca_src="/files/xds-ca.pem",
        xds_cert_src="/files/xds-cert.pem",
        xds_key_src="/files/xds-key.pem",
        xds_token_src="/files/token",
    ),
    "tproxy-mark": role(
        hostmesh_capture_mode="tproxy",
        hostmesh_capture_options={"tproxy_mark": 4242, "outbound_cidrs_exclude": ["10.0.0.1/32"]},
        hostmesh_services=[{"name": "web", "port": 8080}],
        hostmesh_inbound_passthrough="no",
    ),
    "ports-moved": role(
        hostmesh_ports={"outbound": 16001, "inbound": 16006, "admin": "16000", "status": 16020, "dns": 16053},
        hostmesh_capture_options={"proxy_port": 16001},
        hostmesh_services=[{"name": "web", "port": 8080, "protocol": "http"}],
    ),
    "config-extra": role(
        hostmesh_services=[{"name": "web", "port": 8080, "protocol": "http"}],
        hostmesh_agent_config_extra={
            "envoy": {"concurrency": 4, "binary": "/opt/envoy/bin/envoy"},
            "supervise": {"drain_timeout_s": 10},
            "inbound": {"passthrough": False, "services": [{"name": "other", "port": 9000}]},
            "listen": {"status_address": "::"},
            "ports": {"status": 15020},
        },
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_matches_its_golden_file_and_the_agent_accepts_it(name: str) -> None:
    config = agent_config(CASES[name])
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    path = GOLDEN / f"agent-config-{name}.json"
    if os.environ.get("HOSTMESH_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"golden file {path.name} missing; set HOSTMESH_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text()
    parsed = parse_config(config)
    assert parsed.ports.outbound == config["ports"]["outbound"]


def test_the_contract_reaches_the_agents_ports() -> None:
    config = agent_config(CASES["ports-moved"])
    assert config["ports"] == {
        "admin": 16000,
        "outbound": 16001,
        "inbound": 16006,
        "status": 16020,
        "health": 15021,
        "prometheus": 15090,
    }
    assert agent_config(role())["ports"]["outbound"] == 15001


def test_services_take_the_tls_default_and_leave_other_keys_out() -> None:
    services = agent_config(CASES["standalone-tls"])["inbound"]["services"]
    assert [(s["name"], s["port"], s["protocol"], s["tls"]) for s in services] == [
        ("web", 8080, "http", True),
        ("db", 5432, "tcp", True),
        ("metrics", 9100, "tcp", False),
    ]
    assert "owner" not in services[1]
    assert (
        agent_config(role(hostmesh_services=[{"name": "web", "port": 8080}]))["inbound"]["services"][0]["tls"] is False
    )


def test_tproxy_mark_only_in_tproxy_mode() -> None:
    assert agent_config(CASES["tproxy-mark"])["inbound"]["tproxy_mark"] == 4242
    redirect = role(hostmesh_capture_options={"tproxy_mark": 4242})
    assert "tproxy_mark" not in agent_config(redirect)["inbound"]


def test_config_extra_merges_mappings_and_replaces_the_rest() -> None:
    assert deep_merge({"a": {"b": 1, "c": [1]}, "d": 1}, {"a": {"c": [2], "e": 3}, "d": {"x": 1}}) == {
        "a": {"b": 1, "c": [2], "e": 3},
        "d": {"x": 1},
    }
    config = agent_config(CASES["config-extra"])
    assert config["envoy"] == {"binary": "/opt/envoy/bin/envoy", "concurrency": 4}
    assert config["inbound"]["services"] == [{"name": "other", "port": 9000}]
    assert config["inbound"]["interception"] == "redirect"


@pytest.mark.parametrize(
    ("changes", "messages"),
    [
        (
            {"hostmesh_mode": "xds"},
            ['hostmesh_xds_address: got ""; expected host:port of the control plane, since hostmesh_mode is xds'],
        ),
        ({"hostmesh_mode": "xds", "hostmesh_xds_address": "istiod"}, ['hostmesh_xds_address: got "istiod"']),
        (
            {"hostmesh_tls_cert_src": "/ca/cert.pem"},
            [
                "hostmesh_tls_cert_src, hostmesh_tls_key_src, hostmesh_tls_ca_src: got "
                '["/ca/cert.pem", "", ""]; expected all three set or all three empty'
            ],
        ),
        (
            {"hostmesh_services": [{"name": "web", "port": 8080, "tls": True}]},
            [
                "hostmesh_services[0].tls: got true; expected false, or hostmesh_tls_cert_src set: TLS needs a"
                " certificate"
            ],
        ),
        (
            {"hostmesh_services": [{"name": "web"}, {"port": 9000}]},
            [
                'hostmesh_services[0]: got {"name": "web"}; expected a mapping with a name and a port',
                'hostmesh_services[1]: got {"port": 9000}; expected a mapping with a name and a port',
            ],
        ),
        ({"hostmesh_services": {"web": 8080}}, ['hostmesh_services: got {"web": 8080}; expected a list']),
        (
            {"hostmesh_services": [{"name": "web", "port": "http"}]},
            ['hostmesh_services[0].port: got "http"; expected an integer port from 1 to 65535'],
        ),
        (
            {"hostmesh_services": [{"name": "web", "port": 80, "target_port": 0}]},
            ["hostmesh_services[0].target_port: got 0; expected an integer port"],
        ),
        (
            {"hostmesh_services": [{"name": "web", "port": 80, "tls": "maybe"}], **TLS_SOURCES},
            ['hostmesh_services[0].tls: got "maybe"; expected true or false'],
        ),
        ({"hostmesh_inbound_passthrough": "sometimes"}, ['hostmesh_inbound_passthrough: got "sometimes"']),
        ({"hostmesh_ports": {"inbound": 15000}}, ["hostmesh_ports.inbound: got 15000; expected a port of its own"]),
        (
            {"hostmesh_capture_options": {"proxy_port": 16001}},
            [
                "hostmesh_capture_options.proxy_port: got 16001; expected 15001, the contract's hostmesh_ports.outbound,"
                " or the option left out: set it in hostmesh_ports, which capture and the agent both read"
            ],
        ),
        (
            {"hostmesh_agent_config_extra": {"ports": {"outbound": 16001}}},
            [
                "hostmesh_agent_config_extra.ports.outbound: got 16001; expected no ports here: set them in"
                " hostmesh_ports, which capture and the agent both read"
            ],
        ),
        (
            {"hostmesh_capture_mode": "tproxy", "hostmesh_capture_options": {"tproxy_mark": "0x539"}},
            ['hostmesh_capture_options.tproxy_mark: got "0x539"; expected an integer mark'],
        ),
        (
            {"hostmesh_agent_config_extra": ["envoy"]},
            ['hostmesh_agent_config_extra: got ["envoy"]; expected a mapping'],
        ),
    ],
)
def test_bad_variables_fail_naming_the_host_the_variable_and_the_value(changes, messages) -> None:
    with pytest.raises(AnsibleFilterError) as error:
        agent_config(role(**changes))
    text = str(error.value)
    assert text.startswith("agent_config: host 'web1': "), text
    for message in messages:
        assert message in text


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(AnsibleFilterError) as error:
        agent_config(role(hostmesh_mode="xds", hostmesh_tls_key_src="/k", hostmesh_ports={"dns": 15001}))
    text = str(error.value)
    assert "hostmesh_ports.dns" in text and "hostmesh_tls_cert_src" in text and "hostmesh_xds_address" in text


def test_missing_role_variables_are_named() -> None:
    values = role()
    del values["hostmesh_ports"]
    with pytest.raises(AnsibleFilterError, match=r"missing \['hostmesh_ports'\]"):
        agent_config(values)
