"""Fixtures for the agent's real-Envoy tests; the harness is in agent_netns.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
from agent_netns import HERE, PROXY_UID, AgentProcess, Topology, find_envoy


@pytest.fixture(scope="session")
def envoy_binary() -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces")
    return find_envoy()


def make_workdir() -> Path:
    """A directory the proxy user can traverse, with a run dir it owns."""
    path = Path(tempfile.mkdtemp(prefix="hm-agt-"))
    os.chmod(path, 0o755)
    (path / "run").mkdir()
    os.chown(path / "run", PROXY_UID, PROXY_UID)
    return path


@pytest.fixture
def workdir() -> Any:
    path = make_workdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def peer_workdir() -> Any:
    path = make_workdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def topo() -> Any:
    t = Topology()
    try:
        t.up()
        yield t
    finally:
        t.down()


@pytest.fixture
def topo_both_captured(topo: Topology) -> Topology:
    """The topology with the seed's capture rules in the peer's namespace too, as on a second sidecar host."""
    rules = (HERE / "capture_rules.txt").read_text()
    subprocess.run(
        ["ip", "netns", "exec", topo.peer, "iptables-restore", "--noflush"], input=rules, text=True, check=True
    )
    return topo


@pytest.fixture
def start_agent(topo: Topology, workdir: Path) -> Any:
    started: List[AgentProcess] = []

    def start(
        config: Dict[str, Any],
        env: Optional[Dict[str, str]] = None,
        ns: str = "",
        where: Optional[Path] = None,
        **kw: Any,
    ) -> AgentProcess:
        agent = AgentProcess(topo, where or workdir, config, env or {}, ns, **kw)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.close()
        base_id = agent.config.get("envoy", {}).get("base_id")
        if base_id is not None:
            Path(f"/dev/shm/envoy_shared_memory_{base_id * 10}").unlink(missing_ok=True)
