# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Capture as this host has it: traffic_capture's options planned against the live rules.

The one place a module turns traffic_capture parameters into a plan on the
host it runs on: it validates the options (adding the SSH connection's port),
reads the live rules through HostCommands and compares. traffic_capture
applies the plan; host_state only asks whether it would change anything.
"""

import os

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.host import HostCommands, nameservers
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.options import (
    DEFAULTS,
    parse_options,
    ssh_port_from_environment,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.plan import plan_capture
from ansible_collections.hostmesh.sidecar.plugins.module_utils._host_files import read_text

OPTION_NAMES = tuple(DEFAULTS)


def plan_on_host(module, params):
    """(options, warnings, host, plan) for ``params`` on this host.

    Raises CaptureOptionError for a bad option, CaptureError or CommandError
    when the host's rules cannot be read.
    """
    ssh_port = ssh_port_from_environment(os.environ)
    options, warnings = parse_options({key: params[key] for key in OPTION_NAMES if key in params}, ssh_port)
    host = HostCommands(
        lambda argv, data=None: module.run_command(
            argv, data=data, binary_data=True, handle_exceptions=False, environ_update={"LC_ALL": "C"}
        ),
        module.get_bin_path,
        lock_wait=options.lock_wait,
    )
    plan = plan_capture(options, host, host.host_has_ipv6(read_text), nameservers(read_text("/etc/resolv.conf")))
    return options, warnings, host, plan


def capture_differences(options, plan):
    """What differs between the live rules (and rules file) and ``plan``; empty when capture is as asked."""
    added, removed = plan.added_removed()
    found = ["missing %s" % line for line in added] + ["unexpected %s" % line for line in removed]
    if plan.changed_steps and not found:
        found.append("%s differ in order" % ", ".join(step.label for step in plan.changed_steps))
    if options.rules_file:
        wanted = plan.script if options.state == "present" else None
        if read_text(options.rules_file) != wanted:
            found.append("%s: differs from the rules" % options.rules_file)
    return found
