"""DNS wire format: parsing with compression, EDNS, truncation, TCP framing, malformed input."""

from __future__ import annotations

import random
import struct

import pytest
from fake_dns import make_query, reply_to

from hostmesh_agent import dns_wire as wire


def test_parses_a_stub_resolvers_query():
    msg = wire.parse_message(make_query("Api.Mesh.Internal", qtype=28, qid=0xBEEF, edns=1232, do=True))
    assert msg.header.id == 0xBEEF
    assert not msg.header.qr
    assert msg.header.opcode == wire.OPCODE_QUERY
    assert msg.question == wire.Question((b"Api", b"Mesh", b"Internal"), wire.TYPE_AAAA, wire.CLASS_IN)
    assert msg.question.key == (b"api", b"mesh", b"internal")
    assert msg.edns == wire.Edns(udp_size=1232, ext_rcode=0, version=0, flags=wire.EDNS_FLAG_DO, options=b"")
    assert msg.edns.do
    assert msg.additional == ()  # the OPT record is taken out of the additional section


def test_reads_compressed_names_in_answers():
    reply = reply_to(make_query("www.example.com"), ipv4=("192.0.2.1", "192.0.2.2"))
    msg = wire.parse_message(reply)
    assert [r.name for r in msg.answers] == [(b"www", b"example", b"com")] * 2
    assert [r.rdata for r in msg.answers] == [bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])]


def test_pointer_to_a_suffix_then_more_labels():
    # question "a.example.com", then a record named "b" + pointer to "example.com" (offset 14)
    query = make_query("a.example.com")
    data = bytearray(query)
    data[6:8] = struct.pack("!H", 1)  # ancount
    data += b"\x01b\xc0\x0e" + struct.pack("!HHIH", 1, 1, 60, 4) + b"\x01\x02\x03\x04"
    msg = wire.parse_message(bytes(data))
    assert msg.answers[0].name == (b"b", b"example", b"com")


@pytest.mark.parametrize(
    ("name_wire", "error"),
    [
        (b"\xc0\x0c", "points forward, to itself"),  # the question's name points at itself
        (b"\x01a\xc0\x0c", "round a loop"),  # "a", then back to the start: "a.a.a...."
        (b"\xc0\x20", "points forward"),
        (b"\x01a\xc0", "cut off"),
        (b"\x41abc\x00", "label type 0x40"),
        (b"\x80abc\x00", "label type 0x80"),
        (b"\x05ab", "runs past the end"),
        (b"\x3fa", "runs past the end"),
    ],
)
def test_bad_names_are_format_errors(name_wire, error):
    data = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + name_wire + struct.pack("!HH", 1, 1)
    with pytest.raises(wire.DnsFormatError, match=error):
        wire.parse_message(data)


def test_a_loop_between_two_pointers_is_an_error():
    # record 1's name points at record 2's name, which points back at record 1's: the
    # forward pointer is refused, so the loop is never followed.
    query = make_query("x")
    first = len(query)
    rr_tail = struct.pack("!HHIH", 1, 1, 60, 0)
    second = first + 2 + len(rr_tail)
    data = bytearray(query)
    data[6:8] = struct.pack("!H", 2)
    data += struct.pack("!H", 0xC000 | second) + rr_tail + struct.pack("!H", 0xC000 | first) + rr_tail
    with pytest.raises(wire.DnsFormatError, match="points forward"):
        wire.parse_message(bytes(data))


def test_a_name_longer_than_255_bytes_is_an_error():
    data = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01"
    with pytest.raises(wire.DnsFormatError, match="longer than 255"):
        wire.parse_message(data)


def test_short_and_lying_messages_are_format_errors():
    with pytest.raises(wire.DnsFormatError, match="shorter than the 12-byte header"):
        wire.parse_message(b"\x00\x01\x02")
    with pytest.raises(wire.DnsFormatError, match="cut off before its type"):
        wire.parse_message(make_query("example.com")[:-2])
    lying = bytearray(make_query("example.com"))
    lying[7] = 3  # three answers announced, none there
    with pytest.raises(wire.DnsFormatError):
        wire.parse_message(bytes(lying))
    rdata_short = bytearray(reply_to(make_query("example.com"), ipv4=("192.0.2.1",)))
    with pytest.raises(wire.DnsFormatError, match="rdata that are not there"):
        wire.parse_message(bytes(rdata_short[:-2]))


def test_every_prefix_and_random_bytes_give_only_format_errors():
    rng = random.Random(1035)
    full = reply_to(make_query("www.example.com", edns=4096, do=True), ipv4=("192.0.2.1", "192.0.2.2"))
    samples = [full[:n] for n in range(len(full))]
    samples += [bytes(rng.getrandbits(8) for _i in range(rng.randrange(0, 80))) for _i in range(3000)]
    for n in range(2000):  # flip bytes of a valid message
        mutated = bytearray(full)
        for _i in range(1 + n % 4):
            mutated[rng.randrange(len(mutated))] = rng.getrandbits(8)
        samples.append(bytes(mutated))
    errors = 0
    for data in samples:
        try:
            wire.parse_message(data)
        except wire.DnsFormatError:
            errors += 1
    assert errors > len(full)  # every strict prefix at least


