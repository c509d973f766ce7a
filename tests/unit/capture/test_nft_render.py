"""The nftables renderer: golden tables, family merging, and the apply scripts."""

import re

import pytest

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture import nft, nft_render
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.errors import CommandFailed
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.model import (
    CT_ZONE,
    REDIRECT,
    RETURN,
    TPROXY,
    FamilyRules,
    rule,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.options import parse_options
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.rules import build_family

NAMESERVERS = {"ipv4": ("10.0.0.53",), "ipv6": ("fd00::53",)}


def families(families=("ipv4", "ipv6"), **params):
    opts = parse_options(params)[0]
    return [build_family(opts, family, NAMESERVERS[family]) for family in families]


def render(families_list, name="istio"):
    return nft_render.render_table(name, families_list)


def tabs(text):
    """Golden text is written with four spaces per level; nft indents with tabs."""
    return re.sub(r"(?m)^((?:    )+)", lambda m: "\t" * (len(m.group(1)) // 4), text)


SEED_GOLDEN = tabs(
    """\
table inet istio {
    chain nat_PREROUTING {
        type nat hook prerouting priority -100; policy accept;
        meta l4proto 6 jump nat_ISTIO_INBOUND
    }

    chain nat_OUTPUT {
        type nat hook output priority -100; policy accept;
        meta l4proto 6 jump nat_ISTIO_OUTPUT
    }

    chain nat_ISTIO_INBOUND {
        tcp dport 15008 return
        fib daddr type != 2 return
        tcp dport 22 return
        tcp dport 15090 return
        tcp dport 15021 return
        tcp dport 15020 return
        meta l4proto 6 jump nat_ISTIO_IN_REDIRECT
    }

    chain nat_ISTIO_IN_REDIRECT {
        meta l4proto 6 redirect to :15006
    }

    chain nat_ISTIO_OUTPUT {
        ip saddr 127.0.0.6 oifname "lo" return
        ip daddr != 127.0.0.1 oifname "lo" tcp dport != 15008 meta skuid 1337 jump nat_ISTIO_IN_REDIRECT
        ip6 saddr ::6 oifname "lo" return
        ip6 daddr != ::1 oifname "lo" tcp dport != 15008 meta skuid 1337 jump nat_ISTIO_IN_REDIRECT
        oifname "lo" meta skuid != 1337 return
        meta skuid 1337 return
        ip daddr != 127.0.0.1 oifname "lo" tcp dport != 15008 meta skgid 1337 jump nat_ISTIO_IN_REDIRECT
        ip6 daddr != ::1 oifname "lo" tcp dport != 15008 meta skgid 1337 jump nat_ISTIO_IN_REDIRECT
        oifname "lo" meta skgid != 1337 return
        meta skgid 1337 return
        ip daddr 127.0.0.1 return
        ip6 daddr ::1 return
        jump nat_ISTIO_REDIRECT
    }

    chain nat_ISTIO_REDIRECT {
        meta l4proto 6 redirect to :15001
    }
}
"""
)

TPROXY_DNS_GOLDEN = tabs(
    """\
table inet istio {
    chain raw_PREROUTING {
        type filter hook prerouting priority -300; policy accept;
        meta l4proto 17 jump raw_ISTIO_DNS_PREROUTING
    }

    chain raw_OUTPUT {
        type filter hook output priority -300; policy accept;
        meta l4proto 17 jump raw_ISTIO_DNS_OUTPUT
    }

    chain mangle_PREROUTING {
        type filter hook prerouting priority -150; policy accept;
        meta l4proto 6 jump mangle_ISTIO_INBOUND
        meta l4proto 6 jump mangle_ISTIO_DROP_INVALID
    }

    chain mangle_OUTPUT {
        type route hook output priority -150; policy accept;
        meta l4proto 6 jump mangle_ISTIO_OUTPUT
    }

    chain nat_OUTPUT {
        type nat hook output priority -100; policy accept;
        meta l4proto 6 jump nat_ISTIO_OUTPUT
        meta l4proto 17 jump nat_ISTIO_DNS_OUTPUT
    }

    chain raw_ISTIO_DNS_OUTPUT {
        udp dport 53 meta skuid 1337 ct zone set 1
        udp sport 15053 meta skuid 1337 ct zone set 2
        udp dport 53 meta skgid 1337 ct zone set 1
        udp sport 15053 meta skgid 1337 ct zone set 2
        ip daddr 10.0.0.53 udp dport 53 ct zone set 2
        ip6 daddr fd00::53 udp dport 53 ct zone set 2
    }

    chain raw_ISTIO_DNS_PREROUTING {
        ip saddr 10.0.0.53 udp sport 53 ct zone set 1
        ip6 saddr fd00::53 udp sport 53 ct zone set 1
    }

    chain mangle_ISTIO_DIVERT {
        meta mark set 0x00000539
        accept
    }

    chain mangle_ISTIO_DROP_INVALID {
        ct state 0x1 drop
    }

    chain mangle_ISTIO_INBOUND {
        meta l4proto 6 meta mark 0x00000539 ct mark set meta mark
        meta l4proto 6 meta mark 0x00000539 return
        ip saddr 127.0.0.6 iifname "lo" meta l4proto 6 return
        ip6 saddr ::6 iifname "lo" meta l4proto 6 return
        iifname "lo" meta l4proto 6 meta mark != 0x0000053a return
        iifname "eth1" return
        fib daddr type != 2 return
        tcp dport 8080 ct state 0x2,0x4 jump mangle_ISTIO_DIVERT
        tcp dport 8080 jump mangle_ISTIO_TPROXY
        tcp dport 9090 ct state 0x2,0x4 jump mangle_ISTIO_DIVERT
        tcp dport 9090 jump mangle_ISTIO_TPROXY
    }

    chain mangle_ISTIO_OUTPUT {
        oifname "eth1" return
        oifname "lo" meta l4proto 6 meta mark 0x00000539 return
        ip daddr != 127.0.0.1 oifname "lo" meta l4proto 6 meta skuid 1337 meta mark set 0x0000053a
        ip daddr != 127.0.0.1 oifname "lo" meta l4proto 6 meta skgid 1337 meta mark set 0x0000053a
        ip6 daddr != ::1 oifname "lo" meta l4proto 6 meta skuid 1337 meta mark set 0x0000053a
        ip6 daddr != ::1 oifname "lo" meta l4proto 6 meta skgid 1337 meta mark set 0x0000053a
        meta l4proto 6 ct mark 0x00000539 meta mark set ct mark
    }

    chain mangle_ISTIO_TPROXY {
        ip daddr != 127.0.0.1 meta l4proto 6 tproxy ip to :15006 meta mark set 0x00000539 accept
        ip daddr != 127.0.0.1 meta l4proto 6 drop
        ip6 daddr != ::1 meta l4proto 6 tproxy ip6 to :15006 meta mark set 0x00000539 accept
        ip6 daddr != ::1 meta l4proto 6 drop
    }

    chain nat_ISTIO_DNS_OUTPUT {
        udp dport 53 meta skuid 1337 return
        udp dport 53 meta skgid 1337 return
        ip daddr 10.0.0.53 udp dport 53 redirect to :15053
        ip6 daddr fd00::53 udp dport 53 redirect to :15053
    }

    chain nat_ISTIO_IN_REDIRECT {
        meta l4proto 6 redirect to :15006
    }

    chain nat_ISTIO_OUTPUT {
        tcp dport 3306 return
        oifname "eth1" return
        ip saddr 127.0.0.6 oifname "lo" return
        ip6 saddr ::6 oifname "lo" return
        meta l4proto 6 meta mark 0x00000539 return
        ip daddr != 127.0.0.1 oifname "lo" tcp dport != { 53, 15008 } meta skuid 1337 jump nat_ISTIO_IN_REDIRECT
        ip6 daddr != ::1 oifname "lo" tcp dport != { 53, 15008 } meta skuid 1337 jump nat_ISTIO_IN_REDIRECT
        oifname "lo" tcp dport != 53 meta skuid != 1337 return
        meta skuid 1337 return
        ip daddr != 127.0.0.1 oifname "lo" tcp dport != { 53, 15008 } meta skgid 1337 jump nat_ISTIO_IN_REDIRECT
        ip6 daddr != ::1 oifname "lo" tcp dport != { 53, 15008 } meta skgid 1337 jump nat_ISTIO_IN_REDIRECT
        oifname "lo" tcp dport != 53 meta skgid != 1337 return
        meta skgid 1337 return
        ip daddr 10.0.0.53 tcp dport 53 redirect to :15053
        ip daddr 127.0.0.1 return
        ip daddr 10.96.0.0/12 return
        ip6 daddr fd00::53 tcp dport 53 redirect to :15053
        ip6 daddr ::1 return
        ip6 daddr fd00:96::/48 return
        jump nat_ISTIO_REDIRECT
    }

    chain nat_ISTIO_REDIRECT {
        meta l4proto 6 redirect to :15001
    }
}
"""
)

TPROXY_DNS_PARAMS = {
    "chain_prefix": "ISTIO_",
    "protect_established": False,
    "mode": "tproxy",
    "dns_redirect": True,
    "drop_invalid": True,
    "inbound_ports": [8080, 9090],
    "outbound_cidrs_exclude": ["10.96.0.0/12", "fd00:96::/48"],
    "outbound_ports_exclude": [3306],
    "exclude_interfaces": ["eth1"],
}


# -- golden tables -------------------------------------------------------------------


def test_seed_settings_both_families_golden():
    assert render(families(chain_prefix="ISTIO_", protect_established=False)) == SEED_GOLDEN


def test_established_connections_guard_leads_each_capture_chain():
    text = render(families(mode="tproxy"), name="hostmesh")
    assert _chain(text, "nat_HOSTMESH_OUTPUT")[0] == "tcp flags != 0x2 / 0x1,0x2,0x4,0x10 return"
    assert _chain(text, "mangle_HOSTMESH_INBOUND")[0] == "tcp flags != 0x2 / 0x1,0x2,0x4,0x10 ct state 0x8 return"


def test_tproxy_dns_drop_invalid_exclusions_both_families_golden():
    assert render(families(**TPROXY_DNS_PARAMS)) == TPROXY_DNS_GOLDEN


def test_dns_capture_all_shares_the_unaddressed_redirects():
    text = render(families(dns_redirect=True, dns_capture_all=True), name="hostmesh")
    chain = _chain(text, "nat_HOSTMESH_DNS_OUTPUT")
    assert chain == [
        "udp dport 53 meta skuid 1337 return",
        "udp dport 53 meta skgid 1337 return",
        "udp dport 53 redirect to :15053",
    ]
    assert _chain(text, "raw_HOSTMESH_DNS_PREROUTING") == ["udp sport 53 ct zone set 1"]
    assert "tcp dport 53 redirect to :15053" in _chain(text, "nat_HOSTMESH_OUTPUT")


def test_outbound_include_cidrs_split_by_family():
    text = render(families(outbound_cidrs=["10.1.0.0/16", "fd00:1::/64", "192.168.1.7"], outbound_ports=[443]))
    assert _chain(text, "nat_HOSTMESH_OUTPUT")[-4:] == [
        "tcp dport 443 jump nat_HOSTMESH_REDIRECT",
        "ip daddr 10.1.0.0/16 jump nat_HOSTMESH_REDIRECT",
        "ip daddr 192.168.1.7 jump nat_HOSTMESH_REDIRECT",
        "ip6 daddr fd00:1::/64 jump nat_HOSTMESH_REDIRECT",
    ]


# -- one family only -------------------------------------------------------------------


@pytest.mark.parametrize(("family", "number", "other"), [("ipv4", 2, "ip6 "), ("ipv6", 10, "ip ")])
def test_one_family_limits_the_hook_jumps_and_nothing_else(family, number, other):
    text = render(families((family,), chain_prefix="ISTIO_"))
    assert _chain(text, "nat_PREROUTING")[1:] == ["meta nfproto %d meta l4proto 6 jump nat_ISTIO_INBOUND" % number]
    assert _chain(text, "nat_OUTPUT")[1:] == ["meta nfproto %d meta l4proto 6 jump nat_ISTIO_OUTPUT" % number]
    own = [line for line in text.splitlines() if "nfproto" in line]
    assert len(own) == 2
    assert other not in text


def test_each_family_sees_exactly_its_own_rules_in_order():
    """Projecting the merged table onto one family gives that family's table alone."""
    params = {**TPROXY_DNS_PARAMS, "mode": "redirect", "proxy_uid": [1337, 0], "inbound_ports": ["*"]}
    both = nft_render.table_lines(families(**params))
    for index, family in enumerate(("ipv4", "ipv6")):
        alone = nft_render.table_lines([families(**params)[index]])
        for chain, (header, lines) in alone.items():
            assert both[chain][0] == header
            assert _project(both[chain][1], family) == _project(lines, family), (family, chain)


# -- merging rules of two families --------------------------------------------------------


def _hand_family(family, rules):
    return FamilyRules(family, {("nat", "X_CHAIN"): tuple(rules)}, {("nat", "OUTPUT"): (rule("X_CHAIN"),)}, (), ())


def test_rules_only_one_family_has_are_limited_to_it():
    a, b, c, d = (rule(RETURN, proto="tcp", dport=port) for port in (1, 2, 3, 4))
    text = render([_hand_family("ipv4", [a, b, c]), _hand_family("ipv6", [a, c, d])], name="x")
    assert _chain(text, "nat_OUTPUT")[1:] == ["jump nat_X_CHAIN"]
    assert _chain(text, "nat_X_CHAIN") == [
        "tcp dport 1 return",
        "meta nfproto 2 tcp dport 2 return",
        "tcp dport 3 return",
        "meta nfproto 10 tcp dport 4 return",
    ]


def test_a_chain_only_one_family_reaches_needs_no_limits():
    v4 = FamilyRules(
        "ipv4",
        {("nat", "X_A"): (rule(RETURN, proto="tcp", dport=1),)},
        {("nat", "OUTPUT"): (rule("X_A", proto="tcp"),)},
        (),
        (),
    )
    v6 = FamilyRules("ipv6", {}, {("nat", "OUTPUT"): (rule(RETURN, dst="::1/128"),)}, (), ())
    text = render([v4, v6], name="x")
    assert _chain(text, "nat_OUTPUT")[1:] == ["meta nfproto 2 meta l4proto 6 jump nat_X_A", "ip6 daddr ::1 return"]
    assert _chain(text, "nat_X_A") == ["tcp dport 1 return"]


def test_no_rules_is_an_empty_table():
    assert nft_render.render_table("hostmesh", []) == "table inet hostmesh {\n}\n"


def test_a_family_given_twice_is_refused():
    v4 = families(("ipv4",))[0]
    with pytest.raises(ValueError, match="twice"):
        render([v4, v4])


# -- single rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("built", "family", "expected"),
    [
        (
            rule(RETURN, src="!10.0.0.0/8", dport="!53", proto="udp"),
            "ipv4",
            ["ip saddr != 10.0.0.0/8 udp dport != 53 return"],
        ),
        (rule(RETURN, dst="::ffff:1.2.3.4/128"), "ipv6", ["ip6 daddr ::ffff:1.2.3.4 return"]),
        (rule(RETURN, dst="::1.2.3.4/128"), "ipv6", ["ip6 daddr ::1.2.3.4 return"]),
        (rule(RETURN, dst="2001:DB8:0:0:0:0:0:1/64"), "ipv6", ["ip6 daddr 2001:db8::/64 return"]),
        (rule(RETURN, dst="0.0.0.0/0"), "ipv4", ["ip daddr 0.0.0.0/0 return"]),
        (rule(RETURN, ctstate="NEW,RELATED,ESTABLISHED,INVALID"), "ipv4", ["ct state 0x1,0x2,0x4,0x8 return"]),
        (rule(RETURN, uid_owner="!0", gid_owner=5), "ipv4", ["meta skuid != 0 meta skgid 5 return"]),
        (rule(RETURN, in_iface="eth0.1", sport=68, proto="udp"), "ipv4", ['iifname "eth0.1" udp sport 68 return']),
        (rule(REDIRECT, {"to_ports": 15053}, proto="udp", dport=53), "ipv6", ["udp dport 53 redirect to :15053"]),
        (rule(CT_ZONE, {"zone": 7}), "ipv4", ["ct zone set 7"]),
        (
            rule(TPROXY, {"on_port": 15006, "on_ip": "0.0.0.0", "mark": 0xFFFFFFFF}, proto="tcp", dst="10.0.0.1/32"),
            "ipv4",
            [
                "ip daddr 10.0.0.1 meta l4proto 6 tproxy ip to :15006 meta mark set 0xffffffff accept",
                "ip daddr 10.0.0.1 meta l4proto 6 drop",
            ],
        ),
        (
            rule(TPROXY, {"on_port": 15006, "on_ip": "fd00::1", "mark": 1}, proto="tcp", dst="fd00::1/128"),
            "ipv6",
            [
                "ip6 daddr fd00::1 meta l4proto 6 tproxy ip6 to [fd00::1]:15006 meta mark set 0x00000001 accept",
                "ip6 daddr fd00::1 meta l4proto 6 drop",
            ],
        ),
        (
            rule(TPROXY, {"on_port": 15006, "on_ip": "::", "mark": 1}, proto="tcp"),
            "ipv6",
            [
                "meta nfproto 10 meta l4proto 6 tproxy ip6 to :15006 meta mark set 0x00000001 accept",
                "meta nfproto 10 meta l4proto 6 drop",
            ],
        ),
    ],
)
def test_rule_forms(built, family, expected):
    assert nft_render.render_rule(built, family) == expected


def test_a_table_with_no_nftables_form_is_an_error():
    with pytest.raises(ValueError, match="filter"):
        nft_render.render_table("x", [FamilyRules("ipv4", {("filter", "X"): (rule(RETURN),)}, {}, (), ())])


# -- names and commands ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "name"), [("HOSTMESH_", "hostmesh"), ("ISTIO_", "istio"), ("Mesh2_", "mesh2"), ("A_B__", "a_b")]
)
def test_table_name(prefix, name):
    assert nft.table_name(prefix) == name


@pytest.mark.parametrize("prefix", ["_", "", "9X_", "MÉSH_"])
def test_table_name_refuses_unusable_prefixes(prefix):
    with pytest.raises(ValueError, match="chain_prefix"):
        nft.table_name(prefix)


@pytest.mark.parametrize("prefix", ["IP_", "TPROXY_", "REDIRECT_", "Meta_", "TABLE_"])
def test_prefixes_that_name_an_nft_keyword_are_refused(prefix):
    name = prefix.rstrip("_").lower()
    assert nft.table_name(prefix) == name
    problem = nft.table_name_problem(prefix)
    assert "%r" % name in problem and "keyword" in problem and "HOSTMESH_" in problem


@pytest.mark.parametrize("prefix", ["HOSTMESH_", "ISTIO_", "NAT_", "FILTER_", "MESH2_"])
def test_usual_prefixes_pass_the_check(prefix):
    assert nft.table_name_problem(prefix) == ""


def test_list_args_are_numeric_and_name_only_our_table():
    assert nft.list_args("hostmesh") == ["-n", "-y", "list", "table", "inet", "hostmesh"]
    assert list(nft.APPLY_ARGS) == ["-f", "-"]


def test_listing_from_result():
    argv = ["nft", *nft.list_args("x")]
    assert nft.listing_from_result(argv, 0, "table inet x {\n}\n", "") == "table inet x {\n}\n"
    missing = "Error: No such file or directory\nlist table inet x\n                 ^\n"
    assert nft.listing_from_result(argv, 1, "", missing) == ""
    with pytest.raises(CommandFailed, match="Operation not permitted"):
        nft.listing_from_result(argv, 1, "", "Error: Operation not permitted")


# -- scripts --------------------------------------------------------------------------------


def test_plan_is_empty_when_the_listing_matches():
    desired = render(families(chain_prefix="ISTIO_"))
    assert nft.plan_script("istio", desired, desired) == ""
    assert nft.plan_script("istio", desired.rstrip("\n"), desired) == ""


def test_plan_replaces_the_whole_table_in_one_script():
    desired = render(families(chain_prefix="ISTIO_"))
    edited = desired.replace("tcp dport 15090 return\n", "")
    script = nft.plan_script("istio", edited, desired)
    assert script == "add table inet istio\ndelete table inet istio\n" + nft.parsable_form(desired)
    assert nft.plan_script("istio", "", desired) == script


def test_scripts_name_nothing_but_our_table():
    desired = render(families(**TPROXY_DNS_PARAMS))
    for script in (nft.plan_script("istio", "", desired), nft.absent_script("istio", desired)):
        for line in script.splitlines():
            if line.startswith(("add ", "delete ", "flush ", "table ")):
                assert line.split()[1:4] in (["table", "inet", "istio"], ["inet", "istio", "{"]), line
        assert "ruleset" not in script


def test_changes_name_the_rules_added_and_removed():
    desired = render(families(chain_prefix="ISTIO_"))
    edited = desired.replace("tcp dport 15090 return", "tcp dport 9 return").replace(
        "\tchain nat_ISTIO_REDIRECT {\n\t\tmeta l4proto 6 redirect to :15001\n\t}\n", ""
    )
    added, removed = nft.changes(edited, desired)
    assert added == [
        "nat_ISTIO_INBOUND: tcp dport 15090 return",
        "nat_ISTIO_REDIRECT:",
        "nat_ISTIO_REDIRECT: meta l4proto 6 redirect to :15001",
    ]
    assert removed == ["nat_ISTIO_INBOUND: tcp dport 9 return"]
    assert nft.changes(desired, desired) == ([], [])
    assert nft.changes("", desired)[0] == nft.table_entries(desired)
    assert nft.changes(desired, "")[1][:2] == [
        "nat_PREROUTING:",
        "nat_PREROUTING: type nat hook prerouting priority -100; policy accept;",
    ]


def test_absent_script():
    assert nft.absent_script("istio", "") == ""
    assert nft.absent_script("istio", "  \n") == ""
    assert nft.absent_script("istio", SEED_GOLDEN) == "add table inet istio\ndelete table inet istio\n"


# -- helpers ---------------------------------------------------------------------------------


def _chain(text, name):
    """The lines of one chain in a rendered table."""
    match = re.search(r"\tchain %s \{\n(.*?)\t\}\n" % re.escape(name), text, re.S)
    assert match, "no chain %s in\n%s" % (name, text)
    return [line.strip() for line in match.group(1).splitlines()]


def _project(lines, family):
    """The lines packets of ``family`` can match, without the family limits."""
    mine, other = ("2", "10") if family == "ipv4" else ("10", "2")
    other_address = "ip6 " if family == "ipv4" else "ip "
    kept = []
    for line in lines:
        if line.startswith("meta nfproto %s " % other) or line.startswith(other_address):
            continue
        kept.append(line.replace("meta nfproto %s " % mine, ""))
    return kept


# How each nft release lists the mid-stream TCP match (-n): 0.9.8 (Debian 11) and
# 1.1.3 (Debian 13) with a mask expression, 1.0.6 (Debian 12) with "/", as rendered.
MASKED = (
    "\t\ttcp flags & (0x1 | 0x2 | 0x4 | 0x10) != 0x2 return\n\t\ttcp flags & (0x1 | 0x2 | 0x4 | 0x10) == 0x2 return\n"
)
RENDERED = "\t\ttcp flags != 0x2 / 0x1,0x2,0x4,0x10 return\n\t\ttcp flags 0x2 / 0x1,0x2,0x4,0x10 return\n"


def test_every_releases_listing_reads_as_rendered_and_scripts_parse_on_every_release():
    argv = ["nft", "-n", "-y", "list", "table", "inet", "hostmesh"]
    assert nft.listing_from_result(argv, 0, MASKED, "") == RENDERED
    assert nft.listing_from_result(argv, 0, RENDERED, "") == RENDERED
    assert nft.parsable_form(RENDERED) == MASKED
    name, text = "hostmesh", "table inet hostmesh {\n\tchain c {\n" + RENDERED + "\t}\n}\n"
    script = nft.plan_script(name, "", text)
    assert "0x1,0x2,0x4,0x10" not in script and script.count("tcp flags & (0x1 | 0x2 | 0x4 | 0x10)") == 2
    # A table listed by 0.9.8 or 1.1 is the one we render: nothing to change.
    listed = nft.listing_from_result(argv, 0, text.replace(RENDERED, MASKED), "")
    assert nft.plan_script(name, listed, text) == ""
