"""The DNS server on 127.0.0.1 (ephemeral port) against fake upstream resolvers on loopback."""

from __future__ import annotations

import logging
import socket
import struct
import time

import pytest
from fake_dns import (
    COOKIE,
    FakeUpstream,
    answer_addresses,
    ask_tcp,
    ask_udp,
    flags_of,
    make_query,
    rcode_of,
    reply_to,
)

from hostmesh_agent import dns_wire as wire
from hostmesh_agent.dns_server import DnsServer

ZONE = {
    "api.mesh.internal": (["240.240.0.1"], ["fd00:240::1"]),
    "db.prod.mesh.internal": (["240.240.0.2"], []),
}


def answering(*addresses, rcode=0):
    return lambda query, proto: reply_to(query, rcode=rcode, ipv4=addresses)


@pytest.fixture
def upstreams():
    started = []

    def start(handler, **kw):
        fake = FakeUpstream(handler, **kw)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.close()


@pytest.fixture
def dns():
    started = []

    def start(upstream_list, zone=None, **kw):
        zone = ZONE if zone is None else zone
        zone_box = zone if callable(zone) else (lambda: zone)
        ups = upstream_list if callable(upstream_list) else (lambda: upstream_list)
        server = DnsServer("127.0.0.1", 0, zone_box, ups, **kw)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def closed_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mesh_names_over_udp_and_tcp(dns):
    server = dns([])
    reply = ask_udp(server.port, make_query("api.mesh.internal"))
    assert (rcode_of(reply), answer_addresses(reply)) == (0, ["240.240.0.1"])
    [a4, a6, nodata] = ask_tcp(
        server.port,
        [
            make_query("API.mesh.internal", qid=1),
            make_query("api.mesh.internal", wire.TYPE_AAAA, qid=2),
            make_query("db.prod.mesh.internal", wire.TYPE_AAAA, qid=3),
        ],
    )
    assert answer_addresses(a4) == ["240.240.0.1"]
    assert answer_addresses(a6) == ["fd00:240::1"]
    assert (rcode_of(nodata), answer_addresses(nodata)) == (wire.RCODE_NOERROR, [])
    assert server.counters.zone_answers == 4
    assert server.counters.forwarded == 0


def test_forwarding_relays_the_upstreams_bytes_with_only_the_id_restored(dns, upstreams):
    fake = upstreams(answering("192.0.2.10"))
    server = dns([fake.upstream])
    query = make_query("WwW.Example.COM", qid=0x1111, edns=4096, do=True)
    reply = ask_udp(server.port, query)
    [(proto, received)] = fake.received
    [(_proto, sent)] = fake.sent
    assert proto == "udp"
    assert received[2:] == query[2:]  # the query went out unchanged (EDNS, DO bit, case)
    assert reply == query[:2] + sent[2:]  # and its reply came back unchanged
    assert COOKIE in reply  # the upstream's EDNS option
    assert flags_of(reply) & 0x0020  # AD, as the upstream set it
    assert server.counters.forwarded == 1


def test_tcp_queries_are_forwarded_over_tcp(dns, upstreams):
    fake = upstreams(answering("192.0.2.11"))
    server = dns([fake.upstream])
    query = make_query("example.org", qid=7)
    [reply] = ask_tcp(server.port, [query])
    assert [p for p, _q in fake.received] == ["tcp"]
    assert reply == query[:2] + fake.sent[0][1][2:]


def test_a_truncated_udp_reply_reaches_the_client_truncated_and_tcp_gets_the_whole(dns, upstreams):
    many = tuple(f"192.0.2.{i}" for i in range(1, 60))

    def handler(query, proto):
        if proto == "udp":
            return reply_to(query, tc=True)
        return reply_to(query, ipv4=many)

    fake = upstreams(handler)
    server = dns([fake.upstream])
    udp_reply = ask_udp(server.port, make_query("big.example.com"))
    assert flags_of(udp_reply) & wire.FLAG_TC
    [tcp_reply] = ask_tcp(server.port, [make_query("big.example.com")])
    assert answer_addresses(tcp_reply) == list(many)
    assert len(tcp_reply) > 512


