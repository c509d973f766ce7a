# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters of the standalone mesh: a host's SPIFFE ID, and the older per-host upstreams (deprecated).

Documentation for each filter lives next to this file, in ``<filter>.yml``.
"""

import json
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

from ansible_collections.hostmesh.sidecar.plugins.filter.mesh_registry import records_of, trust_domain_of
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_identity import NAME_EXPECTED, is_name
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_policy import identity_view
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_registry.errors import RegistryError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_registry.hosts import host_record
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_registry.registry import (
    build_registry,
    legacy_upstreams,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._plain_data import plain


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


def mesh_identities(hostvars, hosts, trust_domain=None):
    """Every mesh host's identity and the services it offers, as the allow-rule resolver reads them.

    Built once per play (the onboard playbook sets it as a fact with run_once) and handed to
    every host's agent_config, which resolves that host's ``allow`` rules with it.
    """
    if isinstance(hosts, str) or not isinstance(hosts, (list, tuple)):
        raise AnsibleFilterError(
            "mesh_identities: hosts: got %s; expected a list of inventory host names" % json.dumps(hosts, default=str)
        )
    hosts = sorted({str(host) for host in hosts})
    trust_domain = trust_domain_of(hostvars, hosts[0] if hosts else "", trust_domain, "mesh_identities")
    identities = []
    try:
        for host in hosts:
            if host not in hostvars:
                raise RegistryError(host, "hosts", host, "a host of the inventory")
            hv = hostvars[host]
            # Names only: a host in xDS mode, or one whose address is learnt later, needs none here.
            record = host_record(host, _without_services(hv), trust_domain)
            labels = plain(hv.get("hostmesh_node_labels")) if "hostmesh_node_labels" in hv else {}
            identities.append(
                {
                    "host": host,
                    "namespace": record["namespace"],
                    "service_account": record["service_account"],
                    "spiffe_id": record["spiffe_id"],
                    "services": _service_names(host, hv),
                    "app": str(labels.get("app", "")) if isinstance(labels, Mapping) else "",
                }
            )
    except RegistryError as error:
        raise AnsibleFilterError("mesh_identities: %s" % error) from None
    return identity_view(trust_domain, identities)


def _service_names(host, hv):
    services = plain(hv["hostmesh_services"]) if "hostmesh_services" in hv else []
    services = services or []
    if not isinstance(services, list):
        raise RegistryError(host, "hostmesh_services", services, "a list of {name, port, protocol}")
    names = set()
    for index, service in enumerate(services):
        where = "hostmesh_services[%d]" % index
        if not isinstance(service, dict) or "name" not in service:
            raise RegistryError(host, where, service, "a mapping with name, port and optionally protocol")
        if not is_name(service["name"]):
            raise RegistryError(host, where + ".name", service["name"], NAME_EXPECTED)
        names.add(service["name"])
    return sorted(names)


def _without_services(hv):
    return {key: hv[key] for key in ("hostmesh_namespace", "hostmesh_service_account") if key in hv}


class FilterModule:
    """hostmesh.sidecar mesh filters."""

    def filters(self):
        return {
            "mesh_upstreams": mesh_upstreams,
            "mesh_spiffe_id": mesh_spiffe_id,
            "mesh_identities": mesh_identities,
        }
