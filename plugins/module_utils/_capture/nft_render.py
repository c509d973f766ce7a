# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Our rules as one native ``inet`` table, in the exact text ``nft`` lists.

Both families live in one table so they apply in one transaction. Each
iptables chain becomes an nft chain named ``<table>_<chain>`` (for example
``nat_PREROUTING``, ``nat_ISTIO_OUTPUT``); base chains take the hook and
priority of the iptables table they stand for. The table is rendered in the
canonical form that ``nft`` prints with ``nft.list_args``, so the host's
listing and ours compare as text. Only the nftables backend needs it.
"""

import ipaddress

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.model import (
    ACCEPT,
    CONNMARK_RESTORE,
    CONNMARK_SAVE,
    CT_ZONE,
    DROP,
    FAMILIES,
    IPV4,
    IPV6,
    MARK,
    REDIRECT,
    RETURN,
    TABLES,
    TPROXY,
    negated,
)

# nfproto and l4proto numbers, as ``nft -n`` prints them.
_NFPROTO = {IPV4: 2, IPV6: 10}
_L4PROTO = {"tcp": 6, "udp": 17}
_ADDRESS_MATCH = {IPV4: "ip", IPV6: "ip6"}
_ADDRESS_TYPES = {"LOCAL": 2}
_CT_STATE_BITS = {"INVALID": 0x1, "ESTABLISHED": 0x2, "RELATED": 0x4, "NEW": 0x8, "UNTRACKED": 0x40}

# (iptables table, built-in chain) -> (nft chain type, hook, priority): where
# the iptables table hooks in, so our chains run exactly where theirs would.
BASE_CHAINS = {
    ("raw", "PREROUTING"): ("filter", "prerouting", -300),
    ("raw", "OUTPUT"): ("filter", "output", -300),
    ("mangle", "PREROUTING"): ("filter", "prerouting", -150),
    ("mangle", "INPUT"): ("filter", "input", -150),
    ("mangle", "FORWARD"): ("filter", "forward", -150),
    # A mark set in mangle OUTPUT must re-route the packet, as iptables does.
    ("mangle", "OUTPUT"): ("route", "output", -150),
    ("mangle", "POSTROUTING"): ("filter", "postrouting", -150),
    ("nat", "PREROUTING"): ("nat", "prerouting", -100),
    ("nat", "INPUT"): ("nat", "input", 100),
    ("nat", "OUTPUT"): ("nat", "output", -100),
    ("nat", "POSTROUTING"): ("nat", "postrouting", 100),
}


def chain_name(table: str, chain: str) -> str:
    """The nft chain standing for iptables ``chain`` in ``table``."""
    return "%s_%s" % (table, chain)


# -- one rule ----------------------------------------------------------------------


def _address_text(cidr):
    network = ipaddress.ip_network(cidr, strict=False)
    address = network.network_address
    text = str(address)
    if network.version == 6:
        text = _ipv6_text(address)
    if network.prefixlen == network.max_prefixlen:
        return text
    return "%s/%d" % (text, network.prefixlen)


def _ipv6_text(address):
    """An IPv6 address as inet_ntop prints it (embedded IPv4 in dotted form)."""
    packed = address.packed
    words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, 16, 2)]
    dotted = str(ipaddress.IPv4Address(packed[12:]))
    if words[:5] == [0] * 5 and words[5] == 0xFFFF:
        return "::ffff:" + dotted
    if words[:6] == [0] * 6 and words[6] != 0:
        return "::" + dotted
    return str(address)


def _compare(value):
    is_negated, value = negated(value)
    return ("!= " if is_negated else "") + str(value)


def _port_set(value):
    is_negated, ports = negated(value)
    if not isinstance(ports, str):
        ports = ",".join(str(port) for port in ports)
    return "%s{ %s }" % ("!= " if is_negated else "", ", ".join(ports.split(",")))


def _mark(value):
    return "0x%08x" % value


def _ct_states(text):
    bits = sorted(_CT_STATE_BITS[state.strip().upper()] for state in text.split(","))
    return ",".join("0x%x" % bit for bit in bits)


def is_family_bound(rule) -> bool:
    """True when the rule's own text limits it to one family (an address match)."""
    return rule.src is not None or rule.dst is not None


