"""The hooks a packet passes, the tables each hook runs, and what each rule does.

What the kernel does, as far as the capture rules can tell:

- A packet a local process sends: routing (with the socket's mark), then OUTPUT
  (raw, mangle, nat, filter), then routing again when mangle changed the mark or
  nat the destination, then POSTROUTING (mangle, nat). A packet routed to a local
  address (or by a fwmark rule to ``local default dev lo``) comes back in on lo:
  PREROUTING and INPUT run again, mangle and filter consulted anew, nat not (the
  connection's translation was settled in OUTPUT), and raw's CT targets do nothing
  (the packet keeps the conntrack entry it left with). It is delivered by the route
  it left with. Elsewhere too only the first CT target counts: it attaches the
  conntrack template, and later ones see it there.
- A packet arriving on an interface: PREROUTING (raw, mangle, nat), routing
  (destination and mark), then INPUT (mangle, filter, nat) for local delivery, or
  FORWARD (mangle, filter) and POSTROUTING (mangle, nat).
- nat runs only for a connection's first packet (conntrack state NEW or RELATED),
  never for ESTABLISHED, INVALID or UNTRACKED packets.
- REDIRECT sends to 127.0.0.1 / ::1 in OUTPUT and to the incoming interface's
  first address in PREROUTING. TPROXY (mangle PREROUTING) hands the packet to the
  transparent socket on its port and sets its mark; a packet so handed that routing
  would forward is dropped (the kernel does not forward packets with a socket).
- ``-m owner`` sees the sending socket only in OUTPUT and POSTROUTING; without a
  socket, negated owner matches match and the others do not.
"""

import ipaddress
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Mapping, Optional, Tuple, Union

from packet_fate.fate import Fate
from packet_fate.host import LOOPBACK, Host, family_of
from packet_fate.packet import Packet, Process
from packet_fate.ruleset import Rule, RuleError, Ruleset

HOOK_TABLES = {
    "PREROUTING": ("raw", "mangle", "nat"),
    "INPUT": ("mangle", "filter", "nat"),
    "FORWARD": ("mangle", "filter"),
    "OUTPUT": ("raw", "mangle", "nat", "filter"),
    "POSTROUTING": ("mangle", "nat"),
}
_MAX_STEPS = 100000
_MAX_DEPTH = 64


@dataclass(frozen=True)
class Decision:
    fate: Fate
    trace: Tuple[str, ...]  # every rule whose matches held, in order, with hook markers
    hits: FrozenSet[Tuple[str, str, int]]  # (table, chain, index from 0) of those rules

    def explain(self) -> str:
        return "\n".join(("  " + line) for line in self.trace) or "  (no rule matched)"


@dataclass
class _Journey:
    """One packet's mutable state on its way through the hooks."""

    host: Host
    family: str
    proto: str
    src: object
    sport: int
    dst: object
    dport: int
    tcp_flags: int
    ctstate: str
    mark: int
    connmark: int
    owner: Optional[Process] = None
    in_iface: Optional[str] = None
    out_iface: Optional[str] = None
    zone: int = 0
    ct_template: bool = False  # a CT target already chose the conntrack zone (or no tracking)
    dnat: bool = False
    looped: bool = False  # back in on lo, with the conntrack entry it left with
    tproxy_port: Optional[int] = None
    trace: list = field(default_factory=list)
    hits: set = field(default_factory=set)

    @property
    def nat_runs(self):
        return self.ctstate in ("NEW", "RELATED") and not self.looped

    @property
    def tracked(self):
        return self.ctstate not in ("INVALID", "UNTRACKED")


def decide(rules: Union[Ruleset, Mapping[str, Ruleset]], host: Host, packet: Packet) -> Decision:
    """The packet's fate under ``rules`` (one Ruleset, or {"ipv4": ..., "ipv6": ...}) on ``host``."""
    ruleset = rules.get(packet.family, Ruleset()) if isinstance(rules, Mapping) else rules
    journey = _Journey(
        host=host,
        family=packet.family,
        proto=packet.proto,
        src=packet.src,
        sport=packet.sport,
        dst=packet.dst,
        dport=packet.dport,
        tcp_flags=packet.tcp_flags,
        ctstate=packet.ctstate,
        mark=packet.mark,
        connmark=packet.connmark,
    )
    fate = _sent(ruleset, journey, packet) if packet.is_local else _arrived(ruleset, journey, packet)
    return Decision(fate, tuple(journey.trace), frozenset(journey.hits))


