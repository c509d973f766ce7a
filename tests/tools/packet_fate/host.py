"""The host a packet meets: its interfaces and addresses, its routes and its policy routing.

Routing follows the kernel's rule order: the local table first (this host's
addresses, all of 127.0.0.0/8, ::1), then the fwmark rules TPROXY set-ups add
(``ip rule add fwmark M lookup T`` with ``ip route add local default dev lo table T``),
then the main table (connected networks, then the default route).
"""

import dataclasses
import ipaddress
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple

IPV4 = "ipv4"
IPV6 = "ipv6"
LOOPBACK = "lo"
_LOOPBACK_ADDRESSES = (ipaddress.ip_interface("127.0.0.1/8"), ipaddress.ip_interface("::1/128"))


def family_of(address) -> str:
    return IPV4 if address.version == 4 else IPV6


@dataclass(frozen=True)
class Interface:
    name: str
    addresses: Tuple[object, ...] = ()  # ipaddress interfaces (address with prefix), first = primary


@dataclass(frozen=True)
class PolicyRoute:
    """Packets whose mark matches go to a table whose only route is ``local default dev lo``."""

    family: str
    fwmark: int
    table: int
    mask: int = 0xFFFFFFFF


@dataclass(frozen=True)
class Route:
    kind: str  # "local", "unicast" or "unreachable"
    iface: Optional[str]


@dataclass(frozen=True)
class Host:
    interfaces: Tuple[Interface, ...]
    default_interface: Optional[str] = None
    policy_routes: Tuple[PolicyRoute, ...] = ()
    groups: Tuple[Tuple[str, int], ...] = ()  # group name -> gid, for ``--gid-owner NAME``
    users: Tuple[Tuple[str, int], ...] = ()

    @classmethod
    def build(
        cls,
        interfaces: Mapping[str, Sequence[str]],
        default_interface: Optional[str] = None,
        policy_routes: Sequence[PolicyRoute] = (),
        groups: Optional[Mapping[str, int]] = None,
        users: Optional[Mapping[str, int]] = None,
    ) -> "Host":
        """A Host from plain values: {iface: ["192.0.2.10/24", ...]}; lo is always there."""
        built = [Interface(LOOPBACK, _LOOPBACK_ADDRESSES)]
        for name, addresses in interfaces.items():
            if name == LOOPBACK:
                continue
            built.append(Interface(name, tuple(ipaddress.ip_interface(a) for a in addresses)))
        if default_interface is not None and default_interface not in {i.name for i in built}:
            raise ValueError("default_interface %r is not one of the interfaces" % default_interface)
        return cls(
            tuple(built),
            default_interface,
            tuple(policy_routes),
            tuple(sorted((groups or {}).items())),
            tuple(sorted((users or {}).items())),
        )

    def with_policy_routes(self, routes: Sequence[PolicyRoute]) -> "Host":
        return dataclasses.replace(self, policy_routes=tuple(routes))

    def interface(self, name):
        for iface in self.interfaces:
            if iface.name == name:
                return iface
        raise KeyError("the host has no interface %r" % name)

    def is_local(self, address) -> bool:
        if address.version == 4 and address in ipaddress.ip_network("127.0.0.0/8"):
            return True
        return any(entry.ip == address for iface in self.interfaces for entry in iface.addresses)

    def route(self, destination, mark: int = 0) -> Route:
        if self.is_local(destination):
            return Route("local", LOOPBACK)
        family = family_of(destination)
        for rule in self.policy_routes:
            if rule.family == family and mark & rule.mask == rule.fwmark:
                return Route("local", LOOPBACK)
        best = None
        for iface in self.interfaces:
            if iface.name == LOOPBACK:
                continue
            for entry in iface.addresses:
                inside = entry.version == destination.version and destination in entry.network
                if inside and (best is None or entry.network.prefixlen > best[0]):
                    best = (entry.network.prefixlen, iface.name)
        if best is not None:
            return Route("unicast", best[1])
        if self.default_interface is not None:
            return Route("unicast", self.default_interface)
        return Route("unreachable", None)

    def first_address(self, iface_name: str, family: str):
        for entry in self.interface(iface_name).addresses:
            if family_of(entry.ip) == family:
                return entry.ip
        return None

    def source_for(self, destination, route: Route):
        """The source address the kernel picks for a socket that did not bind one."""
        family = family_of(destination)
        if route.kind == "local" and self.is_local(destination):
            if destination.is_loopback:
                return ipaddress.ip_address("127.0.0.1" if family == IPV4 else "::1")
            return destination
        candidates = [route.iface] if route.iface and route.iface != LOOPBACK else []
        candidates += [self.default_interface] if self.default_interface else []
        candidates += [i.name for i in self.interfaces if i.name != LOOPBACK]
        for name in candidates:
            address = self.first_address(name, family)
            if address is not None:
                return address
        return ipaddress.ip_address("127.0.0.1" if family == IPV4 else "::1")

    def group_id(self, name: str) -> int:
        return self._named_id(self.groups, name, "group")

    def user_id(self, name: str) -> int:
        return self._named_id(self.users, name, "user")

    @staticmethod
    def _named_id(table, name, what):
        for known, number in table:
            if known == name:
                return number
        raise KeyError("the host has no %s named %r (rules name it)" % (what, name))
