"""One sandbox host's lifecycle: boot, supervise, stop, find its processes.

A host runs under a small supervisor process (``python3 -m
tools.sandbox.machines SANDBOX_DIR HOST``) that gives each boot a fresh network
namespace, runs systemd-nspawn in the foreground, in the guest's own cgroup
(see cgroups.py), and, when the guest asks for a reboot (nspawn exits 133),
boots it again from the same rootfs, like a VM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from tools.sandbox import cgroups, commands, network, suites

REBOOT_EXIT_CODE = 133
REPO_ROOT = Path(__file__).resolve().parents[2]


def _proc_pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def pids_referring_to(path: Path) -> list[int]:
    """Processes whose command line names a path under `path` (supervisors, nspawn)."""
    needle = str(path)
    me = os.getpid()
    found = []
    for pid in _proc_pids():
        if pid == me:
            continue
        if any(needle in arg for arg in _cmdline(pid)):
            found.append(pid)
    return found


def pids_in_netns(inode: int) -> list[int]:
    """Every process living in the network namespace with this inode."""
    found = []
    for pid in _proc_pids():
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == inode:
                found.append(pid)
        except OSError:
            continue
    return found


def alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def leader_pid(nspawn_pid: int) -> Optional[int]:
    """The guest's PID 1 as seen from the machine (a child of nspawn)."""
    try:
        children = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:") and line.split()[-1] == "1":
                return int(child)
    return None


class HostFiles:
    """Where one host's files live inside the sandbox directory."""

    def __init__(self, sandbox_dir: Path, host: str) -> None:
        self.dir = sandbox_dir / "hosts" / host
        self.rootfs = self.dir / "rootfs"
        self.console = self.dir / "console.log"
        self.supervisor_log = self.dir / "supervisor.log"
        self.runtime = self.dir / "runtime.json"

    def read_runtime(self) -> dict:
        try:
            return json.loads(self.runtime.read_text())
        except (OSError, ValueError):
            return {}

    def write_runtime(self, data: dict) -> None:
        tmp = self.runtime.with_suffix(".tmp")
        tmp.write_text(json.dumps(data) + "\n")
        tmp.replace(self.runtime)


def start(sandbox_dir: Path, host: str) -> None:
    """Launch the host's supervisor detached from the caller (it outlives the CLI)."""
    files = HostFiles(sandbox_dir, host)
    files.write_runtime({})
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    with open(files.supervisor_log, "a") as log:
        subprocess.Popen(
            [sys.executable, "-m", "tools.sandbox.machines", str(sandbox_dir), host],
            cwd=str(REPO_ROOT),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_leader(sandbox_dir: Path, host: str, timeout: float = 30) -> int:
    files = HostFiles(sandbox_dir, host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rt = files.read_runtime()
        if rt.get("error"):
            raise RuntimeError(f"{host}: supervisor failed: {rt['error']}")
        nspawn = rt.get("nspawn_pid")
        if nspawn and alive(nspawn):
            leader = leader_pid(nspawn)
            if leader:
                return leader
        time.sleep(0.1)
    raise RuntimeError(
        f"{host}: systemd-nspawn did not start within {timeout:.0f}s; see {files.supervisor_log} and {files.console}"
    )


def current_leader(sandbox_dir: Path, host: str) -> Optional[int]:
    rt = HostFiles(sandbox_dir, host).read_runtime()
    nspawn = rt.get("nspawn_pid")
    if nspawn and alive(nspawn):
        return leader_pid(nspawn)
    return None


def stop(sandbox_dir: Path, host: str, timeout: float = 30) -> None:
    """Power the guest off cleanly (SIGTERM to the supervisor), then make sure it is gone."""
    files = HostFiles(sandbox_dir, host)
    rt = files.read_runtime()
    sup = rt.get("supervisor_pid")
    if sup and alive(sup):
        os.kill(sup, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(sup) and time.monotonic() < deadline:
            time.sleep(0.1)
    kill_host_processes(sandbox_dir, host)


def kill_host_processes(sandbox_dir: Path, host: str) -> None:
    """SIGKILL whatever of this host is left: supervisor, nspawn, guest processes."""
    files = HostFiles(sandbox_dir, host)
    sandbox_id = _sandbox_id(sandbox_dir)
    for pid in pids_referring_to(files.dir):
        force_kill(pid)
    host_cgroups = cgroups.guest_cgroups(cgroups.machine_hierarchies(), sandbox_id, host)
    for pid in cgroups.pids_in(host_cgroups):
        force_kill(pid)
    inode = network.netns_inode(network.host_netns(sandbox_id, host))
    if inode:
        for pid in pids_in_netns(inode):
            force_kill(pid)
    network.host_down(sandbox_id, host)
    cgroups.remove(host_cgroups)


def _sandbox_id(sandbox_dir: Path) -> str:
    return json.loads((sandbox_dir / "state.json").read_text())["id"]


def force_kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# --- the supervisor --------------------------------------------------------


def supervise(sandbox_dir: Path, host: str) -> int:
    """Boot the host, reboot it when it asks, tear its network down when it stops."""
    state = json.loads((sandbox_dir / "state.json").read_text())
    entry = state["hosts"][host]
    files = HostFiles(sandbox_dir, host)
    own_cgroups = cgroups.guest_cgroups(cgroups.machine_hierarchies(), state["id"], host)
    suite = suites.suite(entry.get("suite", suites.DEFAULT_SUITE))
    stopping = False
    child: Optional[subprocess.Popen] = None

    def on_term(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            # nspawn turns SIGTERM into a clean poweroff of the guest.
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    boots = 0
    rc = 0
    files.write_runtime({"supervisor_pid": os.getpid()})
    try:
        while not stopping:
            netns_path = network.host_up(
                state["id"], host, entry["address"], state["subnet"], default_route=state.get("default_route", False)
            )
            boots += 1
            with open(files.console, "a") as console:
                console.write(f"\n--- boot {boots} at {time.strftime('%H:%M:%S')} ---\n")
                console.flush()
                child = subprocess.Popen(
                    commands.nspawn_boot(files.rootfs, f"{state['id']}-{host}", host, netns_path),
                    stdin=subprocess.DEVNULL,
                    env=dict(os.environ, **commands.NSPAWN_ENV, **suite.nspawn_env),
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    # nspawn, and so the guest, in the host's own cgroup.
                    preexec_fn=lambda: cgroups.enter(own_cgroups),
                )
            files.write_runtime({"supervisor_pid": os.getpid(), "nspawn_pid": child.pid, "boots": boots})
            rc = child.wait()
            child = None
            network.host_down(state["id"], host)
            print(f"{host}: nspawn exited with {rc} after boot {boots}", flush=True)
            if rc != REBOOT_EXIT_CODE:
                break
    except Exception as exc:
        files.write_runtime({"supervisor_pid": os.getpid(), "error": str(exc)})
        print(f"{host}: supervisor error: {exc}", flush=True)
        network.host_down(state["id"], host)
        cgroups.remove(own_cgroups)
        return 1
    cgroups.remove(own_cgroups)
    files.write_runtime({"boots": boots, "last_exit": rc})
    return 0


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1]), sys.argv[2]))
