"""The capture role's traffic_capture options: its variables, the port contract, then the user's extras."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.hostmesh.sidecar.plugins.filter.capture_options import capture_options
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.options import parse_options

ROLE = {
    "host": "vm0",
    "hostmesh_ports": {},
    "hostmesh_capture_mode": "redirect",
    "hostmesh_proxy_uid": 1337,
    "hostmesh_proxy_gid": 1337,
    "hostmesh_capture_inbound_ports_exclude": [22],
    "hostmesh_capture_rules_file": "/etc/hostmesh/capture.rules",
    "hostmesh_capture_options": {},
}


def test_the_defaults_give_istios_listing() -> None:
    assert capture_options(ROLE) == {
        "mode": "redirect",
        "proxy_uid": [1337],
        "proxy_gid": [1337],
        "proxy_port": 15001,
        "inbound_capture_port": 15006,
        "dns_port": 15053,
        "inbound_tunnel_port": 15008,
        "inbound_ports_exclude": [22, 15090, 15021, 15020],
        "rules_file": "/etc/hostmesh/capture.rules",
    }


def test_moved_ports_move_capture_and_its_exclusions() -> None:
    moved = {
        "outbound": 16001,
        "inbound": 16006,
        "dns": 16053,
        "status": 16020,
        "health": 16021,
        "prometheus": 16090,
        "tunnel": 16008,
    }
    options = capture_options({**ROLE, "hostmesh_ports": moved, "hostmesh_capture_inbound_ports_exclude": [2222]})
    assert (options["proxy_port"], options["inbound_capture_port"], options["dns_port"]) == (16001, 16006, 16053)
    assert options["inbound_tunnel_port"] == 16008
    assert options["inbound_ports_exclude"] == [2222, 16090, 16021, 16020]
    # The module takes them as they are.
    parsed, _warnings = parse_options({**options, "state": "present"})
    assert (parsed.proxy_port, parsed.inbound_capture_port, parsed.inbound_ports_exclude) == (
        16001,
        16006,
        (2222, 16090, 16021, 16020),
    )


def test_the_users_extra_options_come_last() -> None:
    extra = {"outbound_cidrs_exclude": ["10.0.0.1/32"], "proxy_port": 15001, "mode": "redirect"}
    options = capture_options({**ROLE, "hostmesh_capture_options": extra, "hostmesh_capture_mode": "tproxy"})
    assert options["outbound_cidrs_exclude"] == ["10.0.0.1/32"]
    assert options["mode"] == "redirect"
    assert capture_options({k: v for k, v in ROLE.items() if k != "hostmesh_capture_options"})["proxy_port"] == 15001


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"hostmesh_capture_options": {"proxy_port": 16001}},
            "capture_options: host 'vm0', hostmesh_capture_options.proxy_port: got 16001; expected 15001, the"
            " contract's hostmesh_ports.outbound, or the option left out: set it in hostmesh_ports, which capture and"
            " the agent both read",
        ),
        ({"hostmesh_ports": {"outbound": 70000}}, "hostmesh_ports.outbound: got 70000"),
        (
            {"hostmesh_capture_inbound_ports_exclude": [22, "ssh"]},
            'hostmesh_capture_inbound_ports_exclude[1]: got "ssh"',
        ),
        ({"hostmesh_capture_inbound_ports_exclude": "22"}, 'hostmesh_capture_inbound_ports_exclude: got "22"'),
    ],
)
def test_bad_settings_name_the_variable(changes, message) -> None:
    with pytest.raises(AnsibleFilterError) as error:
        capture_options({**ROLE, **changes})
    assert message in str(error.value)


def test_a_contract_port_among_the_users_own_exclusions_is_listed_once() -> None:
    options = capture_options(
        {**ROLE, "hostmesh_ports": {"health": 2222}, "hostmesh_capture_inbound_ports_exclude": [22, 2222]}
    )
    assert options["inbound_ports_exclude"] == [22, 2222, 15090, 15020]


def test_missing_variables_are_named() -> None:
    with pytest.raises(AnsibleFilterError, match="expected a mapping with host, hostmesh_ports"):
        capture_options({"host": "vm0"})


def test_mesh_dns_turns_on_the_modules_dns_redirect_to_the_contracts_port() -> None:
    options = capture_options({**ROLE, "hostmesh_dns": True, "hostmesh_ports": {"dns": 16053}})
    assert (options["dns_redirect"], options["dns_port"]) == (True, 16053)
    parsed, _warnings = parse_options({**options, "state": "present"})
    assert parsed.dns_redirect and parsed.dns_port == 16053
    assert "dns_redirect" not in capture_options({**ROLE, "hostmesh_dns": "no"})
    with pytest.raises(
        AnsibleFilterError, match="capture_options: host 'vm0', hostmesh_dns: got \"maybe\"; expected true or false"
    ):
        capture_options({**ROLE, "hostmesh_dns": "maybe"})
