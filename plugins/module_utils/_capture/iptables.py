# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""iptables-save / iptables-restore text: render ours, read the host's, plan the change.

Rules are rendered in the canonical form ``iptables-save`` prints, so the
host's state and ours compare as text. A plan touches only our chains (found
by prefix) and the jumps into them; everything else in a table is left alone.
"""

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.model import (
    ACCEPT,
    BUILTIN_CHAINS,
    CONNMARK_RESTORE,
    CONNMARK_SAVE,
    CT_ZONE,
    DROP,
    MARK,
    REDIRECT,
    RETURN,
    TABLES,
    TPROXY,
    negated,
)

_FULL_MASK = "0xffffffff"


def _flag(name, value):
    is_negated, value = negated(value)
    return ("! " if is_negated else "") + "%s %s" % (name, value)


def render_rule(rule):
    """A Rule as ``iptables-save`` prints it (without ``-A CHAIN``)."""
    parts = []
    if rule.src is not None:
        parts.append(_flag("-s", rule.src))
    if rule.dst is not None:
        parts.append(_flag("-d", rule.dst))
    if rule.in_iface is not None:
        parts.append("-i %s" % rule.in_iface)
    if rule.out_iface is not None:
        parts.append("-o %s" % rule.out_iface)
    if rule.proto is not None:
        parts.append("-p %s" % rule.proto)
    if rule.sport is not None or rule.dport is not None or rule.syn is not None:
        parts.append("-m %s" % rule.proto)
        if rule.sport is not None:
            parts.append(_flag("--sport", rule.sport))
        if rule.dport is not None:
            parts.append(_flag("--dport", rule.dport))
        if rule.syn is not None:
            parts.append(("" if rule.syn else "! ") + "--tcp-flags FIN,SYN,RST,ACK SYN")
    if rule.dports is not None:
        parts.append("-m multiport " + _flag("--dports", rule.dports))
    if rule.mark is not None:
        is_negated, mark = negated(rule.mark)
        parts.append("-m mark %s--mark %s" % ("! " if is_negated else "", hex(int(mark))))
    if rule.connmark is not None:
        parts.append("-m connmark --mark %s" % hex(rule.connmark))
    if rule.ctstate is not None:
        parts.append("-m conntrack --ctstate %s" % rule.ctstate)
    if rule.dst_type is not None:
        parts.append("-m addrtype " + _flag("--dst-type", rule.dst_type))
    if rule.uid_owner is not None:
        parts.append("-m owner " + _flag("--uid-owner", rule.uid_owner))
    if rule.gid_owner is not None:
        parts.append("-m owner " + _flag("--gid-owner", rule.gid_owner))
    for group in rule.gid_owner_none or ():
        parts.append("-m owner ! --gid-owner %d" % group)
    parts.append(_render_target(rule))
    return " ".join(parts)


def _render_target(rule):
    target = rule.target
    if target in (RETURN, ACCEPT, DROP) or rule.is_jump:
        return "-j %s" % target
    if target == REDIRECT:
        return "-j REDIRECT --to-ports %d" % rule.param("to_ports")
    if target == TPROXY:
        return "-j TPROXY --on-port %d --on-ip %s --tproxy-mark %s/%s" % (
            rule.param("on_port"),
            rule.param("on_ip"),
            hex(rule.param("mark")),
            _FULL_MASK,
        )
    if target == MARK:
        return "-j MARK --set-xmark %s/%s" % (hex(rule.param("mark")), _FULL_MASK)
    if target == CONNMARK_SAVE:
        return "-j CONNMARK --save-mark --nfmask %s --ctmask %s" % (_FULL_MASK, _FULL_MASK)
    if target == CONNMARK_RESTORE:
        return "-j CONNMARK --restore-mark --nfmask %s --ctmask %s" % (_FULL_MASK, _FULL_MASK)
    if target == CT_ZONE:
        return "-j CT --zone %d" % rule.param("zone")
    raise ValueError("no iptables form for target %r" % target)


class TableState:
    """Our part of one table: our chains with their rules, and the jumps into them."""

    def __init__(self, chains=None, jumps=None):
        self.chains = dict(chains or {})  # chain -> tuple of rule texts
        self.jumps = dict(jumps or {})  # builtin chain -> tuple of rule texts

    def __eq__(self, other):
        return self.chains == other.chains and self.jumps == other.jumps

    def __ne__(self, other):
        return not self == other

    def is_empty(self):
        return not self.chains and not any(self.jumps.values())

    def lines(self):
        """Our rules in iptables-save order, for reading and diffs."""
        out = ["-N %s" % chain for chain in sorted(self.chains)]
        for builtin in _in_builtin_order(self.jumps):
            out += ["-A %s %s" % (builtin, text) for text in self.jumps[builtin]]
        for chain in sorted(self.chains):
            out += ["-A %s %s" % (chain, text) for text in self.chains[chain]]
        return out


def _in_builtin_order(chains):
    return sorted(chains, key=lambda c: (BUILTIN_CHAINS.index(c) if c in BUILTIN_CHAINS else len(BUILTIN_CHAINS), c))


def desired_tables(family_rules):
    """{table: TableState} for a FamilyRules value."""
    tables = {}
    for (table, chain), rules in family_rules.chains.items():
        tables.setdefault(table, TableState()).chains[chain] = tuple(render_rule(r) for r in rules)
    for (table, builtin), rules in family_rules.jumps.items():
        tables.setdefault(table, TableState()).jumps[builtin] = tuple(render_rule(r) for r in rules)
    return tables


def parse_save(text, prefix):
    """Our part of ``iptables-save`` output: {table: TableState}, by chain prefix.

    A rule in a built-in chain is ours when its target is one of our chains.
    """
    tables = {}
    table = None
    builtins = set()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = line[1:]
            builtins = set()
            continue
        if table is None or line == "COMMIT":
            continue
        if line.startswith(":"):
            name, policy = line[1:].split()[:2]
            if name.startswith(prefix):
                tables.setdefault(table, TableState()).chains.setdefault(name, ())
            elif policy != "-":
                builtins.add(name)
            continue
        if not line.startswith("-A "):
            continue
        chain, spec = line.split(" ", 2)[1:]
        if chain.startswith(prefix):
            state = tables.setdefault(table, TableState())
            state.chains[chain] = (*state.chains.get(chain, ()), spec)
        elif _jump_target(spec).startswith(prefix):
            state = tables.setdefault(table, TableState())
            state.jumps[chain] = (*state.jumps.get(chain, ()), spec)
    return {name: state for name, state in tables.items() if not state.is_empty()}


def tables_in_save(text) -> frozenset:
    """The tables an ``iptables-save`` text holds (for iptables-nft: the tables that exist)."""
    return frozenset(line.strip()[1:] for line in text.splitlines() if line.startswith("*"))


def our_lines(tables) -> list:
    """{table: TableState} as ``*table -A ...`` lines, for diffs, read-backs and reports."""
    return ["*%s %s" % (table, line) for table in sorted(tables) for line in tables[table].lines()]


def _jump_target(spec):
    words = spec.split()
    for index, word in enumerate(words[:-1]):
        if word in ("-j", "-g"):
            return words[index + 1]
    return ""


def plan_restore(current, desired):
    """``iptables-restore --noflush`` text that takes ``current`` to ``desired``.

    Both are {table: TableState}. Returns "" when nothing differs. Only chains
    whose rules differ are rewritten; jumps are rewritten only when ours in a
    built-in chain differ; chains we no longer want are emptied and deleted.
    """
    blocks = []
    for table in TABLES:
        now = current.get(table, TableState())
        want = desired.get(table, TableState())
        if now == want:
            continue
        lines = ["*%s" % table]
        rewrite = [c for c in sorted(want.chains) if now.chains.get(c) != want.chains[c] or c not in now.chains]
        stale = [c for c in sorted(now.chains) if c not in want.chains]
        jump_chains = _in_builtin_order(set(now.jumps) | set(want.jumps))
        changed_jumps = [b for b in jump_chains if now.jumps.get(b, ()) != want.jumps.get(b, ())]
        # Declaring a chain creates it, or empties it if it exists.
        lines += [":%s - [0:0]" % chain for chain in rewrite]
        for builtin in changed_jumps:
            lines += ["-D %s %s" % (builtin, text) for text in now.jumps.get(builtin, ())]
        lines += ["-F %s" % chain for chain in stale]
        lines += ["-X %s" % chain for chain in stale]
        for chain in rewrite:
            lines += ["-A %s %s" % (chain, text) for text in want.chains[chain]]
        for builtin in changed_jumps:
            for position, text in enumerate(want.jumps.get(builtin, ()), start=1):
                lines.append("-I %s %d %s" % (builtin, position, text))
        lines.append("COMMIT")
        blocks.append("\n".join(lines))
    return "\n".join(blocks) + "\n" if blocks else ""


def render_full(desired):
    """Restore text that builds ``desired`` on a host without it (the rules file)."""
    return plan_restore({}, desired)
