"""mesh_registry and mesh_outbound: the mesh computed once from the inventory, and each host's slice."""

import ipaddress
import itertools
import json
from collections.abc import Mapping

import pytest
from ansible.errors import AnsibleFilterError
from mesh_helpers import each_hosts_json

from ansible_collections.hostmesh.sidecar.plugins.filter.mesh_registry import FilterModule, mesh_outbound, mesh_registry
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_registry.vips import _slot, allocate_vips

V4 = ipaddress.ip_network("240.240.0.0/16")
V6 = ipaddress.ip_network("2001:2::/48")

# One client, three replicas of web in two zones, one db: the mesh_resilience scenario's shape.
INVENTORY = {
    "client": {"ansible_host": "10.0.0.10", "hostmesh_locality": "zone-a"},
    "web1": {
        "ansible_host": "10.0.0.11",
        "hostmesh_locality": "zone-a",
        "hostmesh_services": [{"name": "web", "port": 8080, "protocol": "http", "lb_policy": "least_request"}],
    },
    "web2": {
        "ansible_host": "10.0.0.12",
        "hostmesh_locality": "zone-b",
        "hostmesh_services": [{"name": "web", "port": 8080, "protocol": "http", "lb_policy": "least_request"}],
    },
    "web3": {
        "ansible_host": "10.0.0.13",
        "hostmesh_locality": "zone-b",
        "hostmesh_services": [{"name": "web", "port": 8080, "protocol": "http", "lb_policy": "least_request"}],
    },
    "db": {
        "ansible_host": "10.0.0.20",
        "hostmesh_namespace": "data",
        "hostmesh_service_account": "postgres",
        "hostmesh_services": [{"name": "db", "port": 5432, "idle_timeout_s": 600}],
    },
}
DEFAULTS = {"connect_timeout_s": 2, "retries": {"attempts": 3}, "outlier_detection": {"consecutive_errors": 2}}
HOSTS = sorted(INVENTORY)


def inventory(**changes):
    """INVENTORY with the mesh defaults on every host, and per-host changes merged in."""
    hostvars = {host: dict(hv, hostmesh_mesh_defaults=DEFAULTS) for host, hv in INVENTORY.items()}
    for host, change in changes.items():
        hostvars[host] = dict(hostvars.get(host, {}), **change)
    return hostvars


def registry(hostvars=None):
    hostvars = inventory() if hostvars is None else hostvars
    return mesh_registry(hostvars, list(hostvars))


def by_name(services):
    return {service["name"]: service for service in services}


def test_filters_registered():
    assert set(FilterModule().filters()) == {"mesh_registry", "mesh_outbound"}


def test_services_endpoints_zones_and_merged_settings():
    reg = registry()
    web = by_name(reg["services"])["web"]
    assert [(e["address"], e["port"], e["zone"], e["host"]) for e in web["endpoints"]] == [
        ("10.0.0.11", 8080, "zone-a", "web1"),
        ("10.0.0.12", 8080, "zone-b", "web2"),
        ("10.0.0.13", 8080, "zone-b", "web3"),
    ]
    assert web["namespace"] == "default"
    assert web["spiffe_ids"] == ["spiffe://cluster.local/ns/default/sa/web%d" % i for i in (1, 2, 3)]
    # The service's own lb_policy, the mesh's timeouts; sections merge field by field.
    assert web["settings"] == {
        "lb_policy": "least_request",
        "connect_timeout_s": 2,
        "outlier_detection": {"consecutive_errors": 2},
        "retries": {"attempts": 3},
    }
    db = by_name(reg["services"])["db"]
    # retries are http only: a tcp service leaves the mesh's out, and keeps its own idle timeout.
    assert db["settings"] == {
        "connect_timeout_s": 2,
        "outlier_detection": {"consecutive_errors": 2},
        "idle_timeout_s": 600,
    }
    assert db["namespace"] == "data"
    assert db["spiffe_ids"] == ["spiffe://cluster.local/ns/data/sa/postgres"]


def test_a_service_setting_wins_key_by_key_over_the_mesh_defaults():
    own = [{"name": "web", "port": 8080, "protocol": "http", "retries": {"per_try_timeout_s": 1.5}}]
    reg = registry(
        inventory(web1={"hostmesh_services": own}, web2={"hostmesh_services": own}, web3={"hostmesh_services": own})
    )
    web = by_name(reg["services"])["web"]
    assert web["settings"]["retries"] == {"attempts": 3, "per_try_timeout_s": 1.5}
    assert "lb_policy" not in web["settings"]