def _sent(ruleset, journey, packet):
    host = journey.host
    route = host.route(journey.dst, journey.mark)
    if route.kind == "unreachable":
        return _fate(journey, "drop")
    if journey.src is None:
        journey.src = host.source_for(journey.dst, route)
    journey.owner = packet.sender
    journey.out_iface = route.iface
    for table in HOOK_TABLES["OUTPUT"]:
        if table == "nat" and not journey.nat_runs:
            continue
        mark, dst = journey.mark, (journey.dst, journey.dport)
        if _run(ruleset, table, "OUTPUT", journey) == "DROP":
            return _fate(journey, "drop")
        if (journey.mark, (journey.dst, journey.dport)) != (mark, dst):
            route = host.route(journey.dst, journey.mark)  # the kernel routes the packet again
            if route.kind == "unreachable":
                return _fate(journey, "drop")
            journey.out_iface = route.iface
    if _hook(ruleset, "POSTROUTING", journey) == "DROP":
        return _fate(journey, "drop")
    if route.kind != "local":
        return _fate(journey, "out", iface=route.iface)
    # Back in on lo, delivered by the route it left with.
    journey.looped, journey.owner = True, None
    journey.in_iface, journey.out_iface = LOOPBACK, None
    if _hook(ruleset, "PREROUTING", journey) == "DROP":
        return _fate(journey, "drop")
    if journey.tproxy_port is not None:
        return _fate(journey, "tproxy", port=journey.tproxy_port)
    if _hook(ruleset, "INPUT", journey) == "DROP":
        return _fate(journey, "drop")
    return _delivered(journey)


def _arrived(ruleset, journey, packet):
    host = journey.host
    journey.in_iface = packet.in_iface
    host.interface(packet.in_iface)  # an unknown interface is a mistake in the packet
    if _hook(ruleset, "PREROUTING", journey) == "DROP":
        return _fate(journey, "drop")
    route = host.route(journey.dst, journey.mark)
    if journey.tproxy_port is not None:
        return _fate(journey, "tproxy", port=journey.tproxy_port) if route.kind == "local" else _fate(journey, "drop")
    if route.kind == "local":
        if _hook(ruleset, "INPUT", journey) == "DROP":
            return _fate(journey, "drop")
        return _delivered(journey)
    if route.kind == "unreachable":
        return _fate(journey, "drop")
    journey.out_iface = route.iface
    for hook in ("FORWARD", "POSTROUTING"):
        if _hook(ruleset, hook, journey) == "DROP":
            return _fate(journey, "drop")
    return _fate(journey, "forward", iface=route.iface)


def _delivered(journey):
    return _fate(journey, "redirect" if journey.dnat else "local", port=journey.dport)


def _fate(journey, action, port=None, iface=None):
    if action == "drop":
        return Fate("drop")
    to = None
    if journey.dnat and action in ("out", "forward"):
        to = ("[%s]:%d" if journey.family == "ipv6" else "%s:%d") % (journey.dst, journey.dport)
    connmark = journey.connmark if journey.tracked else 0
    return Fate(action, port, iface, journey.mark, connmark, journey.zone, to)


def _hook(ruleset, hook, journey):
    for table in HOOK_TABLES[hook]:
        if table == "nat" and not journey.nat_runs:
            continue
        if _run(ruleset, table, hook, journey) == "DROP":
            return "DROP"
    return "ACCEPT"


# -- one table's chains ---------------------------------------------------------------


