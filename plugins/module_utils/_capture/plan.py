# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What should be, what is, and the change between them, applied all-or-nothing.

``plan_capture`` reads the host through HostCommands and returns a CapturePlan:
one step per place we keep state (an iptables variant and family, the nftables
table, policy routing). Check mode stops there. ``apply_plan`` applies the
steps in order and, if one fails, puts every step already applied back as it
was, so both families change together or not at all.
"""

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture import iptables as ipt
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture import nft
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.host import (
    IPTABLES_VARIANTS,
    CommandError,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.model import (
    FAMILIES,
    IPV4,
    IPV6,
    empty_family,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.rules import build_family
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.script import render_script


class CaptureError(Exception):
    """A failure to report to the user; nothing was left half-applied."""


# Words in iptables/nft errors that point at a missing kernel or userspace feature,
# with the option that needs it.
_FEATURES = (
    ("owner", "proxy_uid/proxy_gid", "the owner match (kernel module xt_owner)"),
    ("TPROXY", "mode", "the TPROXY target (kernel module xt_TPROXY / nft_tproxy)"),
    ("tproxy", "mode", "the TPROXY target (kernel module xt_TPROXY / nft_tproxy)"),
    ("socket", "mode", "the socket match (kernel module xt_socket)"),
    ("CONNMARK", "mode", "the CONNMARK target (kernel module xt_connmark)"),
    ("connmark", "mode", "the connmark match (kernel module xt_connmark)"),
    ("conntrack", "drop_invalid", "the conntrack match (kernel module xt_conntrack)"),
    ("CT", "dns_redirect", "the CT target (kernel module xt_CT)"),
    ("REDIRECT", "mode", "the REDIRECT target (kernel module xt_REDIRECT)"),
)


def explain_failure(error, options):
    """A message for a failed command that names the option that needs the missing piece."""
    text = "%s %s" % (error.err, error.out)
    for word, option, feature in _FEATURES:
        if ("`%s'" % word in text or "'%s'" % word in text or "%s " % word in text) and (
            "load" in text or "not supported" in text or "No such file" in text or "Could not" in text
        ):
            value = getattr(options, option.split("/", 1)[0], None)
            return "%s: %r needs %s, which this host does not provide (%s)" % (
                option,
                value,
                feature,
                str(error).strip(),
            )
    return str(error).strip()


class Step:
    """One place we keep state, with what is there now and what we want."""

    def __init__(self, kind, key, label, before, after, apply, undo, before_lines, after_lines):
        self.kind = kind  # "iptables" | "nftables" | "routing"
        self.key = key
        self.label = label  # e.g. "iptables-nft ipv4"
        self.before = before
        self.after = after
        self._apply = apply
        self._undo = undo
        self.before_lines = before_lines
        self.after_lines = after_lines

    @property
    def changed(self):
        return self.before_lines != self.after_lines

    def apply(self):
        self._apply()

    def undo(self):
        self._undo()


class CapturePlan:
    def __init__(self, backend, families, desired, steps, script, rules):
        self.backend = backend
        self.families = families
        self.desired = desired  # {family: FamilyRules}
        self.steps = steps
        self.script = script  # rules file text (state present) or None
        self.rules = rules  # {family or "inet": rendered text}, what a user reads

    @property
    def changed_steps(self):
        return [step for step in self.steps if step.changed]

    def diffs(self):
        return [
            {
                "before_header": "%s (before)" % step.label,
                "after_header": "%s (after)" % step.label,
                "before": "".join(line + "\n" for line in step.before_lines),
                "after": "".join(line + "\n" for line in step.after_lines),
            }
            for step in self.changed_steps
        ]

    def added_removed(self):
        added, removed = [], []
        for step in self.changed_steps:
            before, after = set(step.before_lines), set(step.after_lines)
            added += ["%s: %s" % (step.label, line) for line in step.after_lines if line not in before]
            removed += ["%s: %s" % (step.label, line) for line in step.before_lines if line not in after]
        return added, removed


def choose_backend(options, host):
    """The backend to use: the user's, or for ``auto`` the iptables variant already
    holding rules (so we share the tables other tools see), else iptables-nft."""
    if options.backend == "nftables":
        if not host.nft_available():
            raise CaptureError("backend: 'nftables' needs the nft command, which this host does not have")
        return "nftables"
    if options.backend != "auto":
        if not host.iptables_available(options.backend):
            raise CaptureError(
                "backend: %r needs %s-save and -restore, which this host does not have"
                % (options.backend, options.backend)
            )
        return options.backend
    available = [v for v in IPTABLES_VARIANTS if host.iptables_available(v)]
    if not available:
        if host.nft_available():
            return "nftables"
        raise CaptureError("backend: 'auto' found neither iptables (nft or legacy) nor nft on this host")
    holding = []
    for variant in available:
        text = host.iptables_save(variant, IPV4)
        if any(line.startswith("-A ") for line in text.splitlines()):
            holding.append(variant)
    ours = [v for v in holding if ipt.parse_save(host.iptables_save(v, IPV4), options.chain_prefix)]
    for candidates in (ours, holding, available):
        if candidates:
            return candidates[0]
    return available[0]


def _families(options, has_ipv6):
    if options.ip_families == "auto":
        return (IPV4, IPV6) if has_ipv6 else (IPV4,)
    return options.ip_families


def plan_capture(options, host, has_ipv6, resolvers):
    """Read the host and work out every step; changes nothing."""
    backend = choose_backend(options, host)
    families = _families(options, has_ipv6)
    present = options.state == "present"
    desired = {
        family: (build_family(options, family, resolvers.get(family, ())) if present else empty_family(family))
        for family in families
    }
    steps = []
    rules = {}
    script_iptables = []

    # iptables: every variant present on the host, so stale rules elsewhere go too.
    for variant in IPTABLES_VARIANTS:
        for family in FAMILIES:
            if not host.iptables_available(variant, family):
                continue
            chosen = variant == backend and family in desired
            want = ipt.desired_tables(desired[family]) if chosen else {}
            have = ipt.parse_save(host.iptables_save(variant, family), options.chain_prefix)
            if chosen and present:
                rules[family] = ipt.render_full(want)
                cmd, restore_cmd = host.iptables_command_names(variant, family)
                script_iptables.append((cmd, restore_cmd, want, rules[family]))
            if not have and not want:
                continue
            steps.append(_iptables_step(host, options, variant, family, have, want))
        if variant == backend:
            missing = [f for f in families if not host.iptables_available(variant, f)]
            if missing:
                raise CaptureError(
                    "ip_families: %s needs %s for %s, which this host does not have"
                    % (list(families), variant, missing[0])
                )

    nft_part = None
    # A prefix that names an nft keyword cannot be our table (options refuse it
    # for the nftables backend), so there is nothing of ours to look for.
    if host.nft_available() and not nft.table_name_problem(options.chain_prefix):
        name = nft.table_name(options.chain_prefix)
        have = host.nft_list_table(nft.list_args(name))
        want = ""
        if backend == "nftables" and present:
            want = nft.render_table(name, [desired[f] for f in families])
            rules["inet"] = want
            nft_part = (name, want)
        if have or want:
            steps.append(_nft_step(host, name, have, want))

    # Policy routing for TPROXY, in both families, so a family dropped is cleaned too.
    routing = []
    for family in FAMILIES:
        want_rules = tuple(desired[family].ip_rules) if family in desired else ()
        want_routes = tuple(desired[family].ip_routes) if family in desired else ()
        have_rules = tuple(host.ip_rules(family, options.tproxy_mark, options.tproxy_route_table))
        have_routes = tuple(host.ip_routes(family, options.tproxy_route_table))
        if have_rules or have_routes or want_rules or want_routes:
            steps.append(_routing_step(host, family, have_rules, have_routes, want_rules, want_routes))
        routing += [(host.ip_rule_argv("add", r), host.ip_rule_argv("del", r)) for r in want_rules]
        routing += [(host.ip_route_argv("add", r), host.ip_route_argv("del", r)) for r in want_routes]

    script = None
    if present:
        script = render_script(options.rules_file or "FILE", script_iptables, nft_part, routing, options.lock_wait)
    return CapturePlan(backend, families, desired, steps, script, rules)


def _iptables_step(host, options, variant, family, have, want):
    label = "%s %s" % (variant, family)

    def lines(tables):
        return ["*%s %s" % (table, line) for table in sorted(tables) for line in tables[table].lines()]

    def move(target):
        now = ipt.parse_save(host.iptables_save(variant, family), options.chain_prefix)
        text = ipt.plan_restore(now, target)
        if text:
            host.iptables_restore(variant, family, text)
            for table in now:
                if table not in target:
                    host.prune_empty_table(variant, family, table)
        after = ipt.parse_save(host.iptables_save(variant, family), options.chain_prefix)
        if lines(after) != lines(target):
            raise CaptureError(
                "%s: the rules did not read back as written; expected:\n%s\nfound:\n%s"
                % (label, "\n".join(lines(target)), "\n".join(lines(after)))
            )

    return Step(
        "iptables",
        (variant, family),
        label,
        have,
        want,
        lambda: move(want),
        lambda: move(have),
        lines(have),
        lines(want),
    )


def _nft_step(host, name, have, want):
    def move(target_text):
        now = host.nft_list_table(nft.list_args(name))
        script = nft.plan_script(name, now, target_text) if target_text else nft.absent_script(name, now)
        if script:
            host.nft_apply(script)

    return Step(
        "nftables",
        name,
        "nftables inet %s" % name,
        have,
        want,
        lambda: move(want),
        lambda: move(have),
        have.splitlines(),
        want.splitlines(),
    )


def _routing_step(host, family, have_rules, have_routes, want_rules, want_routes):
    def move(from_rules, from_routes, to_rules, to_routes):
        for item in from_rules:
            if item not in to_rules:
                host.ip_rule_change("del", item)
        for item in from_routes:
            if item not in to_routes:
                host.ip_route_change("del", item)
        for item in to_routes:
            if item not in from_routes:
                host.ip_route_change("add", item)
        for item in to_rules:
            if item not in from_rules:
                host.ip_rule_change("add", item)

    def describe(rules, routes):
        return ["ip rule fwmark %s lookup %d" % (hex(r.fwmark), r.table) for r in rules] + [
            "ip route local default dev %s table %d" % (r.device, r.table) for r in routes
        ]

    return Step(
        "routing",
        family,
        "policy routing %s" % family,
        (have_rules, have_routes),
        (want_rules, want_routes),
        lambda: move(have_rules, have_routes, want_rules, want_routes),
        lambda: move(want_rules, want_routes, have_rules, have_routes),
        describe(have_rules, have_routes),
        describe(want_rules, want_routes),
    )


def apply_plan(plan, options):
    """Apply the changed steps; on any failure undo those applied and raise CaptureError."""
    done = []
    for step in plan.changed_steps:
        try:
            step.apply()
            done.append(step)
        except (CommandError, CaptureError) as error:
            undo_errors = []
            for applied in reversed(done):
                try:
                    applied.undo()
                except (CommandError, CaptureError) as undo_error:
                    undo_errors.append("%s: %s" % (applied.label, undo_error))
            try:
                step.undo()
            except (CommandError, CaptureError) as undo_error:
                undo_errors.append("%s: %s" % (step.label, undo_error))
            message = explain_failure(error, options) if isinstance(error, CommandError) else str(error)
            if undo_errors:
                message += "; putting back the earlier state also failed: " + "; ".join(undo_errors)
            else:
                message += "; nothing was changed (every step applied so far was put back)"
            raise CaptureError("%s: %s" % (step.label, message)) from None
    return done
