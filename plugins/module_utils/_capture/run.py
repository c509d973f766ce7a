# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One traffic_capture run on a host: observe once, plan, apply (unless checking).

traffic_capture's main() and host_state call these with validated options and
a HostCommands; unit tests call them with a fake host that lists the exact
commands expected.
"""

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.host import observe
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.plan import capture_differences, plan_capture


def run_capture(options, host, check_mode: bool) -> dict:
    """The module's result (without the rules file's part): what was (or would be) changed.

    ``script`` holds the rules file's text for state present (None otherwise);
    ``diff`` the before/after of each changed step. Raises CaptureError.
    """
    plan = plan_capture(options, observe(host, options))
    if plan.changed_steps and not check_mode:
        # Imported here: a run with nothing to change (the usual one) never needs it.
        from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.apply import apply_plan

        apply_plan(plan, host)
    added, removed = plan.added_removed()
    return {
        "changed": bool(plan.changed_steps),
        "backend": plan.backend,
        "families": list(plan.families),
        "rules": plan.rules,
        "added": added,
        "removed": removed,
        "ssh_port": options.ssh_port,
        "script": plan.script,
        "diff": plan.diffs(),
        "warnings": list(plan.warnings),
    }


def check_capture(options, host, read_file) -> list:
    """What differs between the host and ``options`` (rules and rules file); empty when in sync.

    Reads only: for host_state, which asks before a role decides to converge.
    """
    plan = plan_capture(options, observe(host, options))
    return capture_differences(plan, read_file(options.rules_file) if options.rules_file else None)