def test_edns_rules():
    query = make_query("example.com", edns=4096)
    two = bytearray(query)
    two[10:12] = struct.pack("!H", 2)
    two += b"\x00" + struct.pack("!HHIH", 41, 512, 0, 0)
    with pytest.raises(wire.DnsFormatError, match="more than one OPT"):
        wire.parse_message(bytes(two))
    named = bytearray(make_query("example.com"))
    named[10:12] = struct.pack("!H", 1)
    named += b"\x01x\x00" + struct.pack("!HHIH", 41, 512, 0, 0)
    with pytest.raises(wire.DnsFormatError, match="name other than the root"):
        wire.parse_message(bytes(named))
    ext = bytearray(reply_to(make_query("example.com", edns=4096)))
    opt_ttl = len(ext) - 4 - len(b"\x00\x0a\x00\x08fakecook") - 2
    ext[opt_ttl] = 1  # extended rcode 1 << 4 = 16 (BADVERS)
    assert wire.parse_message(bytes(ext)).rcode == wire.RCODE_BADVERS


def test_udp_payload_limit():
    assert wire.udp_payload_limit(wire.parse_message(make_query("a.b"))) == 512
    assert wire.udp_payload_limit(wire.parse_message(make_query("a.b", edns=100))) == 512
    assert wire.udp_payload_limit(wire.parse_message(make_query("a.b", edns=4096))) == 4096


def _records(n):
    return [wire.answer_record(wire.TYPE_A, 30, bytes([10, 0, i // 256, i % 256])) for i in range(n)]


def test_response_echoes_the_question_exactly_and_points_to_it():
    query = wire.parse_message(make_query("ApI.MeSh.InTeRnAl", qid=7))
    reply = wire.build_response(query, wire.RCODE_NOERROR, _records(1), authoritative=True)
    assert reply[12 : 12 + len(query.question_wire)] == query.question_wire
    parsed = wire.parse_message(reply)
    assert parsed.header.id == 7
    assert parsed.header.qr
    assert parsed.header.flags & wire.FLAG_AA
    assert parsed.header.flags & wire.FLAG_RD  # copied from the query
    assert parsed.answers[0].name == (b"ApI", b"MeSh", b"InTeRnAl")
    assert parsed.answers[0].ttl == 30


def test_truncation_at_512_without_edns():
    query = wire.parse_message(make_query("many.mesh.internal"))
    reply = wire.build_response(query, wire.RCODE_NOERROR, _records(40), max_size=512)
    parsed = wire.parse_message(reply)
    assert len(reply) <= 512
    assert parsed.header.tc
    assert 0 < len(parsed.answers) < 40  # as many whole records as fit
    full = wire.parse_message(wire.build_response(query, wire.RCODE_NOERROR, _records(40)))  # TCP
    assert not full.header.tc
    assert len(full.answers) == 40


def test_truncation_honours_the_clients_edns_size_and_keeps_opt():
    query = wire.parse_message(make_query("many.mesh.internal", edns=1232, do=True))
    limit = wire.udp_payload_limit(query)
    fits = wire.parse_message(wire.build_response(query, wire.RCODE_NOERROR, _records(40), max_size=limit))
    assert not fits.header.tc
    assert len(fits.answers) == 40
    reply = wire.build_response(query, wire.RCODE_NOERROR, _records(100), max_size=limit)
    parsed = wire.parse_message(reply)
    assert len(reply) <= 1232
    assert parsed.header.tc
    assert parsed.edns is not None
    assert parsed.edns.do  # DO echoed (RFC 3225)
    assert parsed.edns.udp_size == wire.EDNS_PAYLOAD


def test_error_reply_for_bytes_that_did_not_parse():
    bad = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c"
    reply = wire.error_reply_for_unparsed(bad)
    header = wire.parse_header(reply)
    assert (header.id, header.qr, header.rcode, header.qdcount) == (0x1234, True, wire.RCODE_FORMERR, 0)
    assert wire.error_reply_for_unparsed(b"\x12") is None
    response = struct.pack("!HHHHHH", 1, 0x8000, 1, 0, 0, 0) + b"\xc0\x0c"
    assert wire.error_reply_for_unparsed(response) is None  # never answer an answer


def test_tcp_framing():
    a, b = make_query("a.example"), make_query("b.example", qid=2)
    stream = wire.tcp_frame(a) + wire.tcp_frame(b)
    assert stream[:2] == struct.pack("!H", len(a))
    assert wire.split_tcp_frames(stream) == ([a, b], b"")
    for cut in range(len(stream)):
        head, rest = wire.split_tcp_frames(stream[:cut])
        assert b"".join(wire.tcp_frame(m) for m in head) + rest == stream[:cut]
    assert wire.split_tcp_frames(b"\x00") == ([], b"\x00")
    with pytest.raises(ValueError, match="does not fit TCP framing"):
        wire.tcp_frame(b"x" * 65536)


def test_with_id_changes_only_the_id():
    reply = reply_to(make_query("example.com", qid=1, edns=4096, do=True), ipv4=("192.0.2.1",))
    again = wire.with_id(reply, 0xABCD)
    assert wire.message_id(again) == 0xABCD
    assert again[2:] == reply[2:]


def test_unknown_record_types_are_kept_raw():
    data = bytearray(make_query("example.com", qtype=65))  # HTTPS
    data[6:8] = struct.pack("!H", 1)
    data += b"\xc0\x0c" + struct.pack("!HHIH", 65, 1, 60, 3) + b"\x00\x01\x00"
    msg = wire.parse_message(bytes(data))
    assert msg.question.qtype == 65
    assert msg.answers[0].rtype == 65
    assert msg.answers[0].rdata == b"\x00\x01\x00"


def test_encode_name_checks_lengths():
    assert wire.encode_name((b"a", b"bc")) == b"\x01a\x02bc\x00"
    with pytest.raises(ValueError, match="1 to 63 bytes"):
        wire.encode_name((b"a" * 64,))
    with pytest.raises(ValueError, match="longer than 255"):
        wire.encode_name((b"a" * 63,) * 4)