def render_rule(rule, family: str, chain_of=None) -> list:
    """A Rule as ``nft -n`` lists it: one line, or two for TPROXY.

    ``chain_of`` maps a jump target (our iptables chain name) to its nft chain.
    TPROXY gets a second line that drops what found no proxy socket, since the
    nft statement falls through where the iptables target drops.
    """
    parts = []
    family_match = _ADDRESS_MATCH[family]
    for field, key in (("src", "saddr"), ("dst", "daddr")):
        value = getattr(rule, field)
        if value is not None:
            is_negated, cidr = negated(value)
            parts.append("%s %s %s%s" % (family_match, key, "!= " if is_negated else "", _address_text(cidr)))
    if rule.in_iface is not None:
        parts.append('iifname "%s"' % rule.in_iface)
    if rule.out_iface is not None:
        parts.append('oifname "%s"' % rule.out_iface)
    if rule.sport is None and rule.dport is None and rule.syn is None and rule.dports is None:
        if rule.proto is not None:
            parts.append("meta l4proto %d" % _L4PROTO[rule.proto])
    else:
        # A port or flags match carries its protocol; nft hides the l4proto dependency.
        if rule.sport is not None:
            parts.append("%s sport %s" % (rule.proto, _compare(rule.sport)))
        if rule.dport is not None:
            parts.append("%s dport %s" % (rule.proto, _compare(rule.dport)))
        if rule.syn is not None:
            parts.append("tcp flags %s0x2 / 0x1,0x2,0x4,0x10" % ("" if rule.syn else "!= "))
    if rule.dports is not None:
        parts.append("%s dport %s" % (rule.proto, _port_set(rule.dports)))
    if rule.mark is not None:
        is_negated, mark = negated(rule.mark)
        parts.append("meta mark %s%s" % ("!= " if is_negated else "", _mark(int(mark))))
    if rule.connmark is not None:
        parts.append("ct mark %s" % _mark(rule.connmark))
    if rule.ctstate is not None:
        parts.append("ct state %s" % _ct_states(rule.ctstate))
    if rule.dst_type is not None:
        is_negated, kind = negated(rule.dst_type)
        # nft -n lists the address type as its number (RTN_LOCAL).
        parts.append("fib daddr type %s%d" % ("!= " if is_negated else "", _ADDRESS_TYPES[kind]))
    # Unlike the owner match, meta skuid/skgid never match a packet without a
    # socket, negated or not; our owner rules sit in OUTPUT on new TCP/UDP
    # flows, which always have one.
    if rule.uid_owner is not None:
        parts.append("meta skuid %s" % _compare(rule.uid_owner))
    if rule.gid_owner is not None:
        parts.append("meta skgid %s" % _compare(rule.gid_owner))
    for group in rule.gid_owner_none or ():
        parts.append("meta skgid != %d" % group)
    if rule.target == TPROXY and not is_family_bound(rule):
        # tproxy names its family; say so in the match too.
        parts.insert(0, "meta nfproto %d" % _NFPROTO[family])
    matches = " ".join(parts)
    lines = [_join(matches, _statement(rule, family, chain_of))]
    if rule.target == TPROXY:
        lines.append(_join(matches, "drop"))
    return lines


def _join(matches, statement):
    return "%s %s" % (matches, statement) if matches else statement


# Verbs whose statement takes no parameter.
_FIXED_STATEMENTS = {
    RETURN: "return",
    ACCEPT: "accept",
    DROP: "drop",
    CONNMARK_SAVE: "ct mark set meta mark",
    CONNMARK_RESTORE: "meta mark set ct mark",
}


def _statement(rule, family, chain_of):
    target = rule.target
    if rule.is_jump:
        return "jump %s" % (chain_of(target) if chain_of else target)
    if target in _FIXED_STATEMENTS:
        return _FIXED_STATEMENTS[target]
    if target == REDIRECT:
        return "redirect to :%d" % rule.param("to_ports")
    if target == TPROXY:
        on_ip = rule.param("on_ip")
        address = "" if ipaddress.ip_address(on_ip).is_unspecified else _address_text(on_ip)
        if address and family == IPV6:
            address = "[%s]" % address
        return "tproxy %s to %s:%d meta mark set %s accept" % (
            _ADDRESS_MATCH[family],
            address,
            rule.param("on_port"),
            _mark(rule.param("mark")),
        )
    if target == MARK:
        return "meta mark set %s" % _mark(rule.param("mark"))
    if target == CT_ZONE:
        return "ct zone set %d" % rule.param("zone")
    raise ValueError("no nftables form for target %r" % target)


# -- the table ---------------------------------------------------------------------


def _family_chains(family_rules):
    """{(table, chain): rules} of one family, base chains (the jumps) included."""
    chains = dict(family_rules.chains)
    for key, rules in family_rules.jumps.items():
        chains[key] = tuple(rules)
    return chains


def _reachable(family_rules):
    """Our chains that packets of this family can reach from a base chain."""
    graph = _family_chains(family_rules)
    seen = set()
    todo = list(family_rules.jumps)
    while todo:
        table, chain = todo.pop()
        for rule in graph.get((table, chain), ()):
            target = (table, rule.target)
            if rule.is_jump and target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _chain_order(keys):
    base = [key for key in BASE_CHAINS if key in keys]
    unknown = [key for key in keys if key[0] not in TABLES]
    if unknown:
        raise ValueError("no nftables form for table %r" % unknown[0][0])
    own = sorted((key for key in keys if key not in BASE_CHAINS), key=lambda k: (TABLES.index(k[0]), k[1]))
    return base + own


