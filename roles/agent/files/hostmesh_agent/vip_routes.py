"""Whether the host routes the mesh's virtual IPs.

An application's ``connect()`` to a VIP fails with "Network is unreachable" before any
capture rule sees the packet when no route covers the address (a host with no default
route): mesh names then resolve, and nothing can connect to them. ``VipRoutes.check``
says so once in the log when the zone changes, and again when the routes come back.

``unroutable`` is pure (the probe is passed in); ``route_error``, a UDP ``connect()`` that
sends nothing, is the one edge.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Callable, Dict, List, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

Zone = Dict[str, Tuple[List[str], List[str]]]
Probe = Callable[[str], Optional[str]]
PROBE_PORT = 9  # discard; a UDP connect() only looks the route up


def route_error(address: str) -> Optional[str]:
    """None when the host has a route to ``address``, else the kernel's reason."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((address, PROBE_PORT))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def first_vips(zone: Zone) -> Tuple[Optional[Tuple[str, str]], Optional[Tuple[str, str]]]:
    """One (name, address) per family, the first name in order that has one."""
    ipv4 = ipv6 = None
    for name in sorted(zone):
        v4, v6 = zone[name]
        if ipv4 is None and v4:
            ipv4 = (name, v4[0])
        if ipv6 is None and v6:
            ipv6 = (name, v6[0])
    return ipv4, ipv6


def unroutable(zone: Zone, probe: Probe) -> List[Tuple[int, str, str, str]]:
    """(IP version, name, address, reason) for each family whose first VIP has no route."""
    found = []
    for version, pick in zip((4, 6), first_vips(zone)):
        if pick is None:
            continue
        reason = probe(pick[1])
        if reason is not None:
            found.append((version, pick[0], pick[1], reason))
    return found


class VipRoutes:
    """Logs a missing route once per IP version, and its return."""

    def __init__(self, probe: Probe = route_error) -> None:
        self._probe = probe
        self._missing: Sequence[int] = ()

    def check(self, zone: Zone) -> None:
        found = unroutable(zone, self._probe)
        missing = tuple(entry[0] for entry in found)
        for version, name, address, reason in found:
            if version in self._missing:
                continue
            if version == 4:
                log.warning(
                    "dns: no route to the virtual IP %s of %s (%s): applications cannot connect to mesh "
                    "names until a route covers it (a default route does)",
                    address,
                    name,
                    reason,
                )
            else:
                log.info(
                    "dns: no IPv6 route to the virtual IP %s of %s (%s): applications use the IPv4 one",
                    address,
                    name,
                    reason,
                )
        if 4 in self._missing and 4 not in missing:
            log.info("dns: the virtual IPs are routed now")
        self._missing = missing
