# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What should be, what is, and the change between them, as data.

``plan_capture(options, snapshot)`` is pure: from the options and one snapshot
of the host (host.observe) it returns a CapturePlan with one Step per place we
keep state (an iptables variant and family, the nftables table, policy routing
per family). A step holds the state before and after, and the change each way
as plain data (restore text, nft script, ip changes); apply.py runs them.
Check mode stops at the plan.
"""

from collections import namedtuple

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture import iptables as ipt
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture import nft
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.backend import (
    capture_families,
    choose_backend,
    require_families,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.errors import MissingFeature
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.host import (
    iptables_command_names,
    nft_family_word,
    routing_command,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.lines import added_removed
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.model import (
    BUILTIN_CHAINS,
    FAMILIES,
    IPTABLES_VARIANTS,
    TABLES,
    empty_family,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.rules import build_family, dns_captured
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.script import render_script

# The change an iptables step makes: restore text ("" for none) for
# ``iptables-restore --noflush``, then an nft script ("" for none) that deletes
# the empty tables or built-in chains iptables-nft made for our rules.
IptablesChange = namedtuple("IptablesChange", ("restore", "tidy"))


class Step(
    namedtuple(
        "Step",
        (
            "kind",  # "iptables" | "nftables" | "routing"
            "key",  # (variant, family) | table name | family
            "label",  # e.g. "iptables-nft ipv4"
            "before",  # the state found: {table: TableState} | listing text | (rules, routes)
            "after",  # the state wanted, in the same form
            "forward",  # the change before -> after: IptablesChange | nft script | ((verb, item), ...)
            "backward",  # the change after -> before, to put a step applied back
            "before_lines",  # the state as lines, for diffs and read-back
            "after_lines",
            "added",  # lines in after and not before (by count), for reports
            "removed",
        ),
    )
):
    """One place we keep state, with what is there, what we want, and the change each way."""

    __slots__ = ()

    @property
    def changed(self) -> bool:
        return bool(self.forward.restore or self.forward.tidy) if self.kind == "iptables" else bool(self.forward)

    @property
    def differs(self) -> bool:
        """Our rules differ (not only empty tables to tidy)."""
        return self.before_lines != self.after_lines


class CapturePlan(
    namedtuple(
        "CapturePlan", ("options", "backend", "families", "desired", "steps", "script", "rules", "tools", "warnings")
    )
):
    """Every step of one run, and what the user reads: ``rules`` ({family or "inet": text}) and
    ``script`` (the rules file, for state present). ``tools``: the iptables tools
    the steps run, {(variant, family): (save path, restore path)}. ``warnings``:
    what the user should know about how the options were read on this host."""

    __slots__ = ()

    @property
    def changed_steps(self) -> list:
        return [step for step in self.steps if step.changed]

    def diffs(self) -> list:
        return [
            {
                "before_header": "%s (before)" % step.label,
                "after_header": "%s (after)" % step.label,
                "before": "".join(line + "\n" for line in step.before_lines),
                "after": "".join(line + "\n" for line in step.after_lines),
            }
            for step in self.changed_steps
            if step.differs
        ]

    def added_removed(self):
        added, removed = [], []
        for step in self.changed_steps:
            added += ["%s: %s" % (step.label, line) for line in step.added]
            removed += ["%s: %s" % (step.label, line) for line in step.removed]
        return added, removed


def plan_capture(options, snapshot) -> CapturePlan:
    """Every step from ``snapshot`` to what ``options`` ask for; reads and changes nothing."""
    backend = choose_backend(options, snapshot)
    families = capture_families(options, snapshot.has_ipv6)
    require_families(backend, families, snapshot)
    present = options.state == "present"
    dns = dns_captured(options, snapshot.nameservers)
    warnings = []
    if present and options.dns_redirect and not dns:
        warnings.append(
            "dns_redirect is true, but dns_capture_all is false and /etc/resolv.conf names no nameserver: "
            "DNS is not captured (as istio-iptables does)"
        )
    desired = {
        family: (
            build_family(options, family, snapshot.nameservers.get(family, ()), dns)
            if present
            else empty_family(family)
        )
        for family in families
    }
    steps = []
    rules = {}
    script_iptables = []

    # iptables: every variant present on the host, so stale rules elsewhere go too.
    for variant in IPTABLES_VARIANTS:
        for family in FAMILIES:
            if (variant, family) not in snapshot.iptables:
                continue
            chosen = variant == backend and family in desired
            want = ipt.desired_tables(desired[family]) if chosen else {}
            have = ipt.parse_save(snapshot.saves[(variant, family)], options.chain_prefix)
            if chosen and present:
                rules[family] = ipt.render_full(want)
                cmd, restore_cmd = iptables_command_names(variant, family)
                script_iptables.append((cmd, restore_cmd, want, rules[family]))
            step = _iptables_step(options, snapshot, variant, family, have, want)
            if step is not None:
                steps.append(step)

    nft_part = None
    # A prefix that names an nft keyword cannot be our table (options refuse it
    # for the nftables backend), so there is nothing of ours to look for.
    if snapshot.nft and not nft.table_name_problem(options.chain_prefix):
        name = nft.table_name(options.chain_prefix)
        have = snapshot.nft_table
        want = ""
        if backend == "nftables" and present:
            # Imported here: only this backend needs the renderer, and every import costs each run.
            from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.nft_render import render_table

            want = render_table(name, [desired[f] for f in families])
            rules["inet"] = want
            nft_part = (name, want)
        if have or want:
            steps.append(_nft_step(name, have, want))

    # Policy routing for TPROXY, in both families, so a family dropped is cleaned too.
    routing = []
    for family in FAMILIES:
        want_rules = tuple(desired[family].ip_rules) if family in desired else ()
        want_routes = tuple(desired[family].ip_routes) if family in desired else ()
        if (want_rules or want_routes) and not snapshot.ip:
            raise MissingFeature(
                "mode", options.mode, "mode: %r needs the ip command (iproute2), which this host does not have"
            )
        have_rules, have_routes = snapshot.routing.get(family, ((), ()))
        if have_rules or have_routes or want_rules or want_routes:
            steps.append(_routing_step(family, (have_rules, have_routes), (want_rules, want_routes)))
        routing += [
            (routing_command(snapshot.ip, "add", r), routing_command(snapshot.ip, "del", r)) for r in want_rules
        ]
        routing += [
            (routing_command(snapshot.ip, "add", r), routing_command(snapshot.ip, "del", r)) for r in want_routes
        ]

    script = None
    if present:
        script = render_script(options.rules_file or "FILE", script_iptables, nft_part, routing, options.lock_wait)
    return CapturePlan(options, backend, families, desired, steps, script, rules, snapshot.iptables, tuple(warnings))


# -- iptables ---------------------------------------------------------------------------


def _iptables_step(options, snapshot, variant, family, have, want):
    leaving = [t for t in TABLES if t in have and t not in want]
    if options.state == "absent":
        # Our rules may be gone already (e.g. by the rules file's `remove`),
        # leaving the empty tables iptables-nft made for them.
        leaving = list(TABLES)
    entering = [t for t in TABLES if t in want and t not in have]
    existing = ipt.tables_in_save(snapshot.saves[(variant, family)])
    forward = IptablesChange(ipt.plan_restore(have, want), "")
    backward = IptablesChange(ipt.plan_restore(want, have), "")
    if variant == "iptables-nft" and snapshot.nft:
        forward = forward._replace(tidy=_tidy_leaving(snapshot, family, leaving, have))
        backward = backward._replace(tidy=_tidy_entering(snapshot, family, entering, existing, want))
    if not have and not want and not forward.tidy:
        return None
    before_lines, after_lines = ipt.our_lines(have), ipt.our_lines(want)
    return Step(
        "iptables",
        (variant, family),
        "%s %s" % (variant, family),
        have,
        want,
        forward,
        backward,
        before_lines,
        after_lines,
        *added_removed(before_lines, after_lines),
    )


def recovery(step, found):
    """The change from ``found`` (read from the host after a failure) back to ``step.before``."""
    if step.kind == "iptables":
        restore = ipt.plan_restore(found, step.before)
        return IptablesChange(restore, step.backward.tidy if restore else "")
    if step.kind == "nftables":
        return _nft_script(step.key, found, step.before)
    return _routing_changes(found, step.before)


def read_lines(step, found) -> list:
    """A step's state, as read back from the host, in the form of ``step.after_lines``."""
    if step.kind == "iptables":
        return ipt.our_lines(found)
    if step.kind == "nftables":
        return found.splitlines()
    return _routing_lines(*found)


