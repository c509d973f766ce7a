# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Turn validated options into the rule set for one address family.

Pure: the same options give the same rules. The layout is Istio 1.6's (the
seed's listing, plus today's tunnel-port rules and the forward guard); packets
are decided as today's istio-iptables decides them, except where
docs/capture.md says otherwise. Every rule we put in a built-in chain is a
jump into one of our chains, so ownership is plain from the target's name.
"""

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.model import (
    ACCEPT,
    CONNMARK_RESTORE,
    CONNMARK_SAVE,
    CT_ZONE,
    DROP,
    IPV4,
    MARK,
    OUTBOUND_MARK,
    REDIRECT,
    RETURN,
    TPROXY,
    FamilyRules,
    IpRoute,
    IpRule,
    rule,
)

# Addresses Istio's inbound passthrough and localhost use, per family.
LOCALHOST = {IPV4: "127.0.0.1/32", "ipv6": "::1/128"}
PASSTHROUGH_SOURCE = {IPV4: "127.0.0.6/32", "ipv6": "::6/128"}
ANY_ADDRESS = {IPV4: "0.0.0.0", "ipv6": "::"}
DNS_PORT = 53
DNS_ZONE_PROXY = 1  # conntrack zone for the proxy's own upstream DNS
DNS_ZONE_APP = 2  # conntrack zone for the application's DNS via the proxy


class ChainNames:
    """Our chain names for a prefix."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.inbound = prefix + "INBOUND"
        self.in_redirect = prefix + "IN_REDIRECT"
        self.output = prefix + "OUTPUT"
        self.redirect = prefix + "REDIRECT"
        self.divert = prefix + "DIVERT"
        self.tproxy = prefix + "TPROXY"
        self.drop_invalid = prefix + "DROP_INVALID"
        self.dns_output = prefix + "DNS_OUTPUT"
        self.dns_prerouting = prefix + "DNS_PREROUTING"
        self.virtual = prefix + "VIRTUAL"


def host_loopback(options, family):
    """This host's loopback range as the loopback rules name it (Istio's host loopback CIDR)."""
    return options.host_loopback_cidr if family == IPV4 else LOCALHOST[family]


def dns_captured(options, nameservers_by_family) -> bool:
    """Whether DNS capture is on: asked for, and with capture-all or a resolver in some family.

    As Istio: with no resolver to capture, DNS capture is off entirely (a warning says so).
    """
    return options.dns_redirect and (
        options.dns_capture_all or any(nameservers_by_family.get(family) for family in (IPV4, "ipv6"))
    )


def _loopback_included(options):
    """An outbound range that is loopback (Istio's HasLoopBackIP), in either family."""
    if options.outbound_cidrs is None:
        return False
    return any(
        cidr.startswith("127.") or cidr == "::1/128" for nets in options.outbound_cidrs.values() for cidr in nets
    )


def build_family(options, family, nameservers=(), dns=None):
    """The full rule set for ``family`` ("ipv4"/"ipv6") when state is present.

    ``nameservers``: this family's resolvers from resolv.conf, used by
    ``dns_redirect`` when ``dns_capture_all`` is false. ``dns``: whether DNS
    capture is on (see dns_captured; by default, as asked).
    """
    if dns is None:
        dns = options.dns_redirect
    if options.dns_redirect != dns:
        options = options._replace(dns_redirect=dns, dns_capture_all=False)
    names = ChainNames(options.chain_prefix)
    chains = {}
    jumps = {}
    tproxy = options.mode == "tproxy"
    inbound = options.inbound_ports is None or bool(options.inbound_ports)

    def add_chain(table, name, rules):
        chains[(table, name)] = tuple(rules)

    def add_jump(table, builtin, jump):
        jumps[(table, builtin)] = (*jumps.get((table, builtin), ()), jump)

    # nat: outbound capture, and inbound capture in redirect mode. IN_REDIRECT also
    # takes the proxy's own calls to this host in tproxy mode, as in Istio.
    if not tproxy and inbound:
        add_chain("nat", names.inbound, _nat_inbound(options, names))
    add_chain("nat", names.in_redirect, [rule(REDIRECT, {"to_ports": options.inbound_capture_port}, proto="tcp")])
    add_chain("nat", names.output, _nat_output(options, names, family, nameservers))
    add_chain("nat", names.redirect, [rule(REDIRECT, {"to_ports": options.proxy_port}, proto="tcp")])
    virtual = _nat_virtual(options, names, family)
    if virtual:
        add_chain("nat", names.virtual, virtual)
        for iface in options.virtual_interfaces:
            add_jump("nat", "PREROUTING", rule(names.virtual, in_iface=iface, proto="tcp"))
    if inbound and not tproxy:
        add_jump("nat", "PREROUTING", rule(names.inbound, proto="tcp"))
    add_jump("nat", "OUTPUT", rule(names.output, proto="tcp"))

    if inbound and tproxy:
        _add_tproxy(options, names, family, add_chain, add_jump)

    if options.drop_invalid:
        add_chain("mangle", names.drop_invalid, [rule(DROP, ctstate="INVALID")])
        add_jump("mangle", "PREROUTING", rule(names.drop_invalid, proto="tcp"))

    if options.dns_redirect:
        _add_dns(options, names, family, nameservers, add_chain, add_jump)

    ip_rules = ()
    ip_routes = ()
    if inbound and tproxy:
        ip_rules = (IpRule(family, options.tproxy_mark, options.tproxy_route_table),)
        ip_routes = (IpRoute(family, options.tproxy_route_table, "lo"),)
    return FamilyRules(family, chains, jumps, ip_rules, ip_routes)


