# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The standalone mesh's registry, computed once per play, and each host's slice of it.

Documentation for each filter lives next to this file, in ``<filter>.yml``.
"""

import json

from ansible.errors import AnsibleFilterError

from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_identity import NAME_EXPECTED, is_name
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_registry.errors import RegistryError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_registry.hosts import host_record
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_registry.registry import (
    build_registry,
    outbound_slice,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._plain_data import plain

DEFAULT_TRUST_DOMAIN = "cluster.local"


def trust_domain_of(hostvars, host, given, caller: str) -> str:
    """The trust domain given, else the host's hostmesh_trust_domain from the inventory, else cluster.local."""
    if given is None:
        given = DEFAULT_TRUST_DOMAIN
        # HostVars answers an unknown host with an undefined value, not KeyError.
        if host is not None and host in hostvars:
            given = hostvars[host].get("hostmesh_trust_domain", DEFAULT_TRUST_DOMAIN)
    given = plain(given)
    if not is_name(given):
        raise AnsibleFilterError(
            "%s: host %r, trust_domain: got %s; expected %s" % (caller, str(host), json.dumps(given), NAME_EXPECTED)
        )
    return given


def records_of(hostvars, hosts, trust_domain: str, caller: str) -> list:
    """Every host's record, each host's variables read once."""
    if isinstance(hosts, str) or not isinstance(hosts, (list, tuple)):
        raise AnsibleFilterError(
            "%s: hosts: got %s; expected a list of inventory host names" % (caller, json.dumps(hosts, default=str))
        )
    records = []
    try:
        for host in sorted({str(host) for host in hosts}):
            if host not in hostvars:
                raise RegistryError(host, "hosts", host, "a host of the inventory")
            records.append(host_record(host, hostvars[host], trust_domain))
    except RegistryError as error:
        raise AnsibleFilterError("%s: %s" % (caller, error)) from None
    return records


def mesh_registry(hostvars, hosts, trust_domain=None) -> dict:
    """The whole mesh's registry (services, VIPs, endpoints, settings, host identities); compute it once per play."""
    first = sorted(str(host) for host in hosts)[0] if isinstance(hosts, (list, tuple)) and hosts else None
    trust_domain = trust_domain_of(hostvars, first, trust_domain, "mesh_registry")
    records = records_of(hostvars, hosts, trust_domain, "mesh_registry")
    try:
        return build_registry(records, trust_domain)
    except RegistryError as error:
        raise AnsibleFilterError("mesh_registry: %s" % error) from None


def mesh_outbound(registry, host) -> list:
    """One host's slice of the registry: the agent's ``outbound.services``."""
    if not isinstance(registry, dict) or not isinstance(registry.get("services"), list) or "hosts" not in registry:
        raise AnsibleFilterError(
            "mesh_outbound: expected the registry the hostmesh.sidecar.mesh_registry filter returns; got %s"
            % type(registry).__name__
        )
    try:
        return outbound_slice(registry, str(host))
    except RegistryError as error:
        raise AnsibleFilterError("mesh_outbound: %s" % error) from None


class FilterModule:
    """hostmesh.sidecar mesh registry filters."""

    def filters(self):
        return {"mesh_registry": mesh_registry, "mesh_outbound": mesh_outbound}
