"""The Debian releases a sandbox host can run, and the profiles a host can add, as data.

A host names its suite (``web:bullseye``) and any profiles (``web+resolved``);
each combination is one cached rootfs tree (see rootfs.py). What differs
between releases lives here and nowhere else: the packages, and what
systemd-nspawn must do for the release's systemd.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

# What every host needs to behave like a small VM that Ansible can manage.
BASE_PACKAGES: tuple[str, ...] = (
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


@dataclass(frozen=True)
class Suite:
    """One Debian release as the sandbox builds and boots it."""

    name: str
    debian: str
    # Versions the release ships (major.minor; systemd's major): the tests
    # check every booted host against them.
    python: str
    systemd: str
    iptables: str
    nftables: str
    packages: tuple[str, ...] = BASE_PACKAGES
    # Environment for systemd-nspawn when it boots this release.
    nspawn_env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    """Something a host can have on top of its suite, e.g. systemd-resolved."""

    name: str
    description: str
    # Extra packages per suite; a suite missing here needs none.
    packages: Mapping[str, tuple[str, ...]]
    # Units enabled in the tree once the packages are in.
    enable_units: tuple[str, ...] = ()
    # Symlinks made in the tree: path in the tree -> target.
    links: Mapping[str, str] = field(default_factory=dict)


SUITES: Mapping[str, Suite] = MappingProxyType(
    {
        "bullseye": Suite("bullseye", "11", python="3.9", systemd="247", iptables="1.8.7", nftables="0.9.8"),
        "bookworm": Suite("bookworm", "12", python="3.11", systemd="252", iptables="1.8.9", nftables="1.0.6"),
        # On a hybrid machine nspawn hands a guest the v1 and v2 hierarchies;
        # systemd 256 and later boot on that only as "tainted: cgroupsv1", a
        # mode they deprecate and a trixie VM never has: cgroup2 only.
        "trixie": Suite(
            "trixie",
            "13",
            python="3.13",
            systemd="257",
            iptables="1.8.11",
            nftables="1.1.3",
            nspawn_env=MappingProxyType({"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}),
        ),
    }
)
DEFAULT_SUITE = "bookworm"

PROFILES: Mapping[str, Profile] = MappingProxyType(
    {
        "resolved": Profile(
            "resolved",
            "systemd-resolved running, /etc/resolv.conf pointing at its 127.0.0.53 stub",
            # Debian 11 ships resolved inside the systemd package.
            packages=MappingProxyType({"bookworm": ("systemd-resolved",), "trixie": ("systemd-resolved",)}),
            enable_units=("systemd-resolved.service",),
            links=MappingProxyType({"etc/resolv.conf": "../run/systemd/resolve/stub-resolv.conf"}),
        ),
        # The hosts have no route to a mirror: a monitoring host gets Debian's
        # Prometheus in its tree, as a host with a local mirror would install it,
        # and python3-apt, which Ansible's apt module needs to see it there.
        "prometheus": Profile(
            "prometheus",
            "Debian's prometheus package (its unit enabled, as the package leaves it) and python3-apt",
            packages=MappingProxyType({s: ("prometheus", "python3-apt") for s in ("bullseye", "bookworm", "trixie")}),
        ),
    }
)


class UnknownSuiteError(ValueError):
    """A suite or profile the sandbox does not build; the message lists the known ones."""


def suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise UnknownSuiteError(
            f"suite {name!r} is not one the sandbox builds; use one of: {', '.join(SUITES)}"
        ) from None


def profiles(names: Sequence[str]) -> tuple[Profile, ...]:
    unknown = [n for n in names if n not in PROFILES]
    if unknown:
        raise UnknownSuiteError(
            f"profile {unknown[0]!r} is not one the sandbox knows; use any of: {', '.join(PROFILES)}"
        )
    return tuple(PROFILES[n] for n in sorted(set(names)))


def packages(suite_name: str, profile_names: Sequence[str] = ()) -> tuple[str, ...]:
    """Every package a tree of this suite with these profiles installs, sorted."""
    names = set(suite(suite_name).packages)
    for profile in profiles(profile_names):
        names.update(profile.packages.get(suite_name, ()))
    return tuple(sorted(names))
