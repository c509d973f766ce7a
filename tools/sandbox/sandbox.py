"""A named set of sandbox hosts: create, reboot, inspect and destroy them.

All of a sandbox's files live in one directory (``.build/sandbox/run/NAME``);
its network names carry a short id derived from that directory, so
`destroy` can find and remove everything it made even when the state file is
missing or a previous run was killed half-way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional

from tools.sandbox import cgroups, commands, degraded, host_spec, inotify, inventory, machines, network, rootfs, suites

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BASE = REPO_ROOT / ".build" / "sandbox"
BOOT_TIMEOUT = 90.0
# Added to the boot timeout per host: many guests booting at once share the CPUs.
BOOT_TIMEOUT_PER_HOST = 3.0


class SandboxError(RuntimeError):
    """A sandbox operation failed; the message says what to look at."""


class Sandbox:
    """The hosts of one sandbox and the files that describe them."""

    def __init__(
        self,
        name: str = "default",
        base_dir: Path = DEFAULT_BASE,
        log=print,
        budget: Optional[inotify.Budget] = None,
    ) -> None:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
            raise SandboxError(f"sandbox name {name!r} is invalid: use letters, digits, . _ -")
        self.name = name
        self.base_dir = Path(base_dir).resolve()
        self.dir = self.base_dir / "run" / name
        self.id = hashlib.sha1(str(self.dir).encode()).hexdigest()[:6]
        self.log = log
        self.state_file = self.dir / "state.json"
        self.key_file = self.dir / "id_ed25519"
        self.known_hosts = self.dir / "known_hosts"
        self.ssh_config = self.dir / "ssh_config"
        self.inventory = self.dir / "inventory.yml"
        # Ansible's SSH connection masters for these hosts (see inventory.render_inventory);
        # short, since a socket's path must fit in 108 bytes.
        self.control_dir = Path(tempfile.gettempdir()) / f"hm-ssh-{self.id}"
        self.budget = budget or inotify.Budget(log=log)

    # --- state -------------------------------------------------------------

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def hosts(self) -> dict[str, str]:
        """Host name -> address, in creation order."""
        return {h: e["address"] for h, e in self.state().get("hosts", {}).items()}

    def host_specs(self) -> dict[str, host_spec.HostSpec]:
        """Host name -> what it runs (suite, profiles), in creation order."""
        return {
            h: host_spec.HostSpec(h, e.get("suite", suites.DEFAULT_SUITE), tuple(e.get("profiles", ())))
            for h, e in self.state().get("hosts", {}).items()
        }

    def _require_host(self, host: str) -> None:
        if host not in self.hosts():
            raise SandboxError(
                f"host {host!r} is not in sandbox {self.name!r}; hosts: "
                f"{', '.join(self.hosts()) or 'none (run create first)'}"
            )

    # --- create ------------------------------------------------------------

    def create(
        self,
        hosts: Sequence[str | host_spec.HostSpec],
        boot_timeout: Optional[float] = None,
        suite: str = suites.DEFAULT_SUITE,
        profiles: Sequence[str] = (),
        tolerate_failed: Sequence[str] = (),
        default_route: bool = False,
    ) -> dict:
        """Boot fresh hosts (destroying any earlier sandbox of this name); returns timings.

        `hosts` are names or specs (``web:trixie+resolved``, see host_spec.py);
        `suite` and `profiles` are the defaults of those that name none. A
        host that boots degraded fails the create unless every failed unit
        is in `tolerate_failed`. `default_route` gives every host an on-link
        default route (network.host_up), at each boot.
        """
        try:
            specs = host_spec.parse_all(hosts, suite, profiles)
        except host_spec.HostSpecError as exc:
            raise SandboxError(str(exc)) from None
        host_names = [spec.name for spec in specs]
        if boot_timeout is None:
            boot_timeout = BOOT_TIMEOUT + BOOT_TIMEOUT_PER_HOST * len(specs)
        timings: dict[str, float] = {}
        self.destroy(quiet=True)
        started = time.monotonic()
        trees: dict[tuple[str, tuple[str, ...]], Path] = {}
        for spec in specs:
            if (spec.suite, spec.profiles) not in trees:
                trees[spec.suite, spec.profiles] = rootfs.ensure_rootfs(
                    self.base_dir / "rootfs", spec.suite, spec.profiles, log=self.log
                )
        timings["rootfs_s"] = time.monotonic() - started
        # Before anything of this sandbox exists: a refusal leaves nothing to undo.
        self.budget.acquire(self.dir, len(specs))
        subnet = "?"
        try:
            # One lock for the whole machine: two checkouts must not pick the same subnet.
            with network.subnet_lock():
                subnet = network.pick_subnet(network.subnets_in_use())
                self._start_create(specs, subnet, trees, tolerate_failed, default_route)
            t0 = time.monotonic()
            commands.run(commands.ssh_keygen(self.key_file, f"sandbox-{self.name}"))
            tree_of = {spec.name: trees[spec.suite, spec.profiles] for spec in specs}
            self._run_parallel(lambda h: self._prepare_rootfs(h, tree_of[h]), host_names)
            timings["copy_s"] = time.monotonic() - t0
            self._write_access_files()
            t0 = time.monotonic()
            for host in host_names:
                machines.start(self.dir, host)
            self._run_parallel(lambda h: self.wait_ready(h, boot_timeout), host_names)
            timings["boot_s"] = time.monotonic() - t0
        except Exception:
            for host in host_names:
                self.log(self.diagnose(host, brief=True))
            self.destroy(quiet=True)
            raise
        kinds = sorted({f"{spec.suite}{''.join('+' + p for p in spec.profiles)}" for spec in specs})
        self.log(
            f"sandbox {self.name}: {len(host_names)} hosts ({', '.join(kinds)}) on {subnet} "
            f"(rootfs {timings['rootfs_s']:.1f}s, copy {timings['copy_s']:.1f}s, "
            f"boot {timings['boot_s']:.1f}s); inventory {self.inventory}"
        )
        return timings

    def _start_create(
        self,
        specs: Sequence[host_spec.HostSpec],
        subnet: str,
        trees: dict[tuple[str, tuple[str, ...]], Path],
        tolerate_failed: Sequence[str],
        default_route: bool = False,
    ) -> None:
        """Record the state, then claim the subnet by bringing the bridge up."""
        self.dir.mkdir(parents=True)
        state = {
            "name": self.name,
            "id": self.id,
            "subnet": subnet,
            "controller": network.controller_address(subnet),
            "tolerate_failed": sorted(tolerate_failed),
            "default_route": default_route,
            "hosts": {
                spec.name: {
                    "address": network.host_address(subnet, i),
                    "suite": spec.suite,
                    "profiles": list(spec.profiles),
                    "rootfs": str(trees[spec.suite, spec.profiles]),
                }
                for i, spec in enumerate(specs)
            },
        }
        # Written before anything is made, so destroy can undo a half-done create.
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")
        network.bridge_up(self.id, subnet)

    def _prepare_rootfs(self, host: str, tree: Path) -> None:
        files = machines.HostFiles(self.dir, host)
        files.dir.mkdir(parents=True, exist_ok=True)
        commands.run(commands.copy_tree(tree, files.rootfs), timeout=600)
        (files.rootfs / ".sandbox-complete").unlink(missing_ok=True)
        (files.rootfs / "etc/hostname").write_text(f"{host}\n")
        (files.rootfs / "etc/machine-id").write_text(os.urandom(16).hex() + "\n")
        (files.rootfs / "etc/hosts").write_text(inventory.render_etc_hosts(self.hosts()))
        auth = files.rootfs / "root/.ssh/authorized_keys"
        auth.write_text(Path(f"{self.key_file}.pub").read_text())
        auth.chmod(0o600)
        commands.run(commands.ssh_host_keys(files.rootfs))

    def _write_access_files(self) -> None:
        hosts = self.hosts()
        keys = {
            h: (
                addr,
                [
                    p.read_text().strip()
                    for p in sorted((machines.HostFiles(self.dir, h).rootfs / "etc/ssh").glob("ssh_host_*_key.pub"))
                ],
            )
            for h, addr in hosts.items()
        }
        self.known_hosts.write_text(inventory.render_known_hosts(keys))
        self.ssh_config.write_text(inventory.render_ssh_config(hosts, self.key_file, self.known_hosts))
        self.control_dir.mkdir(mode=0o700, exist_ok=True)
        host_vars = {
            name: {"hostmesh_sandbox_suite": spec.suite, "hostmesh_sandbox_profiles": list(spec.profiles)}
            for name, spec in self.host_specs().items()
        }
        self.inventory.write_text(
            inventory.render_inventory(hosts, self.key_file, self.ssh_config, self.control_dir, host_vars)
        )

    def _run_parallel(self, func: Callable[[str], object], hosts: Sequence[str]) -> None:
        errors: list[BaseException] = []

        def call(h: str) -> None:
            try:
                func(h)
            except BaseException as exc:  # re-raised below in the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(h,)) for h in hosts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    # --- running hosts ------------------------------------------------------

    def wait_ready(self, host: str, timeout: float = BOOT_TIMEOUT, tolerate_failed: Sequence[str] = ()) -> float:
        """Wait until the host accepts SSH and systemd finished booting; returns seconds.

        A degraded boot raises SandboxError naming each failed unit and its
        cause, unless every failed unit is tolerated here or by the create.
        """
        started = time.monotonic()
        machines.wait_for_leader(self.dir, host, timeout)
        deadline = started + timeout
        last = ""
        while time.monotonic() < deadline:
            proc = commands.run(
                commands.ssh(self.ssh_config, host, [" ".join(commands.SYSTEM_STATE)]),
                check=False,
                timeout=max(5.0, deadline - time.monotonic()),
            )
            last = proc.stdout.strip()
            if last == "running":
                return time.monotonic() - started
            if last == "degraded":
                self._check_degraded(host, [*tolerate_failed, *self.state().get("tolerate_failed", [])])
                return time.monotonic() - started
            time.sleep(0.3)
        raise SandboxError(
            f"{host}: not reachable over SSH with systemd up within {timeout:.0f}s "
            f"(last answer: {last!r}); see {machines.HostFiles(self.dir, host).console}"
        )

    def _check_degraded(self, host: str, tolerated: Sequence[str]) -> None:
        failed = degraded.failed_unit_names(self.run_in(host, commands.FAILED_UNITS).stdout)
        causes = degraded.unit_causes(self.run_in(host, commands.unit_status(failed)).stdout) if failed else {}
        journal = self.run_in(host, commands.unit_journal(failed)).stdout if failed else ""
        message = degraded.degraded_message(host, failed, causes, journal)
        if failed and set(failed) <= set(tolerated):
            self.log(f"{message}\n(tolerated)")
            return
        raise SandboxError(message)

    def leader(self, host: str) -> int:
        self._require_host(host)
        pid = machines.current_leader(self.dir, host)
        if not pid:
            raise SandboxError(f"host {host!r} of sandbox {self.name!r} is not running")
        return pid

    def run_in(
        self, host: str, argv: Sequence[str], check: bool = False, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Run a command inside a host without SSH (for diagnostics and tests)."""
        return commands.run(commands.nsenter(self.leader(host), argv), check=check, timeout=timeout)

    def ssh(
        self, host: str, argv: Sequence[str], check: bool = False, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Run a command on a host over SSH, as Ansible would reach it."""
        self._require_host(host)
        return commands.run(commands.ssh(self.ssh_config, host, list(argv)), check=check, timeout=timeout)

    def stop_host(self, host: str) -> None:
        self._require_host(host)
        machines.stop(self.dir, host)

    def start_host(self, host: str, timeout: float = BOOT_TIMEOUT, tolerate_failed: Sequence[str] = ()) -> float:
        self._require_host(host)
        if machines.current_leader(self.dir, host):
            return 0.0
        machines.start(self.dir, host)
        return self.wait_ready(host, timeout, tolerate_failed)

    def reboot(self, host: str, timeout: float = BOOT_TIMEOUT, tolerate_failed: Sequence[str] = ()) -> float:
        """Power the host off and boot the same rootfs again; returns boot seconds."""
        self.stop_host(host)
        took = self.start_host(host, timeout, tolerate_failed)
        self.log(f"{host}: rebooted, up again in {took:.1f}s")
        return took

    def status(self) -> dict:
        state = self.state()
        out = {"name": self.name, "dir": str(self.dir), "hosts": {}}
        if not state:
            out["created"] = False
            return out
        out.update(
            created=True,
            subnet=state["subnet"],
            inventory=str(self.inventory),
            ssh_config=str(self.ssh_config),
        )
        for host, entry in state["hosts"].items():
            leader = machines.current_leader(self.dir, host)
            rt = machines.HostFiles(self.dir, host).read_runtime()
            out["hosts"][host] = {
                "address": entry["address"],
                "suite": entry.get("suite", suites.DEFAULT_SUITE),
                "profiles": entry.get("profiles", []),
                "running": bool(leader),
                "leader_pid": leader,
                "boots": rt.get("boots", 0),
            }
        return out

    # --- diagnostics -------------------------------------------------------

    def diagnose(self, host: str, units: Sequence[str] = (), brief: bool = False) -> str:
        """What a person needs when something failed on a host, as one text."""
        files = machines.HostFiles(self.dir, host)
        parts = [f"===== sandbox {self.name} host {host} ====="]
        leader = machines.current_leader(self.dir, host) if self.state_file.exists() else None
        if leader:
            checks = commands.DIAGNOSTICS_BRIEF if brief else commands.diagnostics(units)
            for title, argv in checks:
                proc = commands.run(commands.nsenter(leader, argv), check=False, timeout=60)
                parts.append(f"--- {title} (rc={proc.returncode})\n{proc.stdout.rstrip()}")
        else:
            parts.append("--- host is not running")
        for log_file in (files.supervisor_log, files.console):
            if log_file.exists():
                tail = log_file.read_text(errors="replace").splitlines()[-40:]
                parts.append(f"--- {log_file.name} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(parts) + "\n"

    # --- destroy -----------------------------------------------------------

    def destroy(self, quiet: bool = False) -> list[str]:
        """Remove every process, namespace, link and file of this sandbox; idempotent."""
        removed: list[str] = []
        host_names = list(self.hosts())
        hosts_dir = self.dir / "hosts"
        if hosts_dir.is_dir():
            host_names += [p.name for p in hosts_dir.iterdir() if p.name not in host_names]
        if self.state_file.exists():
            # Ask every guest to power off at once, then wait for them together.
            self._run_parallel(lambda h: machines.stop(self.dir, h), host_names)
        for pid in machines.pids_referring_to(self.dir):
            machines.force_kill(pid)
            removed.append(f"process {pid}")
        for ns in network.netns_names(f"{network.PREFIX}{self.id}"):
            inode = network.netns_inode(ns)
            for pid in machines.pids_in_netns(inode) if inode else []:
                machines.force_kill(pid)
                removed.append(f"process {pid} in {ns}")
        own_cgroups = cgroups.sandbox_cgroups(cgroups.machine_hierarchies(), self.id)
        for pid in cgroups.pids_in(own_cgroups):
            machines.force_kill(pid)
            removed.append(f"process {pid} in its cgroups")
        removed += cgroups.remove(own_cgroups)
        removed += stop_ssh_masters(self.control_dir)
        removed += network.teardown(self.id)
        for mount in self._mounts_under_dir():
            commands.run(commands.umount_lazy(mount), check=False)
            removed.append(f"mount {mount}")
        if self.dir.exists():
            shutil.rmtree(self.dir)
            removed.append(f"dir {self.dir}")
        # Last: the limits go down only once this sandbox's hosts are gone.
        removed += [f"sysctl {name}={value}" for name, value in self.budget.release([self.dir]).items()]
        if not quiet:
            self.log(f"sandbox {self.name}: destroyed ({len(removed)} things removed)")
        return removed

    def leftovers(self) -> list[str]:
        """Anything of this sandbox still on the machine (empty after destroy)."""
        left = [f"process {pid}" for pid in machines.pids_referring_to(self.dir)]
        left += [f"netns {ns}" for ns in network.netns_names(f"{network.PREFIX}{self.id}")]
        if network.link_exists(network.controller_link(self.id)):
            left.append(f"link {network.controller_link(self.id)}")
        left += [f"mount {m}" for m in self._mounts_under_dir()]
        left += [f"cgroup {c}" for c in cgroups.sandbox_cgroups(cgroups.machine_hierarchies(), self.id)]
        if self.dir.exists():
            left.append(f"dir {self.dir}")
        if self.control_dir.exists():
            left.append(f"dir {self.control_dir}")
        return left

    def _mounts_under_dir(self) -> list[str]:
        try:
            lines = Path("/proc/self/mountinfo").read_text().splitlines()
        except OSError:
            return []
        prefix = str(self.dir) + "/"
        mounts = [line.split()[4] for line in lines if len(line.split()) > 4]
        return sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True)


def stop_ssh_masters(control_dir: Path, addresses: Sequence[str] = ()) -> list[str]:
    """Stop the SSH connection masters with a socket in control_dir; idempotent.

    With no addresses, every master, and the directory is removed (a
    sandbox's own). With addresses, only the masters whose socket is named
    after one of them (``ADDRESS-PORT-USER``, as molecule names them in a
    directory shared with others), and the directory stays.
    """
    if not control_dir.is_dir():
        return []
    removed = []
    for socket_path in sorted(control_dir.iterdir()):
        if not socket_path.is_socket():
            continue
        if addresses and not socket_path.name.startswith(tuple(f"{address}-" for address in addresses)):
            continue
        # A master that does not answer dies with its host's connection anyway.
        with contextlib.suppress(commands.CommandError):
            commands.run(commands.ssh_stop_master(socket_path), check=False, timeout=10)
        removed.append(f"ssh master {socket_path.name}")
    if addresses:
        return removed
    shutil.rmtree(control_dir, ignore_errors=True)
    return [*removed, f"dir {control_dir}"]


def all_sandboxes(base_dir: Path = DEFAULT_BASE) -> list[str]:
    run_dir = Path(base_dir) / "run"
    return sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []


def access_info(sb: Sandbox) -> dict:
    """What molecule or a test needs to reach the hosts."""
    return {
        "name": sb.name,
        "inventory": str(sb.inventory),
        "ssh_config": str(sb.ssh_config),
        "identity_file": str(sb.key_file),
        "known_hosts": str(sb.known_hosts),
        "hosts": sb.hosts(),
        "controller": sb.state().get("controller"),
    }
