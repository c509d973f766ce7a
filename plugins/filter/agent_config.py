# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The agent's JSON config (docs/agent.md), built from the agent role's variables.

The role passes its variables as one mapping, by their names, and writes
what this returns as ``/etc/hostmesh/agent.json``; ``hostmesh-agent validate``
then checks every key. What the agent cannot know - a rule that spans role
variables, or a port that would leave the port contract - is checked here, and
each problem names the host, the variable and the value. Documentation lives
next to this file, in ``agent_config.yml``.
"""

import json
import re

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_identity import spiffe_id
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_policy import (
    PolicyError,
    identity_view,
    policy_default,
    resolve_allow,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._plain_data import plain
from ansible_collections.hostmesh.sidecar.plugins.module_utils._sidecar_ports import (
    PortContractError,
    agent_ports,
    check_agent_ports,
    check_capture_options,
    complete_ports,
    port_number,
)

# What the role reads; the *_files lists are its vars, the certificates and
# keys as they land on the host ({src, dest, key}).
REQUIRED = (
    "host",
    "hostmesh_mode",
    "hostmesh_trust_domain",
    "hostmesh_namespace",
    "hostmesh_service_account",
    "hostmesh_node_name",
    "hostmesh_node_labels",
    "hostmesh_node_ip",
    "hostmesh_services",
    "hostmesh_outbound_services",
    "hostmesh_inbound_passthrough",
    "hostmesh_outbound_passthrough",
    "hostmesh_tls_cert_src",
    "hostmesh_tls_key_src",
    "hostmesh_tls_ca_src",
    "hostmesh_xds_address",
    "hostmesh_xds_sni",
    "hostmesh_xds_cluster_id",
    "hostmesh_xds_network",
    "hostmesh_capture_mode",
    "hostmesh_ports",
    "hostmesh_envoy_bin",
    "hostmesh_agent_config_extra",
    "hostmesh_agent_run_dir",
    "hostmesh_agent_tls_files",
    "hostmesh_agent_xds_files",
    "hostmesh_policy_default",
    "hostmesh_mesh_identities",
    "hostmesh_access_log_enabled",
    "hostmesh_access_log_sampling",
    "hostmesh_access_log_destination",
    "hostmesh_telemetry_enabled",
    "hostmesh_tracing_collector",
    "hostmesh_tracing_sampling",
)
TLS_SOURCES = ("hostmesh_tls_cert_src", "hostmesh_tls_key_src", "hostmesh_tls_ca_src")
# hostmesh_services keys the agent's inbound.services takes; others stay in the inventory.
SERVICE_KEYS = ("target_port", "allowed_spiffe_ids", "server_first")
XDS_ADDRESS = re.compile(r"^[^:\s]+:[0-9]+$")
NUMBER = re.compile(r"^[0-9]+(\.[0-9]*)?$")


class _Problems(list):
    """What is wrong with the role's variables, one message each."""

    def add(self, variable, value, expected):
        self.append("%s: got %s; expected %s" % (variable, json.dumps(value, default=str, sort_keys=True), expected))


def _flag(problems, variable, value):
    try:
        return boolean(value, strict=True)
    except TypeError:
        problems.add(variable, value, "true or false")
        return False


def _inbound_service(problems, index, service, tls_enabled, policy_view):
    where = "hostmesh_services[%d]" % index
    if not isinstance(service, dict) or "name" not in service or "port" not in service:
        problems.add(where, service, "a mapping with a name and a port")
        return None
    entry = {"name": service["name"], "port": service["port"], "protocol": service.get("protocol", "tcp")}
    try:
        entry["port"] = port_number(where + ".port", service["port"])
        if "target_port" in service:
            entry["target_port"] = port_number(where + ".target_port", service["target_port"])
    except PortContractError as error:
        problems.append(str(error))
    entry["tls"] = _flag(problems, where + ".tls", service["tls"]) if "tls" in service else tls_enabled
    if entry["tls"] and not tls_enabled:
        problems.add(where + ".tls", service["tls"], "false, or hostmesh_tls_cert_src set: TLS needs a certificate")
    for key in SERVICE_KEYS:
        if key in service and key not in entry:
            entry[key] = service[key]
    if "allow" in service:
        described = {"protocol": entry["protocol"], "tls": entry["tls"], "where": where + ".tls"}
        try:
            entry["allow"] = resolve_allow(
                policy_view, where + ".allow", service["allow"], described, policy_view["own_namespace"]
            )
        except PolicyError as error:
            problems.append(str(error))
    return entry


