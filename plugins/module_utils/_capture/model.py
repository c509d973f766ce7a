# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The interception rules as plain data.

The rule builder produces these values from the module's options; renderers
turn them into ``iptables-restore`` text or an ``nft -f`` script. Nothing here
touches the host.
"""

from collections import namedtuple

IPV4 = "ipv4"
IPV6 = "ipv6"
FAMILIES = (IPV4, IPV6)
IPTABLES_VARIANTS = ("iptables-nft", "iptables-legacy")

# Tables in the order iptables-save prints them and restore must apply them.
TABLES = ("raw", "mangle", "nat")
BUILTIN_CHAINS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")

# The mark tproxy mode sets on the proxy's own packets to this host over lo
# (Istio's OutboundMark): such packets may be captured as inbound, others on lo not.
OUTBOUND_MARK = 1338

# Verbs (targets that are not a jump to one of our chains).
RETURN = "RETURN"
ACCEPT = "ACCEPT"
DROP = "DROP"
REDIRECT = "REDIRECT"  # params: to_ports
TPROXY = "TPROXY"  # params: on_port, on_ip, mark
MARK = "MARK"  # params: mark
CONNMARK_SAVE = "CONNMARK_SAVE"  # params: none
CONNMARK_RESTORE = "CONNMARK_RESTORE"  # params: none
CT_ZONE = "CT_ZONE"  # params: zone
VERBS = (RETURN, ACCEPT, DROP, REDIRECT, TPROXY, MARK, CONNMARK_SAVE, CONNMARK_RESTORE, CT_ZONE)

_RULE_FIELDS = (
    "target",  # a verb above, or the name of one of our chains (a jump)
    "params",  # tuple of (name, value) pairs for the verb
    "src",  # CIDR, "!" prefix negates
    "dst",  # CIDR, "!" prefix negates
    "in_iface",
    "out_iface",
    "proto",  # "tcp" / "udp"
    "dport",  # int, or "!53" to negate
    "dports",  # tuple of ints (multiport), or "!" + "53,15008" to negate
    "sport",  # int
    "syn",  # False: TCP packets that are not a connection's first (SYN without ACK/RST/FIN)
    "uid_owner",  # int, or "!1337" to negate
    "gid_owner",  # int, or "!1337" to negate
    "gid_owner_none",  # tuple of ints: the sender's group is none of these
    "mark",  # int: packet mark equals
    "connmark",  # int: connection mark equals
    "ctstate",  # e.g. "INVALID", "RELATED,ESTABLISHED"
    "dst_type",  # "LOCAL": to one of this host's addresses; "!LOCAL": anything else
)


class Rule(namedtuple("Rule", _RULE_FIELDS)):
    """One rule: matches plus a target. Unset matches are None."""

    __slots__ = ()

    def param(self, name):
        for key, value in self.params:
            if key == name:
                return value
        raise KeyError(name)

    @property
    def is_jump(self):
        return self.target not in VERBS


def rule(target, params=(), **matches):
    """Build a Rule; ``params`` may be a dict for readability."""
    if isinstance(params, dict):
        params = tuple(sorted(params.items()))
    unknown = set(matches) - set(_RULE_FIELDS)
    if unknown:
        raise TypeError("unknown rule fields: %s" % ", ".join(sorted(unknown)))
    values = dict.fromkeys(_RULE_FIELDS)
    values.update(matches)
    values["target"] = target
    values["params"] = tuple(params)
    return Rule(**values)


def negated(value):
    """Split a possibly negated match value into (is_negated, value)."""
    if isinstance(value, str) and value.startswith("!"):
        return True, value[1:]
    return False, value


# A policy-routing rule and a route, as `ip rule` / `ip route` understand them.
IpRule = namedtuple("IpRule", ("family", "fwmark", "table"))
IpRoute = namedtuple("IpRoute", ("family", "table", "device"))


class FamilyRules(namedtuple("FamilyRules", ("family", "chains", "jumps", "ip_rules", "ip_routes"))):
    """Everything one address family needs.

    ``chains``: {(table, chain): (Rule, ...)} for our own chains, in the order
    they are created. ``jumps``: {(table, builtin_chain): (Rule, ...)}, the
    rules we place in built-in chains (always jumps into our chains).
    """

    __slots__ = ()

    def tables(self):
        used = {key[0] for key in self.chains} | {key[0] for key in self.jumps}
        return [table for table in TABLES if table in used]

    def is_empty(self):
        return not (self.chains or self.jumps or self.ip_rules or self.ip_routes)


def empty_family(family):
    return FamilyRules(family, {}, {}, (), ())
