"""Answers from the mesh zone: A/AAAA, NODATA vs NXDOMAIN, SOA, TTL, odd queries, zone errors."""

from __future__ import annotations

import pytest
from fake_dns import answer_addresses, flags_of, make_query, rcode_of

from hostmesh_agent import dns_wire as wire
from hostmesh_agent.dns_zone import MeshZone, ZoneError

RECORDS = {
    "api.mesh.internal": (["240.240.0.1"], ["fd00:240::1"]),
    "db.prod.mesh.internal.": (["240.240.0.2"], []),  # trailing dot and no IPv6 VIP
    "Cache.Prod.Mesh.Internal": (["240.240.0.3", "240.240.0.4", "240.240.0.3"], ["fd00:240::3"]),
}


@pytest.fixture
def zone():
    return MeshZone("mesh.internal", RECORDS)


def ask(zone, name, qtype=wire.TYPE_A, ttl=30, udp=True, **kw):
    query = wire.parse_message(make_query(name, qtype, **kw))
    assert zone.owns(query.question.key)
    reply = zone.answer(query, ttl, wire.udp_payload_limit(query) if udp else wire.MAX_MESSAGE)
    return reply, wire.parse_message(reply)


def test_a_and_aaaa(zone):
    raw, _msg = ask(zone, "api.mesh.internal")
    assert (rcode_of(raw), answer_addresses(raw)) == (0, ["240.240.0.1"])
    assert flags_of(raw) & wire.FLAG_AA
    raw, _msg = ask(zone, "api.mesh.internal", wire.TYPE_AAAA)
    assert answer_addresses(raw) == ["fd00:240::1"]
    raw, _msg = ask(zone, "cache.prod.mesh.internal", wire.TYPE_ANY)
    assert answer_addresses(raw) == ["240.240.0.3", "240.240.0.4", "fd00:240::3"]  # duplicates dropped


def test_names_match_in_any_case_and_the_question_is_echoed_as_asked(zone):
    raw, msg = ask(zone, "dB.PrOd.MESH.internal.")
    assert answer_addresses(raw) == ["240.240.0.2"]
    assert msg.question.name == (b"dB", b"PrOd", b"MESH", b"internal")
    assert msg.answers[0].name == (b"dB", b"PrOd", b"MESH", b"internal")


@pytest.mark.parametrize("qtype", [wire.TYPE_AAAA, wire.TYPE_MX, wire.TYPE_TXT, wire.TYPE_SRV, wire.TYPE_CNAME])
def test_a_type_the_name_lacks_is_nodata_not_nxdomain(zone, qtype):
    raw, msg = ask(zone, "db.prod.mesh.internal", qtype)
    assert rcode_of(raw) == wire.RCODE_NOERROR
    assert msg.answers == ()
    [soa] = msg.authority
    assert (soa.rtype, soa.name, soa.ttl) == (wire.TYPE_SOA, (b"mesh", b"internal"), 30)


def test_an_unknown_name_under_the_domain_is_nxdomain_with_soa(zone):
    raw, msg = ask(zone, "nope.mesh.internal")
    assert rcode_of(raw) == wire.RCODE_NXDOMAIN
    assert flags_of(raw) & wire.FLAG_AA
    assert [r.rtype for r in msg.authority] == [wire.TYPE_SOA]
    raw, _msg = ask(zone, "x.api.mesh.internal")  # below a service: nothing there
    assert rcode_of(raw) == wire.RCODE_NXDOMAIN


def test_namespace_and_apex_exist_without_addresses(zone):
    for name in ("prod.mesh.internal", "mesh.internal"):
        raw, msg = ask(zone, name)
        assert (rcode_of(raw), msg.answers) == (wire.RCODE_NOERROR, ())
    raw, msg = ask(zone, "mesh.internal", wire.TYPE_SOA)
    assert [r.rtype for r in msg.answers] == [wire.TYPE_SOA]


