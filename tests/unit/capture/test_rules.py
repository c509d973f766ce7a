"""The rule builder and iptables renderer: options in, canonical rules out."""

import os

from helpers import options, table_lines

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.iptables import desired_tables
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.rules import build_family

HERE = os.path.dirname(__file__)


def seed_listing(name="seed_nat.txt"):
    with open(os.path.join(HERE, name)) as handle:
        return [line for line in handle.read().splitlines() if not line.startswith("-P ")]


# What today's istio-iptables added to the seed's (Istio 1.6's) listing for the same
# settings: the tunnel port, returned first and skipped by the proxy's loopback rules;
# and ours: inbound capture only for packets addressed to this host.
TODAY_ADDS = {
    "-A ISTIO_INBOUND -p tcp -m tcp --dport 22 -j RETURN": [
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
        "-A ISTIO_INBOUND -m addrtype ! --dst-type LOCAL -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
    ],
    "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT": [
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 "
        "-j ISTIO_IN_REDIRECT"
    ],
    "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT": [
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --gid-owner 1337 "
        "-j ISTIO_IN_REDIRECT"
    ],
}


def test_seed_settings_give_the_seed_layout_with_todays_rules():
    assert table_lines(chain_prefix="ISTIO_", protect_established=False) == {"nat": seed_listing("seed_nat_today.txt")}


def test_seed_settings_without_the_tunnel_port_and_the_forward_guard_give_the_seed_listing_exactly():
    seed = {"chain_prefix": "ISTIO_", "protect_established": False, "inbound_tunnel_port": 0, "inbound_forwarded": True}
    assert table_lines(**seed) == {"nat": seed_listing()}


def test_without_a_tunnel_port_dns_alone_is_left_to_the_proxy_on_lo():
    lines = table_lines(chain_prefix="ISTIO_", inbound_tunnel_port=0, dns_redirect=True, dns_capture_all=True)["nat"]
    redirects = [line for line in lines if line.endswith("-j ISTIO_IN_REDIRECT") and "-o lo" in line]
    assert redirects == [
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 53 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 53 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
    ]
    assert not [line for line in lines if "15008" in line]


def test_todays_listing_is_the_seed_with_exactly_the_tunnel_port_and_the_forward_guard():
    today = [line for seed_line in seed_listing() for line in TODAY_ADDS.get(seed_line, [seed_line])]
    assert today == seed_listing("seed_nat_today.txt")


GUARD = "-p tcp -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN"


def test_connections_open_before_capture_are_never_captured():
    lines = table_lines()["nat"]
    inbound = [line for line in lines if line.startswith("-A HOSTMESH_INBOUND")]
    output = [line for line in lines if line.startswith("-A HOSTMESH_OUTPUT")]
    assert inbound[0] == "-A HOSTMESH_INBOUND " + GUARD
    assert output[0] == "-A HOSTMESH_OUTPUT " + GUARD
    mangle = table_lines(mode="tproxy")["mangle"]
    assert next(line for line in mangle if line.startswith("-A HOSTMESH_INBOUND")) == (
        "-A HOSTMESH_INBOUND -p tcp -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -j RETURN"
    )
    assert not [line for line in table_lines(protect_established=False)["nat"] if "tcp-flags" in line]


def test_default_prefix_names_our_chains():
    lines = table_lines()["nat"]
    assert lines[:4] == ["-N HOSTMESH_INBOUND", "-N HOSTMESH_IN_REDIRECT", "-N HOSTMESH_OUTPUT", "-N HOSTMESH_REDIRECT"]
    assert "-A OUTPUT -p tcp -j HOSTMESH_OUTPUT" in lines


def test_ipv6_uses_ipv6_loopback_and_passthrough_addresses():
    lines = table_lines(family="ipv6")["nat"]
    assert "-A HOSTMESH_OUTPUT -s ::6/128 -o lo -j RETURN" in lines
    assert "-A HOSTMESH_OUTPUT -d ::1/128 -j RETURN" in lines
    assert not [line for line in lines if "127.0.0" in line]


