#!/usr/bin/python
# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later


DOCUMENTATION = r"""
---
module: host_state
short_description: Tell roles whether a host is still as their last run left it
version_added: "0.1.0"
description:
  - Each of O(records) is what one role left on the host - a stamp file
    holding a digest of what the role was asked to do (computed on the
    controller) and a fingerprint of each path, account and unit it manages.
  - With O(state=recorded), writes each record's stamp as the host is now.
  - With O(state=checked), compares the host with each stamp and returns, per
    record, whether it is in sync and what differs. With O(capture), it also
    compares the live capture rules (and rules file) with what those
    M(hostmesh.sidecar.traffic_capture) options ask for. It changes nothing,
    so it runs in check mode too.
  - Roles call it first and skip their other tasks when their record is in
    sync, so a re-run costs one task on the host instead of one per file,
    account, unit and rule; when anything differs (a file edited or removed,
    an account changed, a unit stopped, a rule lifted, a variable changed)
    the role runs in full and records a new stamp. The
    C(hostmesh.sidecar.sidecar) role asks once for Envoy, the agent and
    capture together.
  - Paths are fingerprinted by kind, mode, owner, group and the sha1 of a
    regular file's content; large files by size and modification time
    instead. Users by uid, gid, home and shell; groups by gid and members;
    units by C(systemctl is-enabled) and C(systemctl is-active).
author:
  - hostmesh.sidecar maintainers (@hostmesh)
options:
  records:
    description: One record per role, in the order RV(records) reports them.
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: The stamp file, kept by the role with its other files.
        type: path
        required: true
      digest:
        description: What the role was asked to do, as a digest computed on the controller.
        type: str
        required: true
      paths:
        description: Files and directories the role manages.
        type: list
        elements: path
        default: []
      large_files:
        description: Large files (binaries) compared by size and modification time rather than content.
        type: list
        elements: path
        default: []
      users:
        description: Accounts the role manages.
        type: list
        elements: str
        default: []
      groups:
        description: Groups the role manages.
        type: list
        elements: str
        default: []
      units:
        description: systemd units the role keeps enabled and running.
        type: list
        elements: str
        default: []
  state:
    description:
      - V(checked) compares the host with the stamps; V(recorded) writes them.
    type: str
    choices: [checked, recorded]
    default: checked
  capture:
    description:
      - Options of M(hostmesh.sidecar.traffic_capture) (V(state) included)
        whose result the live rules should already be. Compared with
        O(state=checked) only; nothing is applied.
      - Checked against that module's own argument spec (types, choices,
        defaults), so a bad value fails naming C(capture.<option>) before
        anything on the host is read.
    type: dict
attributes:
  check_mode:
    support: full
    description: V(checked) reads only; V(recorded) reports whether a stamp would change and writes nothing.
  diff_mode:
    support: none
    description: RV(records) and RV(capture_differences) say what differs.
  platform:
    support: full
    platforms: posix
    description: Runs on the managed host; units are read with C(systemctl), rules with the capture backend's tools.
seealso:
  - module: hostmesh.sidecar.traffic_capture
"""

EXAMPLES = r"""
- name: Ask whether the host is as the last run left it
  hostmesh.sidecar.host_state:
    records:
      - path: /etc/hostmesh/agent.state
        digest: "{{ wanted | to_json | hash('sha1') }}"
        paths: [/etc/hostmesh/agent.json]
        users: [hostmesh-proxy]
        units: [hostmesh-agent.service]
  register: agent_state

- name: Converge in full when anything differs
  ansible.builtin.include_tasks: converge.yml
  when: not agent_state.in_sync

- name: Ask about two roles and the live capture rules at once
  hostmesh.sidecar.host_state:
    records: ["{{ agent_record }}", "{{ capture_record }}"]
    capture: {mode: redirect, proxy_uid: [1337], rules_file: /etc/hostmesh/capture.rules}
  register: host_now
"""

RETURN = r"""
in_sync:
  description: Whether every record and the capture rules match; always false with O(state=recorded).
  returned: always
  type: bool
  sample: true
records:
  description: Per record, in the order given, its stamp path, whether it is in sync, and what differs.
  returned: always
  type: list
  elements: dict
  sample:
    - path: /etc/hostmesh/agent.state
      in_sync: false
      differences: ["/etc/hostmesh/agent.json: content or mode changed", "hostmesh-agent.service: inactive"]
      changed: false
capture_in_sync:
  description: Whether the live capture rules and rules file are what O(capture) asks for.
  returned: when O(capture) is set and O(state=checked)
  type: bool
  sample: false
capture_differences:
  description: Rules missing or unexpected, and a rules file that differs, one line each.
  returned: when O(capture) is set and O(state=checked)
  type: list
  elements: str
  sample: ["missing iptables ipv4 nat: -A OUTPUT -p tcp -j HOSTMESH_OUTPUT"]
"""

