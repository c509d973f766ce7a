"""DNS messages on the wire (RFC 1035, EDNS per RFC 6891): parse them, build the agent's answers.

Pure: bytes in, bytes out. Names are kept as tuples of raw labels (bytes), so that a label
holding a dot or any other byte can never be confused with the label separator, and so
that the question can be echoed exactly as the client spelled it (case included: some
resolvers randomise it and check the echo).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

TYPE_A = 1
TYPE_NS = 2
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_PTR = 12
TYPE_MX = 15
TYPE_TXT = 16
TYPE_AAAA = 28
TYPE_SRV = 33
TYPE_OPT = 41
TYPE_IXFR = 251
TYPE_AXFR = 252
TYPE_ANY = 255

CLASS_IN = 1
CLASS_ANY = 255

OPCODE_QUERY = 0

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5
RCODE_BADVERS = 16  # extended rcode: high 8 bits travel in the OPT record

FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080
FLAG_CD = 0x0010
EDNS_FLAG_DO = 0x8000

HEADER = struct.Struct("!HHHHHH")
HEADER_SIZE = HEADER.size
MAX_UDP_WITHOUT_EDNS = 512  # RFC 1035 4.2.1
EDNS_PAYLOAD = 1232  # what the agent advertises: the DNS flag day 2020 value
MAX_MESSAGE = 65535
MAX_NAME = 255  # wire length, RFC 1035 2.3.4
MAX_LABEL = 63
_POINTER = 0xC0
_QUESTION_POINTER = b"\xc0\x0c"  # the question's name always starts right after the header

_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_Q_FIXED = struct.Struct("!HH")
SOA_TIMERS = struct.Struct("!IIIII")  # serial, refresh, retry, expire, minimum

Name = Tuple[bytes, ...]


class DnsFormatError(ValueError):
    """The bytes are not a DNS message this server can read; the text says where and why."""


def _flag(bit: int) -> property:
    """A read-only property: whether ``bit`` is set in the object's ``flags``."""
    return property(lambda self: bool(self.flags & bit))


@dataclass(frozen=True)
class Header:
    id: int
    flags: int
    qdcount: int
    ancount: int
    nscount: int
    arcount: int

    qr = _flag(FLAG_QR)
    tc = _flag(FLAG_TC)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def rcode(self) -> int:
        return self.flags & 0xF


@dataclass(frozen=True)
class Question:
    name: Name  # labels as the client sent them
    qtype: int
    qclass: int

    @property
    def key(self) -> Name:
        """The name for lookups: DNS compares ASCII letters case-insensitively (RFC 4343)."""
        return tuple(label.lower() for label in self.name)


@dataclass(frozen=True)
class Edns:
    udp_size: int
    ext_rcode: int  # the upper 8 bits of the 12-bit rcode
    version: int
    flags: int
    options: bytes

    do = _flag(EDNS_FLAG_DO)


@dataclass(frozen=True)
class Record:
    name: Name
    rtype: int
    rclass: int
    ttl: int
    rdata: bytes  # raw: names inside rdata may point elsewhere in the message


@dataclass(frozen=True)
class Message:
    header: Header
    questions: Tuple[Question, ...]
    answers: Tuple[Record, ...]
    authority: Tuple[Record, ...]
    additional: Tuple[Record, ...]  # without the OPT pseudo-record
    edns: Optional[Edns]
    question_wire: bytes  # the question section exactly as received

    @property
    def question(self) -> Optional[Question]:
        return self.questions[0] if len(self.questions) == 1 else None

    @property
    def rcode(self) -> int:
        """The full 12-bit rcode (header bits plus the OPT's extension)."""
        high = self.edns.ext_rcode if self.edns else 0
        return (high << 4) | self.header.rcode


def parse_header(data: bytes) -> Header:
    if len(data) < HEADER_SIZE:
        raise DnsFormatError(f"message of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header")
    return Header(*HEADER.unpack_from(data))


