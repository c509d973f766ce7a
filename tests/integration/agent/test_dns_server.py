"""The agent's DNS server with independent clients: ``dig`` and glibc's own resolver.

Two parts:

- ``dig`` against the server on 127.0.0.1 (no root): answers, rcodes, EDNS/DNSSEC flags
  and truncation as a real resolver library sees them.
- A captured host in a network namespace (root): the real ``traffic_capture`` module with
  ``dns_redirect`` sends the applications' queries (to the nameserver in the namespace's
  resolv.conf) to the server, which runs as the proxy user and forwards everything else to
  that nameserver; ``getent`` (glibc's getaddrinfo) and ``dig`` ask as an application
  would. Where the server's own queries are redirected to it too (its user left out of
  the exclusions), the loop is detected and answered SERVFAIL at once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import pytest
from agent_netns import AGENT_PATH, PROXY_UID, REPO, apply_capture, host_python, in_netns, run
from proxy_user_files import agent_path

sys.path[:0] = [str(AGENT_PATH), str(REPO / "tests" / "unit" / "agent")]
from fake_dns import FakeUpstream, has_opt, reply_to  # noqa: E402 (the fake lives with the unit tests)

from hostmesh_agent.dns_server import DnsServer  # noqa: E402

ZONE = {
    "api.mesh.internal": (["240.240.0.1"], ["fd00:240::1"]),
    "db.prod.mesh.internal": (["240.240.0.2"], []),
    "big.mesh.internal": ([f"240.240.1.{i}" for i in range(1, 61)], []),
}
MANY = tuple(f"192.0.2.{i}" for i in range(1, 61))


def dig(*args: str, ns: str = "") -> str:
    if shutil.which("dig") is None:
        pytest.fail("dig is not installed (Debian package dnsutils; `make deps` installs it)")
    cmd = ["dig", "+tries=1", "+time=3", *args]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)
    return res.stdout + res.stderr


def outside(query: bytes, proto: str) -> bytes:
    """The host's real resolver: big.example.com has 60 addresses (TC over UDP without
    EDNS room), nxdomain.example.com does not exist, every other name has one address."""
    if b"\x08nxdomain" in query:
        return reply_to(query, rcode=3)
    if b"\x03big" in query:
        if proto == "udp" and not has_opt(query):
            return reply_to(query, tc=True)  # as a real server: 60 addresses do not fit 512 bytes
        return reply_to(query, ipv4=MANY)
    return reply_to(query, ipv4=("192.0.2.80",))


@pytest.fixture
def loopback_server():
    fake = FakeUpstream(outside)
    server = DnsServer("127.0.0.1", 0, lambda: ZONE, lambda: [fake.upstream])
    server.start()
    yield server
    server.stop()
    fake.close()


def test_dig_mesh_names(loopback_server):
    port = str(loopback_server.port)
    assert dig("@127.0.0.1", "-p", port, "+short", "api.mesh.internal").split() == ["240.240.0.1"]
    assert dig("@127.0.0.1", "-p", port, "+short", "API.Mesh.Internal", "AAAA").split() == ["fd00:240::1"]
    out = dig("@127.0.0.1", "-p", port, "db.prod.mesh.internal", "AAAA")
    assert "status: NOERROR" in out
    assert "ANSWER: 0" in out
    assert "mesh.internal.\t\t30\tIN\tSOA" in out or "IN\tSOA" in out
    out = dig("@127.0.0.1", "-p", port, "nope.mesh.internal")
    assert "status: NXDOMAIN" in out
    assert "flags: qr aa rd ra" in out
    out = dig("@127.0.0.1", "-p", port, "+tcp", "+short", "api.mesh.internal")
    assert out.split() == ["240.240.0.1"]


def test_dig_retries_a_truncated_mesh_answer_over_tcp(loopback_server):
    port = str(loopback_server.port)
    out = dig("@127.0.0.1", "-p", port, "+noedns", "big.mesh.internal")
    assert "Truncated, retrying in TCP mode" in out
    assert "ANSWER: 60" in out
    out = dig("@127.0.0.1", "-p", port, "+noedns", "+ignore", "big.mesh.internal")
    assert "flags: qr aa tc rd ra" in out


def test_dig_forwarded_names(loopback_server):
    port = str(loopback_server.port)
    out = dig("@127.0.0.1", "-p", port, "+dnssec", "www.example.com")
    assert "status: NOERROR" in out
    assert "192.0.2.80" in out
    assert " ad;" in out or " ad " in out  # the upstream's AD flag, passed through
    assert "udp: 4096" in out  # the upstream's EDNS record, not the agent's
    assert "do;" in out or "flags: do" in out
    assert "status: NXDOMAIN" in dig("@127.0.0.1", "-p", port, "nxdomain.example.com")
    out = dig("@127.0.0.1", "-p", port, "+noedns", "big.example.com")
    assert "Truncated, retrying in TCP mode" in out
    assert "ANSWER: 60" in out
    assert loopback_server.counters.forwarded >= 4


# The captured host ---------------------------------------------------------------------

RESOLVER = "10.253.0.53"  # the host's resolver, inside the namespace
SERVER_SCRIPT = """
import json, logging, sys
from hostmesh_agent.dns_server import DnsServer
from hostmesh_agent.dns_upstreams import UpstreamSource
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
zone = {k: tuple(v) for k, v in json.loads(sys.argv[1]).items()}
server = DnsServer("127.0.0.1", 15053, lambda: zone, UpstreamSource("127.0.0.1", 15053), upstream_timeout=1.0)
server.start()
print("ready", flush=True)
sys.stdin.read()
server.stop()
print(json.dumps(server.counters.__dict__), flush=True)
"""


@pytest.fixture
def captured_host():
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces")
    ns = "hm-dns-" + os.urandom(3).hex()
    etc = Path("/etc/netns") / ns
    workdir = Path(tempfile.mkdtemp(prefix="hm-dns-"))
    run("ip", "netns", "add", ns)
    fake = None
    try:
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text(f"# the namespace's own\nnameserver {RESOLVER}\noptions edns0\n")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", ns, "addr", "add", f"{RESOLVER}/32", "dev", "lo")
        # an IPv6 address that is not loopback, so that getaddrinfo's AI_ADDRCONFIG asks AAAA
        run("ip", "-n", ns, "-6", "addr", "add", "fd00:253::2/128", "dev", "lo")
        fake = in_netns(ns, lambda: FakeUpstream(outside, address=RESOLVER, port=53))
        apply_capture(
            ns,
            workdir,
            dns_redirect=True,
            inbound_ports=[],
            outbound_cidrs=["192.0.2.0/24"],
            proxy_uid=[PROXY_UID],
            proxy_gid=[PROXY_UID],
        )
        yield {"ns": ns, "fake": fake}
    finally:
        if fake is not None:
            fake.close()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        shutil.rmtree(etc, ignore_errors=True)
        if etc.parent.exists() and not any(etc.parent.iterdir()):
            etc.parent.rmdir()
        shutil.rmtree(workdir, ignore_errors=True)


class ServerProcess:
    """The server as the agent runs it: the proxy user, the host's python3, resolv.conf read."""

    def __init__(self, ns: str) -> None:
        user = ["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups"]
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": agent_path(), "LANG": "C.UTF-8"}
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *user, host_python(), "-c", SERVER_SCRIPT, json.dumps(ZONE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise AssertionError(f"the DNS server did not start: {line}{self.proc.stderr.read()}")

    def finish(self) -> Dict[str, Any]:
        out, err = self.proc.communicate("", timeout=20)
        self.log = err
        return json.loads(out.strip().splitlines()[-1])


def getent(ns: str, *args: str) -> List[str]:
    res = subprocess.run(
        ["ip", "netns", "exec", ns, "getent", *args], capture_output=True, text=True, check=False, timeout=30
    )
    return res.stdout.split()


@pytest.mark.netns
def test_applications_resolve_mesh_and_outside_names_through_capture(captured_host):
    ns, fake = captured_host["ns"], captured_host["fake"]
    server = ServerProcess(ns)
    try:
        # glibc's getaddrinfo, as any application: A and AAAA on one socket, to resolv.conf's server
        assert set(getent(ns, "ahostsv4", "api.mesh.internal")) >= {"240.240.0.1"}
        assert "fd00:240::1" in getent(ns, "ahostsv6", "api.mesh.internal")
        # NODATA for AAAA does not stop glibc from using the A record (NXDOMAIN would)
        assert "240.240.0.2" in getent(ns, "ahosts", "db.prod.mesh.internal")
        assert "fd00:240::1" in getent(ns, "ahosts", "api.mesh.internal")
        assert "192.0.2.80" in getent(ns, "ahostsv4", "www.example.com")
        assert getent(ns, "ahostsv4", "nxdomain.example.com") == []
        # dig to the resolv.conf server, over UDP and TCP: captured the same way
        assert dig("+short", f"@{RESOLVER}", "api.mesh.internal", ns=ns).split() == ["240.240.0.1"]
        assert dig("+short", "+tcp", f"@{RESOLVER}", "api.mesh.internal", ns=ns).split() == ["240.240.0.1"]
        out = dig(f"@{RESOLVER}", "+noedns", "big.example.com", ns=ns)
        assert "Truncated, retrying in TCP mode" in out
        assert "ANSWER: 60" in out
    finally:
        counters = server.finish()
    assert counters["zone_answers"] >= 6
    assert counters["forwarded"] >= 3
    assert counters["failed"] == 0
    # the server's own queries reached the real resolver on port 53, not itself
    assert {proto for proto, _q in fake.received} == {"udp", "tcp"}
    assert all(b"mesh\x08internal" not in q for _p, q in fake.received)
    assert "dns upstreams (from /etc/resolv.conf): 10.253.0.53" in server.log


@pytest.fixture
def looping_host():
    """A namespace where every UDP query to the resolver goes to port 15053, whoever sends
    it: the capture of an agent whose user was left out of the exclusions."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces")
    ns = "hm-dns-" + os.urandom(3).hex()
    run("ip", "netns", "add", ns)
    try:
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", ns, "addr", "add", f"{RESOLVER}/32", "dev", "lo")
        rule = f"-A OUTPUT -d {RESOLVER}/32 -p udp --dport 53 -j REDIRECT --to-ports 15053"
        run("ip", "netns", "exec", ns, "iptables-restore", input_text=f"*nat\n{rule}\nCOMMIT\n")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@pytest.mark.netns
def test_a_query_that_loops_back_to_the_server_is_detected(looping_host, caplog):
    ns = looping_host
    fake = in_netns(ns, lambda: FakeUpstream(outside, address=RESOLVER, port=53))

    def start() -> DnsServer:
        server = DnsServer("127.0.0.1", 15053, lambda: ZONE, lambda: [(RESOLVER, 53)], upstream_timeout=3.0)
        server.start()  # its thread, and so every socket it opens, lives in the namespace
        return server

    server = in_netns(ns, start)
    try:
        with caplog.at_level(logging.ERROR, logger="hostmesh_agent.dns_server"):
            out = dig("@127.0.0.1", "-p", "15053", "www.example.com", ns=ns)
        assert "status: SERVFAIL" in out
        assert "forwarding loop" in caplog.text
        assert fake.received == []  # nothing reached the resolver
        assert server.counters.failed == 1  # the looped copy, answered SERVFAIL at once
        assert server.counters.upstream_errors == 0  # no timeout: the loop ended on the first turn
        assert dig("+short", "@127.0.0.1", "-p", "15053", "api.mesh.internal", ns=ns).split() == ["240.240.0.1"]
    finally:
        server.stop()
        fake.close()
