# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters of the standalone mesh: a host's SPIFFE ID, and the older per-host upstreams (deprecated).

Documentation for each filter lives next to this file, in ``<filter>.yml``.
"""

import json

from ansible.errors import AnsibleFilterError

from ansible_collections.hostmesh.sidecar.plugins.filter.mesh_registry import records_of, trust_domain_of
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_registry.errors import RegistryError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_registry.hosts import host_record
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_registry.registry import (
    build_registry,
    legacy_upstreams,
)


def mesh_upstreams(hostvars, hosts, inventory_hostname, trust_domain=None):
    """Deprecated: one host's upstreams in the older shape, from a registry built for this call alone.

    Each call reads every host, so a play that calls it for every host grows
    with the square of the fleet; use mesh_registry once and mesh_outbound per host.
    """
    trust_domain = trust_domain_of(hostvars, str(inventory_hostname), trust_domain, "mesh_upstreams")
    records = records_of(hostvars, hosts, trust_domain, "mesh_upstreams")
    me = str(inventory_hostname)
    if me not in {record["host"] for record in records}:
        records.append(
            {
                "host": me,
                "spiffe_id": "",
                "namespace": "",
                "service_account": "",
                "zone": "",
                "mesh_defaults": None,
                "offers": [],
            }
        )
    try:
        registry = build_registry(records, trust_domain, one_namespace=False)
        return legacy_upstreams(registry, me)
    except RegistryError as error:
        raise AnsibleFilterError("mesh_upstreams: %s" % error) from None


def mesh_spiffe_id(hostvars, host, trust_domain=None):
    """The SPIFFE ID of one inventory host, from its hostmesh_namespace and hostmesh_service_account."""
    if host not in hostvars:
        raise AnsibleFilterError(
            "mesh_spiffe_id: host %r, host: got %s; expected a host of the inventory"
            % (str(host), json.dumps(str(host)))
        )
    trust_domain = trust_domain_of(hostvars, host, trust_domain, "mesh_spiffe_id")
    try:
        return host_record(str(host), _without_services(hostvars[host]), trust_domain)["spiffe_id"]
    except RegistryError as error:
        raise AnsibleFilterError("mesh_spiffe_id: %s" % error) from None


def _without_services(hv):
    return {key: hv[key] for key in ("hostmesh_namespace", "hostmesh_service_account") if key in hv}


class FilterModule:
    """hostmesh.sidecar mesh filters."""

    def filters(self):
        return {"mesh_upstreams": mesh_upstreams, "mesh_spiffe_id": mesh_spiffe_id}
