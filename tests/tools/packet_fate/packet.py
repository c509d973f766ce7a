"""A packet, written as one line of text that is also its name.

Sent by a local process (``ROLE`` is a name the caller maps to a uid and gid)::

    ROLE PROTO DST:PORT [STATE] [from=ADDR] [sport=N] [mark=N] [connmark=N]
    app tcp 198.51.100.7:80
    proxy tcp [fd00:5::10]:8080 from=::6

Arriving on an interface::

    in IFACE PROTO SRC[:PORT] > DST:PORT [STATE] [mark=N] [connmark=N]
    in ens3 tcp 198.51.100.7 > 192.0.2.10:8080 established

STATE is the connection's conntrack state when the packet is seen: ``new`` (the
default: a connection's first packet, a SYN for TCP), ``midstream`` (a TCP packet
of a connection conntrack had not seen before: state NEW, but not a SYN),
``established``, ``related`` or ``invalid``. ``mark`` is the packet's mark as it
enters netfilter (a local socket's SO_MARK), ``connmark`` its connection's mark.
"""

import ipaddress
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

from packet_fate.host import family_of
from packet_fate.ruleset import TCP_FLAGS

STATES = ("new", "midstream", "established", "related", "invalid")
PROTOCOLS = ("tcp", "udp")
DEFAULT_SOURCE_PORT = 40000


class PacketError(ValueError):
    """A packet line we cannot read; the message names the line."""


@dataclass(frozen=True)
class Process:
    uid: int
    gid: int
    groups: Tuple[int, ...] = ()  # supplementary groups


@dataclass(frozen=True)
class Packet:
    text: str
    proto: str
    dst: object
    dport: int
    src: Optional[object] = None  # None: the kernel picks it (local packets)
    sport: int = DEFAULT_SOURCE_PORT
    sender: Optional[Process] = None  # set for a packet sent by a local process
    in_iface: Optional[str] = None  # set for a packet arriving on an interface
    state: str = "new"
    mark: int = 0
    connmark: int = 0

    @property
    def family(self) -> str:
        return family_of(self.dst)

    @property
    def is_local(self) -> bool:
        return self.sender is not None

    @property
    def ctstate(self) -> str:
        return {"new": "NEW", "midstream": "NEW"}.get(self.state, self.state.upper())

    @property
    def tcp_flags(self) -> int:
        if self.proto != "tcp":
            return 0
        return TCP_FLAGS["SYN"] if self.state == "new" else TCP_FLAGS["ACK"]


def parse_packet(text: str, processes: Mapping[str, Process]) -> Packet:
    """Read one packet line; ``processes`` maps the roles local packets name."""
    words = text.split()
    try:
        if words[:1] == ["in"]:
            return _arriving(text, words)
        return _local(text, words, processes)
    except (IndexError, ValueError) as error:
        raise PacketError("packet %r: %s" % (text, error)) from None


def _local(text, words, processes):
    role, proto, destination, options = words[0], words[1], words[2], words[3:]
    if role not in processes:
        raise ValueError("no process named %r (known: %s)" % (role, ", ".join(sorted(processes))))
    dst, dport = _endpoint(destination, need_port=True)
    fields = _options(options, ("from", "sport", "mark", "connmark"))
    src = ipaddress.ip_address(fields.pop("from")) if "from" in fields else None
    if src is not None and src.version != dst.version:
        raise ValueError("source and destination are of different families")
    return Packet(text, _proto(proto), dst, dport, src=src, sender=processes[role], **fields)


def _arriving(text, words):
    iface, proto, source, arrow, destination, options = words[1], words[2], words[3], words[4], words[5], words[6:]
    if arrow != ">":
        raise ValueError("expected 'SRC > DST'")
    src, sport = _endpoint(source, need_port=False)
    dst, dport = _endpoint(destination, need_port=True)
    if src.version != dst.version:
        raise ValueError("source and destination are of different families")
    fields = _options(options, ("mark", "connmark"))
    return Packet(
        text, _proto(proto), dst, dport, src=src, sport=sport or DEFAULT_SOURCE_PORT, in_iface=iface, **fields
    )


def _proto(word):
    if word not in PROTOCOLS:
        raise ValueError("protocol %r is not one of %s" % (word, ", ".join(PROTOCOLS)))
    return word


def _options(words, allowed):
    fields = {}
    for word in words:
        if word in STATES:
            if "state" in fields:
                raise ValueError("two states")
            fields["state"] = word
            continue
        key, sep, value = word.partition("=")
        if not sep or key not in allowed:
            raise ValueError("unknown option %r (expected a state or %s)" % (word, ", ".join(k + "=" for k in allowed)))
        fields[key] = value if key == "from" else int(value, 0)
    return fields


def _endpoint(text, need_port):
    """``1.2.3.4:80``, ``[fd00::1]:80``, or without the port (``1.2.3.4``, ``[fd00::1]``, ``fd00::1``)."""
    if text.startswith("["):
        address, _sep, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif text.count(":") == 1:
        address, _sep, port = text.partition(":")
    else:
        address, port = text, None
    if need_port and not port:
        raise ValueError("%r needs a port" % text)
    number = int(port) if port else None
    if number is not None and not 0 < number < 65536:
        raise ValueError("port out of range in %r" % text)
    return ipaddress.ip_address(address), number
