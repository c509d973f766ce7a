"""What the agent benchmarks in network namespaces share: a run's setup, /proc readings, percentiles, PKI.

Imported by agent_bench.py, datapath_bench.py and policy_bench.py, which run as
scripts (``.venv/bin/python benchmarks/<name>.py``, this directory first on the path).
Importing it puts the agent test harness (``tests/integration/agent``, where
``agent_netns`` lives) on the path too, so import it before the harness.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration" / "agent"))

from agent_netns import PROXY_UID, WEB_ID, AgentProcess, Topology, agent_config, find_envoy, issue_cert, make_ca  # noqa: E402 (the test harness lives with the tests)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """The process's resident memory, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """The CPU time the process has used so far, user and system."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def percentile(values: List[float], q: float) -> float:
    """The value at fraction ``q`` of the sorted values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def is_root() -> bool:
    """Whether the benchmark runs as root, as it must to create network namespaces; if not, says so on stderr."""
    if os.geteuid() == 0:
        return True
    print("run as root: the benchmark creates network namespaces", file=sys.stderr)
    return False


def scratch_dir() -> Path:
    """A new directory under /tmp for the run's files, mode 0755: the proxy user reads its agents' files."""
    base = Path(subprocess.check_output(["mktemp", "-d", "/tmp/hm-agt-bench-XXXXXX"], text=True).strip())
    os.chmod(base, 0o755)
    return base


@contextlib.contextmanager
def netns_run() -> Iterator[Tuple[str, Path, Topology]]:
    """Envoy's path, a scratch directory and the namespaces (not up yet) for one run; then both removed."""
    envoy = find_envoy()
    base = scratch_dir()
    topo = Topology()
    try:
        yield envoy, base, topo
    finally:
        topo.down()
        shutil.rmtree(base, ignore_errors=True)


def fresh_workdir(base: Path, name: str) -> Path:
    """A new agent working directory ``base/name``, with a ``run`` directory the proxy user owns."""
    d = base / name
    d.mkdir(mode=0o755)
    (d / "run").mkdir()
    os.chown(d / "run", PROXY_UID, PROXY_UID)
    return d


def bench_pki(base: Path, client_id: str) -> Dict[str, Any]:
    """A test CA in ``base`` and two certificates it signs: ``web``'s (``WEB_ID``) and the client's (``client_id``).

    ``{"ca": CA file, "web": (cert, key), "client": (cert, key)}``.
    """
    ca = make_ca(base)
    return {"ca": ca["ca"], "web": issue_cert(base, ca, "web", f"URI:{WEB_ID}"),
            "client": issue_cert(base, ca, "client", f"URI:{client_id}")}  # fmt: skip


def tls_files(pki: Dict[str, Any], name: str) -> Dict[str, str]:
    """An agent config's ``tls``: ``name``'s certificate and key from ``bench_pki``, and the CA."""
    cert, key = pki[name]
    return {"cert_file": cert, "key_file": key, "ca_file": pki["ca"]}


def bench_agent_config(envoy: str, workdir: Path, pki: Dict[str, Any], name: str, **sections: Any) -> Dict[str, Any]:
    """An agent config for a benchmark: serving with ``name``'s certificate from ``bench_pki``, watching every 5 s.

    ``sections`` (``inbound``, ``outbound``, ``dns``, ...) are merged into the config as ``agent_config`` does.
    """
    return agent_config(envoy, workdir, supervise={"watch_interval_s": 5.0}, tls=tls_files(pki, name), **sections)


def remove_shared_memory(base_id: int) -> None:
    """Remove Envoy's hot-restart region for ``--base-id`` ``base_id``, if it is left behind."""
    Path(f"/dev/shm/envoy_shared_memory_{base_id * 10}").unlink(missing_ok=True)


def close_agent(agent: AgentProcess) -> None:
    """Stop the agent (a SIGKILL: it cannot remove its Envoy's hot-restart region itself), then the region."""
    agent.close()
    remove_shared_memory(agent.config["envoy"]["base_id"])
