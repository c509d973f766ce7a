"""mesh_upstreams: the inventory as the standalone mesh's registry.

Regenerate the golden file after an intended change with
``HOSTMESH_UPDATE_GOLDEN=1 pytest tests/unit/mesh``.
"""

import json
import os
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError
from mesh_helpers import each_hosts_json

from ansible_collections.hostmesh.sidecar.plugins.filter.mesh import FilterModule, mesh_spiffe_id, mesh_upstreams
from hostmesh_agent.config import parse_config

GOLDEN = Path(__file__).resolve().parent / "golden" / "upstreams.json"

# Three hosts, each finding its address a different way.
INVENTORY = {
    "web1": {
        "ansible_host": "10.0.0.11",
        "hostmesh_services": [{"name": "web", "port": 8080, "protocol": "http"}],
    },
    "web2": {
        "hostmesh_address": "10.0.1.12",
        "ansible_host": "web2.example.net",
        "hostmesh_namespace": "prod",
        "hostmesh_services": [
            {"name": "web", "port": 8080, "protocol": "http"},
            {"name": "metrics", "port": 9100},
        ],
    },
    "db1": {
        "ansible_default_ipv4": {"address": "10.0.2.5", "interface": "eth0"},
        "hostmesh_service_account": "postgres",
        "hostmesh_services": [
            {"name": "pg", "port": "5432", "protocol": "tcp"},
            {"name": "node-exporter", "port": 9100},
        ],
    },
}
HOSTS = ["web1", "web2", "db1"]


def all_upstreams(hostvars=None, hosts=None, trust_domain="cluster.local"):
    hostvars = INVENTORY if hostvars is None else hostvars
    hosts = HOSTS if hosts is None else hosts
    return {host: mesh_upstreams(hostvars, hosts, host, trust_domain) for host in sorted(hosts)}