def test_outbound_cidrs_are_split_by_family():
    params = {"outbound_cidrs": ["10.0.0.0/8", "fd00::/8"], "outbound_cidrs_exclude": ["10.1.2.3", "fd00:1::/64"]}
    v4 = table_lines(**params)["nat"]
    v6 = table_lines(family="ipv6", **params)["nat"]
    assert "-A HOSTMESH_OUTPUT -d 10.0.0.0/8 -j HOSTMESH_REDIRECT" in v4
    assert "-A HOSTMESH_OUTPUT -d 10.1.2.3/32 -j RETURN" in v4
    assert "-A HOSTMESH_OUTPUT -j HOSTMESH_REDIRECT" not in v4
    assert "-A HOSTMESH_OUTPUT -d fd00::/8 -j HOSTMESH_REDIRECT" in v6
    assert "-A HOSTMESH_OUTPUT -d fd00:1::/64 -j RETURN" in v6
    assert not [line for line in v6 if "10.0.0.0" in line]
    # exclusions come before inclusions
    assert v4.index("-A HOSTMESH_OUTPUT -d 10.1.2.3/32 -j RETURN") < v4.index(
        "-A HOSTMESH_OUTPUT -d 10.0.0.0/8 -j HOSTMESH_REDIRECT"
    )


def test_outbound_ports_include_and_exclude():
    lines = table_lines(outbound_ports=[80], outbound_ports_exclude=[5432])["nat"]
    assert lines.index("-A HOSTMESH_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN") < lines.index(
        "-A HOSTMESH_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN"
    )
    assert "-A HOSTMESH_OUTPUT -p tcp -m tcp --dport 80 -j HOSTMESH_REDIRECT" in lines


def test_explicit_inbound_ports_capture_only_those():
    lines = table_lines(inbound_ports=[8080, 9090], inbound_ports_exclude=[], protect_established=False)["nat"]
    inbound = [line for line in lines if line.startswith("-A HOSTMESH_INBOUND")]
    assert inbound == [
        "-A HOSTMESH_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
        "-A HOSTMESH_INBOUND -m addrtype ! --dst-type LOCAL -j RETURN",
        "-A HOSTMESH_INBOUND -p tcp -m tcp --dport 8080 -j HOSTMESH_IN_REDIRECT",
        "-A HOSTMESH_INBOUND -p tcp -m tcp --dport 9090 -j HOSTMESH_IN_REDIRECT",
    ]


def test_no_inbound_ports_means_no_inbound_chain_or_jump():
    lines = table_lines(inbound_ports=[])["nat"]
    assert not [line for line in lines if "PREROUTING" in line or "HOSTMESH_INBOUND" in line]


def test_excluded_interfaces_return_in_both_directions():
    lines = table_lines(exclude_interfaces=["eth1"])["nat"]
    assert lines.index("-A HOSTMESH_INBOUND -i eth1 -j RETURN") < lines.index(
        "-A HOSTMESH_INBOUND -p tcp -j HOSTMESH_IN_REDIRECT"
    )
    assert "-A HOSTMESH_OUTPUT -o eth1 -j RETURN" in lines


def test_several_proxy_uids_each_get_the_owner_rules():
    lines = table_lines(proxy_uid=[1337, 1338], proxy_gid=[])["nat"]
    assert [line for line in lines if "--uid-owner 1338" in line] == [
        "-A HOSTMESH_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1338 "
        "-j HOSTMESH_IN_REDIRECT",
        "-A HOSTMESH_OUTPUT -o lo -m owner ! --uid-owner 1338 -j RETURN",
        "-A HOSTMESH_OUTPUT -m owner --uid-owner 1338 -j RETURN",
    ]
    assert not [line for line in lines if "gid-owner" in line]


def test_tproxy_mode_uses_mangle_and_leaves_nat_for_outbound():
    tables = table_lines(mode="tproxy", chain_prefix="ISTIO_")
    assert "-A PREROUTING -p tcp -j ISTIO_INBOUND" in tables["mangle"]
    assert (
        "-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --on-port 15006 --on-ip 0.0.0.0 "
        "--tproxy-mark 0x539/0xffffffff" in tables["mangle"]
    )
    assert "-A ISTIO_DIVERT -j MARK --set-xmark 0x539/0xffffffff" in tables["mangle"]
    assert "-A ISTIO_INBOUND -p tcp -m tcp --dport 22 -j RETURN" in tables["mangle"]
    assert not [line for line in tables["nat"] if "PREROUTING" in line]
    # The proxy's own calls to this host go to the inbound port through nat, as in Istio, and
    # are marked so that mangle's INBOUND may take them on lo (nothing else on lo).
    assert (
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 "
        "-j ISTIO_IN_REDIRECT" in tables["nat"]
    )
    assert "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006" in tables["nat"]
    assert (
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 1337 -j MARK --set-xmark 0x53a/0xffffffff"
        in tables["mangle"]
    )
    assert "-A ISTIO_INBOUND -i lo -p tcp -m mark ! --mark 0x53a -j RETURN" in tables["mangle"]


def test_tproxy_ipv6_listens_on_any_v6_address():
    tables = table_lines(family="ipv6", mode="tproxy", tproxy_mark=7)
    assert "--on-ip :: --tproxy-mark 0x7/0xffffffff" in "\n".join(tables["mangle"])


