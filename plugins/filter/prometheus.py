# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters that turn the inventory into Prometheus' view of the mesh.

Documentation for each filter lives next to this file, in ``<filter>.yml``.
"""

import copy
import json
import re
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

from ansible_collections.hostmesh.sidecar.plugins.module_utils._plain_data import plain
from ansible_collections.hostmesh.sidecar.plugins.module_utils._sidecar_ports import (
    PortContractError,
    complete_ports,
)

# Prometheus' duration syntax (1h30m, 90s, 0s), as promtool checks it.
_DURATION = re.compile(r"^((\d+)(ms|s|m|h|d|w|y))+$")
_ADDRESS_KEYS = ("hostmesh_address", "ansible_host")


def _bad(where, host, key, value, expected):
    return AnsibleFilterError(
        "%s: host %r, %s: got %s; expected %s" % (where, host, key, json.dumps(value, default=str), expected)
    )


def _address(host, hv):
    """Where Prometheus reaches the host: hostmesh_address, ansible_host, else the inventory name."""
    for key in _ADDRESS_KEYS:
        value = hv.get(key)
        if value:
            if not isinstance(value, str) or any(c.isspace() for c in value) or "/" in value:
                raise _bad("prometheus_targets", host, key, value, "a host name or an IP address")
            return value
    return str(host)


def _endpoint(address, port):
    return "[%s]:%d" % (address, port) if ":" in address else "%s:%d" % (address, port)


def prometheus_targets(hostvars, hosts) -> list:
    """One static_configs entry per mesh host: its sidecar's status port, labelled with the host's name."""
    if not isinstance(hosts, (list, tuple)):
        raise AnsibleFilterError("prometheus_targets: hosts: got %s; expected a list of inventory host names" % hosts)
    entries = []
    for host in sorted({str(h) for h in hosts}):
        hv = hostvars.get(host, {})
        view = {key: plain(hv[key]) for key in (*_ADDRESS_KEYS, "hostmesh_ports") if key in hv}
        try:
            ports = complete_ports(view.get("hostmesh_ports") or {})
        except PortContractError as error:
            raise AnsibleFilterError("prometheus_targets: host %r, %s" % (host, error)) from None
        entries.append({"targets": [_endpoint(_address(host, view), ports["status"])], "labels": {"host": host}})
    return entries


def prometheus_alert_for(rules, duration=""):
    """The rule groups with every alert's ``for`` set to ``duration``; unchanged when it is empty."""
    if not isinstance(rules, Mapping) or not isinstance(rules.get("groups"), list):
        raise AnsibleFilterError("prometheus_alert_for: the rules file has no list of groups")
    duration = "" if duration is None else str(duration)
    if duration and not _DURATION.match(duration):
        raise AnsibleFilterError(
            "prometheus_alert_for: hostmesh_prometheus_alert_for: got %s; expected a Prometheus duration"
            " such as 30s, 5m or 1h (or empty to keep the rules' own)" % json.dumps(duration)
        )
    result = copy.deepcopy(plain(rules))
    if duration:
        for group in result["groups"]:
            for rule in group.get("rules", []):
                if "alert" in rule:
                    rule["for"] = duration
    return result


def _duration_problem(name, value, zero_ok=False):
    if isinstance(value, str) and _DURATION.match(value) and (zero_ok or re.search(r"[1-9]", value)):
        return None
    return "%s: got %s; expected a Prometheus duration such as 15s, 5m or 1h" % (name, json.dumps(value, default=str))


def _listen_problem(value):
    host, sep, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    port_ok = sep and port.isdigit() and 1 <= int(port) <= 65535
    host_ok = not any(c.isspace() or c == "/" for c in host) and (
        ":" not in host or (host.startswith("[") and host.endswith("]"))
    )
    if port_ok and host_ok:
        return None
    return "hostmesh_prometheus_listen_address: got %s; expected HOST:PORT (0.0.0.0:9090, [::1]:9090, :9090)" % (
        json.dumps(value, default=str)
    )


def prometheus_problems(settings, target_hosts) -> list:
    """What is wrong with the prometheus role's variables, one message each naming the variable and value."""
    settings = plain(settings)
    problems = []
    for name in (
        "hostmesh_prometheus_scrape_interval",
        "hostmesh_prometheus_evaluation_interval",
        "hostmesh_prometheus_retention",
    ):
        if name in settings:
            problems.append(_duration_problem(name, settings[name]))
    if settings.get("hostmesh_prometheus_alert_for"):
        problems.append(
            _duration_problem("hostmesh_prometheus_alert_for", settings["hostmesh_prometheus_alert_for"], True)
        )
    if "hostmesh_prometheus_listen_address" in settings:
        problems.append(_listen_problem(settings["hostmesh_prometheus_listen_address"]))
    for index, target in enumerate(settings.get("hostmesh_prometheus_alertmanagers") or []):
        if _listen_problem(target) or str(target).startswith(":"):
            problems.append(
                "hostmesh_prometheus_alertmanagers[%d]: got %s; expected HOST:PORT of an Alertmanager"
                % (index, json.dumps(target, default=str))
            )
    if not target_hosts:
        problems.append(
            "hostmesh_prometheus_targets: got %s; it names no host of the inventory: expected the group"
            " or pattern of the mesh hosts to scrape" % json.dumps(settings.get("hostmesh_prometheus_targets"))
        )
    return [p for p in problems if p]


class FilterModule:
    """hostmesh.sidecar Prometheus filters."""

    def filters(self):
        return {
            "prometheus_targets": prometheus_targets,
            "prometheus_alert_for": prometheus_alert_for,
            "prometheus_problems": prometheus_problems,
        }
