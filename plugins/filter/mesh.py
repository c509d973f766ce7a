# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters that turn the inventory into the standalone mesh's registry.

Documentation for each filter lives next to this file, in ``<filter>.yml``.
"""

import ipaddress
import json
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_identity import NAME_EXPECTED, is_name, spiffe_id
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_policy import identity_view

try:
    import jmespath
except ImportError:
    jmespath = None

PROTOCOLS = ("tcp", "http")
DEFAULT_NAMESPACE = "default"
DEFAULT_TRUST_DOMAIN = "cluster.local"
HOST_KEYS = (
    "hostmesh_services",
    "hostmesh_address",
    "hostmesh_namespace",
    "hostmesh_service_account",
    "ansible_host",
    "ansible_default_ipv4",
)

# Flatten every other host's offers into one list of records; the Python that
# follows only groups and checks them.
OFFERS_QUERY = "[?host != {me}].offers[]"


def _plain(value):
    """Copy template results into plain dicts, lists and scalars, for jmespath and JSON."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def _bad(host, key, value, expected):
    return AnsibleFilterError(
        "mesh_upstreams: host %r, %s: got %s; expected %s" % (host, key, json.dumps(value, default=str), expected)
    )


def _name(host, key, value):
    if not is_name(value):
        raise _bad(host, key, value, NAME_EXPECTED)
    return value


def _port(host, key, value):
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _bad(host, key, value, "a port from 1 to 65535")
    return value


def _address(host, hv):
    for key in ("hostmesh_address", "ansible_host"):
        value = hv.get(key)
        if value:
            return str(value)
    facts = hv.get("ansible_default_ipv4") or {}
    if isinstance(facts, Mapping) and facts.get("address"):
        return str(facts["address"])
    raise _bad(
        host,
        "hostmesh_address",
        None,
        "an address peers can reach: set hostmesh_address or ansible_host, or gather facts (ansible_default_ipv4)",
    )


def _host_vars(hv):
    """Only the variables the mesh reads, templated once; a broken unrelated variable stays harmless."""
    if not isinstance(hv, Mapping):
        return {}
    return {key: _plain(hv[key]) for key in HOST_KEYS if key in hv}


def _endpoint(address, port):
    return "[%s]:%d" % (address, port) if ":" in address else "%s:%d" % (address, port)


def host_record(host: str, hv, trust_domain: str) -> dict:
    """One host's identity and the services it offers, checked and in plain data."""
    hv = _host_vars(hv)
    services = hv.get("hostmesh_services") or []
    if not isinstance(services, list):
        raise _bad(host, "hostmesh_services", services, "a list of {name, port, protocol}")
    namespace = _name(host, "hostmesh_namespace", hv.get("hostmesh_namespace", DEFAULT_NAMESPACE))
    account = _name(host, "hostmesh_service_account", hv.get("hostmesh_service_account", host))
    identity = spiffe_id(trust_domain, namespace, account)
    offers = []
    names = {}
    address = _address(host, hv) if services else None
    for index, service in enumerate(services):
        where = "hostmesh_services[%d]" % index
        if not isinstance(service, dict):
            raise _bad(host, where, service, "a mapping with name, port and optionally protocol")
        if "name" not in service:
            raise _bad(host, where + ".name", None, "a service name (required)")
        if "port" not in service:
            raise _bad(host, where + ".port", None, "a port from 1 to 65535 (required)")
        name = _name(host, where + ".name", service["name"])
        port = _port(host, where + ".port", service["port"])
        protocol = service.get("protocol", "tcp")
        if protocol not in PROTOCOLS:
            raise _bad(host, where + ".protocol", protocol, "one of %s" % ", ".join(PROTOCOLS))
        if name in names:
            raise _bad(host, where + ".name", name, "each service once per host (also at %s)" % names[name])
        # A service the agent serves in plain text (tls: false) is called in plain text.
        try:
            tls = boolean(service.get("tls", True), strict=True)
        except TypeError:
            raise _bad(host, where + ".tls", service["tls"], "true or false") from None
        names[name] = where
        offers.append(
            {
                "host": host,
                "name": name,
                "port": port,
                "protocol": protocol,
                "address": address,
                "endpoint": _endpoint(address, port),
                "spiffe_id": identity,
                "tls": tls,
            }
        )
    return {"host": host, "namespace": namespace, "service_account": account, "spiffe_id": identity, "offers": offers}


def _group(offers):
    """Merge offers by service name; one name with different ports, protocols or tls is an error naming both hosts."""
    by_name = {}
    for offer in offers:
        first = by_name.get(offer["name"])
        if first is None:
            by_name[offer["name"]] = first = dict(offer, offers=[])
        for key in ("port", "protocol", "tls"):
            if offer[key] != first[key]:
                raise _bad(
                    offer["host"],
                    "hostmesh_services (service %r).%s" % (offer["name"], key),
                    offer[key],
                    "%s, as on host %r" % (json.dumps(first[key]), first["host"]),
                )
        first["offers"].append(offer)
    return list(by_name.values())