def test_dns_redirect_uses_resolvers_and_conntrack_zones():
    tables = table_lines(nameservers=["192.0.2.53"], dns_redirect=True)
    assert "-A HOSTMESH_OUTPUT -d 192.0.2.53/32 -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053" in tables["nat"]
    assert (
        "-A HOSTMESH_DNS_OUTPUT -d 192.0.2.53/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053"
        in (tables["nat"])
    )
    assert "-A HOSTMESH_DNS_OUTPUT -p udp -m udp --dport 53 -m owner --uid-owner 1337 -j CT --zone 1" in tables["raw"]
    assert (
        "-A HOSTMESH_DNS_OUTPUT -p udp -m udp --sport 15053 -m owner --uid-owner 1337 -j CT --zone 2" in (tables["raw"])
    )
    assert "-A HOSTMESH_DNS_PREROUTING -s 192.0.2.53/32 -p udp -m udp --sport 53 -j CT --zone 1" in tables["raw"]
    # loopback DNS still reaches the proxy
    assert "-A HOSTMESH_OUTPUT -o lo -p tcp -m tcp ! --dport 53 -m owner ! --uid-owner 1337 -j RETURN" in tables["nat"]


def test_dns_capture_all_matches_every_destination():
    tables = table_lines(dns_redirect=True, dns_capture_all=True)
    assert "-A HOSTMESH_OUTPUT -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053" in tables["nat"]
    assert "-A HOSTMESH_DNS_PREROUTING -p udp -m udp --sport 53 -j CT --zone 1" in tables["raw"]


def test_drop_invalid_adds_a_mangle_chain():
    tables = table_lines(drop_invalid=True)
    assert tables["mangle"] == [
        "-N HOSTMESH_DROP_INVALID",
        "-A PREROUTING -p tcp -j HOSTMESH_DROP_INVALID",
        "-A HOSTMESH_DROP_INVALID -m conntrack --ctstate INVALID -j DROP",
    ]


def test_ssh_port_is_excluded_even_when_forgotten():
    lines = table_lines(ssh_port=2222, inbound_ports_exclude=[15020])["nat"]
    assert "-A HOSTMESH_INBOUND -p tcp -m tcp --dport 2222 -j RETURN" in lines


def test_ssh_port_is_dropped_from_an_explicit_inbound_list():
    lines = table_lines(ssh_port=2222, inbound_ports=[2222, 8080], inbound_ports_exclude=[])["nat"]
    assert not [line for line in lines if "2222" in line]
    assert "-A HOSTMESH_INBOUND -p tcp -m tcp --dport 8080 -j HOSTMESH_IN_REDIRECT" in lines


# -- today's Istio: virtual interfaces, owner groups, tunnel port, loopback ------------------


def test_virtual_interfaces_capture_as_outbound_with_the_outbound_exclusions():
    lines = table_lines(
        virtual_interfaces=["docker0"],
        outbound_cidrs_exclude=["10.96.0.0/12"],
        outbound_ports_exclude=[3306],
        protect_established=False,
    )["nat"]
    assert lines.index("-A PREROUTING -i docker0 -p tcp -j HOSTMESH_VIRTUAL") < lines.index(
        "-A PREROUTING -p tcp -j HOSTMESH_INBOUND"
    )
    assert [line for line in lines if line.startswith("-A HOSTMESH_VIRTUAL")] == [
        "-A HOSTMESH_VIRTUAL -p tcp -m tcp --dport 3306 -j RETURN",
        "-A HOSTMESH_VIRTUAL -d 10.96.0.0/12 -j RETURN",
        "-A HOSTMESH_VIRTUAL -j HOSTMESH_REDIRECT",
    ]
    # Never captured as inbound, even when addressed to this host.
    assert lines.index("-A HOSTMESH_INBOUND -i docker0 -j RETURN") < lines.index(
        "-A HOSTMESH_INBOUND -p tcp -j HOSTMESH_IN_REDIRECT"
    )


def test_virtual_interfaces_follow_the_outbound_ranges_and_need_outbound_capture():
    lines = table_lines(virtual_interfaces=["virbr0"], outbound_cidrs=["10.0.0.0/8", "fd00::/8"])["nat"]
    assert "-A HOSTMESH_VIRTUAL -d 10.0.0.0/8 -j HOSTMESH_REDIRECT" in lines
    assert not [line for line in lines if "fd00::/8" in line]
    nothing = table_lines(virtual_interfaces=["virbr0"], outbound_cidrs=[])["nat"]
    assert not [line for line in nothing if "VIRTUAL" in line]


