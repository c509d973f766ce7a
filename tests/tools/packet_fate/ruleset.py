"""iptables rules as data: tables of chains of rules, read from text.

Reads every form the capture tests meet: ``iptables-restore`` input (ours, with
``:CHAIN - [0:0]`` declarations and ``-I BUILTIN N``), ``iptables-save`` output
(canonical: ``-m tcp --dport 22``, ``--set-xmark 0x539/0xffffffff``), ``iptables -S``
listings, and Istio's command listings (``* nat``, ``-N``, ``-I CHAIN N``, short forms
such as ``-p tcp --dport 15008``, ``--set-mark 1337``, ``--to-port``). Values are
parsed here, so a typo or an unsupported match fails at read time, naming the rule.
"""

import ipaddress
import shlex
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

BUILTIN_CHAINS = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}

# Targets that are not user chains. Terminating ones end the table's traversal.
STANDARD_TARGETS = ("ACCEPT", "DROP", "RETURN", "REJECT")
EXTENSION_TARGETS = ("REDIRECT", "DNAT", "TPROXY", "MARK", "CONNMARK", "CT", "NOTRACK", "LOG")
FULL_MASK = 0xFFFFFFFF

PROTOCOL_NUMBERS = {"6": "tcp", "17": "udp", "1": "icmp", "58": "ipv6-icmp", "0": "all"}
TCP_FLAGS = {"FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10, "URG": 0x20}
CT_STATES = ("NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED", "SNAT", "DNAT")
ADDRESS_TYPES = ("LOCAL", "UNICAST", "BROADCAST", "MULTICAST", "UNSPEC")


class RuleError(ValueError):
    """Text that is not a rule set we can evaluate; the message names the line."""


@dataclass(frozen=True)
class Match:
    """One condition of a rule: ``kind`` (e.g. "dst", "dport", "uid"), negated or not, a parsed value."""

    kind: str
    negated: bool
    value: object = None


@dataclass(frozen=True)
class Target:
    """What a matching rule does: a standard verdict, an extension target, or a jump/goto to a chain."""

    name: str
    goto: bool = False
    params: Tuple[Tuple[str, object], ...] = ()

    def param(self, key, default=None):
        return dict(self.params).get(key, default)


@dataclass(frozen=True)
class Rule:
    table: str
    chain: str
    matches: Tuple[Match, ...]
    target: Optional[Target]  # None: a rule without -j only counts packets
    text: str  # the rule as written (without -A CHAIN), for traces


@dataclass
class Ruleset:
    """Tables of chains, in rule order; built-in chains exist (empty, ACCEPT) unless a policy says otherwise."""

    tables: Dict[str, Dict[str, List[Rule]]] = field(default_factory=dict)
    policies: Dict[Tuple[str, str], str] = field(default_factory=dict)

    def table(self, name):
        if name not in self.tables:
            self.tables[name] = {chain: [] for chain in BUILTIN_CHAINS.get(name, ())}
        return self.tables[name]

    def rules_of(self, table, chain):
        return self.tables.get(table, {}).get(chain, [])

    def policy(self, table, chain):
        return self.policies.get((table, chain), "ACCEPT")

    def all_rules(self):
        for chains in self.tables.values():
            for rules in chains.values():
                yield from rules

    def reachable_rules(self):
        """Rules in built-in chains and in chains they jump to, directly or not."""
        seen = set()
        for table, chains in self.tables.items():
            todo = [c for c in BUILTIN_CHAINS.get(table, ()) if c in chains]
            while todo:
                chain = todo.pop()
                if (table, chain) in seen:
                    continue
                seen.add((table, chain))
                for rule in chains.get(chain, []):
                    if rule.target is not None and rule.target.name in chains:
                        todo.append(rule.target.name)
        return [rule for rule in self.all_rules() if (rule.table, rule.chain) in seen]


def parse_rules(text: str, table: Optional[str] = None) -> Ruleset:
    """A Ruleset from restore/save/``-S`` text; ``table`` is the table of lines outside any ``*table``."""
    ruleset = Ruleset()
    current = table
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            current = _parse_line(ruleset, current, line)
        except RuleError as error:
            raise RuleError("line %d %r: %s" % (number, line, error)) from None
    _check_jumps(ruleset)
    return ruleset


def _parse_line(ruleset, table, line):
    """Apply one line; returns the table the next line belongs to."""
    if line.startswith("*"):
        name = line[1:].strip()
        if name not in BUILTIN_CHAINS:
            raise RuleError("unknown table %r" % name)
        ruleset.table(name)
        return name
    if line == "COMMIT":
        return None
    words = _split(line)
    if words[:1] == ["-t"] and len(words) > 2:
        table, words = words[1], words[2:]
    if table is None:
        raise RuleError("a rule outside any table")
    chains = ruleset.table(table)
    if line.startswith(":"):
        name, policy = words[0][1:], words[1] if len(words) > 1 else "-"
        if name in BUILTIN_CHAINS[table]:
            if policy != "-":
                ruleset.policies[(table, name)] = policy
        else:
            chains[name] = []  # declaring a chain creates or empties it
        return table
    command, args = words[0], words[1:]
    if command in ("-N", "--new-chain"):
        _need(args, 1, command)
        if args[0] in chains:
            raise RuleError("chain %s already exists" % args[0])
        chains[args[0]] = []
    elif command in ("-P", "--policy"):
        _need(args, 2, command)
        _existing(chains, args[0])
        ruleset.policies[(table, args[0])] = args[1]
    elif command in ("-A", "--append"):
        _need(args, 1, command)
        _existing(chains, args[0]).append(_parse_rule(table, args[0], args[1:]))
    elif command in ("-I", "--insert"):
        _need(args, 1, command)
        rules = _existing(chains, args[0])
        spec = args[1:]
        position = 1
        if spec and spec[0].isdigit():
            position, spec = int(spec[0]), spec[1:]
        if not 1 <= position <= len(rules) + 1:
            raise RuleError("index of insertion too big: %d" % position)
        rules.insert(position - 1, _parse_rule(table, args[0], spec))
    elif command in ("-D", "--delete"):
        _need(args, 2, command)
        _delete(_existing(chains, args[0]), table, args[0], args[1:])
    elif command in ("-F", "--flush"):
        for name in args[:1] or list(chains):
            _existing(chains, name).clear()
    elif command in ("-X", "--delete-chain"):
        for name in args[:1] or [c for c in chains if c not in BUILTIN_CHAINS[table]]:
            _existing(chains, name)
            if name in BUILTIN_CHAINS[table]:
                raise RuleError("cannot delete built-in chain %s" % name)
            del chains[name]
    else:
        raise RuleError("unknown command %r" % command)
    return table


def _split(line):
    try:
        return shlex.split(line)
    except ValueError as error:
        raise RuleError(str(error)) from None


def _need(args, count, command):
    if len(args) < count:
        raise RuleError("%s needs %d argument(s)" % (command, count))


def _existing(chains, name):
    if name not in chains:
        raise RuleError("no chain %s" % name)
    return chains[name]


def _delete(rules, table, chain, spec):
    if len(spec) == 1 and spec[0].isdigit():
        index = int(spec[0]) - 1
        if not 0 <= index < len(rules):
            raise RuleError("no rule %s in %s" % (spec[0], chain))
        del rules[index]
        return
    wanted = _parse_rule(table, chain, spec)
    for index, rule in enumerate(rules):
        if (rule.matches, rule.target) == (wanted.matches, wanted.target):
            del rules[index]
            return
    raise RuleError("no such rule in %s" % chain)


def _check_jumps(ruleset):
    for table, chains in ruleset.tables.items():
        for rules in chains.values():
            for rule in rules:
                target = rule.target
                if target is None or target.name in STANDARD_TARGETS + EXTENSION_TARGETS:
                    continue
                if target.name not in chains:
                    raise RuleError(
                        "%s %s, in rule %r: jump to a chain that does not exist: %s"
                        % (table, rule.chain, rule.text, target.name)
                    )
                if target.name in BUILTIN_CHAINS[table]:
                    raise RuleError("%s %s, in rule %r: jump to a built-in chain" % (table, rule.chain, rule.text))


# -- one rule ------------------------------------------------------------------

# Options of each match module: option -> (match kind, number of arguments).
_PORTS = {"--dport": ("dport", 1), "--destination-port": ("dport", 1), "--sport": ("sport", 1)}
_PORTS["--source-port"] = ("sport", 1)
MATCH_OPTIONS = {
    "tcp": {**_PORTS, "--tcp-flags": ("tcp-flags", 2), "--syn": ("syn", 0)},
    "udp": dict(_PORTS),
    "multiport": {
        "--dports": ("dports", 1),
        "--destination-ports": ("dports", 1),
        "--sports": ("sports", 1),
        "--source-ports": ("sports", 1),
        "--ports": ("ports", 1),
    },
    "owner": {
        "--uid-owner": ("uid", 1),
        "--gid-owner": ("gid", 1),
        "--socket-exists": ("socket", 0),
        "--suppl-groups": ("suppl-groups", 0),
    },
    "mark": {"--mark": ("mark", 1)},
    "connmark": {"--mark": ("connmark", 1)},
    "conntrack": {"--ctstate": ("ctstate", 1)},
    "state": {"--state": ("ctstate", 1)},
    "addrtype": {"--src-type": ("src-type", 1), "--dst-type": ("dst-type", 1)},
    "comment": {"--comment": ("comment", 1)},
}

_BASIC = {
    "-s": "src",
    "--source": "src",
    "--src": "src",
    "-d": "dst",
    "--destination": "dst",
    "--dst": "dst",
    "-i": "in",
    "--in-interface": "in",
    "-o": "out",
    "--out-interface": "out",
    "-p": "proto",
    "--protocol": "proto",
}

# Options of each target: option -> (parameter, number of arguments). getopt lets
# iptables take unambiguous prefixes; the ones met in practice are listed.
TARGET_OPTIONS = {
    "REDIRECT": {"--to-ports": ("to_ports", 1), "--to-port": ("to_ports", 1), "--random": ("random", 0)},
    "DNAT": {"--to-destination": ("to", 1), "--to": ("to", 1)},
    "TPROXY": {"--on-port": ("on_port", 1), "--on-ip": ("on_ip", 1), "--tproxy-mark": ("tproxy_mark", 1)},
    "MARK": {
        "--set-mark": ("set_mark", 1),
        "--set-xmark": ("set_xmark", 1),
        "--and-mark": ("and_mark", 1),
        "--or-mark": ("or_mark", 1),
        "--xor-mark": ("xor_mark", 1),
    },
    "CONNMARK": {
        "--save-mark": ("save", 0),
        "--restore-mark": ("restore", 0),
        "--nfmask": ("nfmask", 1),
        "--ctmask": ("ctmask", 1),
        "--mask": ("mask", 1),
        "--set-mark": ("set_mark", 1),
        "--set-xmark": ("set_xmark", 1),
    },
    "CT": {"--zone": ("zone", 1), "--notrack": ("notrack", 0)},
    "REJECT": {"--reject-with": ("reject_with", 1)},
    "LOG": {"--log-prefix": ("prefix", 1), "--log-level": ("level", 1)},
}


def _parse_rule(table, chain, words):
    matches = []
    modules = []  # match modules in the order named; options go to the latest that knows them
    proto = None
    negate = False
    target = None
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word == "!":
            if negate:
                raise RuleError("double negation")
            negate = True
            continue
        if word in _BASIC:
            value, index = _take(words, index, word)
            kind = _BASIC[word]
            if kind == "proto":
                proto = PROTOCOL_NUMBERS.get(value, value.lower())
                value = proto
            matches.append(Match(kind, negate, _basic_value(kind, value)))
        elif word in ("-m", "--match"):
            if negate:
                raise RuleError("'!' before -m")
            name, index = _take(words, index, word)
            if name not in MATCH_OPTIONS:
                raise RuleError("unsupported match module %r" % name)
            modules.append(name)
        elif word in ("-j", "--jump", "-g", "--goto"):
            if negate:
                raise RuleError("'!' before %s" % word)
            name, index = _take(words, index, word)
            target = _parse_target(name, word in ("-g", "--goto"), words[index:])
            break
        elif word.startswith("--"):
            kind, count = _match_option(word, modules, proto)
            args = words[index : index + count]
            if len(args) < count:
                raise RuleError("%s needs %d argument(s)" % (word, count))
            index += count
            matches.append(Match(kind, negate, _match_value(kind, args)))
        else:
            raise RuleError("unsupported word %r" % word)
        negate = False
    if negate:
        raise RuleError("'!' at the end of the rule")
    if any(m.kind == "suppl-groups" for m in matches):
        matches = [Match("gid+suppl", m.negated, m.value) if m.kind == "gid" else m for m in matches]
        matches = [m for m in matches if m.kind != "suppl-groups"]
    return Rule(table, chain, tuple(matches), target, " ".join(_quote(w) for w in words))


def _quote(word):
    return shlex.quote(word) if (" " in word or not word) else word


def _take(words, index, option):
    if index >= len(words):
        raise RuleError("%s needs a value" % option)
    return words[index], index + 1


def _match_option(option, modules, proto):
    for module in reversed(modules):
        if option in MATCH_OPTIONS[module]:
            return MATCH_OPTIONS[module][option]
    # -p tcp/udp loads its match implicitly: "-p tcp --dport 15008"
    if proto in ("tcp", "udp") and option in MATCH_OPTIONS[proto]:
        return MATCH_OPTIONS[proto][option]
    raise RuleError("option %s belongs to no match in this rule" % option)


def _basic_value(kind, value):
    if kind in ("src", "dst"):
        return parse_network(value)
    if kind in ("in", "out"):
        if not value or len(value) > 15:
            raise RuleError("bad interface name %r" % value)
        return value
    return value


def parse_network(text):
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise RuleError("not an address or CIDR: %r" % text) from None


def _match_value(kind, args):
    if kind in ("dport", "sport"):
        return _port_range(args[0])
    if kind in ("dports", "sports", "ports"):
        ranges = tuple(_port_range(part) for part in args[0].split(","))
        if len(ranges) > 15:
            raise RuleError("multiport takes at most 15 ports")
        return ranges
    if kind == "tcp-flags":
        return (_flag_bits(args[0]), _flag_bits(args[1]))
    if kind == "syn":
        return (_flag_bits("FIN,SYN,RST,ACK"), _flag_bits("SYN"))
    if kind in ("uid", "gid"):
        return _id_range(args[0])
    if kind in ("mark", "connmark"):
        return parse_mark(args[0])
    if kind == "ctstate":
        states = frozenset(args[0].upper().split(","))
        unknown = states - set(CT_STATES)
        if unknown:
            raise RuleError("unknown conntrack state(s) %s" % ",".join(sorted(unknown)))
        return states
    if kind in ("src-type", "dst-type"):
        types = frozenset(args[0].upper().split(","))
        unknown = types - set(ADDRESS_TYPES)
        if unknown:
            raise RuleError("unsupported address type(s) %s" % ",".join(sorted(unknown)))
        return types
    if kind == "comment":
        return args[0]
    return None  # socket, suppl-groups: flags without a value


def _port_range(text):
    low, colon, high = text.partition(":")
    try:
        first = int(low) if low else 0
        last = int(high) if high else (65535 if colon else first)
    except ValueError:
        raise RuleError("not a port or port range: %r" % text) from None
    if not 0 <= first <= last <= 65535:
        raise RuleError("not a port or port range: %r" % text)
    return (first, last)


def _flag_bits(text):
    if text in ("ALL",):
        return sum(TCP_FLAGS.values())
    if text in ("NONE",):
        return 0
    bits = 0
    for name in text.split(","):
        if name not in TCP_FLAGS:
            raise RuleError("unknown TCP flag %r" % name)
        bits |= TCP_FLAGS[name]
    return bits


def _id_range(text):
    """A numeric id or range (returned as (low, high)), or a name (returned as str, resolved by the host)."""
    low, _sep, high = text.partition("-")
    if low.isdigit() and (not high or high.isdigit()):
        return (int(low), int(high or low))
    return text


def parse_mark(text):
    """``value[/mask]`` in decimal or hex, as (value, mask); no mask means all 32 bits."""
    value, _sep, mask = text.partition("/")
    try:
        result = (int(value, 0), int(mask, 0) if mask else FULL_MASK)
    except ValueError:
        raise RuleError("not a mark: %r" % text) from None
    if not all(0 <= part <= FULL_MASK for part in result):
        raise RuleError("mark out of range: %r" % text)
    return result


def _parse_target(name, goto, words):
    options = TARGET_OPTIONS.get(name, {})
    params = {}
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word not in options:
            raise RuleError("unsupported option %r for target %s" % (word, name))
        key, count = options[word]
        args = words[index : index + count]
        if len(args) < count:
            raise RuleError("%s needs a value" % word)
        index += count
        params[key] = args[0] if count else True
    if goto and (name in STANDARD_TARGETS or name in EXTENSION_TARGETS):
        raise RuleError("-g needs a chain, not %s" % name)
    return Target(name, goto, tuple(sorted(_target_params(name, params).items())))


def _target_params(name, params):
    """Target options normalised to what the kernel does with them."""
    if name == "REDIRECT":
        if "to_ports" not in params:
            return {}
        low = params["to_ports"].split("-", 1)[0]
        return {"to_port": _port_range(low)[0]}
    if name == "DNAT":
        return {"to": _endpoint(params["to"])}
    if name == "TPROXY":
        if "on_port" not in params:
            raise RuleError("TPROXY needs --on-port")
        value, mask = parse_mark(params["tproxy_mark"]) if "tproxy_mark" in params else (0, 0)
        on_ip = ipaddress.ip_address(params["on_ip"]) if "on_ip" in params else None
        return {"on_port": _port_range(params["on_port"])[0], "on_ip": on_ip, "xmark": (value, mask)}
    if name == "MARK":
        return {"xmark": _xmark(params)}
    if name == "CONNMARK":
        if params.get("save") or params.get("restore"):
            both = parse_mark(params["mask"])[0] if "mask" in params else FULL_MASK
            nfmask = parse_mark(params["nfmask"])[0] if "nfmask" in params else both
            ctmask = parse_mark(params["ctmask"])[0] if "ctmask" in params else both
            return {"mode": "save" if params.get("save") else "restore", "nfmask": nfmask, "ctmask": ctmask}
        return {"mode": "set", "xmark": _xmark(params)}
    if name == "CT":
        if params.get("notrack"):
            return {"notrack": True}
        return {"zone": int(params.get("zone", 0))}
    return {}


def _xmark(params):
    """MARK/CONNMARK options as the kernel's (value, mask): new = (old & ~mask) ^ value."""
    if "set_xmark" in params:
        return parse_mark(params["set_xmark"])
    if "set_mark" in params:
        value, mask = parse_mark(params["set_mark"])
        return (value, mask | value)
    if "and_mark" in params:
        return (0, ~parse_mark(params["and_mark"])[0] & FULL_MASK)
    if "or_mark" in params:
        value = parse_mark(params["or_mark"])[0]
        return (value, value)
    if "xor_mark" in params:
        return (parse_mark(params["xor_mark"])[0], 0)
    raise RuleError("MARK needs a mark option")


def _endpoint(text):
    """DNAT's ``addr[:port]`` / ``[v6]:port`` as (address, port or None)."""
    if text.startswith("["):
        address, _sep, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        address, _sep, port = text.partition(":")
    else:
        address, port = text, ""
    try:
        return (ipaddress.ip_address(address), int(port) if port else None)
    except ValueError:
        raise RuleError("not an address[:port]: %r" % text) from None
