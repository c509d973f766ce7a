"""The cached Debian rootfs every sandbox host is copied from.

Built once with debootstrap from the machine's own apt sources and reused;
its cache key is a hash of the suite, the package list and the recipe, so a
change to any of them builds a new one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tools.sandbox import commands

# What a host needs to behave like a small VM that Ansible can manage.
PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "openssh-server",
    "python3",
    "sudo",
    "iproute2",
    "iptables",
    "nftables",
    "curl",
    "procps",
    "iputils-ping",
)

# Bump when the customisation below changes, so cached trees are rebuilt.
RECIPE_VERSION = "4"

# Units that only cost boot time or wait for hardware a container lacks.
MASKED_UNITS: tuple[str, ...] = (
    "console-getty.service",
    "getty@tty1.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "systemd-networkd-wait-online.service",
)

# A container cannot kill a whole cgroup at once (EIO), and what an SSH login
# leaves (its session scope, its user manager) can keep a process systemd then
# waits for: without a bound, a shutdown after a login waits out the scope's
# 90 s and the user manager's 2 minutes, where a VM's stop at once. Units that
# set their own stop timeout (the agent's) keep it.
SYSTEM_CONF_DROPIN = "[Manager]\nDefaultTimeoutStopSec=10s\n"
USER_MANAGER_DROPIN = "[Service]\nTimeoutStopSec=5s\n"

SSHD_DROPIN = """\
# Sandbox host: key login for root only.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""


@dataclass(frozen=True)
class AptSource:
    """The mirror and suite debootstrap installs from."""

    mirror: str
    suite: str


def parse_apt_sources(deb822_texts: Iterable[str], one_line_texts: Iterable[str]) -> AptSource:
    """Pick the first plain `deb` source of the main archive (not -security/-updates)."""
    candidates: list[AptSource] = []
    for text in deb822_texts:
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _sep, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    candidates.append(AptSource(uri, suite))
    for text in one_line_texts:
        for line in text.splitlines():
            parts = re.sub(r"\[[^]]*\]", "", line).split()
            if len(parts) >= 3 and parts[0] == "deb":
                candidates.append(AptSource(parts[1], parts[2]))
    for cand in candidates:
        if not re.search(r"-(security|updates|backports|proposed-updates)$", cand.suite):
            return cand
    raise RuntimeError(
        "no Debian archive found in the machine's apt sources "
        "(/etc/apt/sources.list, /etc/apt/sources.list.d/*.sources); "
        "debootstrap needs one `deb` source of the main archive"
    )


def host_apt_source(etc_apt: Path = Path("/etc/apt")) -> AptSource:
    """The machine's own apt source: the sandbox uses no other mirror."""
    deb822 = [p.read_text() for p in sorted((etc_apt / "sources.list.d").glob("*.sources"))]
    one_line = [p.read_text() for p in sorted((etc_apt / "sources.list.d").glob("*.list"))]
    main_list = etc_apt / "sources.list"
    if main_list.exists():
        one_line.insert(0, main_list.read_text())
    return parse_apt_sources(deb822, one_line)


def cache_key(suite: str, packages: Iterable[str] = PACKAGES) -> str:
    """Hash of what goes into the tree; the mirror is left out on purpose."""
    payload = json.dumps(
        {"suite": suite, "packages": sorted(packages), "recipe": RECIPE_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def customise(tree: Path) -> None:
    """Make a fresh debootstrap tree boot fast and accept our SSH keys."""
    for key in tree.glob("etc/ssh/ssh_host_*"):
        key.unlink()
    # Empty machine-id: each host copy gets its own.
    (tree / "etc/machine-id").write_text("")
    (tree / "var/log/journal").mkdir(parents=True, exist_ok=True)
    unit_dir = tree / "etc/systemd/system"
    unit_dir.mkdir(parents=True, exist_ok=True)
    for unit in MASKED_UNITS:
        link = unit_dir / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    (unit_dir / "user@.service.d").mkdir(parents=True, exist_ok=True)
    (unit_dir / "user@.service.d/sandbox.conf").write_text(USER_MANAGER_DROPIN)
    (tree / "etc/systemd/system.conf.d").mkdir(parents=True, exist_ok=True)
    (tree / "etc/systemd/system.conf.d/sandbox.conf").write_text(SYSTEM_CONF_DROPIN)
    dropin = tree / "etc/ssh/sshd_config.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "sandbox.conf").write_text(SSHD_DROPIN)
    root_ssh = tree / "root/.ssh"
    root_ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    for deb in tree.glob("var/cache/apt/archives/*.deb"):
        deb.unlink()
    (tree / "etc/sandbox-rootfs.json").write_text(
        json.dumps({"packages": sorted(PACKAGES), "recipe": RECIPE_VERSION}) + "\n"
    )


def ensure_rootfs(cache_dir: Path, log=print) -> Path:
    """Return the cached tree, building it first when missing (safe to call concurrently)."""
    source = host_apt_source()
    key = cache_key(source.suite)
    tree = cache_dir / f"{source.suite}-{key}"
    done = tree / ".sandbox-complete"
    if done.exists():
        return tree
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return tree
        staging = cache_dir / f".staging-{key}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        log(f"building rootfs {tree.name} ({source.suite}, {len(PACKAGES)} packages)")
        started = time.monotonic()
        try:
            commands.run(
                commands.debootstrap(source.suite, staging, source.mirror, PACKAGES),
                timeout=1800,
            )
            customise(staging)
            (staging / ".sandbox-complete").write_text(f"{time.time():.0f}\n")
            shutil.rmtree(tree, ignore_errors=True)
            staging.rename(tree)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log(f"rootfs built in {time.monotonic() - started:.0f}s")
    return tree