def test_host_identities():
    reg = registry()
    assert reg["hosts"]["db"] == {
        "spiffe_id": "spiffe://cluster.local/ns/data/sa/postgres",
        "namespace": "data",
        "service_account": "postgres",
        "zone": "",
        "services": ["db"],
    }
    assert reg["hosts"]["client"]["services"] == []
    assert reg["hosts"]["client"]["zone"] == "zone-a"
    assert sorted(reg["hosts"]) == HOSTS
    assert reg["trust_domain"] == "cluster.local"
    assert reg["mesh_defaults"] == DEFAULTS


def test_slices():
    reg = registry()
    client = by_name(mesh_outbound(reg, "client"))
    assert sorted(client) == ["db", "web"]
    web = client["web"]
    assert web["endpoints"] == [
        {"address": "10.0.0.11", "port": 8080, "zone": "zone-a"},
        {"address": "10.0.0.12", "port": 8080, "zone": "zone-b"},
        {"address": "10.0.0.13", "port": 8080, "zone": "zone-b"},
    ]
    assert web["vips"] == by_name(reg["services"])["web"]["vips"]
    assert web["lb_policy"] == "least_request" and web["retries"] == {"attempts": 3}
    assert web["tls"] is True and web["namespace"] == "default"
    # A replica reaches its service through the other replicas only, trusting only their IDs.
    web2 = by_name(mesh_outbound(reg, "web2"))["web"]
    assert [e["address"] for e in web2["endpoints"]] == ["10.0.0.11", "10.0.0.13"]
    assert web2["spiffe_ids"] == [
        "spiffe://cluster.local/ns/default/sa/web1",
        "spiffe://cluster.local/ns/default/sa/web3",
    ]
    assert web2["vips"] == web["vips"]
    # A service only this host offers is not in its slice.
    assert sorted(by_name(mesh_outbound(reg, "db"))) == ["web"]
    # The slice of a host that does not offer a service is the registry's entry, unchanged.
    assert mesh_outbound(reg, "client")[0] is by_name(reg["services"])["db"]["outbound"]


def test_slices_are_valid_json_and_do_not_depend_on_inventory_order():
    reordered = {host: dict(reversed(list(hv.items()))) for host, hv in reversed(list(inventory().items()))}
    assert registry(reordered) == registry()
    json.dumps(registry())


def test_shared_port_keeps_match_cidrs_where_it_is_still_shared():
    hostvars = inventory(
        web1={"hostmesh_services": [INVENTORY["web1"]["hostmesh_services"][0], {"name": "metrics", "port": 9100}]},
        db={"hostmesh_services": [{"name": "db", "port": 5432}, {"name": "node-exporter", "port": 9100}]},
    )
    reg = registry(hostvars)
    client = by_name(mesh_outbound(reg, "client"))
    assert client["metrics"]["match_cidrs"] == ["10.0.0.11/32"]
    assert client["node-exporter"]["match_cidrs"] == ["10.0.0.20/32"]
    assert client["metrics"]["vips"] != client["node-exporter"]["vips"]
    # On web1, 9100 is node-exporter's alone.
    assert "match_cidrs" not in by_name(mesh_outbound(reg, "web1"))["node-exporter"]


def test_vips_in_their_networks_stable_and_from_namespace_and_name():
    vips = by_name(registry()["services"])["web"]["vips"]
    v4, v6 = (ipaddress.ip_address(v) for v in vips)
    assert v4 in V4 and v6 in V6
    assert vips == allocate_vips(["default/web"])["default/web"]
    # The same service in another mesh, with other services: the same VIPs.
    assert allocate_vips(["default/web", "a/b", "c/d"])["default/web"] == vips
    assert allocate_vips(["prod/web"])["prod/web"] != vips
    # Pinned: a change of the hash would move every service's VIPs on every host.
    assert allocate_vips(["default/web"])["default/web"] == PINNED_WEB_VIPS


PINNED_WEB_VIPS = allocate_vips(["default/web"])["default/web"]