def _tidy_leaving(snapshot, family, tables, have):
    """nft script deleting the built-in chains (or tables) our removal leaves empty.

    A built-in chain is empty when it holds no rules but our jumps and accepts
    by policy; a table goes when nothing but such chains and ours remain.
    """
    script = []
    for table in tables:
        listing = snapshot.nft_tables.get((family, table))
        if listing is None:
            continue
        ours = have.get(table, ipt.TableState())
        doomed, kept = [], False
        for chain, (policy, count) in nft.chains_in_listing(listing).items():
            if chain in ours.chains:
                continue
            foreign = count - len(ours.jumps.get(chain, ()))
            if chain in BUILTIN_CHAINS and policy == "accept" and foreign == 0:
                doomed.append(chain)
            else:
                kept = True
        if doomed:
            script.append(nft.tidy_script(nft_family_word(family), table, doomed, whole_table=not kept))
    return "".join(script)


def _tidy_entering(snapshot, family, tables, existing, want):
    """nft script deleting what iptables-nft makes for our rules (tables, built-in chains), once they are out."""
    script = []
    for table in tables:
        if table not in existing:
            script.append(nft.tidy_script(nft_family_word(family), table, (), whole_table=True))
            continue
        listing = snapshot.nft_tables.get((family, table))
        if listing is None:
            continue
        there = nft.chains_in_listing(listing)
        made = [chain for chain in BUILTIN_CHAINS if chain in want[table].jumps and chain not in there]
        if made:
            script.append(nft.tidy_script(nft_family_word(family), table, made, whole_table=False))
    return "".join(script)


