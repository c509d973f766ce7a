"""Mesh names and resilience with the real Envoy: a service of three replicas dialed at its
virtual IP through the capture rules, load-balanced, ejected and recovered, preferring its
own zone; and the agent's DNS server answering mesh names and forwarding the rest.

The replicas are app_server.py processes in the peer namespace (one port each, so the
answer says which replica served it); the client is the captured host namespace's root,
whose connection to the VIP the nat rules send to Envoy's outbound listener.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections import Counter
from typing import Any, Dict

import pytest
from agent_netns import (
    AGENT_PATH,
    HERE,
    PEER_IP,
    REPO,
    Topology,
    agent_config,
    in_netns,
    run,
    try_get,
    validate_config,
    wait_for,
)

sys.path[:0] = [str(AGENT_PATH), str(REPO / "tests" / "unit" / "agent")]
from fake_dns import FakeUpstream, make_query, rcode_of, reply_to  # noqa: E402 (the fake lives with the unit tests)
from test_mesh_names import MESH  # noqa: E402 (every new key, for envoy --mode validate)

pytestmark = pytest.mark.netns

VIP = "240.240.0.10"
REPLICAS = (8081, 8082, 8083)
CLUSTER = "outbound|8080||web"


class Replicas:
    """One app_server.py per port in the peer namespace; each can be stopped and started."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.procs: Dict[int, subprocess.Popen] = {}

    def start(self, port: int) -> None:
        proc = self.topo.spawn(
            self.topo.peer, sys.executable, str(HERE / "app_server.py"), str(port), stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
        self.procs[port] = proc

    def stop(self, port: int) -> None:
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait()


@pytest.fixture
def replicas(topo: Topology) -> Any:
    r = Replicas(topo)
    for port in REPLICAS:
        r.start(port)
    # The VIP is routed like any remote address; capture takes the connection before it leaves.
    run("ip", "-n", topo.host, "route", "add", "240.240.0.0/16", "dev", topo._veth[0])
    return r


def web_service(**extra: Any) -> Dict[str, Any]:
    return {
        "name": "web",
        "namespace": "shop",
        "port": 8080,
        "protocol": "http",
        "vips": [VIP],
        "endpoints": [f"{PEER_IP}:{p}" for p in REPLICAS],
        "outlier_detection": {"consecutive_errors": 2, "interval_s": 0.5, "base_ejection_s": 2},
        **extra,
    }


def served_by(topo: Topology, count: int) -> Counter:
    """``count`` GETs to the VIP, one connection each; the replica's port per answer, 0 for a failure."""
    seen: Counter = Counter()
    for _i in range(count):
        code, body = try_get(topo.host, VIP, 8080, timeout=3)
        seen[int(body.split()[0]) if code == 200 else 0] += 1
    return seen


def test_requests_spread_a_stopped_replica_is_ejected_without_failures_and_comes_back(
    envoy_binary, topo, workdir, start_agent, replicas
):
    agent = start_agent(agent_config(envoy_binary, workdir, outbound={"services": [web_service()]}))
    agent.wait_ready()
    spread = served_by(topo, 60)
    assert set(spread) == set(REPLICAS) and min(spread.values()) >= 15, spread  # round robin

    replicas.stop(8082)
    during = served_by(topo, 60)
    assert during[0] == 0, f"failed requests with a replica down: {during}"  # retried elsewhere
    assert set(during) == {8081, 8083}, during
    assert agent.stat(f"cluster.{CLUSTER}.outlier_detection.ejections_enforced_total") >= 1
    assert agent.stat(f"cluster.{CLUSTER}.upstream_rq_retry") >= 1

    replicas.start(8082)
    back: Counter = Counter()

    def rejoined() -> bool:
        back.update(served_by(topo, 6))
        return back[8082] > 0

    wait_for(rejoined, 20, "the restarted replica to get requests again", step=0.2)
    assert back[0] == 0, back


def test_own_zone_preferred_and_failover_to_the_other_zone(envoy_binary, topo, workdir, start_agent, replicas):
    endpoints = [
        {"address": PEER_IP, "port": 8081, "zone": "zone-a"},
        {"address": PEER_IP, "port": 8082, "zone": "zone-b"},
        {"address": PEER_IP, "port": 8083, "zone": "zone-b"},
    ]
    config = agent_config(envoy_binary, workdir, outbound={"services": [web_service(endpoints=endpoints)]})
    config["node"]["zone"] = "zone-a"
    agent = start_agent(config)
    agent.wait_ready()
    assert served_by(topo, 30) == Counter({8081: 30})  # only its own zone

    replicas.stop(8081)
    failover = served_by(topo, 40)
    assert failover[0] == 0 and set(failover) == {8082, 8083}, failover

    replicas.start(8081)
    wait_for(lambda: served_by(topo, 10) == Counter({8081: 10}), 20, "its own zone to take all requests again", 0.2)


def test_tcp_service_tries_another_replica_when_one_is_down(envoy_binary, topo, workdir, start_agent, replicas):
    service = web_service(protocol="tcp", connect_attempts=3)
    agent = start_agent(agent_config(envoy_binary, workdir, outbound={"services": [service]}))
    agent.wait_ready()
    replicas.stop(8083)
    seen = served_by(topo, 30)
    assert seen[0] == 0 and set(seen) == {8081, 8082}, seen


def test_active_health_checks_alone_take_a_stopped_replica_out_and_back(
    envoy_binary, topo, workdir, start_agent, replicas
):
    # tcp, one connect attempt, no outlier detection: only the health checks can avoid the dead replica.
    service = web_service(
        protocol="tcp",
        outlier_detection={"enabled": False},
        health_check={"type": "http", "path": "/healthz", "interval_s": 0.3, "timeout_s": 0.5},
    )
    agent = start_agent(agent_config(envoy_binary, workdir, outbound={"services": [service]}))
    agent.wait_ready()
    healthy = f"cluster.{CLUSTER}.membership_healthy"
    wait_for(lambda: agent.stat(healthy) == 3, 10, "three healthy replicas")
    replicas.stop(8082)
    wait_for(lambda: agent.stat(healthy) == 2, 10, "the stopped replica marked unhealthy")
    seen = served_by(topo, 30)
    assert seen[0] == 0 and set(seen) == {8081, 8083}, seen
    replicas.start(8082)
    wait_for(lambda: agent.stat(healthy) == 3, 10, "the replica healthy again")
    # The healthy gauge moves on Envoy's main thread; the workers' load balancers follow shortly after.
    back: Counter = Counter()

    def rejoined() -> bool:
        back.update(served_by(topo, 6))
        return back[8082] > 0

    wait_for(rejoined, 15, "the recovered replica served again")
    assert back[0] == 0, back
    after = served_by(topo, 30)
    assert after[0] == 0 and after[8082] >= 5, after


# --- DNS ----------------------------------------------------------------------------


def dig(ns: str, *args: str) -> str:
    # +nocookie: the fake upstream's fixed cookie would add a mismatch warning to the output.
    cmd = ["ip", "netns", "exec", ns, "dig", "+tries=1", "+time=3", "+nocookie", "-p", "15053", "@127.0.0.1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30).stdout


def outside(query: bytes, _proto: str) -> bytes:
    return reply_to(query, ipv4=("192.0.2.80",))


def test_dns_answers_mesh_names_forwards_the_rest_and_reloads_in_place(envoy_binary, topo, workdir, start_agent):
    # The host's resolver: a fake on 127.0.0.1 (the capture rules never take loopback's 127.0.0.1).
    fake = in_netns(topo.host, lambda: FakeUpstream(outside, address="127.0.0.1", port=5353))
    try:
        api = {**web_service(), "name": "api", "vips": ["240.240.0.11", "2001:2::b"], "endpoints": [f"{PEER_IP}:9"]}
        config = agent_config(
            envoy_binary,
            workdir,
            dns={"enabled": True, "upstreams": ["127.0.0.1:5353"], "ttl_s": 7},
            outbound={"services": [web_service(), api]},
        )
        agent = start_agent(config)
        agent.wait_ready()
        for transport in ("+notcp", "+tcp"):
            assert dig(topo.host, transport, "+short", "web.mesh.internal").split() == [VIP]
            assert dig(topo.host, transport, "+short", "web.shop.mesh.internal").split() == [VIP]
            assert dig(topo.host, transport, "+short", "api.shop.mesh.internal", "AAAA").split() == ["2001:2::b"]
            assert dig(topo.host, transport, "+short", "www.example.com").split() == ["192.0.2.80"]
        assert "status: NXDOMAIN" in dig(topo.host, "nope.mesh.internal")
        assert "web.mesh.internal.\t7\tIN\tA" in dig(topo.host, "web.mesh.internal")
        assert {proto for proto, _q in fake.received} == {"udp", "tcp"}
        assert all(b"\x07example" in q for _p, q in fake.received)  # mesh names were never forwarded
        # This namespace routes nothing but its link: the names resolve, connecting to them would fail.
        assert "no route to the virtual IP 240.240.0.11 of api.mesh.internal (Network is unreachable)" in agent.log()

        # A malformed packet: one clear log line, and the server goes on answering.
        def garbage() -> bytes:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(3)
                s.sendto(b"\x12\x34\x01", ("127.0.0.1", 15053))
                s.sendto(make_query("web.mesh.internal"), ("127.0.0.1", 15053))
                return s.recv(4096)

        assert rcode_of(in_netns(topo.host, garbage)) == 0
        wait_for(lambda: "malformed" in agent.log(), 5, "the malformed packet's log line")

        # A reload: the new service resolves, the removed one does not, Envoy is not restarted.
        epoch = agent.stat("server.hot_restart_epoch")
        db = {**api, "name": "db", "vips": ["240.240.0.12"]}
        run("ip", "-n", topo.host, "route", "add", "240.240.0.0/16", "dev", topo._veth[0])
        agent.write_config({**config, "outbound": {"services": [web_service(), db]}})
        agent.signal(signal.SIGHUP)
        wait_for(lambda: dig(topo.host, "+short", "db.mesh.internal").split() == ["240.240.0.12"], 10, "db's name")
        assert "dns: the virtual IPs are routed now" in agent.log()
        assert "status: NXDOMAIN" in dig(topo.host, "api.mesh.internal")
        assert agent.stat("server.hot_restart_epoch") == epoch
        assert agent.metric("hostmesh_agent_dns_zone_answers_total") >= 10
    finally:
        fake.close()


def test_dns_port_taken_fails_the_start_naming_the_keys(envoy_binary, topo, workdir, start_agent):
    blocker = in_netns(topo.host, lambda: _bound_udp("127.0.0.1", 15053))
    try:
        agent = start_agent(agent_config(envoy_binary, workdir, dns={"enabled": True, "upstreams": ["10.0.0.2"]}))
        assert agent.wait_exit(15) == 2
        assert "cannot listen for DNS on 127.0.0.1 port 15053" in agent.log()
        assert "'dns.address', 'ports.dns'" in agent.log()
    finally:
        blocker.close()


def _bound_udp(address: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, port))
    return s


def test_validate_accepts_every_mesh_key(envoy_binary, workdir):
    config: Dict[str, Any] = {**json.loads(json.dumps(MESH)), "envoy": {"binary": envoy_binary}}
    config["run_dir"] = str(workdir / "run")
    res = validate_config(config, workdir / "agent.json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "listeners and clusters: ok (envoy --mode validate)" in res.stdout