import grp
import os
import pwd

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hostmesh.sidecar.plugins.module_utils import _host_state as core
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.errors import CaptureError, OptionError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.host import HostCommands
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.options import (
    parse_options,
    ssh_port_from_environment,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.run import check_capture
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.spec import (
    capture_argument_spec,
    validate_params,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._host_files import read_bytes, read_text, write_atomic

RECORD_SPEC = dict(
    path=dict(type="path", required=True),
    digest=dict(type="str", required=True, no_log=False),
    paths=dict(type="list", elements="path", default=[]),
    large_files=dict(type="list", elements="path", default=[]),
    users=dict(type="list", elements="str", default=[]),
    groups=dict(type="list", elements="str", default=[]),
    units=dict(type="list", elements="str", default=[]),
)


def lstat(path):
    try:
        return os.lstat(path)
    except OSError:
        return None


def current(module, record):
    """Fingerprints of everything one record covers, as it is on the host now."""
    paths = {}
    for path in record["paths"]:
        st = lstat(path)
        regular = st is not None and not os.path.isdir(path) and not os.path.islink(path)
        paths[path] = core.path_fingerprint(st, read_bytes(path) if regular else None)
    for path in record["large_files"]:
        paths[path] = core.big_file_fingerprint(lstat(path))
    accounts = {}
    for name in record["users"]:
        try:
            accounts["user " + name] = core.user_fingerprint(pwd.getpwnam(name))
        except KeyError:
            accounts["user " + name] = None
    for name in record["groups"]:
        try:
            accounts["group " + name] = core.group_fingerprint(grp.getgrnam(name))
        except KeyError:
            accounts["group " + name] = None
    units = {}
    if record["units"]:
        systemctl = module.get_bin_path("systemctl", required=True)
        for name in record["units"]:
            enabled = module.run_command([systemctl, "is-enabled", name])[1].strip()
            active = module.run_command([systemctl, "is-active", name])[1].strip()
            units[name] = {"enabled": enabled, "active": active}
    return paths, accounts, units


def write_stamp(path, text):
    """Replace the stamp atomically, readable by its owner only (it fingerprints the role's files and accounts)."""
    write_atomic(path, text, 0o600)


def check(module, record):
    paths, accounts, units = current(module, record)
    found = core.differences(core.parse_stamp(read_text(record["path"])), record["digest"], paths, accounts, units)
    return {"path": record["path"], "in_sync": not found, "differences": found, "changed": False}


def record_now(module, record, index):
    paths, accounts, units = current(module, record)
    text = core.stamp_text(core.stamp(record["digest"], paths, accounts, units))
    changed = read_text(record["path"]) != text
    if changed and not module.check_mode:
        try:
            write_stamp(record["path"], text)
        except OSError as error:
            module.fail_json(msg="records[%d].path: cannot write %r: %s" % (index, record["path"], error))
    return {"path": record["path"], "in_sync": False, "differences": [], "changed": changed}


def capture_differences(module, params):
    """How the live capture rules differ from traffic_capture's ``params``; empty when in sync.

    The options are typed and checked against traffic_capture's own argument
    spec, so an error names ``capture.<option>`` and nothing on the host is read.
    """
    unknown = sorted(set(params) - set(capture_argument_spec()))
    if unknown:
        module.fail_json(
            msg="capture.%s: %r is not an option of hostmesh.sidecar.traffic_capture" % (unknown[0], params[unknown[0]])
        )
    try:
        options = parse_options(validate_params(params), ssh_port_from_environment(os.environ))[0]
        return check_capture(options, HostCommands.for_module(module, options.lock_wait), read_text)
    except OptionError as error:
        module.fail_json(msg="capture.%s" % error, option="capture." + error.option, value=error.value)
    except CaptureError as error:
        module.fail_json(msg="capture: %s" % error, **error.details())


def main():
    module = AnsibleModule(
        argument_spec=dict(
            records=dict(type="list", elements="dict", required=True, options=RECORD_SPEC),
            state=dict(type="str", choices=["checked", "recorded"], default="checked"),
            capture=dict(type="dict"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    records = params["records"]
    if params["state"] == "recorded":
        for index, record in enumerate(records):
            if not module.check_mode and not os.path.isdir(os.path.dirname(record["path"]) or "."):
                module.fail_json(msg="records[%d].path: got %r; its directory does not exist" % (index, record["path"]))
        results = [record_now(module, record, index) for index, record in enumerate(records)]
        module.exit_json(changed=any(result["changed"] for result in results), in_sync=False, records=results)
    results = [check(module, record) for record in records]
    in_sync = all(result["in_sync"] for result in results)
    extra = {}
    if params["capture"] is not None:
        found = capture_differences(module, params["capture"])
        extra = {"capture_in_sync": not found, "capture_differences": found}
        in_sync = in_sync and not found
    module.exit_json(changed=False, in_sync=in_sync, records=results, **extra)


if __name__ == "__main__":
    main()
