"""Every bad value fails with a message naming the option and the value."""

import pytest

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.errors import OptionError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.options import (
    parse_options,
    ssh_port_from_environment,
)

BAD = [
    # (params, option named, value shown)
    ({"proxy_port": 70000}, "proxy_port", "70000"),
    ({"proxy_port": 0}, "proxy_port", "0"),
    ({"proxy_port": "abc"}, "proxy_port", "'abc'"),
    ({"proxy_port": True}, "proxy_port", "True"),
    ({"inbound_capture_port": -1}, "inbound_capture_port", "-1"),
    ({"inbound_ports": ["80", "http"]}, "inbound_ports", "'http'"),
    ({"inbound_ports": ["*", 80]}, "inbound_ports", "'*'"),
    ({"inbound_ports_exclude": [99999]}, "inbound_ports_exclude", "99999"),
    ({"outbound_ports": ["x"]}, "outbound_ports", "'x'"),
    ({"outbound_ports_exclude": [65536]}, "outbound_ports_exclude", "65536"),
    ({"outbound_cidrs": ["10.0.0.0/33"]}, "outbound_cidrs", "'10.0.0.0/33'"),
    ({"outbound_cidrs_exclude": ["not-a-cidr"]}, "outbound_cidrs_exclude", "'not-a-cidr'"),
    ({"outbound_cidrs_exclude": ["fd00::/129"]}, "outbound_cidrs_exclude", "'fd00::/129'"),
    ({"mode": "nat"}, "mode", "'nat'"),
    ({"backend": "pf"}, "backend", "'pf'"),
    ({"state": "gone"}, "state", "'gone'"),
    ({"proxy_uid": [-1]}, "proxy_uid", "-1"),
    ({"proxy_gid": ["root"]}, "proxy_gid", "'root'"),
    ({"proxy_uid": [], "proxy_gid": []}, "proxy_uid", "[]"),
    ({"proxy_port": 15006}, "inbound_capture_port", "15006"),
    ({"dns_port": 15001}, "dns_port", "15001"),
    ({"chain_prefix": "1BAD"}, "chain_prefix", "'1BAD'"),
    ({"chain_prefix": "HAS SPACE"}, "chain_prefix", "'HAS SPACE'"),
    ({"chain_prefix": "A_PREFIX_TOO_LONG_"}, "chain_prefix", "'A_PREFIX_TOO_LONG_'"),
    ({"chain_prefix": ""}, "chain_prefix", "''"),
    ({"exclude_interfaces": ["a-name-far-too-long"]}, "exclude_interfaces", "'a-name-far-too-long'"),
    ({"exclude_interfaces": ["eth 0"]}, "exclude_interfaces", "'eth 0'"),
    ({"ip_families": ["ipv5"]}, "ip_families", "'ipv5'"),
    ({"dns_capture_all": True}, "dns_capture_all", "True"),
    ({"tproxy_mark": 0}, "tproxy_mark", "0"),
    ({"tproxy_route_table": 254}, "tproxy_route_table", "254"),
    ({"tproxy_route_table": "main"}, "tproxy_route_table", "'main'"),
    ({"lock_wait": -5}, "lock_wait", "-5"),
    ({"drop_invalid": "maybe"}, "drop_invalid", "'maybe'"),
    ({"inbound_ports": [8080], "inbound_ports_exclude": [8080]}, "inbound_ports", "8080"),
    ({"inbound_ports": [15006]}, "inbound_ports", "15006"),
    ({"outbound_ports": [443], "outbound_ports_exclude": [443]}, "outbound_ports", "443"),
    ({"rules_file": "relative/path"}, "rules_file", "'relative/path'"),
    ({"backend": "nftables", "chain_prefix": "TPROXY_"}, "chain_prefix", "'TPROXY_'"),
    ({"virtual_interfaces": ["eth 0"]}, "virtual_interfaces", "'eth 0'"),
    ({"virtual_interfaces": ["docker0"], "exclude_interfaces": ["docker0"]}, "virtual_interfaces", "'docker0'"),
    ({"outbound_owner_groups": [-3]}, "outbound_owner_groups", "-3"),
    ({"outbound_owner_groups": ["no-such-group-here"]}, "outbound_owner_groups", "'no-such-group-here'"),
    ({"outbound_owner_groups": ["bad name"]}, "outbound_owner_groups", "'bad name'"),
    ({"outbound_owner_groups_exclude": [True]}, "outbound_owner_groups_exclude", "True"),
    ({"outbound_owner_groups": [10], "outbound_owner_groups_exclude": [20]}, "outbound_owner_groups_exclude", "[20]"),
    ({"inbound_tunnel_port": -1}, "inbound_tunnel_port", "-1"),
    ({"inbound_tunnel_port": 65536}, "inbound_tunnel_port", "65536"),
    ({"inbound_forwarded": "sometimes"}, "inbound_forwarded", "'sometimes'"),
    ({"inbound_tunnel_port": "tunnel"}, "inbound_tunnel_port", "'tunnel'"),
    ({"inbound_tunnel_port": 15001}, "inbound_tunnel_port", "15001"),
    ({"inbound_ports": [15008]}, "inbound_ports", "15008"),
    ({"host_loopback_cidr": "10.0.0.0/8"}, "host_loopback_cidr", "'10.0.0.0/8'"),
    ({"host_loopback_cidr": "::1/128"}, "host_loopback_cidr", "'::1/128'"),
    ({"host_loopback_cidr": "127.0.0.0/33"}, "host_loopback_cidr", "'127.0.0.0/33'"),
    ({"tproxy_mark": 1338}, "tproxy_mark", "1338"),
]


