# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Apply a plan as one transaction: every changed step, or none of them.

Each changed step is applied and read back once; a read-back that differs
from the plan is an error. On any failure the failed step is read back and
put back from what is found, then every step applied before it is put back
with its planned backward change, last first, so both families change
together or not at all.
"""

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture import iptables as ipt
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.errors import (
    ApplyFailed,
    CaptureError,
    CommandFailed,
    LockHeld,
    MissingFeature,
    ReadBackMismatch,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.plan import read_lines, recovery

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
# iptables-restore's exit status when it gave up waiting for the xtables lock.
_LOCK_EXIT = 4


def explain_failure(error: CaptureError, options) -> CaptureError:
    """The error as the user should read it: a failed command that points at a missing
    feature or a held lock names the option (and value) involved."""
    if not isinstance(error, CommandFailed):
        return error
    text = "%s %s" % (error.err, error.out)
    if error.rc == _LOCK_EXIT and "xtables lock" in text:
        return LockHeld(options.lock_wait, error)
    if "Nexthop device is not up" in text:
        return MissingFeature(
            "mode",
            options.mode,
            "mode: %r routes marked packets with `local default dev lo`, which needs the loopback interface up "
            "(ip link set lo up) (%s)" % (options.mode, str(error).strip()),
        )
    for word, option, feature in _FEATURES:
        if ("`%s'" % word in text or "'%s'" % word in text or "%s " % word in text) and (
            "load" in text or "not supported" in text or "No such file" in text or "Could not" in text
        ):
            value = getattr(options, option.split("/", 1)[0], None)
            value = list(value) if isinstance(value, tuple) else value
            return MissingFeature(
                option,
                value,
                "%s: %r needs %s, which this host does not provide (%s)" % (option, value, feature, str(error).strip()),
            )
    return error


def apply_plan(plan, host) -> list:
    """Apply the changed steps in order; on any failure put back those applied and raise ApplyFailed."""
    done = []
    for step in plan.changed_steps:
        found = None
        try:
            _change(plan, step, step.forward, host)
            found = _read(plan, step, host)
            if read_lines(step, found) != step.after_lines:
                raise ReadBackMismatch(step.label, step.after_lines, read_lines(step, found))
        except CaptureError as error:
            failures = _put_back(plan, step, found, done, host)
            raise ApplyFailed(step.label, explain_failure(error, plan.options), failures) from None
        done.append(step)
    return done


def _put_back(plan, failed, found, done, host):
    """Undo the failed step from what it reads back as, then every step done, last first.

    Returns [(label, error)] for what could not be put back.
    """
    failures = []
    try:
        if found is None:
            found = _read(plan, failed, host)
        _change(plan, failed, recovery(failed, found), host)
    except CaptureError as error:
        failures.append((failed.label, error))
    for step in reversed(done):
        try:
            _change(plan, step, step.backward, host)
        except CaptureError as error:
            failures.append((step.label, error))
    return failures


def _change(plan, step, change, host):
    """Run one step's change (empty parts are skipped)."""
    if step.kind == "iptables":
        if change.restore:
            host.iptables_restore(plan.tools[step.key], change.restore)
        if change.tidy:
            host.nft_apply(change.tidy)
    elif step.kind == "nftables":
        if change:
            host.nft_apply(change)
    elif change:
        host.ip_routing_change(step.key, change)


def _read(plan, step, host):
    """A step's state as the host has it now, in the form of ``step.after``."""
    options = plan.options
    if step.kind == "iptables":
        return ipt.parse_save(host.iptables_save(plan.tools[step.key]), options.chain_prefix)
    if step.kind == "nftables":
        return host.nft_list(step.key)
    return host.ip_routing(step.key, options.tproxy_mark, options.tproxy_route_table)