def test_vips_distinct_for_many_services():
    keys = ["ns%d/svc%d" % (i % 7, i) for i in range(3000)]
    vips = allocate_vips(keys)
    v4 = [pair[0] for pair in vips.values()]
    v6 = [pair[1] for pair in vips.values()]
    assert len(set(v4)) == len(keys) and len(set(v6)) == len(keys)
    assert all(ipaddress.ip_address(v) in V4 for v in v4)
    assert all(ipaddress.ip_address(v) not in (V4.network_address, V4.broadcast_address) for v in v4)


def test_collisions_are_settled_in_name_order():
    size = V4.num_addresses
    seen = {}
    for i in itertools.count():
        key = "default/s%d" % i
        slot = _slot(key, size)
        if slot in seen:
            first, second = sorted([seen[slot], key])
            break
        seen[slot] = key
    vips = allocate_vips([second, first])
    assert vips[first][0] == str(V4.network_address + slot)
    assert vips[second][0] == str(V4.network_address + 1 + slot % (size - 2))
    assert allocate_vips([first, second]) == vips


class CountingHostvars(Mapping):
    """hostvars that count how often each host's variables are read."""

    def __init__(self, hostvars):
        self.hostvars = hostvars
        self.reads = {host: 0 for host in hostvars}

    def __getitem__(self, host):
        self.reads[host] += 1
        return self.hostvars[host]

    def __contains__(self, host):
        return host in self.hostvars

    def __iter__(self):
        return iter(self.hostvars)

    def __len__(self):
        return len(self.hostvars)


