"""The port contract: defaults written once, completed and checked, and the same everywhere they are read."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.hostmesh.sidecar.plugins.filter.sidecar_ports import sidecar_ports
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.spec import capture_argument_spec
from ansible_collections.hostmesh.sidecar.plugins.module_utils._sidecar_ports import (
    AGENT_PORTS,
    CAPTURE_PORT_OPTIONS,
    DEFAULT_PORTS,
    EXCLUDED_INBOUND,
    inbound_ports_exclude,
)
from ansible_collections.hostmesh.sidecar.plugins.modules import traffic_capture
from hostmesh_agent.config import PortsConfig

ROOT = Path(__file__).resolve().parents[3]
ISTIO = {
    "outbound": 15001,
    "inbound": 15006,
    "admin": 15000,
    "status": 15020,
    "health": 15021,
    "prometheus": 15090,
    "dns": 15053,
    "tunnel": 15008,
}


def _yaml(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


def _spec(role: str) -> dict:
    return _yaml(f"roles/{role}/meta/argument_specs.yml")["argument_specs"]


# --- one set of defaults, the same wherever they are read ---------------------------


def test_the_defaults_are_istios() -> None:
    assert DEFAULT_PORTS == ISTIO
    assert sidecar_ports({}, "vm0") == ISTIO


@pytest.mark.parametrize("role", ["agent", "capture"])
@pytest.mark.parametrize("entry", ["main", "plan"])
def test_each_role_documents_every_port_with_the_python_default(role: str, entry: str) -> None:
    option = _spec(role)[entry]["options"]["hostmesh_ports"]
    assert option["type"] == "dict" and option["default"] == {}
    assert {key: sub["default"] for key, sub in option["options"].items()} == DEFAULT_PORTS
    assert all(sub["type"] == "int" for sub in option["options"].values())
    # The role's defaults leave every port to the filter: no second copy of them.
    assert _yaml(f"roles/{role}/defaults/main.yml")["hostmesh_ports"] == {}


def test_traffic_capture_defaults_are_the_contracts() -> None:
    spec = capture_argument_spec()
    documented = yaml.safe_load(traffic_capture.DOCUMENTATION)["options"]
    for option, key in CAPTURE_PORT_OPTIONS.items():
        assert spec[option]["default"] == DEFAULT_PORTS[key], option
        assert documented[option]["default"] == DEFAULT_PORTS[key], option
    if "inbound_tunnel_port" in spec:
        assert spec["inbound_tunnel_port"]["default"] == DEFAULT_PORTS["tunnel"]
    # The module's exclusion default is the capture role's own list plus the contract's.
    own = _yaml("roles/capture/defaults/main.yml")["hostmesh_capture_inbound_ports_exclude"]
    assert own == [22]
    assert _spec("capture")["main"]["options"]["hostmesh_capture_inbound_ports_exclude"]["default"] == own
    assert inbound_ports_exclude(own, DEFAULT_PORTS) == spec["inbound_ports_exclude"]["default"]
    assert documented["inbound_ports_exclude"]["default"] == spec["inbound_ports_exclude"]["default"]
    assert spec["inbound_ports_exclude"]["default"] == [22, 15090, 15021, 15020]


def test_the_agents_own_defaults_are_the_contracts() -> None:
    agent = {field.name: field.default for field in dataclasses.fields(PortsConfig)}
    assert tuple(agent) == tuple(sorted(agent, key=AGENT_PORTS.index))
    assert agent == {key: DEFAULT_PORTS[key] for key in AGENT_PORTS}


# --- completing and checking ----------------------------------------------------------


def test_a_partial_contract_keeps_the_other_defaults() -> None:
    ports = sidecar_ports({"outbound": 16001, "inbound": "16006"}, "vm0")
    assert ports == {**ISTIO, "outbound": 16001, "inbound": 16006}
    assert sidecar_ports(None, "vm0") == ISTIO


def test_exclusions_follow_the_contract_after_the_users_own() -> None:
    moved = {**ISTIO, "status": 16020, "health": 16021, "prometheus": 16090}
    assert inbound_ports_exclude([22], moved) == [22, 16090, 16021, 16020]
    assert inbound_ports_exclude([2222, 8443], ISTIO) == [2222, 8443, 15090, 15021, 15020]
    # A list that already names the sidecar's ports (as the whole list once did) is not doubled.
    assert inbound_ports_exclude([22, 15090, 15021, 15020, 9000], ISTIO) == [22, 15090, 15021, 15020, 9000]
    assert EXCLUDED_INBOUND == ("prometheus", "health", "status")


@pytest.mark.parametrize(
    ("ports", "capture", "message"),
    [
        ("16001", None, 'hostmesh_ports: got "16001"; expected a mapping of port names to ports'),
        ([16001], None, "hostmesh_ports: got [16001]; expected a mapping"),
        ({"outbond": 16001}, None, "hostmesh_ports.outbond: got 16001; expected a key among outbound, inbound, admin"),
        ({"outbound": 0}, None, "hostmesh_ports.outbound: got 0; expected an integer port from 1 to 65535"),
        ({"inbound": 65536}, None, "hostmesh_ports.inbound: got 65536; expected an integer port from 1 to 65535"),
        ({"admin": -1}, None, "hostmesh_ports.admin: got -1; expected an integer port"),
        ({"status": "15o20"}, None, 'hostmesh_ports.status: got "15o20"; expected an integer port'),
        ({"health": 15021.5}, None, "hostmesh_ports.health: got 15021.5; expected an integer port"),
        ({"prometheus": True}, None, "hostmesh_ports.prometheus: got true; expected an integer port"),
        ({"dns": None}, None, "hostmesh_ports.dns: got null; expected an integer port"),
        ({"tunnel": [15008]}, None, "hostmesh_ports.tunnel: got [15008]; expected an integer port"),
        (
            {"inbound": 15001},
            None,
            "hostmesh_ports.inbound: got 15001; expected a port of its own: hostmesh_ports.outbound is 15001 too (its default)",
        ),
        (
            {"dns": 16000, "tunnel": 16000},
            None,
            "hostmesh_ports.dns: got 16000; expected a port of its own: hostmesh_ports.tunnel is 16000 too",
        ),
        (
            {"status": 15000},
            None,
            "hostmesh_ports.status: got 15000; expected a port of its own: hostmesh_ports.admin is 15000 too (its default)",
        ),
        (
            {},
            {"proxy_port": 16001},
            "hostmesh_capture_options.proxy_port: got 16001; expected 15001, the contract's hostmesh_ports.outbound,"
            " or the option left out: set it in hostmesh_ports, which capture and the agent both read",
        ),
        (
            {"inbound": 16006},
            {"inbound_capture_port": 15006},
            "hostmesh_capture_options.inbound_capture_port: got 15006; expected 16006, the contract's"
            " hostmesh_ports.inbound",
        ),
        ({}, {"dns_port": "x"}, 'hostmesh_capture_options.dns_port: got "x"; expected 15053'),
        ({}, {"inbound_tunnel_port": 15009}, "hostmesh_capture_options.inbound_tunnel_port: got 15009; expected 15008"),
        ({}, ["proxy_port"], 'hostmesh_capture_options: got ["proxy_port"]; expected a mapping'),
    ],
)
def test_a_bad_setting_names_the_host_the_variable_and_the_value(ports, capture, message) -> None:
    with pytest.raises(AnsibleFilterError) as error:
        sidecar_ports(ports, "vm7", capture)
    assert str(error.value).startswith("sidecar_ports: host 'vm7', ")
    assert message in str(error.value)


def test_capture_options_that_repeat_the_contract_are_fine() -> None:
    capture = {"proxy_port": 16001, "inbound_capture_port": "15006", "dns_redirect": True, "outbound_cidrs_exclude": []}
    assert sidecar_ports({"outbound": 16001}, "vm0", capture)["outbound"] == 16001
