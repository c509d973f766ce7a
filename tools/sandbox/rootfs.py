"""The cached Debian rootfs trees sandbox hosts are copied from, one per suite and profiles.

Built once with debootstrap from the mirror of the machine's own apt sources
(the suite is the host's choice, see suites.py) and reused; a tree's cache
key is a hash of the suite, the package list and the recipe, so a change to
any of them builds a new one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tools.sandbox import commands, suites

# Bump when the customisation below changes, so cached trees are rebuilt.
RECIPE_VERSION = "5"

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


class RootfsError(RuntimeError):
    """A rootfs cannot be built; the message names the suite and what to fix."""


# debootstrap checks the suite's Release file against this keyring and
# fails when it cannot (it is passed explicitly: without a keyring file
# debootstrap would only warn and install unverified packages).
ARCHIVE_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# What debootstrap prints when the Release signature does not verify.
UNVERIFIED_RELEASE = re.compile(r"Release signed by unknown key|Invalid Release signature|gpgv.*(not|required)", re.I)


def cache_key(suite: str, packages: Iterable[str], profiles: Iterable[str] = ()) -> str:
    """Hash of what goes into the tree; the mirror is left out on purpose."""
    payload = json.dumps(
        {"suite": suite, "packages": sorted(packages), "profiles": sorted(profiles), "recipe": RECIPE_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def tree_name(suite: str, profiles: Iterable[str] = ()) -> str:
    """``bookworm``, ``trixie+resolved``: the tree's directory name before its key."""
    return suite + "".join(f"+{p}" for p in sorted(set(profiles)))


def unverified_release_error(suite: str, output: str, keyring: Path = ARCHIVE_KEYRING) -> str | None:
    """A clear message when debootstrap's output says the suite's Release could not be verified."""
    if not UNVERIFIED_RELEASE.search(output):
        return None
    detail = next((line.strip() for line in output.splitlines() if UNVERIFIED_RELEASE.search(line)), "")
    return (
        f"suite {suite}: the mirror's Release file could not be verified with {keyring} ({detail}); "
        "install a debian-archive-keyring that holds this release's keys (and gpgv); "
        "the sandbox does not build from unverified archives"
    )


def customise(tree: Path, suite: str, profile_names: Sequence[str] = ()) -> None:
    """Make a fresh debootstrap tree boot fast and accept our SSH keys; apply the profiles."""
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
    for profile in suites.profiles(profile_names):
        for unit in profile.enable_units:
            commands.run(commands.enable_unit_in_tree(tree, unit))
        for path, target in profile.links.items():
            link = tree / path
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
    for deb in tree.glob("var/cache/apt/archives/*.deb"):
        deb.unlink()
    (tree / "etc/sandbox-rootfs.json").write_text(
        json.dumps(
            {
                "suite": suite,
                "profiles": sorted(set(profile_names)),
                "packages": list(suites.packages(suite, profile_names)),
                "recipe": RECIPE_VERSION,
            }
        )
        + "\n"
    )


def ensure_rootfs(
    cache_dir: Path,
    suite: str = suites.DEFAULT_SUITE,
    profiles: Sequence[str] = (),
    log: Callable[[str], object] = print,
) -> Path:
    """Return the cached tree of this suite and profiles, building it first when missing.

    Safe to call concurrently: builds take a lock on the cache directory.
    """
    packages = suites.packages(suite, profiles)
    key = cache_key(suite, packages, profiles)
    tree = cache_dir / f"{tree_name(suite, profiles)}-{key}"
    done = tree / ".sandbox-complete"
    if done.exists():
        return tree
    if not ARCHIVE_KEYRING.is_file():
        raise RootfsError(
            f"suite {suite}: no archive keyring at {ARCHIVE_KEYRING} to verify the mirror's Release file; "
            "install debian-archive-keyring"
        )
    mirror = host_apt_source().mirror
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return tree
        staging = cache_dir / f".staging-{key}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        log(f"building rootfs {tree.name} ({suite} from {mirror}, {len(packages)} packages)")
        started = time.monotonic()
        try:
            try:
                commands.run(
                    commands.debootstrap(suite, staging, mirror, packages, ARCHIVE_KEYRING),
                    timeout=1800,
                )
            except commands.CommandError as exc:
                message = unverified_release_error(suite, exc.output)
                if message:
                    raise RootfsError(message) from exc
                raise
            customise(staging, suite, profiles)
            (staging / ".sandbox-complete").write_text(f"{time.time():.0f}\n")
            shutil.rmtree(tree, ignore_errors=True)
            staging.rename(tree)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log(f"rootfs {tree.name} built in {time.monotonic() - started:.0f}s")
        # Trees of the same suite and profiles from an older recipe or package list.
        for old in cache_dir.glob(f"{tree_name(suite, profiles)}-*"):
            if old != tree and re.fullmatch(r"[0-9a-f]{16}", old.name.rsplit("-", 1)[1]):
                shutil.rmtree(old, ignore_errors=True)
                log(f"removed the outdated rootfs {old.name}")
    return tree
