# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The registry of a whole mesh, built once from every host's record, and one host's slice of it.

Building reads each host once and each offer once, so it grows with the size
of the inventory; a slice copies references to the services a host does not
offer itself and rebuilds only the few it does (without its own endpoint), so
its cost is the number of services plus the endpoints of the host's own ones.

The registry (plain data, JSON-safe)::

    trust_domain: cluster.local
    mesh_defaults: {...}            # hostmesh_mesh_defaults, checked
    services:                       # sorted by name
      - name, namespace, port, protocol, tls, spiffe_ids, vips: [v4, v6],
        endpoints: [{address, port, zone, host}], settings: {...merged},
        match_cidrs: [...]          # the hosts' addresses, for a port shared with another service
        outbound: {...}             # the agent's outbound.services entry for a host that does not offer it
    hosts:                          # every mesh host, by inventory name
      <host>: {spiffe_id, namespace, service_account, zone, services: [names it offers]}

``hosts`` is the mesh's identity view: who each host is (its SPIFFE ID, made
of trust domain, namespace and service account), its zone and the services
it offers; a service's callers can be named by any of these.
"""

import ipaddress
import json

from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_registry.errors import RegistryError, shown
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_registry.resilience import (
    check_mesh_defaults,
    merged_settings,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_registry.vips import allocate_vips

# The keys of an outbound entry mesh_upstreams returned before the registry had more.
LEGACY_KEYS = ("name", "port", "protocol", "endpoints", "tls", "spiffe_ids", "match_cidrs")


def endpoint_text(address: str, port: int) -> str:
    """``address:port``, an IPv6 address in brackets."""
    return "[%s]:%d" % (address, port) if ":" in address else "%s:%d" % (address, port)


def _mesh_defaults(records):
    """The mesh-wide defaults: the value most hosts have, checked; a host with another value is an error."""
    counts = {}
    for record in records:
        text = shown(record["mesh_defaults"] or {})
        counts[text] = counts.get(text, 0) + 1
    if not counts:
        return {}
    # On a tie, the first host's value (counts keeps the order values first appear in).
    common = max(counts, key=lambda text: counts[text])
    mesh = json.loads(common)
    for record in records:
        if shown(record["mesh_defaults"] or {}) != common:
            first = next(r["host"] for r in records if shown(r["mesh_defaults"] or {}) == common)
            raise RegistryError(
                record["host"],
                "hostmesh_mesh_defaults",
                record["mesh_defaults"] or {},
                "the same mesh defaults on every mesh host: %s, as on host %r" % (common, first),
            )
    owner = next(r["host"] for r in records if shown(r["mesh_defaults"] or {}) == common)
    return check_mesh_defaults(owner, mesh)


def _mismatch(record, offer, key, value, first):
    return RegistryError(
        record["host"],
        "hostmesh_services (service %r).%s" % (offer["name"], key),
        value,
        "%s, as on host %r" % (shown(first[key]), first["host"]),
    )


def _group(records, one_namespace):
    """Offers merged by service name; one name offered differently on two hosts is an error naming both."""
    by_name = {}
    for record in records:
        for offer in record["offers"]:
            seen = by_name.get(offer["name"])
            if seen is None:
                by_name[offer["name"]] = seen = dict(
                    offer, host=record["host"], namespace=record["namespace"], offers=[]
                )
            for key in ("port", "protocol", "tls"):
                if offer[key] != seen[key]:
                    raise _mismatch(record, offer, key, offer[key], seen)
            if one_namespace and record["namespace"] != seen["namespace"]:
                raise RegistryError(
                    record["host"],
                    "hostmesh_namespace",
                    record["namespace"],
                    "%s, as on host %r, which offers service %r too: a service lives in one namespace"
                    % (shown(seen["namespace"]), seen["host"], offer["name"]),
                )
            for key in sorted(set(offer["settings"]) | set(seen["settings"])):
                if offer["settings"].get(key) != seen["settings"].get(key):
                    raise RegistryError(
                        record["host"],
                        "hostmesh_services (service %r).%s" % (offer["name"], key),
                        offer["settings"].get(key),
                        "%s, as on host %r: every host of a service gives it the same settings"
                        % (shown(seen["settings"][key]) if key in seen["settings"] else "it unset", seen["host"]),
                    )
            seen["offers"].append(dict(offer, host=record["host"], zone=record["zone"]))
    return [by_name[name] for name in sorted(by_name)]


def _host_cidr(offer, service, other):
    try:
        address = ipaddress.ip_address(offer["address"])
    except ValueError:
        raise RegistryError(
            offer["host"],
            "hostmesh_address",
            offer["address"],
            "an IP address: service %r shares port %d with %r (host %r), and the sidecar tells them apart "
            "by destination address" % (service["name"], service["port"], other["name"], other["host"]),
        ) from None
    return "%s/%d" % (address, address.max_prefixlen)


def _cidr(address):
    ip = ipaddress.ip_address(address)
    return "%s/%d" % (ip, ip.max_prefixlen)


def _match_cidrs(services):
    """For services sharing a port: each one's hosts' addresses, which two services may not share."""
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
            cidrs[service["name"]] = sorted({_host_cidr(offer, service, other) for offer in service["offers"]})
            for cidr in cidrs[service["name"]]:
                if owner.setdefault(cidr, service)["name"] != service["name"]:
                    raise RegistryError(
                        service["offers"][0]["host"],
                        "hostmesh_services (service %r).port" % service["name"],
                        service["port"],
                        "a port that %r does not also use at %s" % (owner[cidr]["name"], cidr),
                    )
    return cidrs


def _outbound_entry(service, endpoints, spiffe_ids):
    """The agent's outbound.services entry for a service reached at ``endpoints``."""
    entry = {
        "name": service["name"],
        "namespace": service["namespace"],
        "port": service["port"],
        "protocol": service["protocol"],
        "tls": service["tls"],
        "vips": service["vips"],
        "endpoints": [{"address": e["address"], "port": e["port"], "zone": e["zone"]} for e in endpoints],
    }
    if service["tls"]:
        entry["spiffe_ids"] = spiffe_ids
    entry.update(service["settings"])
    return entry


