"""hostmesh-agent with TPROXY capture: the traffic_capture module's ``mode: tproxy`` rules.

The host namespace gets exactly what the capture role applies in TPROXY mode
(mangle TPROXY to 15006, ``ip rule fwmark 1337 lookup 133``, ``local default dev
lo table 133``; outbound still REDIRECT to 15001), and the agent runs with
``inbound.interception: tproxy`` and CAP_NET_ADMIN, as the agent role's unit
gives it. Namespaces are named ``hm-tp-*``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from agent_netns import (
    HOST_IP,
    HOST_IP6,
    PEER_IP,
    PEER_IP6,
    AgentProcess,
    Topology,
    agent_config,
    apply_capture,
    http_get,
    run,
    try_get,
    wait_for,
)

pytestmark = [pytest.mark.netns, pytest.mark.envoy]


@pytest.fixture
def topo() -> Any:
    """Host and peer namespaces with no capture yet: each test applies the module's rules."""
    t = Topology(prefix="hm-tp")
    try:
        t.up(capture=False)
        yield t
    finally:
        t.down()


def _stat(agent: AgentProcess, name: str) -> int:
    """A counter through the agent's Envoy admin socket; 0 before Envoy has it."""
    return max(agent.stat(name), 0)


def _tproxy_config(envoy_binary: str, workdir: Path) -> dict:
    return agent_config(
        envoy_binary,
        workdir,
        inbound={
            "interception": "tproxy",
            "services": [
                {"name": "web", "port": 8080},
                {"name": "api", "port": 8443, "target_port": 9443, "protocol": "http"},
            ],
        },
    )


def test_tproxy_inbound_reaches_the_app_through_envoy_with_the_client_address(envoy_binary, topo, workdir, start_agent):
    result = apply_capture(topo.host, workdir, mode="tproxy", ip_families=["ipv4"])
    assert "TPROXY --on-port 15006" in json.dumps(result["rules"]), result["rules"]
    assert "lookup 133" in run("ip", "-n", topo.host, "rule", "show")
    topo.start_app(8080, 9443, 9000)
    agent = start_agent(_tproxy_config(envoy_binary, workdir), net_admin=True)
    agent.wait_ready()

    # Envoy's node metadata says how it is fed.
    bootstrap = json.loads((workdir / "run" / "envoy-rev0.json").read_text())
    assert bootstrap["node"]["metadata"]["INTERCEPTION_MODE"] == "TPROXY"

    inbound = "listener.inbound.downstream_cx_total"
    before = _stat(agent, inbound)
    # A peer calls the host's app port: TPROXY hands the connection to Envoy's
    # transparent 15006, which connects to the app from the peer's own address,
    # and the app's reply finds its way back to Envoy (fwmark 1337 -> lo).
    assert http_get(topo.peer, HOST_IP, 8080)[1].split() == ["8080", PEER_IP]
    # An HTTP service whose app listens on another port (target_port).
    assert http_get(topo.peer, HOST_IP, 8443)[1].split() == ["9443", PEER_IP]
    # A captured port no service declares: inbound passthrough, also as the peer.
    assert http_get(topo.peer, HOST_IP, 9000)[1].split() == ["9000", PEER_IP]
    assert _stat(agent, inbound) == before + 3
    assert _stat(agent, "cluster.inbound|8080||web.upstream_cx_total") == 1
    assert _stat(agent, "cluster.inbound|8443||api.upstream_cx_total") == 1
    assert _stat(agent, "cluster.InboundPassthroughCluster.upstream_cx_total") == 1

    # The host's own loopback calls go straight to the app, not through Envoy.
    assert http_get(topo.host, "127.0.0.1", 8080)[1].split() == ["8080", "127.0.0.1"]
    assert _stat(agent, inbound) == before + 3

    # Outbound is still REDIRECT to 15001 (the module's tproxy mode keeps it in nat):
    # a host process (not the proxy user) calling the peer goes through Envoy's
    # outbound listener and arrives from the host's address.
    topo.start_app(9100, ns=topo.peer)
    outbound = "listener.outbound.downstream_cx_total"
    out_before = _stat(agent, outbound)
    assert http_get(topo.host, PEER_IP, 9100)[1].split() == ["9100", HOST_IP]
    assert _stat(agent, outbound) == out_before + 1

    # Many connections in a row: none lost on the way back through the mark.
    for i in range(20):
        assert http_get(topo.peer, HOST_IP, 8080)[1].split() == ["8080", PEER_IP], i
    assert _stat(agent, inbound) == before + 23


