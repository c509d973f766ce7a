#!/usr/bin/python
# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later


DOCUMENTATION = r"""
---
module: host_state
short_description: Tell a role whether a host is still as its last run left it
version_added: "0.1.0"
description:
  - With O(state=recorded), writes a stamp file holding O(digest) (what the
    role was asked to do, computed on the controller) and a fingerprint of
    each of O(paths), O(users), O(groups) and O(units) as they are now.
  - With O(state=checked), compares the host with that stamp and returns
    RV(in_sync) and the RV(differences). It changes nothing, so it runs in
    check mode too.
  - A role calls it first and skips its other tasks when RV(in_sync) is true,
    so a re-run costs one task on the host instead of one per file, account
    and unit; when anything differs (a file edited or removed, an account
    changed, a unit stopped, a variable changed) the role runs in full and
    records a new stamp.
  - Paths are fingerprinted by kind, mode, owner, group and the sha1 of a
    regular file's content; O(large_files) by size and modification time
    instead. Users by uid, gid, home and shell; groups by gid and members;
    units by C(systemctl is-enabled) and C(systemctl is-active).
author:
  - hostmesh.sidecar maintainers (@hostmesh)
options:
  path:
    description: The stamp file, kept by the role with its other files.
    type: path
    required: true
  state:
    description:
      - V(checked) compares the host with the stamp; V(recorded) writes the stamp.
    type: str
    choices: [checked, recorded]
    default: checked
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
attributes:
  check_mode:
    support: full
    description: V(checked) reads only; V(recorded) reports whether the stamp would change and writes nothing.
  diff_mode:
    support: none
    description: RV(differences) says what differs.
  platform:
    support: full
    platforms: posix
    description: Runs on the managed host; units are read with C(systemctl).
"""

EXAMPLES = r"""
- name: Ask whether the host is as the last run left it
  hostmesh.sidecar.host_state:
    path: /etc/hostmesh/agent.state
    digest: "{{ wanted | to_json | hash('sha1') }}"
    paths: [/etc/hostmesh/agent.json]
    users: [hostmesh-proxy]
    units: [hostmesh-agent.service]
  register: agent_state

- name: Converge in full when anything differs
  ansible.builtin.include_tasks: converge.yml
  when: not agent_state.in_sync
"""

RETURN = r"""
in_sync:
  description: Whether the host matches the stamp and O(digest); always false with O(state=recorded).
  returned: always
  type: bool
  sample: true
differences:
  description: What differs, one line each.
  returned: always
  type: list
  elements: str
  sample: ["/etc/hostmesh/agent.json: content or mode changed", "hostmesh-agent.service: inactive"]
"""

import grp
import os
import pwd
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hostmesh.sidecar.plugins.module_utils import _host_state as core


def read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def lstat(path):
    try:
        return os.lstat(path)
    except OSError:
        return None


def current(module):
    """Fingerprints of everything the role manages, as it is on the host now."""
    params = module.params
    paths = {}
    for path in params["paths"]:
        st = lstat(path)
        regular = st is not None and not os.path.isdir(path) and not os.path.islink(path)
        paths[path] = core.path_fingerprint(st, read(path) if regular else None)
    for path in params["large_files"]:
        paths[path] = core.big_file_fingerprint(lstat(path))
    accounts = {}
    for name in params["users"]:
        try:
            accounts["user " + name] = core.user_fingerprint(pwd.getpwnam(name))
        except KeyError:
            accounts["user " + name] = None
    for name in params["groups"]:
        try:
            accounts["group " + name] = core.group_fingerprint(grp.getgrnam(name))
        except KeyError:
            accounts["group " + name] = None
    units = {}
    systemctl = module.get_bin_path("systemctl", required=bool(params["units"]))
    for name in params["units"]:
        enabled = module.run_command([systemctl, "is-enabled", name])[1].strip()
        active = module.run_command([systemctl, "is-active", name])[1].strip()
        units[name] = {"enabled": enabled, "active": active}
    return paths, accounts, units


def write_stamp(path, text):
    directory = os.path.dirname(path) or "."
    handle, part = tempfile.mkstemp(dir=directory, prefix=".host_state.")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.chmod(part, 0o600)
        os.rename(part, path)
    except OSError:
        if os.path.exists(part):
            os.unlink(part)
        raise


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", choices=["checked", "recorded"], default="checked"),
            digest=dict(type="str", required=True, no_log=False),
            paths=dict(type="list", elements="path", default=[]),
            large_files=dict(type="list", elements="path", default=[]),
            users=dict(type="list", elements="str", default=[]),
            groups=dict(type="list", elements="str", default=[]),
            units=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    params = module.params
    path = params["path"]
    paths, accounts, units = current(module)
    old_text = read(path)
    if params["state"] == "checked":
        recorded = core.parse_stamp(old_text.decode("utf-8", "replace") if old_text is not None else None)
        found = core.differences(recorded, params["digest"], paths, accounts, units)
        module.exit_json(changed=False, in_sync=not found, differences=found)
    text = core.stamp_text(core.stamp(params["digest"], paths, accounts, units))
    changed = old_text is None or old_text.decode("utf-8", "replace") != text
    if changed and not module.check_mode:
        if not os.path.isdir(os.path.dirname(path) or "."):
            module.fail_json(msg="path: got %r; its directory does not exist" % path)
        try:
            write_stamp(path, text)
        except OSError as error:
            module.fail_json(msg="path: cannot write %r: %s" % (path, error))
    module.exit_json(changed=changed, in_sync=False, differences=[])


if __name__ == "__main__":
    main()