def build_registry(records, trust_domain: str, one_namespace: bool = True) -> dict:
    """The registry of the mesh made of ``records`` (see hosts.host_record), checked as a whole.

    ``one_namespace`` false lets one service name live in several namespaces
    (what mesh_upstreams accepted); its VIPs then follow the first host's namespace.
    """
    records = sorted(records, key=lambda record: record["host"])
    defaults = _mesh_defaults(records)
    grouped = _group(records, one_namespace)
    cidrs = _match_cidrs(grouped)
    vips = allocate_vips("%s/%s" % (group["namespace"], group["name"]) for group in grouped)
    return _assemble(records, trust_domain, defaults, grouped, cidrs, vips)


def _assemble(records, trust_domain, defaults, grouped, cidrs, vips):
    ids = {record["host"]: record["spiffe_id"] for record in records}
    services = []
    for group in grouped:
        endpoints = sorted(
            (
                {"address": offer["address"], "port": offer["port"], "zone": offer["zone"], "host": offer["host"]}
                for offer in group["offers"]
            ),
            key=lambda e: (endpoint_text(e["address"], e["port"]), e["host"]),
        )
        service = {
            "name": group["name"],
            "namespace": group["namespace"],
            "port": group["port"],
            "protocol": group["protocol"],
            "tls": group["tls"],
            "spiffe_ids": sorted({ids[e["host"]] for e in endpoints}),
            "vips": vips["%s/%s" % (group["namespace"], group["name"])],
            "endpoints": endpoints,
            "settings": merged_settings(defaults, group["settings"], group["protocol"]),
            "match_cidrs": cidrs.get(group["name"], []),
        }
        service["outbound"] = _outbound_entry(service, endpoints, service["spiffe_ids"])
        services.append(service)
    hosts = {
        record["host"]: {
            "spiffe_id": record["spiffe_id"],
            "namespace": record["namespace"],
            "service_account": record["service_account"],
            "zone": record["zone"],
            "services": [offer["name"] for offer in record["offers"]],
        }
        for record in records
    }
    return {"trust_domain": trust_domain, "mesh_defaults": defaults, "services": services, "hosts": hosts}


def outbound_slice(registry: dict, host: str) -> list:
    """The agent's ``outbound.services`` for ``host``: every service, without the host's own endpoints.

    A service only the host offers is left out (a host never routes to itself).
    ``match_cidrs`` is kept only where the port is still shared in this slice.
    """
    me = registry["hosts"].get(host)
    if me is None:
        raise RegistryError(host, "hosts", host, "a host of the registry (one of the hosts it was built from)")
    mine = set(me["services"])
    chosen = []
    for service in registry["services"]:
        if service["name"] not in mine:
            chosen.append((service["outbound"], service["match_cidrs"]))
            continue
        endpoints = [e for e in service["endpoints"] if e["host"] != host]
        if not endpoints:
            continue
        ids = sorted({registry["hosts"][e["host"]]["spiffe_id"] for e in endpoints})
        cidrs = sorted({_cidr(e["address"]) for e in endpoints}) if service["match_cidrs"] else []
        chosen.append((_outbound_entry(service, endpoints, ids), cidrs))
    ports = {}
    for entry, _cidrs in chosen:
        ports[entry["port"]] = ports.get(entry["port"], 0) + 1
    return [dict(entry, match_cidrs=cidrs) if cidrs and ports[entry["port"]] > 1 else entry for entry, cidrs in chosen]


def legacy_upstreams(registry: dict, host: str) -> list:
    """``host``'s slice as mesh_upstreams gave it: endpoints as ``address:port``, no VIPs or settings."""
    upstreams = []
    for entry in outbound_slice(registry, host):
        legacy = {key: entry[key] for key in LEGACY_KEYS if key in entry}
        legacy["endpoints"] = sorted({endpoint_text(e["address"], e["port"]) for e in entry["endpoints"]})
        upstreams.append(legacy)
    return upstreams