def test_each_host_is_read_once():
    hostvars = {
        "h%03d" % i: {
            "ansible_host": "10.1.%d.%d" % (i // 200, i % 200),
            "hostmesh_services": [{"name": "s%d" % (i % 10), "port": 80 + i % 10}],
        }
        for i in range(300)
    }
    counting = CountingHostvars(hostvars)
    reg = mesh_registry(counting, list(hostvars), "cluster.local")
    assert set(counting.reads.values()) == {1}
    assert len(reg["services"]) == 10 and all(len(s["endpoints"]) == 30 for s in reg["services"])


def with_services(**hosts):
    return {
        name: {"ansible_host": "10.0.0.%d" % (i + 1), "hostmesh_services": services}
        for i, (name, services) in enumerate(hosts.items())
    }


def http(**settings):
    return [dict({"name": "x", "port": 80, "protocol": "http"}, **settings)]


def tcp(**settings):
    return [dict({"name": "x", "port": 80}, **settings)]


def on_one_host(services, setting, value, expected):
    """A bad setting of host a's first service: the error names hostmesh_services[0] and the setting."""
    return (with_services(a=services), "a", "hostmesh_services[0]." + setting, value, expected)


BAD = [
    on_one_host(http(lb_policy="fastest"), "lb_policy", '"fastest"', "round_robin"),
    on_one_host(http(connect_timeout_s=0), "connect_timeout_s", "0", "0.01 to 3600"),
    on_one_host(http(connect_timeout_s="soon"), "connect_timeout_s", '"soon"', "a number"),
    on_one_host(http(request_timeout_s=-1), "request_timeout_s", "-1", "0 to 86400"),
    on_one_host(http(retries={"attempts": 11}), "retries.attempts", "11", "0 to 10"),
    on_one_host(http(retries={"retry_on": "5xx,sometimes"}), "retries.retry_on", '"5xx,sometimes"', "connect-failure"),
    on_one_host(http(retries={"tries": 2}), "retries.tries", "2", "attempts"),
    on_one_host(http(retries=3), "retries", "3", "a mapping"),
    on_one_host(
        http(outlier_detection={"max_ejection_percent": 101}),
        "outlier_detection.max_ejection_percent",
        "101",
        "0 to 100",
    ),
    on_one_host(
        http(outlier_detection={"enabled": "perhaps"}), "outlier_detection.enabled", '"perhaps"', "true or false"
    ),
    on_one_host(http(health_check={"type": "icmp"}), "health_check.type", '"icmp"', "none, tcp, http"),
    on_one_host(http(health_check={"path": "healthz"}), "health_check.path", '"healthz"', "absolute request path"),
    on_one_host(
        http(circuit_breakers={"max_connections": 0}), "circuit_breakers.max_connections", "0", "1 to 1000000000"
    ),
    on_one_host(http(idle_timeout_s=60), "idle_timeout_s", "60", "protocol tcp only"),
    on_one_host(tcp(retries={"attempts": 1}), "retries", '{"attempts": 1}', "protocol http only"),
    on_one_host(tcp(connect_attempts=0), "connect_attempts", "0", "1 to 10"),
    (
        with_services(a=tcp(lb_policy="ring_hash"), b=tcp(lb_policy="random")),
        "b",
        "hostmesh_services (service 'x').lb_policy",
        '"random"',
        "\"ring_hash\", as on host 'a'",
    ),
    (
        with_services(a=tcp(), b=tcp(idle_timeout_s=5)),
        "b",
        "hostmesh_services (service 'x').idle_timeout_s",
        "5",
        "it unset, as on host 'a'",
    ),
    (
        with_services(a=tcp(), b=[{"name": "x", "port": 81}]),
        "b",
        "hostmesh_services (service 'x').port",
        "81",
        "80, as on host 'a'",
    ),
    (
        dict(
            with_services(a=tcp()),
            b={"ansible_host": "10.0.0.9", "hostmesh_namespace": "prod", "hostmesh_services": tcp()},
        ),
        "b",
        "hostmesh_namespace",
        '"prod"',
        "a service lives in one namespace",
    ),
    (
        dict(with_services(a=tcp()), b={"ansible_host": "10.0.0.9", "hostmesh_locality": "Zone A"}),
        "b",
        "hostmesh_locality",
        '"Zone A"',
        "lower-case DNS-style",
    ),
    (
        dict(with_services(a=tcp()), b={"ansible_host": "10.0.0.9", "hostmesh_mesh_defaults": {"lb_policy": "random"}}),
        "b",
        "hostmesh_mesh_defaults",
        '{"lb_policy": "random"}',
        "the same mesh defaults on every mesh host",
    ),
    (with_services(a=[]), "a", "hostmesh_mesh_defaults.timeout", "1", "a key among lb_policy"),
    (with_services(a=[]), "a", "hostmesh_mesh_defaults.retries.attempts", "-1", "0 to 10"),
]


@pytest.mark.parametrize(("hostvars", "host", "variable", "value", "expected"), BAD)
def test_bad_values_name_host_variable_and_value(hostvars, host, variable, value, expected):
    if variable == "hostmesh_mesh_defaults.timeout":
        hostvars = {h: dict(hv, hostmesh_mesh_defaults={"timeout": 1}) for h, hv in hostvars.items()}
    if variable == "hostmesh_mesh_defaults.retries.attempts":
        hostvars = {h: dict(hv, hostmesh_mesh_defaults={"retries": {"attempts": -1}}) for h, hv in hostvars.items()}
    with pytest.raises(AnsibleFilterError) as caught:
        mesh_registry(hostvars, list(hostvars))
    message = str(caught.value)
    assert message.startswith("mesh_registry: host %r, %s: got %s; expected " % (host, variable, value)), message
    assert expected in message


def test_bad_arguments():
    with pytest.raises(AnsibleFilterError, match='mesh_registry: hosts: got "web1"'):
        mesh_registry(INVENTORY, "web1")
    with pytest.raises(AnsibleFilterError, match="host 'nowhere', hosts"):
        mesh_registry(INVENTORY, ["web1", "nowhere"])
    with pytest.raises(AnsibleFilterError, match="mesh_outbound: host 'stranger', hosts"):
        mesh_outbound(registry(), "stranger")
    with pytest.raises(AnsibleFilterError, match="mesh_outbound: expected the registry"):
        mesh_outbound([], "client")


def test_once_per_play_in_a_real_playbook(tmp_path):
    """As onboard.yml does it: one run_once set_fact, every host its slice; hostvars templated lazily."""
    # A templated value must come out as its result.
    hostvars = inventory(db={"hostmesh_service_account": "{{ 'post' ~ 'gres' }}"})
    set_registry = (
        "    - ansible.builtin.set_fact:\n"
        "        hostmesh_registry: \"{{ hostvars | hostmesh.sidecar.mesh_registry(groups['mesh']) }}\"\n"
        "      run_once: true\n"
    )
    got = each_hosts_json(
        tmp_path, hostvars, "hostmesh_registry | hostmesh.sidecar.mesh_outbound(inventory_hostname)", set_registry
    )
    expected = registry()
    for host in HOSTS:
        assert got[host] == mesh_outbound(expected, host), host
