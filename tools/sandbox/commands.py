"""Every external command the sandbox runs, declared once.

Each function returns an argv list; `run` executes one and raises a
`CommandError` that carries the command's output when it fails.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Optional


class CommandError(RuntimeError):
    """A command failed; the message holds its argv, exit code and output."""

    def __init__(self, argv: Sequence[str], rc: int, output: str) -> None:
        self.argv = list(argv)
        self.rc = rc
        self.output = output
        super().__init__(f"command failed (rc={rc}): {' '.join(argv)}\n{output.strip()}")


def run(
    argv: Sequence[str],
    check: bool = True,
    timeout: Optional[float] = 120,
    input_text: Optional[str] = None,
) -> subprocess.CompletedProcess:
    """Run argv, capturing stdout and stderr together as text."""
    try:
        proc = subprocess.run(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            input=input_text,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else ""
        raise CommandError(argv, -1, f"timed out after {timeout}s\n{out}") from exc
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stdout)
    return proc


# --- rootfs ---------------------------------------------------------------


def debootstrap(suite: str, target: Path, mirror: str, packages: Sequence[str], keyring: Path) -> list[str]:
    return [
        "debootstrap",
        "--variant=minbase",
        "--components=main",
        f"--keyring={keyring}",
        f"--include={','.join(packages)}",
        suite,
        str(target),
        mirror,
    ]


def enable_unit_in_tree(tree: Path, unit: str) -> list[str]:
    """Enable a unit in a rootfs that is not running (its [Install] section's links)."""
    return ["systemctl", f"--root={tree}", "enable", unit]


def copy_tree(source: Path, target: Path) -> list[str]:
    return ["cp", "-a", "--reflink=auto", str(source), str(target)]


def ssh_keygen(private_key: Path, comment: str) -> list[str]:
    return ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(private_key)]


def ssh_host_keys(rootfs: Path) -> list[str]:
    """Generate the sshd host keys of one rootfs (ssh-keygen -A under a prefix)."""
    return ["ssh-keygen", "-A", "-f", str(rootfs)]


# --- network --------------------------------------------------------------


def netns_add(name: str) -> list[str]:
    return ["ip", "netns", "add", name]


def netns_delete(name: str) -> list[str]:
    return ["ip", "netns", "delete", name]


def netns_list() -> list[str]:
    return ["ip", "netns", "list"]


def ip(netns: Optional[str], *args: str) -> list[str]:
    """`ip` in the root namespace (netns None) or inside a named one."""
    if netns is None:
        return ["ip", *args]
    return ["ip", "-n", netns, *args]


def in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


# --- machines -------------------------------------------------------------


# Makes /proc/sys/net writable in the guest (sysctls such as route_localnet).
NSPAWN_ENV = {"SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"}


def nspawn_boot(rootfs: Path, machine: str, hostname: str, netns_path: Path) -> list[str]:
    return [
        "systemd-nspawn",
        "--quiet",
        "--register=no",
        "--keep-unit",
        "--boot",
        f"--directory={rootfs}",
        f"--machine={machine}",
        f"--hostname={hostname}",
        f"--network-namespace-path={netns_path}",
        # A netns given by path gets neither of these by default; a VM's root has both.
        "--capability=CAP_NET_ADMIN",
        "--link-journal=no",
        "--console=read-only",
        "--resolv-conf=off",
        "--timezone=off",
    ]


def nsenter(leader_pid: int, argv: Sequence[str]) -> list[str]:
    """Run argv inside every namespace of a booted host (works without SSH)."""
    return ["nsenter", "-t", str(leader_pid), "-a", *argv]


def ssh(ssh_config: Path, host: str, remote: Sequence[str], tty: bool = False) -> list[str]:
    return ["ssh", "-F", str(ssh_config), *(["-t"] if tty else ["-T"]), host, *remote]


def ssh_stop_master(control_socket: Path) -> list[str]:
    """Ask the SSH connection master listening on this socket to exit."""
    return ["ssh", "-o", f"ControlPath={control_socket}", "-O", "exit", "sandbox-host"]


def umount_lazy(path: str) -> list[str]:
    return ["umount", "-l", path]


# --- boot health, run inside a host --------------------------------------

SYSTEM_STATE = ["systemctl", "is-system-running", "--wait"]
FAILED_UNITS = ["systemctl", "list-units", "--failed", "--plain", "--no-legend", "--full", "--no-pager"]


def unit_status(units: Sequence[str]) -> list[str]:
    """Each unit's status without journal lines: its result and how its processes ended."""
    return ["systemctl", "status", "--no-pager", "--full", "--lines=0", *units]


def unit_journal(units: Sequence[str], lines: int = 30) -> list[str]:
    return ["journalctl", "-b", "--quiet", "--no-pager", "-n", str(lines), *[f"--unit={u}" for u in units]]


# --- diagnostics, run inside a host --------------------------------------

DIAGNOSTICS_BRIEF: tuple[tuple[str, list[str]], ...] = (
    ("failed units", ["systemctl", "--failed", "--no-pager"]),
    ("journal (last 60 lines)", ["journalctl", "-b", "--no-pager", "-n", "60"]),
)

# Logs the agent and Envoy write besides the journal.
HOST_LOG_GLOB = "/var/log/hostmesh/*"


def diagnostics(units: Sequence[str] = ()) -> list[tuple[str, list[str]]]:
    """Titled commands whose output explains a failure on a host."""
    patterns = " ".join(f"'{u}'" for u in ("hostmesh*", "envoy*", *units))
    unit_args = " ".join(f"-u '{u}'" for u in ("hostmesh*", "envoy*", *units))
    return [
        ("failed units", ["systemctl", "--failed", "--no-pager"]),
        ("our units", ["sh", "-c", f"systemctl status --no-pager --all {patterns} || true"]),
        (
            "journal of our units",
            [
                "sh",
                "-c",
                f"journalctl -b --no-pager -n 300 {unit_args} 2>/dev/null"
                " || echo '(no journal entries for these units)'",
            ],
        ),
        ("iptables-save", ["iptables-save"]),
        ("ip6tables-save", ["ip6tables-save"]),
        ("nft list ruleset", ["nft", "list", "ruleset"]),
        ("addresses", ["ip", "-br", "addr"]),
        ("policy routing", ["sh", "-c", "ip rule; ip route show table all"]),
        ("listening sockets", ["ss", "-ltnp"]),
        ("agent and envoy logs", ["sh", "-c", f"tail -n 100 {HOST_LOG_GLOB} 2>/dev/null || true"]),
    ]