def test_forwarded_traffic_is_never_captured_as_inbound():
    nat = table_lines()["nat"]
    assert nat.index("-A HOSTMESH_INBOUND -m addrtype ! --dst-type LOCAL -j RETURN") < nat.index(
        "-A HOSTMESH_INBOUND -p tcp -j HOSTMESH_IN_REDIRECT"
    )
    mangle = table_lines(mode="tproxy")["mangle"]
    assert mangle.index("-A HOSTMESH_INBOUND -m addrtype ! --dst-type LOCAL -j RETURN") < mangle.index(
        "-A HOSTMESH_INBOUND -p tcp -j HOSTMESH_TPROXY"
    )


def test_the_ssh_connection_is_never_captured_whatever_groups_and_virtual_interfaces_say():
    lines = table_lines(ssh_port=2222, virtual_interfaces=["docker0"], outbound_owner_groups=[0])["nat"]
    # Its replies leave from the SSH port, ahead of the group filter...
    output = [line for line in lines if line.startswith("-A HOSTMESH_OUTPUT")]
    assert output.index("-A HOSTMESH_OUTPUT -p tcp -m tcp --sport 2222 -j RETURN") < output.index(
        "-A HOSTMESH_OUTPUT -m owner ! --gid-owner 0 -j RETURN"
    )
    # ...and a container reaching this host's SSH port is not sent to the outbound port.
    assert "-A HOSTMESH_VIRTUAL -p tcp -m tcp --dport 2222 -m addrtype --dst-type LOCAL -j RETURN" in lines
    # Without groups or virtual interfaces the inbound exclusion is all it takes (the seed's layout).
    assert not [line for line in table_lines(ssh_port=2222)["nat"] if "2222" in line and "OUTPUT" in line]


def test_owner_groups_limit_outbound_capture_after_the_proxy_rules():
    only = table_lines(outbound_owner_groups=[1100, 202])["nat"]
    rule = "-A HOSTMESH_OUTPUT -m owner ! --gid-owner 1100 -m owner ! --gid-owner 202 -j RETURN"
    assert only.index(rule) > only.index("-A HOSTMESH_OUTPUT -m owner --gid-owner 1337 -j RETURN")
    assert only.index(rule) < only.index("-A HOSTMESH_OUTPUT -j HOSTMESH_REDIRECT")
    but = table_lines(outbound_owner_groups_exclude=[888, 21])["nat"]
    assert "-A HOSTMESH_OUTPUT -m owner --gid-owner 888 -j RETURN" in but
    assert "-A HOSTMESH_OUTPUT -m owner --gid-owner 21 -j RETURN" in but
    dns = table_lines(outbound_owner_groups_exclude=[888], dns_redirect=True, dns_capture_all=True)["nat"]
    assert "-A HOSTMESH_DNS_OUTPUT -p udp -m udp --dport 53 -m owner --gid-owner 888 -j RETURN" in dns


def test_a_loopback_outbound_range_drops_the_local_traffic_returns():
    lines = table_lines(outbound_cidrs=["127.1.2.3/32"])["nat"]
    assert not [line for line in lines if "! --uid-owner" in line or "! --gid-owner" in line]
    # In both families: the IPv6 rules lose them too.
    assert not [line for line in table_lines("ipv6", outbound_cidrs=["127.1.2.3/32"])["nat"] if "! --uid" in line]


def test_host_loopback_cidr_replaces_localhost_in_the_ipv4_loopback_rules():
    tables = table_lines(host_loopback_cidr="127.0.0.1/8", mode="tproxy")
    assert "-A HOSTMESH_OUTPUT -d 127.0.0.0/8 -j RETURN" in tables["nat"]
    assert not [line for line in tables["nat"] + tables["mangle"] if "127.0.0.1/32" in line]
    assert "-A HOSTMESH_OUTPUT -d ::1/128 -j RETURN" in table_lines("ipv6", host_loopback_cidr="127.0.0.1/8")["nat"]


def test_dns_capture_without_a_resolver_is_off_entirely():
    from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.rules import dns_captured

    opts = options(dns_redirect=True)
    assert not dns_captured(opts, {"ipv4": [], "ipv6": []})
    assert dns_captured(opts, {"ipv4": [], "ipv6": ["fd00::53"]})
    assert dns_captured(options(dns_redirect=True, dns_capture_all=True), {})
    off = desired_tables(build_family(opts, "ipv4", (), dns=False))
    assert set(off) == {"nat"}
    assert not [line for line in off["nat"].lines() if "53" in line or "DNS" in line]