def test_ttl_is_configurable_and_is_the_negative_ttl_too(zone):
    _raw, msg = ask(zone, "api.mesh.internal", ttl=5)
    assert msg.answers[0].ttl == 5
    _raw, msg = ask(zone, "nope.mesh.internal", ttl=5)
    assert msg.authority[0].ttl == 5
    assert int.from_bytes(msg.authority[0].rdata[-4:], "big") == 5  # SOA MINIMUM


def test_only_names_under_the_domain_are_owned(zone):
    def owns(name):
        return zone.owns(wire.parse_message(make_query(name)).question.key)

    assert owns("api.mesh.internal")
    assert owns("MESH.INTERNAL")
    assert not owns("api.mesh.internal.corp.example")  # a search domain appended: forwarded
    assert not owns("xmesh.internal")
    assert not owns("internal")
    assert not owns("example.com")


def test_odd_queries(zone):
    raw, _msg = ask(zone, "api.mesh.internal", opcode=2)  # STATUS
    assert rcode_of(raw) == wire.RCODE_NOTIMP
    raw, _msg = ask(zone, "api.mesh.internal", qclass=3)  # CHAOS
    assert rcode_of(raw) == wire.RCODE_REFUSED
    raw, _msg = ask(zone, "mesh.internal", wire.TYPE_AXFR)
    assert rcode_of(raw) == wire.RCODE_REFUSED
    raw, _msg = ask(zone, "api.mesh.internal", qclass=wire.CLASS_ANY)
    assert answer_addresses(raw) == ["240.240.0.1"]


def test_edns_is_answered_with_edns_and_bad_versions_with_badvers(zone):
    _raw, msg = ask(zone, "api.mesh.internal", edns=4096, do=True)
    assert msg.edns is not None
    assert msg.edns.do
    query = bytearray(make_query("api.mesh.internal", edns=4096))
    query[-5] = 1  # EDNS version 1
    reply = zone.answer(wire.parse_message(bytes(query)), 30, 4096)
    assert wire.parse_message(reply).rcode == wire.RCODE_BADVERS


def test_many_vips_are_truncated_over_udp_only():
    records = {"big.mesh.internal": ([f"240.240.1.{i}" for i in range(60)], [])}
    zone = MeshZone("mesh.internal", records)
    raw, msg = ask(zone, "big.mesh.internal")
    assert len(raw) <= 512
    assert msg.header.tc
    raw, msg = ask(zone, "big.mesh.internal", udp=False)
    assert not msg.header.tc
    assert len(msg.answers) == 60
    raw, msg = ask(zone, "big.mesh.internal", edns=1232)
    assert not msg.header.tc


def test_a_custom_domain():
    zone = MeshZone("svc.corp", {"api.team.svc.corp": (["10.9.0.1"], [])})
    raw, _msg = ask(zone, "api.team.svc.corp")
    assert answer_addresses(raw) == ["10.9.0.1"]
    assert not zone.owns((b"api", b"mesh", b"internal"))


@pytest.mark.parametrize(
    ("domain", "records", "message"),
    [
        ("mesh..internal", {}, "mesh domain 'mesh..internal': label ''"),
        ("mesh.internal", {"api.example.com": ([], [])}, "'api.example.com' is not a name under the mesh domain"),
        ("mesh.internal", {"mesh.internal": ([], [])}, "'mesh.internal' is not a name under"),
        ("mesh.internal", {"a b.mesh.internal": ([], [])}, "label 'a b' is not a DNS label"),
        ("mesh.internal", {"api.mesh.internal": (["fd00::1"], [])}, "'fd00::1' is not an IPv4 address"),
        ("mesh.internal", {"api.mesh.internal": ([], ["10.0.0.1"])}, "'10.0.0.1' is not an IPv6 address"),
        ("mesh.internal", {"api.mesh.internal": ("10.0.0.1", [])}, "must be a list, not '10.0.0.1'"),
        ("mesh.internal", {"api.mesh.internal": ["10.0.0.1"]}, r"must be \(IPv4 list, IPv6 list\)"),
        ("mesh.internal", {("a" * 64) + ".mesh.internal": ([], [])}, "is not a DNS label"),
    ],
)
def test_zone_errors_name_the_bad_value(domain, records, message):
    with pytest.raises(ZoneError, match=message):
        MeshZone(domain, records)