def _run(ruleset, table, hook, journey):
    """Traverse ``table``'s built-in chain ``hook``; returns "ACCEPT" or "DROP"."""
    chains = ruleset.tables.get(table)
    if not chains or hook not in chains:
        return "ACCEPT"
    journey.trace.append("-- %s %s%s" % (table, hook, " (back in on lo)" if journey.looped else ""))
    stack = []
    chain, index = hook, 0
    for _step in range(_MAX_STEPS):
        rules = chains[chain]
        if index >= len(rules):
            if not stack:
                return ruleset.policy(table, hook)
            chain, index = stack.pop()
            continue
        rule = rules[index]
        index += 1
        if not all(_matches(match, journey) for match in rule.matches):
            continue
        journey.hits.add((table, chain, index - 1))
        journey.trace.append("%s %s #%d: %s" % (table, chain, index, rule.text))
        target = rule.target
        if target is None:
            continue
        if target.name in chains:
            if not target.goto:
                stack.append((chain, index))
                if len(stack) > _MAX_DEPTH:
                    raise RuleError("chains nest deeper than %d (a loop?)" % _MAX_DEPTH)
            chain, index = target.name, 0
            continue
        if target.name == "RETURN":
            if not stack:
                return ruleset.policy(table, hook)
            chain, index = stack.pop()
            continue
        verdict = _apply(rule, hook, journey)
        if verdict is not None:
            return verdict
    raise RuleError("%s %s: more than %d steps (a loop?)" % (table, hook, _MAX_STEPS))


def _apply(rule, hook, journey):
    """A target's effect; returns a verdict for terminating targets, else None."""
    target = rule.target
    name = target.name
    if name == "ACCEPT":
        return "ACCEPT"
    if name in ("DROP", "REJECT"):
        return "DROP"
    if name == "LOG":
        return None
    if name == "MARK":
        journey.mark = _xmark(journey.mark, target.param("xmark"))
        return None
    if name == "CONNMARK":
        if journey.tracked:
            _connmark(journey, target)
        return None
    if name in ("CT", "NOTRACK"):
        _where(rule, ("raw",), None)
        # The first CT target attaches a template; later ones, and all of them on a
        # packet back in on lo (it keeps its conntrack entry), do nothing.
        if not journey.looped and not journey.ct_template:
            journey.ct_template = True
            if name == "NOTRACK" or target.param("notrack"):
                journey.ctstate = "UNTRACKED"
            else:
                journey.zone = target.param("zone")
        return None
    if name == "REDIRECT":
        _where(rule, ("nat",), ("PREROUTING", "OUTPUT"), hook)
        address = _redirect_address(journey, hook)
        if address is None:
            return "DROP"
        port = target.param("to_port")
        _translate(journey, address, journey.dport if port is None else port)
        return "ACCEPT"
    if name == "DNAT":
        _where(rule, ("nat",), ("PREROUTING", "OUTPUT"), hook)
        address, port = target.param("to")
        if family_of(address) != journey.family:
            raise RuleError("DNAT to an address of the other family: %s" % rule.text)
        _translate(journey, address, journey.dport if port is None else port)
        return "ACCEPT"
    if name == "TPROXY":
        _where(rule, ("mangle",), ("PREROUTING",), hook)
        if journey.proto not in ("tcp", "udp"):
            return "DROP"
        journey.mark = _xmark(journey.mark, target.param("xmark"))
        journey.tproxy_port = target.param("on_port")
        return "ACCEPT"
    raise RuleError("no model of target %s (%s)" % (name, rule.text))


def _where(rule, tables, hooks, hook=None):
    if rule.table not in tables or (hooks and hook not in hooks):
        raise RuleError("%s is valid only in %s %s, not in %s %s" % (rule.target.name, tables, hooks, rule.table, hook))


def _xmark(mark, xmark):
    value, mask = xmark
    return (mark & ~mask & 0xFFFFFFFF) ^ value


def _connmark(journey, target):
    mode = target.param("mode")
    if mode == "save":
        journey.connmark = (journey.connmark & ~target.param("ctmask") & 0xFFFFFFFF) ^ (
            journey.mark & target.param("nfmask")
        )
    elif mode == "restore":
        journey.mark = (journey.mark & ~target.param("nfmask") & 0xFFFFFFFF) ^ (
            journey.connmark & target.param("ctmask")
        )
    else:
        journey.connmark = _xmark(journey.connmark, target.param("xmark"))


def _redirect_address(journey, hook):
    if hook == "OUTPUT":
        return ipaddress.ip_address("127.0.0.1" if journey.family == "ipv4" else "::1")
    return journey.host.first_address(journey.in_iface, journey.family)


