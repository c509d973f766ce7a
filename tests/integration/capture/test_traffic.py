"""Real packets through the rules traffic_capture applies.

Listeners on the capture ports read SO_ORIGINAL_DST (REDIRECT) or their own
address (TPROXY), so each answer says where the connection was meant to go,
who made it, and which listener took it.
"""

import subprocess
import sys

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
    lab.serve(lab.host, 15001)
    lab.serve(lab.host, 15006)
    lab.serve(lab.peer, 8080)
    lab.ok(ip_families=["ipv4", "ipv6"])
    assert answer(lab.connect(lab.host, PEER_V6, 8080)) == ("[%s]:8080" % PEER_V6, "[%s]" % HOST_V6, 15001)
    assert answer(lab.connect(lab.peer, HOST_V6, 8080)) == ("[%s]:8080" % HOST_V6, "[%s]" % PEER_V6, 15006)
    assert answer(lab.connect(lab.host, PEER_V6, 8080, uid=PROXY_UID))[2] == 8080


LONG_LIVED_SERVER = """
import socket, sys, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", int(sys.argv[1])))
server.listen(1)
print("ready", flush=True)
conn, _peer = server.accept()
conn.recv(1)
sys.stdin.readline()  # the test says when capture is on
conn.sendall(b"still-connected")
time.sleep(5)
"""

LONG_LIVED_CLIENT = """
import socket, sys
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])))
conn.sendall(b"x")
print("connected", flush=True)
conn.settimeout(8)
try:
    print(conn.recv(100).decode(), flush=True)
except OSError as error:
    print("broken: %s" % error, flush=True)
"""


@pytest.mark.parametrize(
    ("args", "port"),
    [
        ({"backend": "iptables-nft"}, 8080),
        ({"backend": "iptables-legacy"}, 8080),
        ({"backend": "nftables"}, 8080),
        ({"backend": "iptables-nft"}, 22),
        ({"backend": "iptables-nft", "mode": "tproxy"}, 8080),
    ],
)
def test_connections_open_before_capture_keep_working(lab, args, port):
    """On a host where conntrack was not active, an open connection (an SSH
    session, a database link) must survive capture going on: its next packet
    is not a SYN and must not be redirected."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab.host, sys.executable, "-c", LONG_LIVED_SERVER, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout.readline().strip() == "ready"
    client = subprocess.Popen(
        ["ip", "netns", "exec", lab.peer, sys.executable, "-c", LONG_LIVED_CLIENT, HOST_V4, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout.readline().strip() == "connected"
        lab.ok(ip_families=["ipv4"], **args)
        server.stdin.write("go\n")
        server.stdin.flush()
        assert client.stdout.readline().strip() == "still-connected"
    finally:
        for proc in (server, client):
            proc.kill()
            proc.wait()
