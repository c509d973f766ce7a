# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Checks of one host's part of a mesh_ca batch, so a bad host fails alone; the CA directory's default.

The mesh_ca role issues every certificate of a play batch in one
mesh_certificate run, which refuses the whole batch when one workload is bad.
These filters let each host check its own part first, with the module's own
rules and messages, spelt with the role's variable names. Documentation for
each filter lives next to this file, in ``<filter>.yml``.
"""

import json
import os
import re
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.errors import MeshCAError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.request import make_request, make_workloads
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.spec import ARGUMENT_SPEC, WORKLOAD_SPEC

# The module's messages start with the option they are about, for a batch as
# workloads[<i>].<option>.
LEADING_OPTION = re.compile(r"^(?:workloads\[\d+\]\.)?(\w+)")
# Ansible's type errors name the option as: argument 'days' is of type ...
ARGUMENT_NAME = re.compile(r"argument '(\w+)'")
# How many hosts a message names before it counts the rest.
HOSTS_SHOWN = 3


def _named(message, names):
    """The module's message with its leading option spelt as the caller's variable."""
    return LEADING_OPTION.sub(lambda match: names.get(match.group(1), match.group(1)), message, count=1)


def mesh_workload_problems(workload, settings, names=None):
    """What mesh_certificate would refuse in this workload with these CA settings: [] or [one message]."""
    if not isinstance(workload, Mapping) or not isinstance(settings, Mapping):
        raise AnsibleFilterError("mesh_workload_problems: expected a workload mapping and a settings mapping")
    names = dict(names or {})
    typed = []
    for spec, values in ((ARGUMENT_SPEC, settings), (WORKLOAD_SPEC, workload)):
        # The module's own types and defaults first: a templated "30" is the module's 30.
        result = ArgumentSpecValidator(spec).validate(dict(values))
        if result.error_messages:
            message = result.error_messages[0]
            option = ARGUMENT_NAME.search(message)
            return [_named("%s: %s" % (option.group(1), message) if option else message, names)]
        typed.append(result.validated_parameters)
    try:
        make_workloads(make_request(typed[0]), [typed[1]])
    except MeshCAError as error:
        return [_named(str(error), names)]
    return []


def _canonical(value):
    """A setting as the module takes it: before ansible-core 2.19 a templated number is a string."""
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def mesh_ca_batch_problems(batch, host):
    """Where ``host``'s mesh-wide settings differ from the rest of its batch.

    ``batch`` maps each host of the batch to its settings (variable name to
    value). The mesh's value of a setting is the one most hosts have (the
    earliest host's among equals), so a single odd host is the one that fails,
    wherever it comes in the batch.
    """
    if not isinstance(batch, Mapping) or host not in batch:
        raise AnsibleFilterError("mesh_ca_batch_problems: %r is not one of the batch's hosts" % (host,))
    mine = batch[host]
    problems = []
    for name in mine:
        counts = {}
        holders = {}
        for other, settings in batch.items():
            value = json.dumps(_canonical(settings.get(name)), sort_keys=True, default=str)
            counts[value] = counts.get(value, 0) + 1
            holders.setdefault(value, []).append(other)
        mesh_value = max(counts, key=lambda value: (counts[value], -list(counts).index(value)))
        own = json.dumps(_canonical(mine.get(name)), sort_keys=True, default=str)
        if own != mesh_value:
            others = holders[mesh_value]
            shown = ", ".join(others[:HOSTS_SHOWN]) + (
                " and %d more" % (len(others) - HOSTS_SHOWN) if len(others) > HOSTS_SHOWN else ""
            )
            problems.append(
                "%s is %s on %s but %s on %s: the CA settings are the mesh's and must be the same on every host"
                % (name, own, host, mesh_value, shown)
            )
    return problems


def mesh_ca_default_dir(xdg_data_home, home, trust_domain):
    """The controller user's own directory for a trust domain's CA: $XDG_DATA_HOME (when absolute, as the XDG
    spec asks) or $HOME/.local/share, then hostmesh/ca/<trust_domain>; "" when the user has neither."""
    for base, below in ((xdg_data_home, ()), (home, (".local", "share"))):
        if isinstance(base, str) and os.path.isabs(base):
            return os.path.join(base, *below, "hostmesh", "ca", str(trust_domain))
    return ""


def mesh_ca_dir_problems(path, name="hostmesh_ca_dir"):
    """Why the controller user could not keep the CA in ``path``: [] or [one message naming ``name``].

    Looks at the controller's file system without changing it: the directory
    itself when it exists, else the nearest directory above it that does,
    which must let this user create what is missing.
    """
    if not isinstance(path, str) or not path:
        return [
            "%s: got %s; set it to a controller directory for the mesh CA (there is no HOME or XDG_DATA_HOME "
            "to default to)" % (name, json.dumps(path))
        ]
    if not os.path.isabs(path):
        return ["%s: got %r; expected an absolute path on the controller" % (name, path)]
    if os.path.lexists(path):
        if not os.path.isdir(path):
            return ["%s: got %r; it exists and is not a directory" % (name, path)]
        if not os.access(path, os.W_OK | os.X_OK):
            return ["%s: got %r; the controller user (uid %d) cannot write in it" % (name, path, os.getuid())]
        return []
    above = os.path.dirname(path)
    while not os.path.lexists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        return ["%s: got %r; it cannot be created: %s is not a directory" % (name, path, above)]
    if not os.access(above, os.W_OK | os.X_OK):
        return [
            "%s: got %r; it cannot be created: the controller user (uid %d) cannot write in %s"
            % (name, path, os.getuid(), above)
        ]
    return []


class FilterModule:
    def filters(self):
        return {
            "mesh_workload_problems": mesh_workload_problems,
            "mesh_ca_batch_problems": mesh_ca_batch_problems,
            "mesh_ca_default_dir": mesh_ca_default_dir,
            "mesh_ca_dir_problems": mesh_ca_dir_problems,
        }
