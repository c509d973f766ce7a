"""Each sandbox guest in a cgroup of its own.

``systemd-nspawn --keep-unit --register=no`` stays in the cgroup it was
started in and splits it into ``supervisor`` and ``payload`` (the guest).
Started from one shared cgroup, every guest got the same ``payload``, and its
systemd the same ``system.slice/UNIT`` directories as every other guest's:
one guest removed a unit's cgroup while another attached a process to it, and
that unit failed with ``status=219/CGROUP``. So each nspawn process is moved,
before it runs, into ``hostmesh-sandbox/ID-HOST`` of every hierarchy a guest's
systemd writes to: the named ``systemd`` v1 hierarchy and the cgroup2 one
(both on a hybrid machine, one of them otherwise).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

# The parent of every guest's cgroup, at the top of each hierarchy.
PARENT = "hostmesh-sandbox"
MOUNTINFO = Path("/proc/self/mountinfo")


def guest_hierarchies(mountinfo: str) -> list[Path]:
    """Mount points of the hierarchies a guest's systemd manages, from /proc/self/mountinfo.

    That is the cgroup2 mount and the v1 ``name=systemd`` one; the v1
    controller hierarchies (cpu, memory, ...) are read-only in the guest.
    """
    found: list[Path] = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        mount_point = fields[4]
        fs_type, _source, *options = line.split(" - ", 1)[1].split()
        super_options = options[0].split(",") if options else []
        if fs_type == "cgroup2" or (fs_type == "cgroup" and "name=systemd" in super_options):
            found.append(Path(mount_point))
    return found


def guest_cgroup_name(sandbox_id: str, host: str) -> str:
    return f"{sandbox_id}-{host}"


def guest_cgroups(hierarchies: Iterable[Path], sandbox_id: str, host: str) -> list[Path]:
    return [h / PARENT / guest_cgroup_name(sandbox_id, host) for h in hierarchies]


def machine_hierarchies() -> list[Path]:
    return guest_hierarchies(MOUNTINFO.read_text())


def enter(cgroups: Iterable[Path]) -> None:
    """Move the calling process into each of these cgroups, creating them first.

    Runs in the child between fork and exec (a ``preexec_fn``), so it uses
    nothing but ``os`` calls.
    """
    for cgroup in cgroups:
        os.makedirs(cgroup, exist_ok=True)
        fd = os.open(cgroup / "cgroup.procs", os.O_WRONLY)
        try:
            os.write(fd, b"0\n")
        finally:
            os.close(fd)


def _tree_bottom_up(root: Path) -> Iterator[Path]:
    for dirpath, _dirs, _files in os.walk(root, topdown=False):
        yield Path(dirpath)


def pids_in(cgroups: Iterable[Path]) -> list[int]:
    """Every process in these cgroups or below them."""
    pids: set[int] = set()
    for cgroup in cgroups:
        if not cgroup.is_dir():
            continue
        for directory in _tree_bottom_up(cgroup):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
    return sorted(pids)


def remove(cgroups: Iterable[Path], wait: float = 5.0) -> list[str]:
    """Remove these cgroups and what the guest made below them, once no process is left.

    A cgroup whose last process just died can stay busy for a moment, hence
    the short retry. Returns the cgroups removed; one still in use is left.
    """
    removed: list[str] = []
    for cgroup in cgroups:
        if not cgroup.is_dir():
            continue
        deadline = time.monotonic() + wait
        for directory in _tree_bottom_up(cgroup):
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
        if not cgroup.exists():
            removed.append(f"cgroup {cgroup}")
        # The shared parent goes with the last guest of any sandbox.
        with contextlib.suppress(OSError):
            cgroup.parent.rmdir()
    return removed


def sandbox_cgroups(hierarchies: Iterable[Path], sandbox_id: str) -> list[Path]:
    """Every guest cgroup of one sandbox, found by name (also after a killed run)."""
    found = []
    for hierarchy in hierarchies:
        parent = hierarchy / PARENT
        if parent.is_dir():
            found += sorted(p for p in parent.iterdir() if p.is_dir() and p.name.startswith(f"{sandbox_id}-"))
    return found
