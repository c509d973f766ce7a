# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The traffic_capture options the capture role applies, from its variables and the port contract.

Documentation lives next to this file, in ``capture_options.yml``.
"""

import json

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.hostmesh.sidecar.plugins.module_utils._plain_data import plain
from ansible_collections.hostmesh.sidecar.plugins.module_utils._sidecar_ports import (
    PortContractError,
    capture_port_options,
    check_capture_options,
    complete_ports,
    inbound_ports_exclude,
)

# The role's variables this filter reads; hostmesh_capture_options and hostmesh_dns may be left out.
REQUIRED = (
    "host",
    "hostmesh_ports",
    "hostmesh_capture_mode",
    "hostmesh_proxy_uid",
    "hostmesh_proxy_gid",
    "hostmesh_capture_inbound_ports_exclude",
    "hostmesh_capture_rules_file",
)


def capture_options(role_vars) -> dict:
    """traffic_capture's options (without ``state``): the role's, the contract's ports, then hostmesh_capture_options."""
    role_vars = plain(role_vars)
    if not isinstance(role_vars, dict) or any(key not in role_vars for key in REQUIRED):
        raise AnsibleFilterError("capture_options: expected a mapping with %s" % ", ".join(REQUIRED))
    extra = role_vars.get("hostmesh_capture_options") or {}
    try:
        ports = complete_ports(role_vars["hostmesh_ports"])
        check_capture_options(ports, extra)
        excluded = inbound_ports_exclude(role_vars["hostmesh_capture_inbound_ports_exclude"], ports)
    except PortContractError as error:
        raise AnsibleFilterError("capture_options: host %r, %s" % (role_vars["host"], error)) from None
    options = {
        "mode": role_vars["hostmesh_capture_mode"],
        "proxy_uid": [role_vars["hostmesh_proxy_uid"]],
        "proxy_gid": [role_vars["hostmesh_proxy_gid"]],
        "inbound_ports_exclude": excluded,
        "rules_file": role_vars["hostmesh_capture_rules_file"],
    }
    options.update(capture_port_options(ports))
    try:
        dns = boolean(role_vars.get("hostmesh_dns", False), strict=True)
    except TypeError:
        raise AnsibleFilterError(
            "capture_options: host %r, hostmesh_dns: got %s; expected true or false"
            % (role_vars["host"], json.dumps(role_vars["hostmesh_dns"]))
        ) from None
    # The agent answers DNS on the contract's dns port: the resolvers' queries go there.
    if dns:
        options["dns_redirect"] = True
    options.update(extra)
    return options


class FilterModule:
    """hostmesh.sidecar capture role filter."""

    def filters(self):
        return {"capture_options": capture_options}