def test_three_hosts_golden():
    got = all_upstreams()
    if os.environ.get("HOSTMESH_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert got == json.loads(GOLDEN.read_text())


def test_golden_reads_as_expected():
    """The golden file, spelled out for one host: two web endpoints, one per identity."""
    db1 = all_upstreams()["db1"]
    assert db1 == [
        {
            "name": "metrics",
            "port": 9100,
            "protocol": "tcp",
            "endpoints": ["10.0.1.12:9100"],
            "tls": True,
            "spiffe_ids": ["spiffe://cluster.local/ns/prod/sa/web2"],
        },
        {
            "name": "web",
            "port": 8080,
            "protocol": "http",
            "endpoints": ["10.0.0.11:8080", "10.0.1.12:8080"],
            "tls": True,
            "spiffe_ids": ["spiffe://cluster.local/ns/default/sa/web1", "spiffe://cluster.local/ns/prod/sa/web2"],
        },
    ]
    # A host never routes to itself: web1 sees web only through web2.
    web1 = {u["name"]: u for u in all_upstreams()["web1"]}
    assert web1["web"]["endpoints"] == ["10.0.1.12:8080"]


def test_services_sharing_a_port_are_told_apart_by_address():
    """metrics (web2) and node-exporter (db1) both use 9100: each matches only its own hosts' addresses."""
    web1 = {u["name"]: u for u in all_upstreams()["web1"]}
    assert web1["metrics"]["match_cidrs"] == ["10.0.1.12/32"]
    assert web1["node-exporter"]["match_cidrs"] == ["10.0.2.5/32"]
    assert "match_cidrs" not in web1["pg"] and "match_cidrs" not in web1["web"]
    v6 = {
        "a": {"ansible_host": "fd00::a", "hostmesh_services": [{"name": "x", "port": 80}]},
        "b": {"ansible_host": "10.0.0.2", "hostmesh_services": [{"name": "y", "port": 80}]},
        "me": {"ansible_host": "10.0.0.9"},
    }
    got = {u["name"]: u["match_cidrs"] for u in mesh_upstreams(v6, list(v6), "me")}
    assert got == {"x": ["fd00::a/128"], "y": ["10.0.0.2/32"]}


def test_output_does_not_depend_on_order():
    reordered = {host: dict(reversed(list(INVENTORY[host].items()))) for host in reversed(HOSTS)}
    assert all_upstreams(reordered, list(reversed(HOSTS))) == all_upstreams()


def test_trust_domain_and_client_only_host():
    hostvars = dict(INVENTORY, client={"ansible_host": "10.9.9.9"})
    got = mesh_upstreams(hostvars, HOSTS, "client", trust_domain="example.org")
    assert [u["name"] for u in got] == ["metrics", "node-exporter", "pg", "web"]
    assert got[2]["spiffe_ids"] == ["spiffe://example.org/ns/default/sa/postgres"]


def test_trust_domain_from_the_inventory_unless_given():
    hostvars = {host: dict(INVENTORY[host], hostmesh_trust_domain="corp.example") for host in HOSTS}

    def ids(upstreams, name):
        return next(u["spiffe_ids"] for u in upstreams if u["name"] == name)

    assert ids(mesh_upstreams(hostvars, HOSTS, "web1"), "pg") == ["spiffe://corp.example/ns/default/sa/postgres"]
    assert ids(mesh_upstreams(hostvars, HOSTS, "web1", "x.example"), "pg") == [
        "spiffe://x.example/ns/default/sa/postgres"
    ]
    assert mesh_spiffe_id(hostvars, "web2") == "spiffe://corp.example/ns/prod/sa/web2"


def test_ipv6_endpoint_in_brackets_and_odd_host_names():
    hostvars = {
        "a`b'c": {
            "ansible_host": "fd00::5",
            "hostmesh_service_account": "a",
            "hostmesh_services": [{"name": "x", "port": 1}],
        },
        "me": {"ansible_host": "10.0.0.1"},
    }
    assert mesh_upstreams(hostvars, list(hostvars), "me")[0]["endpoints"] == ["[fd00::5]:1"]
    # The host's own services are left out even when its name needs escaping in jmespath.
    assert mesh_upstreams(hostvars, list(hostvars), "a`b'c") == []


def test_spiffe_id_filter_and_registration():
    assert mesh_spiffe_id(INVENTORY, "web2") == "spiffe://cluster.local/ns/prod/sa/web2"
    assert mesh_spiffe_id(INVENTORY, "db1", "example.org") == "spiffe://example.org/ns/default/sa/postgres"
    assert set(FilterModule().filters()) == {"mesh_upstreams", "mesh_spiffe_id", "mesh_identities"}


def with_services(**hosts):
    return {
        name: {"ansible_host": "10.0.0.%d" % (i + 1), "hostmesh_services": services}
        for i, (name, services) in enumerate(hosts.items())
    }


@pytest.mark.parametrize(
    ("hostvars", "host", "key", "value"),
    [
        (with_services(a=[{"port": 80}]), "a", "hostmesh_services[0].name", "null"),
        (with_services(a=[{"name": "x"}]), "a", "hostmesh_services[0].port", "null"),
        (with_services(a=[{"name": "x", "port": 70000}]), "a", "hostmesh_services[0].port", "70000"),
        (with_services(a=[{"name": "x", "port": 0}]), "a", "hostmesh_services[0].port", "0"),
        (with_services(a=[{"name": "x", "port": "http"}]), "a", "hostmesh_services[0].port", '"http"'),
        (with_services(a=[{"name": "x", "port": True}]), "a", "hostmesh_services[0].port", "true"),
        (with_services(a=[{"name": "X_Y", "port": 80}]), "a", "hostmesh_services[0].name", '"X_Y"'),
        (
            with_services(a=[{"name": "x", "port": 80, "protocol": "udp"}]),
            "a",
            "hostmesh_services[0].protocol",
            '"udp"',
        ),
        (
            with_services(a=[{"name": "x", "port": 80}, {"name": "x", "port": 81}]),
            "a",
            "hostmesh_services[1].name",
            '"x"',
        ),
        (with_services(a="x:80"), "a", "hostmesh_services", '"x:80"'),
        (with_services(a=["x:80"]), "a", "hostmesh_services[0]", '"x:80"'),
        (
            with_services(a=[{"name": "x", "port": 80}], b=[{"name": "x", "port": 81}]),
            "b",
            "hostmesh_services (service 'x').port",
            "81",
        ),
        (
            {
                "a": {"hostmesh_address": "a.example.net", "hostmesh_services": [{"name": "x", "port": 80}]},
                "b": {"ansible_host": "10.0.0.2", "hostmesh_services": [{"name": "y", "port": 80}]},
            },
            "a",
            "hostmesh_address",
            '"a.example.net"',
        ),
        (
            {
                "a": {"ansible_host": "10.0.0.2", "hostmesh_services": [{"name": "x", "port": 80}]},
                "b": {"ansible_host": "10.0.0.2", "hostmesh_services": [{"name": "y", "port": 80}]},
            },
            "b",
            "hostmesh_services (service 'y').port",
            "80",
        ),
        (
            with_services(a=[{"name": "x", "port": 80}], b=[{"name": "x", "port": 80, "protocol": "http"}]),
            "b",
            "hostmesh_services (service 'x').protocol",
            '"http"',
        ),
        (with_services(a=[{"name": "x", "port": 80, "tls": "maybe"}]), "a", "hostmesh_services[0].tls", '"maybe"'),
        (
            with_services(a=[{"name": "x", "port": 80}], b=[{"name": "x", "port": 80, "tls": False}]),
            "b",
            "hostmesh_services (service 'x').tls",
            "false",
        ),
        ({"a": {"hostmesh_services": [{"name": "x", "port": 80}]}}, "a", "hostmesh_address", "null"),
        ({"a": {"ansible_host": "h", "hostmesh_namespace": "Prod"}}, "a", "hostmesh_namespace", '"Prod"'),
        ({"A": {"ansible_host": "h"}}, "A", "hostmesh_service_account", '"A"'),
    ],
)
def test_bad_registry_names_host_key_and_value(hostvars, host, key, value):
    with pytest.raises(AnsibleFilterError) as caught:
        mesh_upstreams(dict(hostvars, me={"ansible_host": "10.9.9.9"}), [*hostvars, "me"], "me")
    message = str(caught.value)
    assert "host %r" % host in message
    assert key in message
    assert "got %s" % value in message


def test_plain_text_service_is_called_in_plain_text():
    hostvars = with_services(
        a=[{"name": "plain", "port": 80, "tls": False}, {"name": "secure", "port": 81, "tls": "yes"}], me=[]
    )
    got = {upstream["name"]: upstream for upstream in mesh_upstreams(hostvars, ["a", "me"], "me")}
    assert got["plain"]["tls"] is False
    assert "spiffe_ids" not in got["plain"]
    assert got["secure"]["tls"] is True
    assert got["secure"]["spiffe_ids"] == ["spiffe://cluster.local/ns/default/sa/a"]
    tls = {"cert_file": "/c.pem", "key_file": "/k.pem", "ca_file": "/ca.pem"}
    cfg = parse_config({"tls": tls, "outbound": {"services": list(got.values())}})
    assert {s.name: s.tls for s in cfg.outbound.services} == {"plain": False, "secure": True}


def test_bad_arguments():
    with pytest.raises(AnsibleFilterError, match='hosts: got "web1"'):
        mesh_upstreams(INVENTORY, "web1", "web2")
    with pytest.raises(AnsibleFilterError, match="host 'nowhere', hosts"):
        mesh_upstreams(INVENTORY, ["web1", "nowhere"], "web1")
    with pytest.raises(AnsibleFilterError, match='trust_domain: got "Bad Domain"'):
        mesh_upstreams(INVENTORY, HOSTS, "web1", "Bad Domain")


def test_in_a_real_playbook_with_templated_hostvars(tmp_path):
    """The same registry through ansible-playbook: hostvars are lazily templated there."""
    # A templated value must come out as its result.
    hostvars = {**INVENTORY, "db1": {**INVENTORY["db1"], "hostmesh_service_account": "{{ 'post' ~ 'gres' }}"}}
    per_host = each_hosts_json(
        tmp_path, hostvars, "hostvars | hostmesh.sidecar.mesh_upstreams(groups['mesh'], inventory_hostname)"
    )
    got = {host: per_host[host] for host in sorted(HOSTS)}
    assert got == json.loads(GOLDEN.read_text())


def test_agent_accepts_the_output(tmp_path):
    """Every host's upstreams are a valid agent ``outbound`` section, with mTLS on."""
    for host, upstreams in all_upstreams().items():
        cfg = parse_config(
            {
                "tls": {"cert_file": "/c.pem", "key_file": "/k.pem", "ca_file": "/ca.pem"},
                "outbound": {"services": upstreams},
            }
        )
        assert [s.name for s in cfg.outbound.services] == [u["name"] for u in upstreams], host
        assert all(s.tls for s in cfg.outbound.services)