@pytest.mark.parametrize(("params", "option", "shown"), BAD, ids=[repr(case[0]) for case in BAD])
def test_bad_value_names_option_and_value(params, option, shown):
    with pytest.raises(OptionError) as caught:
        parse_options(params)
    message = str(caught.value)
    assert caught.value.option == option
    assert message.startswith(option + ": ")
    assert shown in message
    assert (
        "expected" in message
        or "must" in message
        or "needs" in message
        or "list it" in message
        or (
            "stands alone" in message
            or "loop" in message
            or "keyword" in message
            or "belong" in message
            or "prefix may" in message
            or "set one of" in message
            or "pick another" in message
        )
    )


def test_defaults_match_the_product_table():
    opts, warnings = parse_options({})
    assert warnings == []
    assert (opts.state, opts.mode, opts.proxy_port, opts.inbound_capture_port) == ("present", "redirect", 15001, 15006)
    assert opts.proxy_uid == (1337,) and opts.proxy_gid == (1337,)
    assert opts.inbound_ports is None and opts.inbound_ports_exclude == (22, 15090, 15021, 15020)
    assert opts.outbound_cidrs is None and opts.outbound_cidrs_exclude == {"ipv4": (), "ipv6": ()}
    assert (opts.dns_port, opts.tproxy_mark, opts.tproxy_route_table) == (15053, 1337, 133)
    assert (opts.chain_prefix, opts.backend, opts.lock_wait, opts.ip_families) == ("HOSTMESH_", "auto", 30, "auto")


def test_numeric_strings_and_comma_lists_are_accepted():
    opts = parse_options({"proxy_port": "15001", "inbound_ports": "80, 443", "inbound_ports_exclude": []})[0]
    assert opts.proxy_port == 15001 and opts.inbound_ports == (80, 443)


def test_cidrs_are_normalised_as_iptables_prints_them():
    opts = parse_options({"outbound_cidrs_exclude": ["10.1.2.3/8", "192.0.2.1", "FD00::1/64"]})[0]
    assert opts.outbound_cidrs_exclude == {"ipv4": ("10.0.0.0/8", "192.0.2.1/32"), "ipv6": ("fd00::/64",)}


def test_ssh_port_added_to_excludes_with_a_warning():
    opts, warnings = parse_options({"inbound_ports_exclude": [15020]}, ssh_port=2222)
    assert opts.inbound_ports_exclude == (15020, 2222)
    assert len(warnings) == 1 and "2222" in warnings[0]


def test_ssh_port_already_excluded_gives_no_warning():
    warnings = parse_options({}, ssh_port=22)[1]
    assert warnings == []


@pytest.mark.parametrize(
    ("value", "port"),
    [("192.0.2.9 50000 192.0.2.1 2222", 2222), ("", None), ("garbage", None), ("a b c 99999", None)],
)
def test_ssh_port_from_environment(value, port):
    assert ssh_port_from_environment({"SSH_CONNECTION": value}) == port


def test_owner_groups_by_name_or_id_become_ids():
    groups = {"java": 1100, "ftp": 21}
    opts, _warnings = parse_options({"outbound_owner_groups": ["java", 202, "21"]}, group_id=groups.__getitem__)
    assert opts.outbound_owner_groups == (1100, 202, 21)
    opts, _warnings = parse_options({"outbound_owner_groups_exclude": "ftp,888"}, group_id=groups.__getitem__)
    assert opts.outbound_owner_groups_exclude == (21, 888)


def test_new_options_default_as_the_product_says():
    opts, _warnings = parse_options({})
    assert opts.virtual_interfaces == ()
    assert opts.outbound_owner_groups == () and opts.outbound_owner_groups_exclude == ()
    assert opts.inbound_tunnel_port == 15008
    assert opts.host_loopback_cidr == "127.0.0.1/32"
    assert parse_options({"host_loopback_cidr": "127.0.0.1/8"})[0].host_loopback_cidr == "127.0.0.0/8"
