"""Sandbox hosts for the role tests, and how to drive them.

One host for the envoy, agent and capture role tests, two for the mesh with
its ports moved. Hosts are booted once per module and destroyed by a
finalizer and an atexit hook, so they never outlive the run. Playbooks run
with the real ansible-playbook over SSH, as users run them.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tools.sandbox.sandbox import Sandbox  # noqa: E402

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
COLLECTIONS = REPO_ROOT / ".build" / "collections"
HOST = "ra"
PAIR = ("pa", "pb")


@dataclass
class PlayResult:
    """What one ansible-playbook run printed and how it ended."""

    rc: int
    output: str

    @property
    def recap(self) -> Dict[str, int]:
        match = re.search(r"ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", self.output)
        assert match, self.output
        return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, match.groups())))


def run_playbook(
    inventories: list[Path], playbook: str, extra: Dict[str, Any] | None, flags: tuple[str, ...], timeout: float
) -> PlayResult:
    """ansible-playbook with the checkout's collection, one -i per inventory, -e extra as JSON."""
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_PIPELINING="1",
        # No ssh compression: the hosts are local and the Envoy binary is large.
        ANSIBLE_SSH_ARGS="-o ControlMaster=auto -o ControlPersist=120s",
        ANSIBLE_HOST_KEY_CHECKING="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
    )
    argv = [str(BIN / "ansible-playbook")]
    for inventory in inventories:
        argv += ["-i", str(inventory)]
    argv += [str(HERE / playbook), *flags]
    if extra:
        argv += ["-e", json.dumps(extra)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return PlayResult(proc.returncode, proc.stdout + proc.stderr)


class RolesHost:
    """The sandbox host plus helpers to run playbooks and commands against it."""

    def __init__(self, sandbox: Sandbox, workdir: Path) -> None:
        self.sandbox = sandbox
        self.workdir = workdir

    def play(self, playbook: str, extra: Dict[str, Any] | None = None, *flags: str, timeout: float = 300) -> PlayResult:
        return run_playbook([self.sandbox.inventory], playbook, extra, flags, timeout)

    def sh(self, script: str, check: bool = True, timeout: float = 60) -> str:
        proc = self.sandbox.ssh(HOST, [script], timeout=timeout)
        if check:
            assert proc.returncode == 0, f"{script!r} exited {proc.returncode}: {proc.stdout}"
        return proc.stdout

    def main_pid(self) -> int:
        return int(self.sh("systemctl show --property MainPID --value hostmesh-agent.service").strip())

    def ready_status(self) -> str:
        return self.sh("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:15020/healthz/ready", check=False)

    def state(self) -> str:
        """A fingerprint of what the roles manage, to prove a failed run changed nothing."""
        return self.sh(
            "sha256sum /etc/hostmesh/agent.json /etc/systemd/system/hostmesh-agent.service /usr/local/bin/envoy"
            " /usr/local/bin/hostmesh-agent 2>&1; stat -c '%n %U:%G %a' /etc/hostmesh /etc/hostmesh/certs"
            " /etc/hostmesh/certs/* 2>&1; getent passwd hostmesh-proxy; getent group hostmesh-proxy;"
            " systemctl show --property MainPID --value hostmesh-agent.service",
            check=False,
        )


class MeshPair:
    """Two sandbox hosts in the group ``mesh``, with the group's variables in an inventory of their own."""

    def __init__(self, sandbox: Sandbox, workdir: Path, mesh_inventory: Path) -> None:
        self.sandbox = sandbox
        self.workdir = workdir
        self.mesh_inventory = mesh_inventory

    def play(self, playbook: str, extra: Dict[str, Any] | None = None, *flags: str, timeout: float = 600) -> PlayResult:
        return run_playbook([self.sandbox.inventory, self.mesh_inventory], playbook, extra, flags, timeout)

    def sh(self, host: str, script: str, check: bool = True, timeout: float = 60) -> str:
        proc = self.sandbox.ssh(host, [script], timeout=timeout)
        if check:
            assert proc.returncode == 0, f"{host}: {script!r} exited {proc.returncode}: {proc.stdout}"
        return proc.stdout

    def address(self, host: str) -> str:
        return self.sandbox.hosts()[host]

    def set_mesh(self, group_vars: Dict[str, Any], host_vars: Dict[str, Dict[str, Any]]) -> None:
        """Both hosts in group ``mesh``, with these variables."""
        hosts = {host: host_vars.get(host, {}) for host in PAIR}
        self.mesh_inventory.write_text(
            json.dumps({"all": {"children": {"mesh": {"hosts": hosts, "vars": group_vars}}}})
        )


def _require_machine() -> None:
    if os.geteuid() != 0:
        pytest.fail("these tests need root (they boot systemd-nspawn hosts)")
    missing = [t for t in ("systemd-nspawn", "debootstrap", "ssh", "nsenter") if not shutil.which(t)]
    if missing:
        pytest.fail(f"these tests need {', '.join(missing)}: run `make deps`")


@pytest.fixture(scope="module")
def host(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> RolesHost:
    _require_machine()
    link = COLLECTIONS / "ansible_collections" / "hostmesh" / "sidecar"
    assert link.exists(), "run `make collection` first"
    # SANDBOX_NAME keeps runs on one machine apart.
    sb = Sandbox(os.environ.get("SANDBOX_NAME", "pytest-roles"), log=lambda m: print(m, file=sys.stderr))
    atexit.register(sb.destroy, quiet=True)
    request.addfinalizer(lambda: sb.destroy(quiet=True))
    sb.create([HOST])
    return RolesHost(sb, tmp_path_factory.mktemp("roles"))


def boot_pair(request: pytest.FixtureRequest, workdir: Path, name: str) -> MeshPair:
    """Boot PAIR as sandbox ``name``, destroyed when the requesting module ends."""
    _require_machine()
    link = COLLECTIONS / "ansible_collections" / "hostmesh" / "sidecar"
    assert link.exists(), "run `make collection` first"
    sb = Sandbox(name, log=lambda m: print(m, file=sys.stderr))
    atexit.register(sb.destroy, quiet=True)
    request.addfinalizer(lambda: sb.destroy(quiet=True))
    sb.create(list(PAIR))
    return MeshPair(sb, workdir, workdir / "mesh.yml")