@pytest.mark.parametrize("rcode", [wire.RCODE_NXDOMAIN, wire.RCODE_SERVFAIL, wire.RCODE_REFUSED])
def test_negative_answers_pass_through_unchanged(dns, upstreams, rcode):
    fake = upstreams(answering(rcode=rcode))
    server = dns([fake.upstream])
    query = make_query("nope.example.com", qid=0x2222)
    reply = ask_udp(server.port, query)
    assert rcode_of(reply) == rcode
    assert reply == query[:2] + fake.sent[0][1][2:]
    assert server.counters.failed == 0


def test_servfail_from_the_first_upstream_tries_the_next_as_libc_does(dns, upstreams):
    broken = upstreams(answering(rcode=wire.RCODE_SERVFAIL))
    good = upstreams(answering("192.0.2.20"))
    server = dns([broken.upstream, good.upstream])
    reply = ask_udp(server.port, make_query("example.net"))
    assert (rcode_of(reply), answer_addresses(reply)) == (0, ["192.0.2.20"])
    assert len(broken.received) == 1


def test_a_silent_upstream_times_out_and_the_next_one_answers(dns, upstreams):
    silent = upstreams(lambda q, p: None)
    good = upstreams(answering("192.0.2.30"))
    server = dns([silent.upstream, good.upstream], upstream_timeout=0.3)
    reply = ask_udp(server.port, make_query("example.net"))
    assert answer_addresses(reply) == ["192.0.2.30"]
    assert len(silent.received) == 1
    assert server.counters.upstream_errors == 1
    # the silent one is now asked last, so the next query does not wait for it
    ask_udp(server.port, make_query("example.net", qid=2))
    assert len(silent.received) == 1
    assert len(good.received) == 2


def test_an_upstream_refusing_connections_is_skipped(dns, upstreams):
    good = upstreams(answering("192.0.2.31"))
    server = dns([("127.0.0.1", closed_udp_port()), good.upstream])
    assert answer_addresses(ask_udp(server.port, make_query("example.net"))) == ["192.0.2.31"]
    [reply] = ask_tcp(server.port, [make_query("example.net")])
    assert answer_addresses(reply) == ["192.0.2.31"]


def test_all_upstreams_down_is_servfail(dns, upstreams, caplog):
    silent = upstreams(lambda q, p: None)
    server = dns([silent.upstream, ("127.0.0.1", closed_udp_port())], upstream_timeout=0.2)
    query = make_query("example.net", qid=0x3333, edns=1232)
    with caplog.at_level(logging.WARNING, logger="hostmesh_agent.dns_server"):
        reply = ask_udp(server.port, query)
        [tcp_reply] = ask_tcp(server.port, [make_query("example.net")])
    msg = wire.parse_message(reply)
    assert (msg.header.id, msg.header.rcode) == (0x3333, wire.RCODE_SERVFAIL)
    assert msg.question.name == (b"example", b"net")
    assert msg.edns is not None
    assert rcode_of(tcp_reply) == wire.RCODE_SERVFAIL
    assert server.counters.failed == 2
    assert "no upstream answered" in caplog.text


def test_no_upstream_known_is_servfail(dns):
    server = dns([])
    assert rcode_of(ask_udp(server.port, make_query("example.net"))) == wire.RCODE_SERVFAIL


def test_never_forwards_to_itself(dns, upstreams, caplog):
    holder = {}
    with caplog.at_level(logging.ERROR, logger="hostmesh_agent.dns_server"):
        server = dns(lambda: [("127.0.0.1", holder["port"])])
        holder["port"] = server.port
        reply = ask_udp(server.port, make_query("example.net"))
    assert rcode_of(reply) == wire.RCODE_SERVFAIL
    assert "is the agent's own listener" in caplog.text
    assert server.counters.zone_answers == 0
    assert server.counters.forwarded == 0
    assert server.counters.malformed == 0  # it never received its own query
    assert server.counters.failed == 1


def test_own_listener_in_a_list_is_skipped(dns, upstreams):
    good = upstreams(answering("192.0.2.40"))
    holder = {}
    server = dns(lambda: [("127.0.0.1", holder["port"]), good.upstream])
    holder["port"] = server.port
    assert answer_addresses(ask_udp(server.port, make_query("example.net"))) == ["192.0.2.40"]
    assert server.counters.upstream_errors == 0