def read_name(data: bytes, offset: int) -> Tuple[Name, int]:
    """The name at ``offset`` and the offset just past it, following compression pointers.

    Each pointer must point strictly before the previous one's target (the first: before
    the name's start), so every hop goes backwards and a loop cannot be followed.
    """
    labels: List[bytes] = []
    wire_length = 1
    end: Optional[int] = None
    position = offset
    floor = offset
    while True:
        if position >= len(data):
            raise DnsFormatError(f"name at offset {offset} runs past the end of the message")
        length = data[position]
        if length & _POINTER == _POINTER:
            if position + 1 >= len(data):
                raise DnsFormatError(f"compression pointer at offset {position} is cut off")
            target = ((length & 0x3F) << 8) | data[position + 1]
            if target >= floor:
                raise DnsFormatError(
                    f"compression pointer at offset {position} points forward, to itself or round a loop (to {target})"
                )
            if end is None:
                end = position + 2
            position = floor = target
            continue
        if length & _POINTER:
            raise DnsFormatError(f"label type 0x{length & _POINTER:02x} at offset {position} is not supported")
        if length == 0:
            return tuple(labels), (position + 1 if end is None else end)
        wire_length += length + 1
        if wire_length > MAX_NAME:
            raise DnsFormatError(f"name at offset {offset} is longer than {MAX_NAME} bytes")
        if position + 1 + length > len(data):
            raise DnsFormatError(f"label at offset {position} runs past the end of the message")
        labels.append(bytes(data[position + 1 : position + 1 + length]))
        position += 1 + length


def _read_question(data: bytes, offset: int) -> Tuple[Question, int]:
    name, offset = read_name(data, offset)
    if offset + _Q_FIXED.size > len(data):
        raise DnsFormatError(f"question at offset {offset} is cut off before its type and class")
    qtype, qclass = _Q_FIXED.unpack_from(data, offset)
    return Question(name, qtype, qclass), offset + _Q_FIXED.size


def _read_record(data: bytes, offset: int) -> Tuple[Record, int]:
    name, offset = read_name(data, offset)
    if offset + _RR_FIXED.size > len(data):
        raise DnsFormatError(f"record at offset {offset} is cut off before its rdata")
    rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(data, offset)
    offset += _RR_FIXED.size
    if offset + rdlength > len(data):
        raise DnsFormatError(f"record at offset {offset} announces {rdlength} bytes of rdata that are not there")
    return Record(name, rtype, rclass, ttl, bytes(data[offset : offset + rdlength])), offset + rdlength


def parse_message(data: bytes) -> Message:
    """Every section of a message; DnsFormatError names the first thing that is wrong.

    Bytes after the last record are ignored, as most servers do.
    """
    header = parse_header(data)
    offset = HEADER_SIZE
    questions = []
    for _i in range(header.qdcount):
        question, offset = _read_question(data, offset)
        questions.append(question)
    question_wire = bytes(data[HEADER_SIZE:offset])
    sections: List[List[Record]] = [[], [], []]
    for section, count in zip(sections, (header.ancount, header.nscount, header.arcount)):
        for _i in range(count):
            record, offset = _read_record(data, offset)
            section.append(record)
    edns = None
    additional = []
    for record in sections[2]:
        if record.rtype != TYPE_OPT:
            additional.append(record)
            continue
        if edns is not None:
            raise DnsFormatError("more than one OPT record (RFC 6891 6.1.1)")
        if record.name:
            raise DnsFormatError("OPT record with a name other than the root (RFC 6891 6.1.2)")
        edns = Edns(
            udp_size=record.rclass,
            ext_rcode=record.ttl >> 24,
            version=(record.ttl >> 16) & 0xFF,
            flags=record.ttl & 0xFFFF,
            options=record.rdata,
        )
    return Message(
        header, tuple(questions), tuple(sections[0]), tuple(sections[1]), tuple(additional), edns, question_wire
    )


def encode_name(labels: Sequence[bytes]) -> bytes:
    """A name without compression; ValueError if a label or the whole is too long."""
    out = bytearray()
    for label in labels:
        if not 0 < len(label) <= MAX_LABEL:
            raise ValueError(f"DNS label {label!r} must be 1 to {MAX_LABEL} bytes long")
        out.append(len(label))
        out += label
    out.append(0)
    if len(out) > MAX_NAME:
        raise ValueError(f"DNS name {b'.'.join(labels)!r} is longer than {MAX_NAME} bytes on the wire")
    return bytes(out)


def udp_payload_limit(query: Message) -> int:
    """The largest UDP reply the client can take: 512 bytes unless its OPT record says more."""
    if query.edns is None:
        return MAX_UDP_WITHOUT_EDNS
    return max(MAX_UDP_WITHOUT_EDNS, query.edns.udp_size)


