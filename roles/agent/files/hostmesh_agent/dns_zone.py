"""The mesh's own names: which answer a query under the mesh domain gets.

Pure. The zone is given as a mapping of FQDN -> (IPv4 list, IPv6 list), the services'
virtual IPs; everything under the mesh domain that is not in it does not exist
(NXDOMAIN), and a name that exists without the asked type gets NODATA (NOERROR with no
answer), never NXDOMAIN: a resolver that is told "no such name" for AAAA may stop before
it asks for A. Every negative answer carries the zone's SOA, so resolvers cache it for
the same short TTL as the addresses.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

from hostmesh_agent import dns_wire as wire

ZoneRecords = Mapping[str, Tuple[Sequence[str], Sequence[str]]]

DEFAULT_DOMAIN = "mesh.internal"
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_SOA_SERIAL = 1


class ZoneError(ValueError):
    """A zone or mesh domain the server cannot answer from; the text names the bad value."""


def name_labels(name: str, what: str) -> wire.Name:
    """``name`` (trailing dot optional, any case) as lower-case labels; ZoneError if it is not
    a host name made of letters, digits, hyphens and underscores."""
    text = name.strip().lower()
    text = text[:-1] if text.endswith(".") else text
    labels = text.split(".")
    for label in labels:
        if not _LABEL.match(label):
            raise ZoneError(
                f"{what} {name!r}: label {label!r} is not a DNS label "
                "(1 to 63 letters, digits, '-' or '_', not starting or ending with '-')"
            )
    encoded = tuple(label.encode("ascii") for label in labels)
    try:
        wire.encode_name(encoded)
    except ValueError as exc:
        raise ZoneError(f"{what} {name!r}: {exc}") from None
    return encoded


def _packed(addresses: Sequence[str], version: int, name: str) -> Tuple[bytes, ...]:
    family = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    if isinstance(addresses, (str, bytes)):
        raise ZoneError(f"zone name {name!r}: the IPv{version} addresses must be a list, not {addresses!r}")
    out: List[bytes] = []
    for address in addresses:
        try:
            packed = family(address).packed
        except (ipaddress.AddressValueError, ValueError, TypeError):
            raise ZoneError(f"zone name {name!r}: {address!r} is not an IPv{version} address") from None
        if packed not in out:
            out.append(packed)
    return tuple(out)


class MeshZone:
    """The names the agent answers itself, indexed by lower-case labels."""

    def __init__(self, domain: str = DEFAULT_DOMAIN, records: Optional[ZoneRecords] = None) -> None:
        self.domain = name_labels(domain, "mesh domain")
        self._addresses: Dict[wire.Name, Tuple[Tuple[bytes, ...], Tuple[bytes, ...]]] = {}
        self._names: Set[wire.Name] = {self.domain}
        for fqdn, value in dict(records or {}).items():
            key = name_labels(fqdn, "zone name")
            if len(key) <= len(self.domain) or not self.owns(key):
                raise ZoneError(f"zone name {fqdn!r} is not a name under the mesh domain {domain!r}")
            try:
                ipv4, ipv6 = value
            except (TypeError, ValueError):
                raise ZoneError(f"zone name {fqdn!r}: value must be (IPv4 list, IPv6 list), not {value!r}") from None
            self._addresses[key] = (_packed(ipv4, 4, fqdn), _packed(ipv6, 6, fqdn))
            # Every ancestor exists too (an "empty non-terminal", RFC 8020): a namespace
            # name gets NODATA, so that no resolver concludes nothing exists below it.
            for cut in range(len(self.domain), len(key) + 1):
                self._names.add(key[-cut:])
        self._apex = wire.encode_name(self.domain)
        self._soa_names = self._apex + wire.encode_name((b"hostmaster", *self.domain))

    def __len__(self) -> int:
        return len(self._addresses)

    def owns(self, key: wire.Name) -> bool:
        """Whether ``key`` (lower-case labels) is the mesh domain or a name below it."""
        n = len(self.domain)
        return len(key) >= n and key[len(key) - n :] == self.domain

    def addresses(self, key: wire.Name) -> Tuple[Tuple[bytes, ...], Tuple[bytes, ...]]:
        return self._addresses.get(key, ((), ()))

    def _soa_rdata(self, ttl: int) -> bytes:
        """SOA rdata whose MINIMUM (the negative-caching TTL, RFC 2308) is the zone's TTL."""
        return self._soa_names + wire.SOA_TIMERS.pack(_SOA_SERIAL, 3600, 600, 86400, ttl)

    def answer(self, query: wire.Message, ttl: int, max_size: int) -> bytes:
        """The whole reply to a query whose single question this zone owns."""
        question = query.question
        if question is None:
            raise ValueError("MeshZone.answer needs a query with exactly one question")
        if query.header.opcode != wire.OPCODE_QUERY:
            return wire.build_response(query, wire.RCODE_NOTIMP, max_size=max_size)
        if query.edns is not None and query.edns.version != 0:
            return wire.build_response(query, wire.RCODE_BADVERS, max_size=max_size)  # RFC 6891 6.1.3
        if question.qclass not in (wire.CLASS_IN, wire.CLASS_ANY) or question.qtype in (wire.TYPE_AXFR, wire.TYPE_IXFR):
            return wire.build_response(query, wire.RCODE_REFUSED, max_size=max_size)
        key = question.key
        soa = wire.ResourceRecord(self._apex, wire.TYPE_SOA, ttl, self._soa_rdata(ttl))
        if key not in self._names:
            return wire.build_response(query, wire.RCODE_NXDOMAIN, (), (soa,), max_size, authoritative=True)
        ipv4, ipv6 = self.addresses(key)
        answers = []
        if question.qtype in (wire.TYPE_A, wire.TYPE_ANY):
            answers += [wire.answer_record(wire.TYPE_A, ttl, a) for a in ipv4]
        if question.qtype in (wire.TYPE_AAAA, wire.TYPE_ANY):
            answers += [wire.answer_record(wire.TYPE_AAAA, ttl, a) for a in ipv6]
        if question.qtype == wire.TYPE_SOA and key == self.domain:
            answers.append(wire.answer_record(wire.TYPE_SOA, ttl, soa.rdata))
        if answers:
            return wire.build_response(query, wire.RCODE_NOERROR, answers, (), max_size, authoritative=True)
        return wire.build_response(query, wire.RCODE_NOERROR, (), (soa,), max_size, authoritative=True)