def test_a_slow_upstream_does_not_hold_back_other_queries(dns, upstreams):
    def handler(query, proto):
        if b"\x04slow" in query:
            return reply_to(query, ipv4=("192.0.2.50",)), 1.0
        return reply_to(query, ipv4=("192.0.2.51",))

    fake = upstreams(handler)
    server = dns([fake.upstream])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(make_query("slow.example.com", qid=1), ("127.0.0.1", server.port))
        sock.sendto(make_query("fast.example.com", qid=2), ("127.0.0.1", server.port))
        sock.sendto(make_query("api.mesh.internal", qid=3), ("127.0.0.1", server.port))
        order = [struct.unpack("!H", sock.recv(65535)[:2])[0] for _i in range(3)]
    assert order[-1] == 1  # the slow one last; the others did not wait for it
    assert sorted(order) == [1, 2, 3]


def test_malformed_packets_get_formerr_one_log_line_and_no_crash(dns, upstreams, caplog):
    server = dns([])
    bad = struct.pack("!HHHHHH", 0x0BAD, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"
    with caplog.at_level(logging.WARNING, logger="hostmesh_agent.dns_server"):
        reply = ask_udp(server.port, bad)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for junk in (b"", b"\x01", b"\xff" * 11, bytes(range(200)), b"\x80" * 40):
                sock.sendto(junk, ("127.0.0.1", server.port))
        for _i in range(20):
            ask_udp(server.port, bad)
        [tcp_reply] = ask_tcp(server.port, [bad])
        good = ask_udp(server.port, make_query("api.mesh.internal"))
    assert (wire.parse_header(reply).id, rcode_of(reply)) == (0x0BAD, wire.RCODE_FORMERR)
    assert rcode_of(tcp_reply) == wire.RCODE_FORMERR
    assert answer_addresses(good) == ["240.240.0.1"]
    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(lines) == 1  # rate-limited
    assert "points forward" in lines[0].getMessage()
    assert server.counters.malformed >= 27


def test_a_response_sent_to_the_server_is_not_answered(dns):
    server = dns([])
    response = reply_to(make_query("api.mesh.internal"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        sock.sendto(response, ("127.0.0.1", server.port))
        with pytest.raises(socket.timeout):
            sock.recv(65535)
    assert server.counters.malformed == 1


def test_a_new_zone_changes_answers_without_restart(dns, caplog):
    box = {"zone": dict(ZONE)}
    server = dns([], zone=lambda: box["zone"])
    assert answer_addresses(ask_udp(server.port, make_query("api.mesh.internal"))) == ["240.240.0.1"]
    box["zone"] = {"api.mesh.internal": (["240.240.9.9"], []), "new.mesh.internal": (["240.240.9.8"], [])}
    assert answer_addresses(ask_udp(server.port, make_query("api.mesh.internal"))) == ["240.240.9.9"]
    assert answer_addresses(ask_udp(server.port, make_query("new.mesh.internal"))) == ["240.240.9.8"]
    with caplog.at_level(logging.ERROR, logger="hostmesh_agent.dns_server"):
        box["zone"] = {"new.mesh.internal": (["not-an-ip"], [])}
        assert answer_addresses(ask_udp(server.port, make_query("new.mesh.internal"))) == ["240.240.9.8"]
    assert "still answering from the previous one (2 names)" in caplog.text
    assert "'not-an-ip' is not an IPv4 address" in caplog.text


def test_pipelined_tcp_queries_mixing_zone_and_forwarded(dns, upstreams):
    fake = upstreams(answering("192.0.2.60"), delay=0.2)
    server = dns([fake.upstream])
    replies = ask_tcp(
        server.port,
        [make_query("example.com", qid=10), make_query("api.mesh.internal", qid=11), make_query("x.org", qid=12)],
    )
    by_id = {wire.parse_header(r).id: answer_addresses(r) for r in replies}
    assert by_id == {10: ["192.0.2.60"], 11: ["240.240.0.1"], 12: ["192.0.2.60"]}


def test_tcp_client_that_closes_early_does_not_disturb_the_server(dns, upstreams):
    fake = upstreams(answering("192.0.2.61"), delay=0.3)
    server = dns([fake.upstream])
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(wire.tcp_frame(make_query("example.com")))
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"\x00\x40partial")  # a frame that never completes
    time.sleep(0.5)
    assert answer_addresses(ask_udp(server.port, make_query("example.com"))) == ["192.0.2.61"]


def test_a_client_that_half_closes_still_gets_its_answers(dns, upstreams):
    fake = upstreams(answering("192.0.2.62"), delay=0.2)
    server = dns([fake.upstream])
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(wire.tcp_frame(make_query("example.com", qid=5)))
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = sock.recv(65535)
            if not chunk:
                break
            data += chunk
    [reply], rest = wire.split_tcp_frames(data)
    assert (rest, wire.parse_header(reply).id, answer_addresses(reply)) == (b"", 5, ["192.0.2.62"])


def test_too_many_queries_in_flight_get_servfail_not_a_hang(dns, upstreams):
    fake = upstreams(answering("192.0.2.70"), delay=0.5)
    server = dns([fake.upstream], max_in_flight=2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        for i in range(4):
            sock.sendto(make_query(f"n{i}.example.com", qid=i), ("127.0.0.1", server.port))
        rcodes = {}
        for _i in range(4):
            reply = sock.recv(65535)
            rcodes[wire.parse_header(reply).id] = rcode_of(reply)
    assert sorted(rcodes.values()) == [0, 0, wire.RCODE_SERVFAIL, wire.RCODE_SERVFAIL]


def test_counters_render_as_prometheus_lines(dns):
    server = dns([])
    ask_udp(server.port, make_query("api.mesh.internal"))
    text = server.counters.render()
    assert "# TYPE hostmesh_agent_dns_zone_answers_total counter\nhostmesh_agent_dns_zone_answers_total 1\n" in text
    for name in ("forwarded", "failed", "malformed", "upstream_errors", "truncated"):
        assert f"\nhostmesh_agent_dns_{name}_total 0\n" in text


def test_truncated_zone_answers_are_counted(dns):
    server = dns([], zone={"big.mesh.internal": ([f"240.240.1.{i}" for i in range(60)], [])})
    reply = ask_udp(server.port, make_query("big.mesh.internal"))
    assert flags_of(reply) & wire.FLAG_TC
    assert server.counters.truncated == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"address": "0.0.0.0"}, "is a wildcard"),
        ({"address": "::"}, "is a wildcard"),
        ({"address": "localhost"}, "'localhost' is not an IP address"),
        ({"port": 70000}, "dns port 70000"),
        ({"ttl": -1}, "dns ttl -1"),
        ({"upstream_timeout": 0}, "dns upstream timeout 0"),
        ({"domain": "bad domain"}, "mesh domain 'bad domain'"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, message):
    args = {"address": "127.0.0.1", "port": 0, "zone_getter": dict, "upstreams_getter": list, **kwargs}
    with pytest.raises(ValueError, match=message):
        DnsServer(**args)


def test_a_taken_port_is_a_clear_error(dns):
    server = dns([])
    with pytest.raises(OSError, match=f"cannot listen for DNS on 127.0.0.1 port {server.port}"):
        DnsServer("127.0.0.1", server.port, dict, list)


def test_stop_frees_the_port(upstreams):
    server = DnsServer("127.0.0.1", 0, lambda: ZONE, list)
    server.start()
    port = server.port
    ask_udp(port, make_query("api.mesh.internal"))
    server.stop()
    again = DnsServer("127.0.0.1", port, lambda: ZONE, list)
    again.stop()


def test_ipv6_loopback_listener(dns):
    try:
        server = DnsServer("::1", 0, lambda: ZONE, list)
    except OSError as exc:  # pragma: no cover - a host without IPv6 loopback
        pytest.fail(f"no IPv6 loopback here: {exc}")
    server.start()
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(make_query("api.mesh.internal", wire.TYPE_AAAA), ("::1", server.port))
            assert answer_addresses(sock.recv(65535)) == ["fd00:240::1"]
    finally:
        server.stop()