@dataclass(frozen=True)
class ResourceRecord:
    """A record the agent writes; ``owner`` is wire format (often a pointer to the question)."""

    owner: bytes
    rtype: int
    ttl: int
    rdata: bytes

    def to_wire(self) -> bytes:
        return self.owner + _RR_FIXED.pack(self.rtype, CLASS_IN, self.ttl, len(self.rdata)) + self.rdata


def answer_record(rtype: int, ttl: int, rdata: bytes) -> ResourceRecord:
    """A record owned by the question's name, written as a 2-byte pointer to it."""
    return ResourceRecord(_QUESTION_POINTER, rtype, ttl, rdata)


def _opt_record(query_edns: Edns, ext_rcode: int) -> bytes:
    ttl = (ext_rcode << 24) | (query_edns.flags & EDNS_FLAG_DO)  # DO echoed (RFC 3225), version 0
    return b"\x00" + _RR_FIXED.pack(TYPE_OPT, EDNS_PAYLOAD, ttl, 0)


def build_response(
    query: Message,
    rcode: int,
    answers: Sequence[ResourceRecord] = (),
    authority: Sequence[ResourceRecord] = (),
    max_size: int = MAX_MESSAGE,
    authoritative: bool = False,
) -> bytes:
    """A reply to ``query`` that echoes its question and fits in ``max_size`` bytes.

    When the records do not fit, the authority section goes first, then answers from the
    end, and TC is set so that the client asks again over TCP. The OPT record stays (a
    client that sent EDNS gets EDNS back, truncated or not).
    """
    flags = FLAG_QR | FLAG_RA | (query.header.flags & (0x7800 | FLAG_RD | FLAG_CD)) | (rcode & 0xF)
    if authoritative:
        flags |= FLAG_AA
    question = query.question_wire if query.question is not None else b""
    opt = _opt_record(query.edns, rcode >> 4) if query.edns is not None else b""
    base = HEADER_SIZE + len(question) + len(opt)
    room = max(max_size, MAX_UDP_WITHOUT_EDNS) - base
    answer_wire = [r.to_wire() for r in answers]
    authority_wire = [r.to_wire() for r in authority]
    if sum(map(len, answer_wire)) + sum(map(len, authority_wire)) > room:
        authority_wire = []
        while answer_wire and sum(map(len, answer_wire)) > room:
            answer_wire.pop()
        flags |= FLAG_TC
    header = HEADER.pack(
        query.header.id,
        flags,
        1 if question else 0,
        len(answer_wire),
        len(authority_wire),
        1 if opt else 0,
    )
    return header + question + b"".join(answer_wire) + b"".join(authority_wire) + opt


def error_reply_for_unparsed(data: bytes, rcode: int = RCODE_FORMERR) -> Optional[bytes]:
    """A bare error reply (no question) to bytes that did not parse; None when there is no
    header to reply to, or the bytes are themselves a response (answering those could
    start two servers talking to each other forever)."""
    try:
        header = parse_header(data)
    except DnsFormatError:
        return None
    if header.qr:
        return None
    flags = FLAG_QR | FLAG_RA | (header.flags & (0x7800 | FLAG_RD)) | rcode
    return HEADER.pack(header.id, flags, 0, 0, 0, 0)


def with_id(message: bytes, message_id: int) -> bytes:
    """The same message bytes under another ID (all that forwarding changes)."""
    return struct.pack("!H", message_id) + message[2:]


def message_id(message: bytes) -> int:
    return struct.unpack_from("!H", message)[0]


def tcp_frame(message: bytes) -> bytes:
    """A message as sent over TCP: a two-byte length, then the message (RFC 1035 4.2.2)."""
    if len(message) > MAX_MESSAGE:
        raise ValueError(f"a DNS message of {len(message)} bytes does not fit TCP framing ({MAX_MESSAGE} max)")
    return struct.pack("!H", len(message)) + message


def split_tcp_frames(buffer: bytes) -> Tuple[List[bytes], bytes]:
    """The complete messages at the start of ``buffer``, and the bytes left over."""
    messages = []
    offset = 0
    while len(buffer) - offset >= 2:
        (length,) = struct.unpack_from("!H", buffer, offset)
        if len(buffer) - offset - 2 < length:
            break
        messages.append(buffer[offset + 2 : offset + 2 + length])
        offset += 2 + length
    return messages, buffer[offset:]