def _merge(sequences):
    """Interleave per-family rule lists, sharing family-neutral rules both agree on.

    ``sequences``: {family: [(shareable_key or None, item)]}. Returns
    [(families, item)] keeping each family's own order. Shared items are a
    longest common subsequence of the shareable keys.
    """
    families = [family for family in FAMILIES if family in sequences]
    if len(families) == 1:
        return [((families[0],), pair[1]) for pair in sequences[families[0]]]
    first, second = (sequences[family] for family in families)
    anchors = _common_anchors([pair[0] for pair in first], [pair[0] for pair in second])
    merged = []
    i = j = 0
    for a, b in [*anchors, (len(first), len(second))]:
        merged += [((families[0],), pair[1]) for pair in first[i:a]]
        merged += [((families[1],), pair[1]) for pair in second[j:b]]
        if a < len(first):
            merged.append((tuple(families), first[a][1]))
        i, j = a + 1, b + 1
    return merged


def _common_anchors(left, right):
    """Index pairs of a longest common subsequence of the non-None keys."""
    prefix = 0
    while prefix < min(len(left), len(right)) and left[prefix] is not None and left[prefix] == right[prefix]:
        prefix += 1
    suffix = 0
    while (
        suffix < min(len(left), len(right)) - prefix
        and left[-1 - suffix] is not None
        and left[-1 - suffix] == right[-1 - suffix]
    ):
        suffix += 1
    middle_left = left[prefix : len(left) - suffix]
    middle_right = right[prefix : len(right) - suffix]
    pairs = [(k, k) for k in range(prefix)]
    pairs += [(a + prefix, b + prefix) for a, b in _lcs(middle_left, middle_right)]
    pairs += [(len(left) - suffix + k, len(right) - suffix + k) for k in range(suffix)]
    return pairs


def _lcs(left, right):
    # Only shareable keys take part; the rest can never pair.
    lkeys = [(i, key) for i, key in enumerate(left) if key is not None]
    rkeys = [(j, key) for j, key in enumerate(right) if key is not None]
    rows, cols = len(lkeys), len(rkeys)
    table = [[0] * (cols + 1) for row in range(rows + 1)]
    for r in range(rows - 1, -1, -1):
        for c in range(cols - 1, -1, -1):
            if lkeys[r][1] == rkeys[c][1]:
                table[r][c] = table[r + 1][c + 1] + 1
            else:
                table[r][c] = max(table[r + 1][c], table[r][c + 1])
    pairs = []
    r = c = 0
    while r < rows and c < cols:
        if lkeys[r][1] == rkeys[c][1]:
            pairs.append((lkeys[r][0], rkeys[c][0]))
            r += 1
            c += 1
        elif table[r + 1][c] >= table[r][c + 1]:
            r += 1
        else:
            c += 1
    return pairs


def table_lines(family_rules_list) -> dict:
    """{nft chain name: (header or None, [rule lines])} in listing order.

    A rule that is the same in both families and names no address is written
    once; a rule only one family has is limited to it with ``meta nfproto``
    wherever packets of the other family could reach that chain.
    """
    by_family = {}
    for family_rules in family_rules_list:
        if family_rules.family in by_family:
            raise ValueError("family %s given twice" % family_rules.family)
        by_family[family_rules.family] = family_rules
    chains = {family: _family_chains(rules) for family, rules in by_family.items()}
    reach = {family: _reachable(rules) for family, rules in by_family.items()}

    def chain_of(table):
        return lambda chain: chain_name(table, chain)

    keys = set()
    for family_chains in chains.values():
        keys.update(family_chains)
    out = {}
    for key in _chain_order(keys):
        table, chain = key
        if key in BASE_CHAINS:
            arriving = set(FAMILIES)  # an inet hook sees both families
            kind, hook, priority = BASE_CHAINS[key]
            header = "type %s hook %s priority %d; policy accept;" % (kind, hook, priority)
        else:
            arriving = {family for family in by_family if key in reach[family]}
            header = None
        sequences = {}
        for family in by_family:
            if key not in chains[family]:
                continue
            items = []
            for rule in chains[family][key]:
                lines = render_rule(rule, family, chain_of(table))
                items.append((None if is_family_bound(rule) or rule.target == TPROXY else tuple(lines), (rule, lines)))
            sequences[family] = items
        lines = []
        for families, (rule, rule_lines) in _merge(sequences):
            needs_limit = not is_family_bound(rule) and rule.target != TPROXY and not arriving <= set(families)
            if needs_limit:
                rule_lines = ["meta nfproto %d %s" % (_NFPROTO[families[0]], line) for line in rule_lines]
            lines += rule_lines
        out[chain_name(table, chain)] = (header, lines)
    return out


def render_table(name: str, family_rules_list) -> str:
    """Our whole ``table inet NAME`` exactly as ``nft list_args(name)`` prints it."""
    blocks = []
    for chain, (header, lines) in table_lines(family_rules_list).items():
        body = ([header] if header else []) + lines
        blocks.append("\tchain %s {\n%s\t}\n" % (chain, "".join("\t\t%s\n" % line for line in body)))
    return "table inet %s {\n%s}\n" % (name, "\n".join(blocks))
