"""hostmesh-agent DNS benchmark: answer times and the server's memory cost.

Everything runs on 127.0.0.1; no root needed. Three processes, so that no two of them
share an interpreter lock: this client, the DNS server (the host's python3 with the agent
package, as on a VM, configured as the agent configures it: a parsed config's outbound
services with VIPs, through ``MeshDns``), and a fake outside resolver (tests/unit/agent/fake_dns.py). Prints:

- p50/p99 answer time of a mesh name (from the zone), over UDP and TCP;
- p50/p99 of a forwarded name, against asking the same fake resolver directly: the
  difference is what the agent adds to every outside lookup;
- RSS of a python3 process that imports the agent's modules, then also the DNS modules,
  then runs the server (after the load above): the server's own cost. The modules load
  from compiled bytecode; with ``--cold`` they are compiled at import, as on a host where
  the proxy user cannot write ``__pycache__`` (compiling costs RSS that stays).

Usage: .venv/bin/python benchmarks/dns_bench.py [--queries 2000] [--zone-size 1000] [--cold]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parents[1]
AGENT_PATH = REPO / "roles" / "agent" / "files"
FAKES = REPO / "tests" / "unit" / "agent"
sys.path.insert(0, str(FAKES))

from fake_dns import make_query  # noqa: E402 (the fake lives with the tests)

SERVER_SCRIPT = r"""
import json, socket, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
out = {"python": rss()}
import hostmesh_agent.cli, hostmesh_agent.agent, hostmesh_agent.status_server  # the agent as it runs
out["agent_modules"] = rss()
import hostmesh_agent.dns_server, hostmesh_agent.dns_upstreams, hostmesh_agent.mesh_dns
out["dns_modules"] = rss()
from hostmesh_agent.config import parse_config
from hostmesh_agent.mesh_dns import MeshDns
# The zone as the agent builds it from its config: outbound services with VIPs, each
# answering <name>.mesh.internal and <name>.<namespace>.mesh.internal.
services = [{"name": f"svc{i}", "namespace": f"ns{i % 20}", "port": 8080, "endpoints": ["10.0.0.1:8080"],
             "vips": [f"240.240.{i // 250}.{i % 250 + 1}", f"2001:2::{i:x}"]} for i in range(int(sys.argv[1]))]
services.append({"name": "api", "port": 8080, "endpoints": ["10.0.0.1:8080"], "vips": ["240.240.255.1"]})
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:  # a port free for both
    u.bind(("127.0.0.1", 0)); port = u.getsockname()[1]; t.bind(("127.0.0.1", port))
cfg = parse_config({"ports": {"dns": port}, "outbound": {"services": services},
                    "dns": {"enabled": True, "upstreams": [f"127.0.0.1:{sys.argv[2]}"]}})
dns = MeshDns()
dns.configure(cfg, strict=True)
out["server_started"] = rss()
print(json.dumps({"port": port}), flush=True)
for line in sys.stdin:
    out["after_load"] = rss()
    out["counters"] = dns.server.counters.__dict__
    print(json.dumps(out), flush=True)
dns.stop()
"""

UPSTREAM_SCRIPT = r"""
import sys
from fake_dns import FakeUpstream, reply_to
fake = FakeUpstream(lambda q, p: reply_to(q, ipv4=("192.0.2.1",)))
print(fake.port, flush=True)
sys.stdin.read()
fake.close()
"""


def host_python() -> str:
    return shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable


def percentiles(samples: List[float]) -> Tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def time_udp(port: int, name: str, n: int) -> List[float]:
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        for i in range(n):
            query = make_query(name, qid=i & 0xFFFF)
            start = time.perf_counter()
            sock.send(query)
            sock.recv(65535)
            out.append(time.perf_counter() - start)
    return out


def time_tcp(port: int, name: str, n: int) -> List[float]:
    """One connection per query, as a stub resolver retrying after TC does."""
    out = []
    for i in range(n):
        query = make_query(name, qid=i & 0xFFFF)
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(struct.pack("!H", len(query)) + query)
            (length,) = struct.unpack("!H", sock.recv(2))
            while length > 0:
                length -= len(sock.recv(length))
        out.append(time.perf_counter() - start)
    return out


def row(label: str, samples: List[float]) -> str:
    p50, p99 = percentiles(samples)
    return f"{label:<44} p50 {p50 * 1e6:8.0f} us   p99 {p99 * 1e6:8.0f} us   (n={len(samples)})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--zone-size", type=int, default=1000, help="services in the mesh zone")
    p.add_argument("--cold", action="store_true", help="no bytecode: compile the agent's modules at import")
    args = p.parse_args()
    python = host_python()
    scratch = tempfile.mkdtemp(prefix="hm-dns-bench-")
    agent_env = {"PYTHONPATH": str(AGENT_PATH), "PATH": "/usr/bin:/bin"}
    if args.cold:  # a copy without __pycache__, and nothing written: compiled at every start
        shutil.copytree(
            AGENT_PATH / "hostmesh_agent",
            Path(scratch) / "hostmesh_agent",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        agent_env.update(PYTHONPATH=scratch, PYTHONDONTWRITEBYTECODE="1")
    else:
        subprocess.run([python, "-m", "compileall", "-q", str(AGENT_PATH / "hostmesh_agent")], check=True)
    upstream = subprocess.Popen(
        [python, "-c", UPSTREAM_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(FAKES), "PATH": "/usr/bin:/bin"},
    )
    upstream_port = int(upstream.stdout.readline())
    server = subprocess.Popen(
        [python, "-c", SERVER_SCRIPT, str(args.zone_size), str(upstream_port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=agent_env,
    )
    try:
        port = json.loads(server.stdout.readline())["port"]
        n = args.queries
        for warm in (port, upstream_port):
            time_udp(warm, "warm.example.com", 100)
        results = [
            row("mesh name, UDP (agent)", time_udp(port, "svc7.ns7.mesh.internal", n)),
            row("mesh name, TCP, new connection each (agent)", time_tcp(port, "api.mesh.internal", n // 4)),
            row("outside name, UDP, resolver directly", time_udp(upstream_port, "www.example.com", n)),
            row("outside name, UDP, through the agent", time_udp(port, "www.example.com", n)),
            row("outside name, TCP, resolver directly", time_tcp(upstream_port, "www.example.com", n // 4)),
            row("outside name, TCP, through the agent", time_tcp(port, "www.example.com", n // 4)),
        ]
        server.stdin.write("report\n")
        server.stdin.flush()
        report: Dict[str, object] = json.loads(server.stdout.readline())
    finally:
        server.stdin.close()
        server.wait(10)
        upstream.stdin.close()
        upstream.wait(10)
        shutil.rmtree(scratch, ignore_errors=True)
    bytecode = "compiled at import (--cold)" if args.cold else "from bytecode"
    print(f"python: {python}; zone: {args.zone_size} services; agent modules {bytecode}")
    print("\n".join(results))
    rss = {k: v for k, v in report.items() if k != "counters"}
    print(
        "RSS KiB: bare python3 {python}; + agent modules {agent_modules}; + DNS modules {dns_modules}; "
        "+ server started {server_started}; after the load above {after_load}".format(**rss)
    )
    print(
        f"DNS server's own cost: {int(rss['after_load']) - int(rss['agent_modules'])} KiB "  # type: ignore[call-overload]
        f"(imports {int(rss['dns_modules']) - int(rss['agent_modules'])} KiB)"  # type: ignore[call-overload]
    )
    print(f"counters: {report['counters']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