def _translate(journey, address, port):
    journey.dst, journey.dport = address, port
    journey.dnat = True


# -- matches -------------------------------------------------------------------


def _matches(match, journey):
    return _MATCHERS[match.kind](match.value, journey) != match.negated


def _in_network(network, address):
    return address is not None and address.version == network.version and address in network


def _iface(pattern, name):
    if name is None:
        return False
    if pattern.endswith("+"):
        return name.startswith(pattern[:-1])
    return name == pattern


def _port_in(ranges, port):
    return any(low <= port <= high for low, high in ranges)


def _ports_apply(journey):
    return journey.proto in ("tcp", "udp")


def _owner(kind):
    def check(value, journey):
        owner = journey.owner
        if owner is None:
            return False  # with the negation applied by the caller: only negated owner matches hold
        if kind == "uid":
            number = owner.uid
            wanted = value if isinstance(value, tuple) else (journey.host.user_id(value),) * 2
            return wanted[0] <= number <= wanted[1]
        wanted = value if isinstance(value, tuple) else (journey.host.group_id(value),) * 2
        groups = (owner.gid, *owner.groups) if kind == "gid+suppl" else (owner.gid,)
        return any(wanted[0] <= gid <= wanted[1] for gid in groups)

    return check


def _address_types(address, journey):
    if journey.host.is_local(address):
        return {"LOCAL"}
    if address.is_multicast:
        return {"MULTICAST"}
    if address.version == 4 and address == ipaddress.ip_address("255.255.255.255"):
        return {"BROADCAST"}
    if address.is_unspecified:
        return {"UNSPEC"}
    return {"UNICAST"}


def _ctstates(journey):
    states = {journey.ctstate}
    if journey.dnat:
        states.add("DNAT")
    return states


_MATCHERS: Dict[str, object] = {
    "src": lambda v, j: _in_network(v, j.src),
    "dst": lambda v, j: _in_network(v, j.dst),
    "in": lambda v, j: _iface(v, j.in_iface),
    "out": lambda v, j: _iface(v, j.out_iface),
    "proto": lambda v, j: v == "all" or v == j.proto,
    "dport": lambda v, j: _ports_apply(j) and _port_in((v,), j.dport),
    "sport": lambda v, j: _ports_apply(j) and _port_in((v,), j.sport),
    "dports": lambda v, j: _ports_apply(j) and _port_in(v, j.dport),
    "sports": lambda v, j: _ports_apply(j) and _port_in(v, j.sport),
    "ports": lambda v, j: _ports_apply(j) and (_port_in(v, j.dport) or _port_in(v, j.sport)),
    "tcp-flags": lambda v, j: j.proto == "tcp" and j.tcp_flags & v[0] == v[1],
    "syn": lambda v, j: j.proto == "tcp" and j.tcp_flags & v[0] == v[1],
    "uid": _owner("uid"),
    "gid": _owner("gid"),
    "gid+suppl": _owner("gid+suppl"),
    "socket": lambda v, j: j.owner is not None,
    "mark": lambda v, j: j.mark & v[1] == v[0],
    "connmark": lambda v, j: j.tracked and j.connmark & v[1] == v[0],
    "ctstate": lambda v, j: bool(v & _ctstates(j)),
    "src-type": lambda v, j: bool(v & _address_types(j.src, j)),
    "dst-type": lambda v, j: bool(v & _address_types(j.dst, j)),
    "comment": lambda v, j: True,
}


def rule_at(ruleset: Ruleset, key: Tuple[str, str, int]) -> Rule:
    table, chain, index = key
    return ruleset.tables[table][chain][index]


def rule_keys(ruleset: Ruleset, reachable_only: bool = True):
    """(table, chain, index) of every rule (or every rule reachable from a built-in chain)."""
    keep = set(map(id, ruleset.reachable_rules())) if reachable_only else None
    keys = []
    for table, chains in ruleset.tables.items():
        for chain, rules in chains.items():
            for index, rule in enumerate(rules):
                if keep is None or id(rule) in keep:
                    keys.append((table, chain, index))
    return keys


__all__ = ["Decision", "decide", "rule_at", "rule_keys"]