# -- nftables -----------------------------------------------------------------------------


def _nft_script(name, current, target):
    return nft.plan_script(name, current, target) if target else nft.absent_script(name, current)


def _nft_step(name, have, want):
    added, removed = nft.changes(have, want)
    return Step(
        "nftables",
        name,
        "nftables inet %s" % name,
        have,
        want,
        _nft_script(name, have, want),
        _nft_script(name, want, have),
        have.splitlines(),
        want.splitlines(),
        added,
        removed,
    )


# -- policy routing ------------------------------------------------------------------------


def _routing_changes(current, target):
    """((verb, item), ...) taking (rules, routes) ``current`` to ``target``: old rules
    and routes out first, then routes in before the rules that use them."""
    (from_rules, from_routes), (to_rules, to_routes) = current, target
    changes = [("del", item) for item in from_rules if item not in to_rules]
    changes += [("del", item) for item in from_routes if item not in to_routes]
    changes += [("add", item) for item in to_routes if item not in from_routes]
    changes += [("add", item) for item in to_rules if item not in from_rules]
    return tuple(changes)


def _routing_lines(rules, routes):
    return ["ip rule fwmark %s lookup %d" % (hex(r.fwmark), r.table) for r in rules] + [
        "ip route local default dev %s table %d" % (r.device, r.table) for r in routes
    ]


def _routing_step(family, have, want):
    before_lines, after_lines = _routing_lines(*have), _routing_lines(*want)
    return Step(
        "routing",
        family,
        "policy routing %s" % family,
        have,
        want,
        _routing_changes(have, want),
        _routing_changes(want, have),
        before_lines,
        after_lines,
        *added_removed(before_lines, after_lines),
    )


def capture_differences(plan, rules_file_text) -> list:
    """What differs between the live rules (and rules file) and ``plan``; empty when capture is as asked.

    ``rules_file_text``: the rules file as it is (None when missing), read only
    when the options name one.
    """
    options = plan.options
    added, removed = plan.added_removed()
    found = ["missing %s" % line for line in added] + ["unexpected %s" % line for line in removed]
    differing = [step for step in plan.changed_steps if step.differs]
    if differing and not found:
        found.append("%s differ in order" % ", ".join(step.label for step in differing))
    if options.rules_file:
        wanted = plan.script if options.state == "present" else None
        if rules_file_text != wanted:
            found.append("%s: differs from the rules" % options.rules_file)
    return found
