"""Real packets through the rules traffic_capture applies.

Listeners on the capture ports read SO_ORIGINAL_DST (REDIRECT) or their own
address (TPROXY), so each answer says where the connection was meant to go,
who made it, and which listener took it.
"""

import pytest
from netlab import HOST_V4, HOST_V6, PEER_V4, PEER_V6

PROXY_UID = 1337


def answer(text):
    """(original destination, peer address without port, listener port)."""
    assert not text.startswith("error"), text
    original, peer, via = text.split()
    return original, peer.rsplit(":", 1)[0], int(via.split("=")[1])


@pytest.fixture
def listeners(lab):
    lab.serve(lab.host, 15001)
    lab.serve(lab.host, 15006)
    lab.serve(lab.host, 22)
    lab.serve(lab.host, 8080)
    lab.serve(lab.host, 9000)
    lab.serve(lab.peer, 8080)
    return lab


@pytest.mark.parametrize("backend", ["iptables-nft", "iptables-legacy", "nftables"])
def test_redirect_mode_captures_and_bypasses_what_it_should(listeners, backend):
    lab = listeners
    # Before capture: everything direct.
    assert answer(lab.connect(lab.host, PEER_V4, 8080))[2] == 8080
    lab.ok(backend=backend, ip_families=["ipv4"])

    # The app's outbound connection reaches the outbound listener, original destination intact.
    assert answer(lab.connect(lab.host, PEER_V4, 8080)) == ("%s:8080" % PEER_V4, HOST_V4, 15001)
    # The proxy's own traffic (uid 1337, or gid 1337) goes direct.
    assert answer(lab.connect(lab.host, PEER_V4, 8080, uid=PROXY_UID))[2] == 8080
    assert answer(lab.connect(lab.host, PEER_V4, 8080, gid=PROXY_UID))[2] == 8080
    # Loopback to a local service is direct.
    assert answer(lab.connect(lab.host, "127.0.0.1", 9000))[2] == 9000
    # A peer's inbound connection reaches the inbound listener with its original destination.
    assert answer(lab.connect(lab.peer, HOST_V4, 8080)) == ("%s:8080" % HOST_V4, PEER_V4, 15006)
    # Excluded inbound ports (SSH) go direct.
    assert answer(lab.connect(lab.peer, HOST_V4, 22))[2] == 22
    # The proxy calling the host's own address over lo is treated as inbound.
    assert answer(lab.connect(lab.host, HOST_V4, 8080, uid=PROXY_UID))[2] == 15006

    lab.ok(state="absent")
    assert answer(lab.connect(lab.host, PEER_V4, 8080))[2] == 8080
    assert answer(lab.connect(lab.peer, HOST_V4, 8080))[2] == 8080


def test_exclusions_and_explicit_ports(listeners):
    lab = listeners
    lab.ok(
        ip_families=["ipv4"],
        inbound_ports=[8080],
        inbound_ports_exclude=[],
        outbound_cidrs_exclude=[PEER_V4 + "/32"],
    )
    # Outbound to an excluded CIDR goes direct; inbound on the listed port is captured.
    assert answer(lab.connect(lab.host, PEER_V4, 8080))[2] == 8080
    assert answer(lab.connect(lab.peer, HOST_V4, 8080))[2] == 15006
    # Inbound on a port not listed is not captured.
    assert answer(lab.connect(lab.peer, HOST_V4, 9000))[2] == 9000

    lab.ok(ip_families=["ipv4"], outbound_ports_exclude=[8080])
    assert answer(lab.connect(lab.host, PEER_V4, 8080))[2] == 8080

    lab.ok(ip_families=["ipv4"], exclude_interfaces=[lab.host_iface])
    assert answer(lab.connect(lab.host, PEER_V4, 8080))[2] == 8080
    assert answer(lab.connect(lab.peer, HOST_V4, 8080))[2] == 8080


def test_tproxy_keeps_the_client_address(lab):
    lab.serve(lab.host, 15006, "--transparent")
    lab.serve(lab.host, 8080)
    lab.serve(lab.host, 22)
    lab.ok(mode="tproxy", ip_families=["ipv4"])
    original, peer, via = answer(lab.connect(lab.peer, HOST_V4, 8080))
    assert (original, peer, via) == ("%s:8080" % HOST_V4, PEER_V4, 15006)
    assert answer(lab.connect(lab.peer, HOST_V4, 22))[2] == 22
    routes = lab.run(lab.host, ["ip", "route", "show", "table", "133"]).stdout
    assert "local default dev lo" in routes
    assert "fwmark 0x539 lookup 133" in lab.run(lab.host, ["ip", "rule", "show"]).stdout

    lab.ok(mode="tproxy", state="absent")
    assert answer(lab.connect(lab.peer, HOST_V4, 8080))[2] == 8080
    assert "lookup 133" not in lab.run(lab.host, ["ip", "rule", "show"]).stdout


def test_ipv6_is_captured_like_ipv4(lab):
    lab.serve(lab.host, 15001, "--v6")
    lab.serve(lab.host, 15006, "--v6")
    lab.serve(lab.peer, 8080, "--v6")
    lab.ok(ip_families=["ipv4", "ipv6"])
    assert answer(lab.connect(lab.host, PEER_V6, 8080)) == ("[%s]:8080" % PEER_V6, "[%s]" % HOST_V6, 15001)
    assert answer(lab.connect(lab.peer, HOST_V6, 8080)) == ("[%s]:8080" % HOST_V6, "[%s]" % PEER_V6, 15006)
    assert answer(lab.connect(lab.host, PEER_V6, 8080, uid=PROXY_UID))[2] == 8080