def _serving_through_tproxy(envoy_binary, topo, workdir, start_agent):
    """IPv4 TPROXY capture, the app on 8080 and a ready agent; one peer request proves the path."""
    apply_capture(topo.host, workdir, mode="tproxy", ip_families=["ipv4"])
    topo.start_app(8080, 9443)
    agent = start_agent(_tproxy_config(envoy_binary, workdir), net_admin=True)
    agent.wait_ready()
    assert http_get(topo.peer, HOST_IP, 8080)[1].split() == ["8080", PEER_IP]
    return agent


def test_tproxy_survives_a_hot_restart(envoy_binary, topo, workdir, start_agent):
    """The transparent listening socket is handed to the next epoch with its option."""
    agent = _serving_through_tproxy(envoy_binary, topo, workdir, start_agent)
    agent.hot_restart(1, timeout=15)
    assert agent.ready()
    for i in range(5):
        assert http_get(topo.peer, HOST_IP, 8080)[1].split() == ["8080", PEER_IP], i
    assert _stat(agent, "listener.inbound.downstream_cx_total") >= 5


def test_tproxy_capture_state_absent_leaves_the_app_direct(envoy_binary, topo, workdir, start_agent):
    """Lifting TPROXY capture with the agent still running: peers reach the app directly."""
    agent = _serving_through_tproxy(envoy_binary, topo, workdir, start_agent)
    before = _stat(agent, "listener.inbound.downstream_cx_total")
    apply_capture(topo.host, workdir, mode="tproxy", state="absent")
    assert "lookup 133" not in run("ip", "-n", topo.host, "rule", "show")
    assert http_get(topo.peer, HOST_IP, 8080)[1].split() == ["8080", PEER_IP]
    assert _stat(agent, "listener.inbound.downstream_cx_total") == before


def test_switching_interception_on_reload_hot_restarts_onto_tproxy(envoy_binary, topo, workdir, start_agent):
    """SIGHUP with ``inbound.interception`` changed: a new epoch, whose listener is transparent."""
    apply_capture(topo.host, workdir, mode="tproxy", ip_families=["ipv4"])
    topo.start_app(8080, 9443)
    cfg = _tproxy_config(envoy_binary, workdir)
    redirect = {**cfg, "inbound": {**cfg["inbound"], "interception": "redirect"}}
    agent = start_agent(redirect, net_admin=True)
    agent.wait_ready()
    # A non-transparent listener is not handed TPROXY-diverted connections.
    assert try_get(topo.peer, HOST_IP, 8080, timeout=1.0)[0] == 0
    agent.write_config(cfg)
    agent.signal(1)  # SIGHUP
    wait_for(lambda: agent.metric("hostmesh_agent_epoch") == 1 and agent.ready(), 15, "epoch 1 ready")
    wait_for(lambda: len(agent.envoy_pids()) == 1, 15, "old epoch gone")
    assert http_get(topo.peer, HOST_IP, 8080)[1].split() == ["8080", PEER_IP]


def test_tproxy_dual_stack_keeps_both_families_client_addresses(envoy_binary, topo, workdir, start_agent):
    """One transparent "::" listener takes TPROXY-diverted IPv6 and IPv4; each reply finds its way back."""
    apply_capture(topo.host, workdir, mode="tproxy", ip_families=["ipv4", "ipv6"])
    topo.start_app(8080, 9443, 9000, dual_stack=True)
    cfg = _tproxy_config(envoy_binary, workdir)
    cfg["listen"] = {"inbound_address": "::", "outbound_address": "::", "status_address": "::"}
    agent = start_agent(cfg, net_admin=True)
    agent.wait_ready()
    before = _stat(agent, "listener.inbound.downstream_cx_total")
    # The app (on "::") sees IPv4 peers as v4-mapped addresses.
    for host, peer in ((HOST_IP6, PEER_IP6), (HOST_IP, "::ffff:" + PEER_IP)):
        assert http_get(topo.peer, host, 8080)[1].split() == ["8080", peer], host
        assert http_get(topo.peer, host, 8443)[1].split() == ["9443", peer], host
        assert http_get(topo.peer, host, 9000)[1].split() == ["9000", peer], host  # passthrough
    assert _stat(agent, "listener.inbound.downstream_cx_total") == before + 6
