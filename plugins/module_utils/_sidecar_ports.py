# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The sidecar's one port contract: the ports Envoy, the agent and capture agree on.

The defaults are Istio's and are written here only. The roles complete a
user's partial ``hostmesh_ports`` from them; the capture role hands the
capture ports to traffic_capture and the agent role hands the listener ports
to the agent, so both always read the same numbers. A unit test holds
traffic_capture's option defaults, the agent's own defaults and the roles'
argument specs to these.
"""

import json

# Key -> default, in the order messages and docs list them.
DEFAULT_PORTS = {
    "outbound": 15001,  # Envoy's outbound capture listener (traffic_capture proxy_port)
    "inbound": 15006,  # Envoy's inbound capture listener (traffic_capture inbound_capture_port)
    "admin": 15000,  # Envoy's admin API, loopback only
    "status": 15020,  # the agent's status server: /healthz/ready and merged metrics
    "health": 15021,  # Envoy's health listener, what load balancers probe
    "prometheus": 15090,  # Envoy's Prometheus listener
    "dns": 15053,  # where captured DNS goes (traffic_capture dns_port)
    "tunnel": 15008,  # the proxy's tunnel port, never captured
}

# The ports of the agent's config (its "ports" section).
AGENT_PORTS = ("admin", "outbound", "inbound", "status", "health", "prometheus", "dns")

# traffic_capture option -> contract key, for the options the capture role passes.
CAPTURE_PORT_OPTIONS = {
    "proxy_port": "outbound",
    "inbound_capture_port": "inbound",
    "dns_port": "dns",
    "inbound_tunnel_port": "tunnel",
}

# traffic_capture options that may not say otherwise than the contract.
CONTRACT_OPTIONS = dict(CAPTURE_PORT_OPTIONS)

# Inbound ports never captured besides the user's own (SSH): the sidecar's
# listeners that peers and monitoring reach directly, in Istio's order.
EXCLUDED_INBOUND = ("prometheus", "health", "status")


class PortContractError(ValueError):
    """A port setting the contract refuses; names the variable, the value and what is accepted."""

    def __init__(self, variable, value, expected):
        self.variable = variable
        self.value = value
        self.expected = expected
        super().__init__("%s: got %s; expected %s" % (variable, _shown(value), expected))


def _shown(value):
    return json.dumps(value, default=str, sort_keys=True)


def port_number(variable, value):
    """An integer port from 1 to 65535 (a string of digits counts, as inventories give them)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise PortContractError(variable, value, "an integer port from 1 to 65535")
    return int(value)


def complete_ports(given, variable="hostmesh_ports"):
    """The whole contract: the defaults with what ``given`` sets, every port checked and distinct."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise PortContractError(variable, given, "a mapping of port names to ports, e.g. {outbound: 16001}")
    for key in given:
        if key not in DEFAULT_PORTS:
            raise PortContractError("%s.%s" % (variable, key), given[key], "a key among %s" % ", ".join(DEFAULT_PORTS))
    ports = {}
    for key, default in DEFAULT_PORTS.items():
        ports[key] = port_number("%s.%s" % (variable, key), given.get(key, default))
    # A clash is named at a key the user set, since that is the one to change.
    for key in sorted(DEFAULT_PORTS, key=lambda name: name not in given):
        others = [other for other in DEFAULT_PORTS if other != key and ports[other] == ports[key]]
        if others:
            raise PortContractError(
                "%s.%s" % (variable, key),
                ports[key],
                "a port of its own: %s.%s is %d too%s"
                % (variable, others[0], ports[key], "" if others[0] in given else " (its default)"),
            )
    return ports


def check_capture_options(ports, options, variable="hostmesh_capture_options"):
    """Refuse traffic_capture options that would move a port away from the contract."""
    if not options:
        return
    if not isinstance(options, dict):
        raise PortContractError(variable, options, "a mapping of traffic_capture options")
    for option, key in CONTRACT_OPTIONS.items():
        if option not in options:
            continue
        try:
            same = port_number("%s.%s" % (variable, option), options[option]) == ports[key]
        except PortContractError:
            same = False
        if not same:
            raise PortContractError(
                "%s.%s" % (variable, option),
                options[option],
                "%d, the contract's hostmesh_ports.%s, or the option left out: set it in hostmesh_ports, "
                "which capture and the agent both read" % (ports[key], key),
            )


def inbound_ports_exclude(own, ports, variable="hostmesh_capture_inbound_ports_exclude"):
    """The user's own exclusions (the SSH port), then the contract's prometheus, health and status ports."""
    if own is None:
        own = []
    if isinstance(own, (str, bytes)) or not isinstance(own, (list, tuple)):
        raise PortContractError(variable, own, "a list of ports, e.g. [22]")
    excluded = []
    for index, value in enumerate(own):
        port = port_number("%s[%d]" % (variable, index), value)
        if port not in excluded:
            excluded.append(port)
    for key in EXCLUDED_INBOUND:
        if ports[key] not in excluded:
            excluded.append(ports[key])
    return excluded


def capture_port_options(ports):
    """The traffic_capture options that come from the contract."""
    return {option: ports[key] for option, key in CAPTURE_PORT_OPTIONS.items()}


def agent_ports(ports):
    """The agent config's ``ports`` section."""
    return {key: ports[key] for key in AGENT_PORTS}


def check_agent_ports(ports, section, variable):
    """Refuse a ``ports`` section (of a config merged into the agent's) that says otherwise than the contract."""
    if section is None:
        return
    if not isinstance(section, dict):
        raise PortContractError(variable, section, "no ports here: set them in hostmesh_ports")
    for key, value in section.items():
        if key not in AGENT_PORTS or value != ports[key]:
            raise PortContractError(
                "%s.%s" % (variable, key),
                value,
                "no ports here: set them in hostmesh_ports, which capture and the agent both read",
            )