def _policy_view(role_vars):
    """The mesh's identities the onboard playbook built once for the play; alone, this host's own."""
    view = role_vars["hostmesh_mesh_identities"] or {}
    if not view:
        services = role_vars["hostmesh_services"] if isinstance(role_vars["hostmesh_services"], list) else []
        own = {
            "host": role_vars["host"],
            "namespace": role_vars["hostmesh_namespace"],
            "service_account": role_vars["hostmesh_service_account"],
            "spiffe_id": spiffe_id(
                role_vars["hostmesh_trust_domain"],
                role_vars["hostmesh_namespace"],
                role_vars["hostmesh_service_account"],
            ),
            "services": sorted({s["name"] for s in services if isinstance(s, dict) and "name" in s}),
            "app": (role_vars["hostmesh_node_labels"] or {}).get("app", ""),
        }
        view = identity_view(role_vars["hostmesh_trust_domain"], [own])
    return dict(view, own_namespace=role_vars["hostmesh_namespace"])


def _number(problems, variable, value, low, high):
    if isinstance(value, str) and NUMBER.match(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        problems.add(variable, value, "a number from %s to %s" % (low, high))
        return low
    return value


def _observability(problems, role_vars, policy_view):
    """The agent's policy, access_log, telemetry and tracing sections."""
    sections = {}
    try:
        sections["policy"] = {
            "default": policy_default("hostmesh_policy_default", role_vars["hostmesh_policy_default"])
        }
    except PolicyError as error:
        problems.append(str(error))
    destination = role_vars["hostmesh_access_log_destination"]
    if destination != "journal" and not (
        isinstance(destination, str) and destination.startswith("/") and not destination.endswith("/")
    ):
        problems.add("hostmesh_access_log_destination", destination, '"journal" or the absolute path of a file')
    sections["access_log"] = {
        "enabled": _flag(problems, "hostmesh_access_log_enabled", role_vars["hostmesh_access_log_enabled"]),
        "sampling": _number(problems, "hostmesh_access_log_sampling", role_vars["hostmesh_access_log_sampling"], 0, 1),
        "destination": destination,
    }
    sections["telemetry"] = {
        "enabled": _flag(problems, "hostmesh_telemetry_enabled", role_vars["hostmesh_telemetry_enabled"]),
        "workloads": policy_view.get("workloads", {}),
    }
    collector = role_vars["hostmesh_tracing_collector"]
    if collector != "" and not (isinstance(collector, str) and XDS_ADDRESS.match(collector)):
        problems.add("hostmesh_tracing_collector", collector, '"" (no tracing) or host:port of an OTLP/gRPC collector')
    sections["tracing"] = {
        "collector": collector,
        "sampling": _number(problems, "hostmesh_tracing_sampling", role_vars["hostmesh_tracing_sampling"], 0, 100),
    }
    return sections


def _inbound(problems, role_vars, tls_enabled, capture_options, policy_view):
    services = role_vars["hostmesh_services"] or []
    if not isinstance(services, list):
        problems.add("hostmesh_services", services, "a list of {name, port, protocol}")
        services = []
    inbound = {
        "services": [
            _inbound_service(problems, index, service, tls_enabled, policy_view)
            for index, service in enumerate(services)
        ],
        "passthrough": _flag(problems, "hostmesh_inbound_passthrough", role_vars["hostmesh_inbound_passthrough"]),
        "interception": role_vars["hostmesh_capture_mode"],
    }
    # In tproxy mode Envoy marks its connections to the application with the
    # capture rules' TPROXY mark, so the replies come back to it.
    if role_vars["hostmesh_capture_mode"] == "tproxy" and "tproxy_mark" in capture_options:
        mark = capture_options["tproxy_mark"]
        if isinstance(mark, str) and mark.strip().isdigit():
            mark = int(mark)
        if isinstance(mark, bool) or not isinstance(mark, int):
            problems.add("hostmesh_capture_options.tproxy_mark", mark, "an integer mark")
        inbound["tproxy_mark"] = mark
    return inbound


def _node(role_vars):
    node = {
        "namespace": role_vars["hostmesh_namespace"],
        "service_account": role_vars["hostmesh_service_account"],
        "labels": role_vars["hostmesh_node_labels"],
    }
    for key, variable in (("name", "hostmesh_node_name"), ("ip", "hostmesh_node_ip")):
        if role_vars[variable]:
            node[key] = role_vars[variable]
    return node


def _tls(problems, role_vars):
    given = [bool(role_vars[variable]) for variable in TLS_SOURCES]
    if any(given) and not all(given):
        problems.add(
            ", ".join(TLS_SOURCES),
            [role_vars[variable] for variable in TLS_SOURCES],
            "all three set or all three empty",
        )
    if not given[0]:
        return None
    return {entry["key"]: entry["dest"] for entry in role_vars["hostmesh_agent_tls_files"]}


def _xds(problems, role_vars):
    address = role_vars["hostmesh_xds_address"]
    if not isinstance(address, str) or not XDS_ADDRESS.match(address):
        problems.add("hostmesh_xds_address", address, "host:port of the control plane, since hostmesh_mode is xds")
    xds = {"address": address, "cluster_id": role_vars["hostmesh_xds_cluster_id"]}
    for key, variable in (("sni", "hostmesh_xds_sni"), ("network", "hostmesh_xds_network")):
        if role_vars[variable]:
            xds[key] = role_vars[variable]
    for entry in role_vars["hostmesh_agent_xds_files"]:
        if entry["src"]:
            xds[entry["key"]] = entry["dest"]
    return xds


def deep_merge(base, extra):
    """``base`` with ``extra`` merged in: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def agent_config(role_vars) -> dict:
    """The agent's config for one host, checked; raises naming every problem found."""
    role_vars = plain(role_vars)
    if not isinstance(role_vars, dict) or any(key not in role_vars for key in REQUIRED):
        missing = [key for key in REQUIRED if not isinstance(role_vars, dict) or key not in role_vars]
        raise AnsibleFilterError("agent_config: expected a mapping of the agent role's variables; missing %s" % missing)
    problems = _Problems()
    capture_options = role_vars.get("hostmesh_capture_options") or {}
    extra = role_vars["hostmesh_agent_config_extra"] or {}
    if not isinstance(extra, dict):
        problems.add("hostmesh_agent_config_extra", extra, "a mapping of agent config keys")
        extra = {}
    ports = None
    try:
        ports = complete_ports(role_vars["hostmesh_ports"])
        check_capture_options(ports, capture_options)
        check_agent_ports(ports, extra.get("ports"), "hostmesh_agent_config_extra.ports")
    except PortContractError as error:
        problems.append(str(error))
    tls = _tls(problems, role_vars)
    policy_view = _policy_view(role_vars)
    config = {
        "mode": role_vars["hostmesh_mode"],
        "run_dir": role_vars["hostmesh_agent_run_dir"],
        "trust_domain": role_vars["hostmesh_trust_domain"],
        "node": _node(role_vars),
        "envoy": {"binary": role_vars["hostmesh_envoy_bin"]},
        "ports": agent_ports(ports) if ports else {},
        "inbound": _inbound(problems, role_vars, tls is not None, capture_options, policy_view),
        "outbound": {
            "services": role_vars["hostmesh_outbound_services"] or [],
            "passthrough": _flag(problems, "hostmesh_outbound_passthrough", role_vars["hostmesh_outbound_passthrough"]),
        },
    }
    config.update(_observability(problems, role_vars, policy_view))
    if tls is not None:
        config["tls"] = tls
    if role_vars["hostmesh_mode"] == "xds":
        config["xds"] = _xds(problems, role_vars)
    if problems:
        raise AnsibleFilterError("agent_config: host %r: %s" % (role_vars["host"], "; ".join(problems)))
    return deep_merge(config, extra)


class FilterModule:
    """hostmesh.sidecar agent role filter."""

    def filters(self):
        return {"agent_config": agent_config}