def _established_guard(options, **matches):
    """Connections already open when capture goes on are never captured.

    Where conntrack was not yet active, its first sight of such a connection is
    a mid-stream packet it files as new; redirecting that packet would cut the
    connection (an SSH session included). A new connection's first packet is
    always a SYN, so anything else is let through untouched.
    """
    if not options.protect_established:
        return []
    return [rule(RETURN, proto="tcp", syn=False, **matches)]


def _inbound_exclusions(options):
    """RETURN rules that keep excluded interfaces and ports away from capture.

    What arrives on a virtual interface is outbound traffic (see _nat_virtual),
    and what the host only forwards (for containers, VMs) is not addressed to it.
    """
    rules = [rule(RETURN, in_iface=iface) for iface in (*options.exclude_interfaces, *options.virtual_interfaces)]
    if not options.inbound_forwarded:
        rules.append(rule(RETURN, dst_type="!LOCAL"))
    if options.inbound_ports is None:
        rules += [rule(RETURN, proto="tcp", dport=port) for port in options.inbound_ports_exclude]
    return rules


def _nat_inbound(options, names):
    # The proxy's tunnel port is never captured (Istio's first ISTIO_INBOUND rule, nat only).
    rules = _established_guard(options)
    if options.inbound_tunnel_port:
        rules.append(rule(RETURN, proto="tcp", dport=options.inbound_tunnel_port))
    rules += _inbound_exclusions(options)
    if options.inbound_ports is None:
        rules.append(rule(names.in_redirect, proto="tcp"))
    else:
        rules += [rule(names.in_redirect, proto="tcp", dport=port) for port in options.inbound_ports]
    return rules


