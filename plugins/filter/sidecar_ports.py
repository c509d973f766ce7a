# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The sidecar's port contract, completed and checked for one host.

Documentation lives next to this file, in ``sidecar_ports.yml``.
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.hostmesh.sidecar.plugins.module_utils._plain_data import plain
from ansible_collections.hostmesh.sidecar.plugins.module_utils._sidecar_ports import (
    PortContractError,
    check_capture_options,
    complete_ports,
)


def sidecar_ports(ports, host, capture_options=None) -> dict:
    """``hostmesh_ports`` with every default filled in, after checking it and the capture options against it."""
    try:
        complete = complete_ports(plain(ports))
        check_capture_options(complete, plain(capture_options))
    except PortContractError as error:
        raise AnsibleFilterError("sidecar_ports: host %r, %s" % (str(host), error)) from None
    return complete


class FilterModule:
    """hostmesh.sidecar port contract filter."""

    def filters(self):
        return {"sidecar_ports": sidecar_ports}
