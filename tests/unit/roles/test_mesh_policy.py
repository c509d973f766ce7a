"""Who may call whom, from the inventory to the agent's config: the resolution golden and every bad value.

The inventory's ``allow`` rules name callers by service, service account,
namespace or SPIFFE ID; the mesh_identities filter builds the mesh's
identities once, and agent_config resolves each host's rules with them.
Regenerate the golden file after an intended change with
``HOSTMESH_UPDATE_GOLDEN=1 pytest tests/unit/roles/test_mesh_policy.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import pytest
from ansible.errors import AnsibleFilterError
from test_agent_config_filter import TLS_SOURCES, role

from ansible_collections.hostmesh.sidecar.plugins.filter.agent_config import agent_config
from ansible_collections.hostmesh.sidecar.plugins.filter.mesh import FilterModule, mesh_identities
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_policy import identity_view, resolve_allow
from hostmesh_agent.config import parse_config

GOLDEN = Path(__file__).resolve().parent / "golden" / "mesh-policy.json"
TD = "cluster.local"

WEB_ALLOW = [
    {"services": ["frontend"], "methods": ["get", "HEAD"], "paths": ["/api/", "/health"]},
    {"service_accounts": ["ops/admin"], "namespaces": ["team-a"]},
    {"spiffe_ids": ["spiffe://cluster.local/ns/partners/", "spiffe://cluster.local/ns/shop/sa/batch"]},
]
# Four hosts: a client-only host, a frontend with an app label, the server and an admin in another namespace.
INVENTORY = {
    "client-a": {"ansible_host": "10.0.0.21", "hostmesh_namespace": "team-a"},
    "front1": {
        "ansible_host": "10.0.0.22",
        "hostmesh_namespace": "shop",
        "hostmesh_node_labels": {"app": "storefront"},
        "hostmesh_services": [{"name": "frontend", "port": 80, "protocol": "http"}],
    },
    "server": {
        "ansible_host": "10.0.0.11",
        "hostmesh_namespace": "shop",
        "hostmesh_services": [
            {"name": "web", "port": 8080, "protocol": "http", "allow": WEB_ALLOW},
            {"name": "db", "port": 5432, "allow": [{"service_accounts": ["front1", "team-a/client-a"]}]},
            {"name": "mail", "port": 25, "server_first": True, "allow": [{"services": ["web"]}]},
            {"name": "open", "port": 9000},
        ],
    },
    "admin": {"ansible_host": "10.0.0.31", "hostmesh_namespace": "ops"},
}
SECTIONS = ("policy", "access_log", "telemetry", "tracing")


def config_of(host: str, inventory: Optional[dict] = None, **changes) -> dict:
    """The agent config the role writes on host, with the identities built from the whole inventory."""
    inventory = INVENTORY if inventory is None else inventory
    hv = inventory[host]
    view = mesh_identities(inventory, sorted(inventory), TD)
    return agent_config(
        role(
            host=host,
            hostmesh_namespace=hv.get("hostmesh_namespace", "default"),
            hostmesh_service_account=host,
            hostmesh_node_labels=hv.get("hostmesh_node_labels", {}),
            hostmesh_services=hv.get("hostmesh_services", []),
            hostmesh_mesh_identities=view,
            **TLS_SOURCES,
            **changes,
        )
    )


def rendered() -> dict:
    out = {"identities": mesh_identities(INVENTORY, sorted(INVENTORY), TD)}
    config = config_of(
        "server",
        hostmesh_policy_default="deny",
        hostmesh_access_log_enabled=True,
        hostmesh_access_log_sampling=0.5,
        hostmesh_access_log_destination="/var/log/hostmesh/access.log",
        hostmesh_tracing_collector="otel.internal:4317",
        hostmesh_tracing_sampling=10,
    )
    out["server"] = {"inbound.services": config["inbound"]["services"], **{key: config[key] for key in SECTIONS}}
    return out


def test_inventory_to_agent_sections_matches_golden_and_the_agent_accepts_it() -> None:
    got = rendered()
    if os.environ.get("HOSTMESH_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert got == json.loads(GOLDEN.read_text())
    for host in INVENTORY:
        parse_config(config_of(host))
    web = got["server"]["inbound.services"][0]["allow"]
    assert web[0] == {
        "principals": ["spiffe://cluster.local/ns/shop/sa/front1"],
        "methods": ["GET", "HEAD"],
        "paths": ["/api/", "/health"],
    }
    assert web[1]["principals"] == ["spiffe://cluster.local/ns/ops/sa/admin", "spiffe://cluster.local/ns/team-a/"]
    assert got["server"]["telemetry"]["workloads"] == {"spiffe://cluster.local/ns/shop/sa/front1": "storefront"}
    assert "allow" not in got["server"]["inbound.services"][3]
    assert got["server"]["inbound.services"][2]["server_first"] is True


def test_the_view_does_not_depend_on_host_order() -> None:
    forward = mesh_identities(INVENTORY, list(INVENTORY), TD)
    backward = mesh_identities(dict(reversed(list(INVENTORY.items()))), list(reversed(list(INVENTORY))), TD)
    assert forward == backward
    assert FilterModule().filters()["mesh_identities"] is mesh_identities


def test_a_service_on_several_hosts_admits_each_of_them() -> None:
    inventory = dict(INVENTORY, front2={**INVENTORY["front1"], "ansible_host": "10.0.0.23", "hostmesh_namespace": "eu"})
    web = config_of("server", inventory)["inbound"]["services"][0]
    assert web["allow"][0]["principals"] == [
        "spiffe://cluster.local/ns/eu/sa/front2",
        "spiffe://cluster.local/ns/shop/sa/front1",
    ]


def test_without_identities_a_host_resolves_with_its_own() -> None:
    services = [{"name": "web", "port": 80, "protocol": "http", "allow": [{"service_accounts": ["web1"]}]}]
    config = agent_config(role(hostmesh_services=services, **TLS_SOURCES))
    assert config["inbound"]["services"][0]["allow"] == [{"principals": ["spiffe://cluster.local/ns/default/sa/web1"]}]


def test_a_rule_with_only_methods_admits_any_caller_for_them() -> None:
    view = identity_view(TD, [])
    service = {"protocol": "http", "tls": False, "where": "s.tls"}
    assert resolve_allow(view, "s.allow", [{"methods": ["GET"]}], service, "default") == [{"methods": ["GET"]}]


BAD = [
    # (the server's web allow rules, what the error must say)
    (
        [{"services": ["nope"]}],
        'hostmesh_services[0].allow[0].services[0]: got "nope"; expected a service some mesh host offers (known: frontend, web)',
    ),
    (
        [{"service_accounts": ["ghost"]}],
        'hostmesh_services[0].allow[0].service_accounts[0]: got "ghost"; expected a service account of a mesh host',
    ),
    (
        [{"service_accounts": ["ops/client-a"]}],
        'service_accounts[0]: got "ops/client-a"; expected a service account of a mesh host',
    ),
    (
        [{"service_accounts": ["Bad/Name"]}],
        'service_accounts[0]: got "Bad/Name"; expected "namespace/account" or "account", each a lower-case',
    ),
    (
        [{"namespaces": ["nowhere"]}],
        'hostmesh_services[0].allow[0].namespaces[0]: got "nowhere"; expected a namespace of a mesh host (known: ops, shop, team-a)',
    ),
    (
        [{"spiffe_ids": ["spiffe://cluster.local/ns/*"]}],
        'spiffe_ids[0]: got "spiffe://cluster.local/ns/*"; expected a SPIFFE ID',
    ),
    ([{"spiffe_ids": ["web"]}], 'spiffe_ids[0]: got "web"; expected a SPIFFE ID'),
    (
        [{"services": ["frontend"], "methods": ["FETCH"]}],
        'hostmesh_services[0].allow[0].methods[0]: got "FETCH"; expected an HTTP method, one of CONNECT',
    ),
    ([{"methods": [7]}], "methods[0]: got 7; expected an HTTP method"),
    ([{"paths": ["api/"]}], 'hostmesh_services[0].allow[0].paths[0]: got "api/"; expected an absolute path prefix'),
    ([{"paths": ["/api?x=1"]}], 'paths[0]: got "/api?x=1"; expected an absolute path prefix'),
    ([{"services": []}], "hostmesh_services[0].allow[0].services: got []; expected a non-empty list"),
    (
        [{"callers": ["web"]}],
        'hostmesh_services[0].allow[0].callers: got ["web"]; expected only the keys services, service_accounts',
    ),
    (["web"], 'hostmesh_services[0].allow[0]: got "web"; expected a mapping'),
    ({"services": ["web"]}, 'hostmesh_services[0].allow: got {"services": ["web"]}; expected a list of rules'),
]


@pytest.mark.parametrize(("allow", "message"), BAD, ids=[str(index) for index in range(len(BAD))])
def test_bad_policy_values_fail_naming_host_variable_and_value(allow, message) -> None:
    services = [{"name": "web", "port": 8080, "protocol": "http", "allow": allow}]
    inventory = dict(INVENTORY, server={**INVENTORY["server"], "hostmesh_services": services})
    with pytest.raises(AnsibleFilterError) as error:
        config_of("server", inventory)
    assert str(error.value).startswith("agent_config: host 'server': "), str(error.value)
    assert message in str(error.value)


def test_methods_and_paths_on_a_tcp_service_fail() -> None:
    services = [{"name": "db", "port": 5432, "allow": [{"services": ["web"], "paths": ["/"]}]}]
    inventory = dict(
        INVENTORY,
        server={**INVENTORY["server"], "hostmesh_services": services + INVENTORY["server"]["hostmesh_services"][:1]},
    )
    with pytest.raises(
        AnsibleFilterError,
        match=r"host 'server': hostmesh_services\[0\]\.allow\[0\]\.paths: got \[\"/\"\]; expected paths only on http services \(this one is tcp\)",
    ):
        config_of("server", inventory)


def test_callers_on_a_service_without_tls_fail() -> None:
    services = [{"name": "web", "port": 8080, "tls": False, "allow": [{"services": ["frontend"]}]}]
    inventory = dict(INVENTORY, server={**INVENTORY["server"], "hostmesh_services": services})
    with pytest.raises(
        AnsibleFilterError,
        match=r"host 'server': hostmesh_services\[0\]\.allow\[0\]: got .*no callers named on a service with tls false.*hostmesh_services\[0\]\.tls",
    ):
        config_of("server", inventory)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hostmesh_policy_default": "open"}, 'hostmesh_policy_default: got "open"; expected one of allow, deny'),
        ({"hostmesh_access_log_enabled": "maybe"}, 'hostmesh_access_log_enabled: got "maybe"; expected true or false'),
        ({"hostmesh_access_log_sampling": 2}, "hostmesh_access_log_sampling: got 2; expected a number from 0 to 1"),
        ({"hostmesh_access_log_sampling": "half"}, 'hostmesh_access_log_sampling: got "half"; expected a number'),
        (
            {"hostmesh_access_log_destination": "access.log"},
            'hostmesh_access_log_destination: got "access.log"; expected "journal" or the absolute path',
        ),
        (
            {"hostmesh_telemetry_enabled": "yes please"},
            'hostmesh_telemetry_enabled: got "yes please"; expected true or false',
        ),
        (
            {"hostmesh_tracing_collector": "otel"},
            'hostmesh_tracing_collector: got "otel"; expected "" (no tracing) or host:port',
        ),
        ({"hostmesh_tracing_sampling": 101}, "hostmesh_tracing_sampling: got 101; expected a number from 0 to 100"),
    ],
)
def test_bad_observability_variables_fail_naming_host_variable_and_value(changes, message) -> None:
    with pytest.raises(AnsibleFilterError) as error:
        config_of("client-a", **changes)
    assert str(error.value).startswith("agent_config: host 'client-a': "), str(error.value)
    assert message in str(error.value)


def test_numbers_given_as_template_strings_are_taken() -> None:
    config = config_of("client-a", hostmesh_access_log_sampling="0.25", hostmesh_tracing_sampling="5")
    assert config["access_log"]["sampling"] == 0.25
    assert config["tracing"]["sampling"] == 5.0


def test_identities_need_no_address() -> None:
    inventory = {"web1": {"hostmesh_services": [{"name": "web", "port": 80}]}, "client": {}}
    view = mesh_identities(inventory, ["web1", "client"], TD)
    assert view["services"] == {"web": ["spiffe://cluster.local/ns/default/sa/web1"]}
    with pytest.raises(AnsibleFilterError, match=r"host 'web1', hostmesh_services\[0\]\.name: got \"Web\""):
        mesh_identities({"web1": {"hostmesh_services": [{"name": "Web", "port": 80}]}}, ["web1"], TD)


def test_bad_identity_data_fails_naming_the_host() -> None:
    inventory = dict(INVENTORY, admin={**INVENTORY["admin"], "hostmesh_namespace": "Ops"})
    with pytest.raises(AnsibleFilterError, match=r"host 'admin', hostmesh_namespace: got \"Ops\""):
        mesh_identities(inventory, sorted(inventory), TD)
    with pytest.raises(AnsibleFilterError, match=r"mesh_identities: hosts: got \"mesh\""):
        mesh_identities(INVENTORY, "mesh", TD)