def _nat_output(options, names, family, nameservers):
    loopback = host_loopback(options, family)
    rules = _established_guard(options)
    rules += _ssh_guard(options, "sport")
    rules += [rule(RETURN, proto="tcp", dport=port) for port in options.outbound_ports_exclude]
    rules += [rule(RETURN, out_iface=iface) for iface in options.exclude_interfaces]
    rules.append(rule(RETURN, src=PASSTHROUGH_SOURCE[family], out_iface="lo"))
    if options.mode == "tproxy":
        # Envoy's transparent connection to the application (the client's address as
        # its source, the tproxy mark on it) is the inbound call itself, not one to capture.
        rules.append(rule(RETURN, proto="tcp", mark=options.tproxy_mark))
    # The proxy's own calls to this host over lo (not to the tunnel port, nor,
    # with DNS capture, to port 53) are inbound traffic.
    left_alone = [port for port in (DNS_PORT if options.dns_redirect else 0, options.inbound_tunnel_port) if port]
    if len(left_alone) > 1:
        not_tunnel = {"proto": "tcp", "dports": "!" + ",".join(str(port) for port in left_alone)}
    elif left_alone:
        not_tunnel = {"proto": "tcp", "dport": "!%d" % left_alone[0]}
    else:
        not_tunnel = {}
    # With DNS capture, loopback DNS (e.g. a local stub resolver) still goes to the proxy.
    not_dns = {"proto": "tcp", "dport": "!%d" % DNS_PORT} if options.dns_redirect else {}
    # A loopback range among the outbound ranges is captured, so local traffic is not let through.
    local_direct = not _loopback_included(options)
    for field, ids in (("uid_owner", options.proxy_uid), ("gid_owner", options.proxy_gid)):
        for owner in ids:
            rules.append(rule(names.in_redirect, dst="!" + loopback, out_iface="lo", **not_tunnel, **{field: owner}))
            if local_direct:
                # Anyone else on lo is talking to a local service directly.
                rules.append(rule(RETURN, out_iface="lo", **not_dns, **{field: "!%d" % owner}))
            # The proxy's own outbound traffic is never captured.
            rules.append(rule(RETURN, **{field: owner}))
    rules += _owner_group_filter(options)
    if options.dns_redirect:
        servers = [None] if options.dns_capture_all else [_host_cidr(ns) for ns in nameservers]
        rules += [
            rule(REDIRECT, {"to_ports": options.dns_port}, dst=server, proto="tcp", dport=DNS_PORT)
            for server in servers
        ]
    rules.append(rule(RETURN, dst=loopback))
    rules += [rule(RETURN, dst=cidr) for cidr in options.outbound_cidrs_exclude[family]]
    rules += _outbound_capture(options, names, family)
    return rules


def _outbound_capture(options, names, family):
    """The rules that send what is left to the outbound port."""
    rules = [rule(names.redirect, proto="tcp", dport=port) for port in options.outbound_ports]
    if options.outbound_cidrs is None:
        rules.append(rule(names.redirect))
    else:
        rules += [rule(names.redirect, dst=cidr) for cidr in options.outbound_cidrs[family]]
    return rules


def _owner_group_filter(options, **matches):
    """Outbound capture only for (or except for) the processes of some groups (their primary group)."""
    if options.outbound_owner_groups:
        return [rule(RETURN, gid_owner_none=options.outbound_owner_groups, **matches)]
    return [rule(RETURN, gid_owner=group, **matches) for group in options.outbound_owner_groups_exclude]


def _ssh_guard(options, port_field, **matches):
    """The SSH connection running the task is never captured, whatever groups or virtual interfaces say.

    Only where those could reach it: its replies leave from the SSH port; from a
    virtual interface a container reaches this host's SSH port.
    """
    if options.ssh_port is None:
        return []
    if port_field == "sport" and not (options.outbound_owner_groups or options.outbound_owner_groups_exclude):
        return []
    return [rule(RETURN, proto="tcp", **{port_field: options.ssh_port}, **matches)]


def _nat_virtual(options, names, family):
    """What arrives on a virtual interface (containers' bridges) is captured as outbound.

    With the outbound exclusions (Istio's -k rules have none): ports and ranges
    (a loopback destination arriving on an interface is a martian the kernel drops). Owners cannot be told apart here: the packets have no local socket.
    """
    if not options.virtual_interfaces:
        return []
    capture = _outbound_capture(options, names, family)
    if not capture:
        return []
    rules = _established_guard(options) + _ssh_guard(options, "dport", dst_type="LOCAL")
    rules += [rule(RETURN, proto="tcp", dport=port) for port in options.outbound_ports_exclude]
    rules += [rule(RETURN, dst=cidr) for cidr in options.outbound_cidrs_exclude[family]]
    return rules + capture