def _host_cidr(offer, other):
    """The host route of an offer's address, for a port it shares with another service."""
    try:
        address = ipaddress.ip_address(offer["address"])
    except ValueError:
        raise _bad(
            offer["host"],
            "hostmesh_address",
            offer["address"],
            "an IP address: service %r shares port %d with %r (host %r), and the sidecar tells them apart "
            "by destination address" % (offer["name"], offer["port"], other["name"], other["host"]),
        ) from None
    return "%s/%d" % (address, address.max_prefixlen)


def _match_cidrs(services):
    """match_cidrs for services sharing a port: each one's own addresses, so the agent can tell them apart."""
    by_port = {}
    for service in services:
        by_port.setdefault(service["port"], []).append(service)
    cidrs = {}
    for sharing in by_port.values():
        if len(sharing) < 2:
            continue
        owner = {}
        for service in sharing:
            other = next(s for s in sharing if s is not service)
            cidrs[service["name"]] = sorted({_host_cidr(offer, other) for offer in service["offers"]})
            for cidr in cidrs[service["name"]]:
                if owner.setdefault(cidr, service)["name"] != service["name"]:
                    raise _bad(
                        service["offers"][0]["host"],
                        "hostmesh_services (service %r).port" % service["name"],
                        service["port"],
                        "a port that %r does not also use at %s" % (owner[cidr]["name"], cidr),
                    )
    return cidrs


def _trust_domain(hostvars, host, given):
    """The trust domain given, else the host's hostmesh_trust_domain from the inventory, else cluster.local."""
    if given is None:
        given = DEFAULT_TRUST_DOMAIN
        # HostVars answers an unknown host with an undefined value, not KeyError.
        if host in hostvars:
            given = hostvars[host].get("hostmesh_trust_domain", DEFAULT_TRUST_DOMAIN)
    return _name(str(host), "trust_domain", _plain(given))


def mesh_upstreams(hostvars, hosts, inventory_hostname, trust_domain=None):
    """The agent's ``outbound.services`` for one host: every other mesh host's services, over mTLS."""
    if jmespath is None:
        raise AnsibleFilterError(
            "mesh_upstreams needs the jmespath Python library on the controller: pip install jmespath"
        )
    if isinstance(hosts, str) or not isinstance(hosts, (list, tuple)):
        raise AnsibleFilterError(
            "mesh_upstreams: hosts: got %s; expected a list of inventory host names" % json.dumps(hosts, default=str)
        )
    trust_domain = _trust_domain(hostvars, inventory_hostname, trust_domain)
    records = []
    for host in sorted({str(host) for host in hosts}):
        if host not in hostvars:
            raise _bad(host, "hosts", host, "a host of the inventory")
        records.append(host_record(host, hostvars[host], trust_domain))
    offers = jmespath.search(OFFERS_QUERY.format(me=_literal(str(inventory_hostname))), records) or []
    services = _group(offers)
    cidrs = _match_cidrs(services)
    upstreams = []
    for service in services:
        upstream = {
            "name": service["name"],
            "port": service["port"],
            "protocol": service["protocol"],
            "endpoints": sorted({offer["endpoint"] for offer in service["offers"]}),
            "tls": service["tls"],
        }
        if service["tls"]:
            upstream["spiffe_ids"] = sorted({offer["spiffe_id"] for offer in service["offers"]})
        if service["name"] in cidrs:
            upstream["match_cidrs"] = cidrs[service["name"]]
        upstreams.append(upstream)
    return sorted(upstreams, key=lambda upstream: (upstream["name"], upstream["port"]))


def mesh_spiffe_id(hostvars, host, trust_domain=None):
    """The SPIFFE ID of one inventory host, from its hostmesh_namespace and hostmesh_service_account."""
    if host not in hostvars:
        raise _bad(str(host), "host", str(host), "a host of the inventory")
    trust_domain = _trust_domain(hostvars, host, trust_domain)
    return host_record(str(host), _without_services(hostvars[host]), trust_domain)["spiffe_id"]


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
    trust_domain = _trust_domain(hostvars, hosts[0] if hosts else "", trust_domain)
    identities = []
    for host in hosts:
        if host not in hostvars:
            raise _bad(host, "hosts", host, "a host of the inventory")
        hv = hostvars[host]
        record = host_record(host, hv, trust_domain)
        labels = _plain(hv.get("hostmesh_node_labels")) if "hostmesh_node_labels" in hv else {}
        identities.append(
            {
                "host": host,
                "namespace": record["namespace"],
                "service_account": record["service_account"],
                "spiffe_id": record["spiffe_id"],
                "services": sorted({offer["name"] for offer in record["offers"]}),
                "app": str(labels.get("app", "")) if isinstance(labels, Mapping) else "",
            }
        )
    return identity_view(trust_domain, identities)


def _without_services(hv):
    return {key: hv[key] for key in ("hostmesh_namespace", "hostmesh_service_account") if key in hv}


def _literal(text):
    """A jmespath JSON literal holding text (backticks escaped)."""
    return "`%s`" % json.dumps(text).replace("`", "\\`")


class FilterModule:
    """hostmesh.sidecar mesh filters."""

    def filters(self):
        return {
            "mesh_upstreams": mesh_upstreams,
            "mesh_spiffe_id": mesh_spiffe_id,
            "mesh_identities": mesh_identities,
        }
