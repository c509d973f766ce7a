# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One inventory host as the registry sees it: who it is, where it is, what it offers."""

from collections.abc import Mapping

from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_identity import NAME_EXPECTED, is_name, spiffe_id
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_registry.errors import RegistryError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_registry.resilience import check_settings
from ansible_collections.hostmesh.sidecar.plugins.module_utils._plain_data import plain

PROTOCOLS = ("tcp", "http")
DEFAULT_NAMESPACE = "default"
# The only variables read from each host (each templated once): a broken
# unrelated variable elsewhere stays harmless.
HOST_KEYS = (
    "hostmesh_services",
    "hostmesh_address",
    "hostmesh_namespace",
    "hostmesh_service_account",
    "hostmesh_locality",
    "hostmesh_mesh_defaults",
    "ansible_host",
    "ansible_default_ipv4",
)


def host_vars(hv) -> dict:
    """The variables of HOST_KEYS a host has, as plain data."""
    if not isinstance(hv, Mapping):
        return {}
    return {key: plain(hv[key]) for key in HOST_KEYS if key in hv}


def _name(host, variable, value):
    if not is_name(value):
        raise RegistryError(host, variable, value, NAME_EXPECTED)
    return value


def _port(host, variable, value):
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise RegistryError(host, variable, value, "a port from 1 to 65535")
    return value


def _flag(host, variable, value):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "false", "no", "off"):
        return value.lower() in ("true", "yes", "on")
    raise RegistryError(host, variable, value, "true or false")


def _address(host, hv):
    for key in ("hostmesh_address", "ansible_host"):
        value = hv.get(key)
        if value:
            return str(value)
    facts = hv.get("ansible_default_ipv4") or {}
    if isinstance(facts, Mapping) and facts.get("address"):
        return str(facts["address"])
    raise RegistryError(
        host,
        "hostmesh_address",
        None,
        "an address peers can reach: set hostmesh_address or ansible_host, or gather facts (ansible_default_ipv4)",
    )


def _zone(host, value):
    if value in (None, ""):
        return ""
    return _name(host, "hostmesh_locality", value)


def _offer(host, index, service, address):
    where = "hostmesh_services[%d]" % index
    if not isinstance(service, dict):
        raise RegistryError(host, where, service, "a mapping with name, port and optionally protocol")
    if "name" not in service:
        raise RegistryError(host, where + ".name", None, "a service name (required)")
    if "port" not in service:
        raise RegistryError(host, where + ".port", None, "a port from 1 to 65535 (required)")
    name = _name(host, where + ".name", service["name"])
    port = _port(host, where + ".port", service["port"])
    protocol = service.get("protocol", "tcp")
    if protocol not in PROTOCOLS:
        raise RegistryError(host, where + ".protocol", protocol, "one of %s" % ", ".join(PROTOCOLS))
    return {
        "name": name,
        "where": where,
        "port": port,
        "protocol": protocol,
        # A service the agent serves in plain text (tls: false) is called in plain text.
        "tls": _flag(host, where + ".tls", service.get("tls", True)),
        "address": address,
        "settings": check_settings(host, where, service, protocol),
    }


def host_record(host: str, hv, trust_domain: str) -> dict:
    """One host's identity, zone, mesh defaults and the services it offers, checked, in plain data."""
    hv = host_vars(hv)
    services = hv.get("hostmesh_services") or []
    if not isinstance(services, list):
        raise RegistryError(host, "hostmesh_services", services, "a list of {name, port, protocol}")
    namespace = _name(host, "hostmesh_namespace", hv.get("hostmesh_namespace", DEFAULT_NAMESPACE))
    account = _name(host, "hostmesh_service_account", hv.get("hostmesh_service_account", host))
    address = _address(host, hv) if services else None
    offers = []
    seen = {}
    for index, service in enumerate(services):
        offer = _offer(host, index, service, address)
        if offer["name"] in seen:
            raise RegistryError(
                host,
                offer["where"] + ".name",
                offer["name"],
                "each service once per host (also at %s)" % seen[offer["name"]],
            )
        seen[offer["name"]] = offer["where"]
        offers.append(offer)
    return {
        "host": host,
        "spiffe_id": spiffe_id(trust_domain, namespace, account),
        "namespace": namespace,
        "service_account": account,
        "zone": _zone(host, hv.get("hostmesh_locality")),
        "mesh_defaults": hv.get("hostmesh_mesh_defaults"),
        "offers": offers,
    }
