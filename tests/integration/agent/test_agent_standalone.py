"""hostmesh-agent in standalone mode with the real Envoy, behind the seed's capture rules."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import List

import pytest
from agent_netns import (
    HOST_IP,
    HOST_IP6,
    PEER_IP,
    REPO,
    LoadClient,
    Topology,
    agent_config,
    envoy_pids,
    http_get,
    run,
    try_get,
    wait_for,
)

pytestmark = [pytest.mark.netns, pytest.mark.envoy]


def _notify_socket(workdir: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = workdir / "notify.sock"
    sock.bind(str(path))
    os.chmod(path, 0o777)
    sock.settimeout(0.2)
    return sock


def _drain_messages(sock: socket.socket) -> List[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except (socket.timeout, BlockingIOError):
            return out


def test_ready_serves_captured_inbound_and_reports(envoy_binary, topo, workdir, start_agent):
    topo.start_app(8080)
    notify = _notify_socket(workdir)
    env = {"NOTIFY_SOCKET": str(workdir / "notify.sock"), "WATCHDOG_USEC": "400000"}
    agent = start_agent(agent_config(envoy_binary, workdir), env)
    agent.wait_ready()

    # A peer's request to the host's app port is captured and reaches the app
    # through Envoy, which connects from the inbound passthrough address.
    code, body = http_get(topo.peer, HOST_IP, 8080)
    assert (code, body.split()) == (200, ["8080", "127.0.0.6"])

    # Health as a load balancer sees it: 15021 is Envoy's listener, backed by the agent.
    assert try_get(topo.peer, HOST_IP, 15021, "/healthz/ready")[0] == 200
    code, metrics = agent.status("/stats/prometheus")
    assert code == 200
    assert "hostmesh_agent_ready 1" in metrics
    assert "hostmesh_agent_epoch 0" in metrics
    assert "envoy_listener_manager_total_listeners_active" in metrics
    # Envoy's own Prometheus port answers too.
    assert "envoy_server_live" in try_get(topo.peer, HOST_IP, 15090, "/stats/prometheus")[1]

    # Envoy runs as a child with the seed's flags and the admin API on loopback only.
    [pid] = agent.envoy_pids()
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    for flag in (
        "--restart-epoch", "--drain-time-s", "--parent-shutdown-time-s", "--service-cluster",
        "--service-node", "--local-address-ip-version", "--log-format", "-l",
        "--component-log-level", "--concurrency", "--base-id",
    ):  # fmt: skip
        assert flag in argv
    assert argv[argv.index("--service-node") + 1] == (f"sidecar~{HOST_IP}~web-1.demo~demo.svc.cluster.local")
    assert argv[argv.index("-c") + 1].endswith("envoy-rev0.json")
    assert Path(f"/proc/{pid}/status").read_text().count("\t1337\t") >= 2  # Uid and Gid
    assert try_get(topo.peer, HOST_IP, 15000, "/ready")[0] == 0  # admin not reachable

    # systemd hears READY=1, then STATUS= and WATCHDOG=1 pings while healthy.
    time.sleep(1.0)
    messages = "\n".join(_drain_messages(notify))
    assert "READY=1" in messages
    assert "STATUS=ready: envoy epoch 0" in messages
    assert messages.count("WATCHDOG=1") >= 2
    notify.close()


def test_hot_restarts_and_reloads_fail_no_request(envoy_binary, topo, workdir, start_agent):
    """Three hot restarts and three in-place reloads under load: zero failed requests."""
    topo.start_app(8080, 8081, 8082, 8083)
    config = agent_config(envoy_binary, workdir)
    agent = start_agent(config)
    agent.wait_ready()
    run_dir = Path(config["run_dir"])
    load = LoadClient(topo)
    try:
        time.sleep(0.5)
        for n in (1, 2, 3):
            if n == 3:  # a bootstrap-level change on SIGHUP also means a new epoch
                config = copy.deepcopy(config)
                config["envoy"]["component_log_level"] = "misc:error,upstream:warning"
                agent.write_config(config)
                agent.signal(signal.SIGHUP)
            else:
                agent.signal(signal.SIGUSR1)
            agent.wait_hand_over(n)
            wait_for(
                lambda n=n: [p.name for p in run_dir.glob("envoy-rev*.json")] == [f"envoy-rev{n}.json"],
                2,
                "old epoch's bootstrap to be removed",
            )
            time.sleep(0.3)
        for port in (8081, 8082, 8083):  # each reload opens a new inbound port, no restart
            before = agent.metric("hostmesh_agent_config_reloads_total")
            config = copy.deepcopy(config)
            config["inbound"]["services"].append({"name": f"svc-{port}", "port": port})
            agent.write_config(config)
            agent.signal(signal.SIGHUP)
            wait_for(
                lambda port=port: try_get(topo.peer, HOST_IP, port)[1].split() == [str(port), "127.0.0.6"],
                5,
                f"port {port} through Envoy",
            )
            wait_for(
                lambda before=before: agent.metric("hostmesh_agent_config_reloads_total") == before + 1,
                2,
                "the reload to be counted",
            )
            time.sleep(0.3)
    finally:
        result = load.finish()
        print("load:", result["ok"], "ok,", result["failed"], "failed")
    assert result["failed"] == 0, result["errors"]
    assert result["ok"] > 200
    assert agent.metric("hostmesh_agent_epoch") == 3
    assert agent.metric("hostmesh_agent_hot_restarts_total") == 3
    assert agent.metric("hostmesh_agent_restarts_total") == 0
    assert agent.metric("hostmesh_agent_errors_total") == 0


def test_sigkill_of_envoy_serves_again_within_2s(envoy_binary, topo, workdir, start_agent):
    topo.start_app(8080)
    agent = start_agent(agent_config(envoy_binary, workdir))
    agent.wait_ready()
    [pid] = agent.envoy_pids()
    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    wait_for(lambda: try_get(topo.peer, HOST_IP, 8080, timeout=0.5)[0] == 200, 5, "service back")
    elapsed = time.monotonic() - start
    assert elapsed < 2.0, f"service back after {elapsed:.2f}s"
    assert agent.metric("hostmesh_agent_restarts_total") == 1
    assert agent.ready()
    assert pid not in agent.envoy_pids()


def test_sigterm_answers_in_flight_requests_and_leaves_nothing(envoy_binary, topo, workdir, start_agent):
    topo.start_app(8080)
    # As in production (45 s), the drain period is longer than the requests.
    config = agent_config(
        envoy_binary,
        workdir,
        envoy={"drain_time_s": 5, "parent_shutdown_time_s": 6},
        supervise={"drain_timeout_s": 10},
    )
    agent = start_agent(config)
    agent.wait_ready()
    results: List[object] = []

    def slow_request() -> None:
        results.append(try_get(topo.peer, HOST_IP, 8080, "/?delay=2", timeout=15))

    def inbound_active() -> int:
        return agent.stat("listener.inbound.downstream_cx_active")

    threads = [threading.Thread(target=slow_request) for _i in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: inbound_active() == 8, 2.5, "all eight requests in flight inside Envoy")
    agent.signal(signal.SIGTERM)
    wait_for(lambda: not agent.ready(), 2, "health to fail once stopping")
    for t in threads:
        t.join()
    assert [r[0] for r in results] == [200] * 8, results
    assert agent.wait_exit(timeout=15) == 0
    assert envoy_pids(config["envoy"]["base_id"]) == []
    assert not Path(f"/dev/shm/envoy_shared_memory_{config['envoy']['base_id'] * 10}").exists()
    assert list(Path(config["run_dir"]).glob("envoy-rev*.json")) == []
    assert "drained in" in agent.log() and "stopped" in agent.log()


def test_crash_loop_exits_nonzero_after_bound(topo: Topology, workdir, start_agent, envoy_binary):
    fake = workdir / "envoy-crashing"
    fake.write_text("#!/bin/sh\necho 'pretend envoy: cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    config = agent_config(
        envoy_binary,
        workdir,
        supervise={"backoff_initial_s": 0.1, "max_consecutive_crashes": 3},
    )
    config["envoy"]["binary"] = str(fake)
    agent = start_agent(config)
    # While Envoy keeps crashing (delays 0.1 + 0.2 + 0.4 s) the agent itself stays up, not ready.
    seen = set()
    while agent.proc.poll() is None:
        seen.add(agent.status("/healthz/ready")[0])
        time.sleep(0.02)
    assert 503 in seen and 200 not in seen, seen
    assert agent.wait_exit(timeout=10) == 1
    assert "giving up" in agent.log()


def test_invalid_config_on_sighup_is_rejected_and_envoy_keeps_serving(envoy_binary, topo, workdir, start_agent):
    topo.start_app(8080)
    config = agent_config(envoy_binary, workdir)
    agent = start_agent(config)
    agent.wait_ready()
    [pid] = agent.envoy_pids()
    broken = copy.deepcopy(config)
    broken["inbound"]["services"].append({"name": "web", "port": 8081})  # duplicate name
    agent.write_config(broken)
    agent.signal(signal.SIGHUP)
    wait_for(lambda: agent.metric("hostmesh_agent_errors_total") == 1, 3, "the reload to be rejected")
    assert "config key 'inbound.services[1].name'" in agent.log()
    assert agent.envoy_pids() == [pid] and agent.ready()
    assert http_get(topo.peer, HOST_IP, 8080)[0] == 200
    assert agent.metric("hostmesh_agent_config_reloads_total") == 0


def test_shipped_standalone_example_works_unchanged(envoy_binary, topo, workdir, start_agent):
    """docs/examples/agent-standalone.json as shipped: Envoy from PATH, default ports and base id."""
    # A default route lets node.ip "auto" find the host's address; it leads only to the peer.
    run("ip", "-n", topo.host, "route", "add", "default", "via", PEER_IP)
    topo.start_app(8080)
    example = json.loads((REPO / "docs" / "examples" / "agent-standalone.json").read_text())
    agent = start_agent(
        example,
        env={"PATH": f"{Path(envoy_binary).parent}:/usr/bin:/bin"},
        args=("--run-dir", str(workdir / "run")),
        private_shm=True,
    )
    agent.wait_ready()
    code, body = http_get(topo.peer, HOST_IP, 8080)
    assert (code, body.split()) == (200, ["8080", "127.0.0.6"])
    assert try_get(topo.peer, HOST_IP, 15021, "/healthz/ready")[0] == 200
    [pid] = agent.envoy_pids()
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert argv[argv.index("--service-node") + 1] == f"sidecar~{HOST_IP}~web-1.default~default.svc.cluster.local"
    assert argv[argv.index("--service-cluster") + 1] == "web.default"
    assert argv[argv.index("--base-id") + 1] == "1337"
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit(timeout=15) == 0
    assert agent.envoy_pids() == []


def test_keepalive_http_clients_lose_nothing_across_hot_restarts(envoy_binary, topo, workdir, start_agent):
    """With ``protocol: http`` the draining epoch closes keep-alive connections between requests."""
    topo.start_app(8080)
    config = agent_config(
        envoy_binary, workdir, inbound={"services": [{"name": "web", "port": 8080, "protocol": "http"}]}
    )
    agent = start_agent(config)
    agent.wait_ready()
    load = LoadClient(topo, keepalive=True)
    try:
        time.sleep(0.5)
        for n in (1, 2):
            agent.hot_restart(n)
            time.sleep(0.3)
    finally:
        result = load.finish()
    assert result["failed"] == 0, result["errors"]
    assert result["ok"] > 100
    # Connections were reused (far fewer than requests) and renewed at each hand-over.
    assert 4 * 2 <= result["connections"] < result["ok"] / 5, result


def test_sigkill_of_the_agent_takes_envoy_with_it(envoy_binary, topo, workdir, start_agent):
    config = agent_config(envoy_binary, workdir)
    agent = start_agent(config)
    agent.wait_ready()
    assert len(agent.envoy_pids()) == 1
    agent.signal(signal.SIGKILL)
    agent.wait_exit(timeout=5)
    wait_for(lambda: agent.envoy_pids() == [], 3, "Envoy to die with its agent")


def test_dual_stack_listeners_serve_ipv6_and_ipv4(envoy_binary, topo, workdir, start_agent):
    topo.start_app(8080)
    config = agent_config(
        envoy_binary,
        workdir,
        listen={"inbound_address": "::", "outbound_address": "::", "status_address": "::"},
    )
    agent = start_agent(config)
    agent.wait_ready()
    for address in (HOST_IP6, HOST_IP):  # the same captured port, both families, one listener
        code, body = http_get(topo.peer, address, 8080)
        assert (code, body.split()) == (200, ["8080", "127.0.0.6"]), address
    assert try_get(topo.peer, HOST_IP6, 15021, "/healthz/ready")[0] == 200