def _add_tproxy(options, names, family, add_chain, add_jump):
    """mangle rules that hand new inbound connections to the proxy with TPROXY (Istio's layout)."""
    mark = options.tproxy_mark
    loopback = host_loopback(options, family)
    add_chain("mangle", names.divert, [rule(MARK, {"mark": mark}), rule(ACCEPT)])
    tproxy_params = {"on_port": options.inbound_capture_port, "on_ip": ANY_ADDRESS[family], "mark": mark}
    add_chain("mangle", names.tproxy, [rule(TPROXY, tproxy_params, dst="!" + loopback, proto="tcp")])
    inbound = [
        *_established_guard(options, ctstate="NEW"),
        # Remember the mark on the connection so replies route back through lo.
        rule(CONNMARK_SAVE, proto="tcp", mark=mark),
        # Do not capture again what the proxy already handed over.
        rule(RETURN, proto="tcp", mark=mark),
        rule(RETURN, src=PASSTHROUGH_SOURCE[family], in_iface="lo", proto="tcp"),
        # On lo only the proxy's own calls (marked in OUTPUT below) are captured:
        # an app calling itself by this host's address is left alone (istio/istio#31165).
        rule(RETURN, in_iface="lo", proto="tcp", mark="!%d" % OUTBOUND_MARK),
    ]
    inbound += _inbound_exclusions(options)
    ports = [None] if options.inbound_ports is None else list(options.inbound_ports)
    for port in ports:
        inbound.append(rule(names.divert, proto="tcp", dport=port, ctstate="RELATED,ESTABLISHED"))
        inbound.append(rule(names.tproxy, proto="tcp", dport=port))
    add_chain("mangle", names.inbound, inbound)
    output = [rule(RETURN, out_iface=iface) for iface in options.exclude_interfaces]
    output.append(rule(RETURN, out_iface="lo", proto="tcp", mark=mark))
    for field, ids in (("uid_owner", options.proxy_uid), ("gid_owner", options.proxy_gid)):
        for owner in ids:
            output.append(
                rule(MARK, {"mark": OUTBOUND_MARK}, dst="!" + loopback, out_iface="lo", proto="tcp", **{field: owner})
            )
    output.append(rule(CONNMARK_RESTORE, proto="tcp", connmark=mark))
    add_chain("mangle", names.output, output)
    add_jump("mangle", "PREROUTING", rule(names.inbound, proto="tcp"))
    add_jump("mangle", "OUTPUT", rule(names.output, proto="tcp"))


def _add_dns(options, names, family, nameservers, add_chain, add_jump):
    """UDP DNS to the proxy's DNS port, with Istio's conntrack-zone split in raw."""
    servers = [None] if options.dns_capture_all else [_host_cidr(ns) for ns in nameservers]
    owners = [("uid_owner", uid) for uid in options.proxy_uid] + [("gid_owner", gid) for gid in options.proxy_gid]
    nat = [rule(RETURN, proto="udp", dport=DNS_PORT, **{field: owner}) for field, owner in owners]
    nat += _owner_group_filter(options, proto="udp", dport=DNS_PORT)
    nat += [
        rule(REDIRECT, {"to_ports": options.dns_port}, dst=server, proto="udp", dport=DNS_PORT) for server in servers
    ]
    add_chain("nat", names.dns_output, nat)
    add_jump("nat", "OUTPUT", rule(names.dns_output, proto="udp"))

    raw_output = []
    for field, owner in owners:
        raw_output.append(rule(CT_ZONE, {"zone": DNS_ZONE_PROXY}, proto="udp", dport=DNS_PORT, **{field: owner}))
        raw_output.append(rule(CT_ZONE, {"zone": DNS_ZONE_APP}, proto="udp", sport=options.dns_port, **{field: owner}))
    raw_output += [rule(CT_ZONE, {"zone": DNS_ZONE_APP}, dst=server, proto="udp", dport=DNS_PORT) for server in servers]
    raw_prerouting = [
        rule(CT_ZONE, {"zone": DNS_ZONE_PROXY}, src=server, proto="udp", sport=DNS_PORT) for server in servers
    ]
    add_chain("raw", names.dns_output, raw_output)
    add_chain("raw", names.dns_prerouting, raw_prerouting)
    add_jump("raw", "OUTPUT", rule(names.dns_output, proto="udp"))
    add_jump("raw", "PREROUTING", rule(names.dns_prerouting, proto="udp"))


def _host_cidr(address):
    return address + ("/128" if ":" in address else "/32")


def tables_used(options, dns=None) -> frozenset:
    """The tables ``build_family`` fills for these options, without building the rules.

    The snapshot asks it which iptables-nft tables a change enters or leaves.
    """
    inbound = options.inbound_ports is None or bool(options.inbound_ports)
    used = {"nat"}
    if (inbound and options.mode == "tproxy") or options.drop_invalid:
        used.add("mangle")
    if options.dns_redirect if dns is None else dns:
        used.add("raw")
    return frozenset(used)
