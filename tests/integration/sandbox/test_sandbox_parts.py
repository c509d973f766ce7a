"""The sandbox's pure parts added for suites, cgroups and boot health (no root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.sandbox import cgroups, degraded, host_spec, rootfs, suites
from tools.sandbox.host_spec import HostSpec

# /proc/self/mountinfo of a hybrid machine (v1 controllers, name=systemd, cgroup2).
HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
UNIFIED_MOUNTINFO = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"

# `systemctl status --lines=0` of failed units: bullseye (systemd 247) marks
# them with a bullet, trixie (257) with a cross and adds lines of its own.
STATUS_BULLSEYE = """\
\u25cf sbx-fails.service
     Loaded: loaded (/etc/systemd/system/sbx-fails.service; static)
     Active: failed (Result: exit-code) since Thu 2026-12-03 12:49:25 UTC; 1s ago
    Process: 67 ExecStart=/bin/false (code=exited, status=1/FAILURE)
   Main PID: 67 (code=exited, status=1/FAILURE)

\u25cf sbx-pre.service
     Loaded: loaded (/etc/systemd/system/sbx-pre.service; static)
     Active: failed (Result: exit-code) since Thu 2026-12-03 12:49:25 UTC; 1s ago
    Process: 68 ExecStartPre=/bin/sh -c exit 3 (code=exited, status=3)
"""
STATUS_TRIXIE = """\
\u00d7 systemd-sysusers.service - Create System Users
     Loaded: loaded (/usr/lib/systemd/system/systemd-sysusers.service; static)
     Active: failed (Result: exit-code) since Thu 2026-12-03 12:49:28 UTC; 1s ago
   Duration: 70ms
 Invocation: 3150b492930745e3bff437e8fd3816bd
   Main PID: 114 (code=exited, status=219/CGROUP)
        CPU: 9ms

\u00d7 sbx-killed.service
     Loaded: loaded (/etc/systemd/system/sbx-killed.service; static)
     Active: failed (Result: signal) since Thu 2026-12-03 12:49:28 UTC; 1s ago
    Process: 116 ExecStart=/bin/sh -c kill -9 $$ (code=killed, signal=KILL)
   Main PID: 116 (code=killed, signal=KILL)

\u00d7 sbx-timeout.service
     Loaded: loaded (/etc/systemd/system/sbx-timeout.service; static)
     Active: failed (Result: timeout) since Thu 2026-12-03 12:49:28 UTC; 1s ago
"""


def test_host_specs_name_suite_and_profiles_with_defaults() -> None:
    assert host_spec.parse("web") == HostSpec("web", "bookworm", ())
    assert host_spec.parse("client-a") == HostSpec("client-a", "bookworm", ())
    assert host_spec.parse("web:trixie") == HostSpec("web", "trixie", ())
    assert host_spec.parse("dns+resolved") == HostSpec("dns", "bookworm", ("resolved",))
    assert host_spec.parse("dns:bullseye+resolved") == HostSpec("dns", "bullseye", ("resolved",))
    # Defaults apply where the spec is silent; a spec's own profiles replace them.
    assert host_spec.parse("web", suite="trixie", profiles=["resolved"]) == HostSpec("web", "trixie", ("resolved",))
    assert host_spec.parse("web:bullseye", suite="trixie") == HostSpec("web", "bullseye", ())
    assert str(HostSpec("dns", "bullseye", ("resolved",))) == "dns:bullseye+resolved"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("Web", "host 'Web' is invalid: write NAME[:SUITE][+PROFILE...]"),
        ("web:buster", "suite 'buster' is not one the sandbox builds; use one of: bullseye, bookworm, trixie"),
        ("web+ldap", "profile 'ldap' is not one the sandbox knows; use any of: resolved"),
        ("web:trixie:x", "is invalid"),
        ("averyveryverylongname", "is invalid"),
        ("client-", "is invalid"),
        ("-client", "is invalid"),
    ],
)
def test_bad_host_specs_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(host_spec.HostSpecError) as caught:
        host_spec.parse(text)
    assert says in str(caught.value)


def test_a_sandbox_needs_distinct_host_names() -> None:
    with pytest.raises(host_spec.HostSpecError, match="distinct names"):
        host_spec.parse_all(["web", "web:trixie"])
    with pytest.raises(host_spec.HostSpecError, match="1 or more"):
        host_spec.parse_all([])
    assert [s.suite for s in host_spec.parse_all(["a", "b:bullseye"], suite="trixie")] == ["trixie", "bullseye"]


def test_package_lists_are_per_suite_and_profile() -> None:
    assert set(suites.SUITES) == {"bullseye", "bookworm", "trixie"}
    assert suites.DEFAULT_SUITE == "bookworm"
    for name in suites.SUITES:
        assert set(suites.BASE_PACKAGES) <= set(suites.packages(name))
    # Debian 12 split systemd-resolved out of systemd; Debian 11 ships it inside.
    assert "systemd-resolved" in suites.packages("bookworm", ["resolved"])
    assert "systemd-resolved" in suites.packages("trixie", ["resolved"])
    assert "systemd-resolved" not in suites.packages("bullseye", ["resolved"])
    assert suites.SUITES["trixie"].nspawn_env == {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
    assert rootfs.tree_name("trixie", ["resolved"]) == "trixie+resolved"


def test_an_unverifiable_release_is_named_not_skipped() -> None:
    output = (
        "I: Retrieving InRelease\nI: Checking Release signature\n"
        "E: Release signed by unknown key (key id 762F67A0B2C39DE4)\n"
        "   The specified keyring /usr/share/keyrings/debian-archive-keyring.gpg may be incorrect or out of date.\n"
    )
    message = rootfs.unverified_release_error("trixie", output)
    assert message is not None
    assert message.startswith("suite trixie: the mirror's Release file could not be verified with ")
    assert "key id 762F67A0B2C39DE4" in message
    assert rootfs.unverified_release_error("trixie", "E: Couldn't download packages: curl") is None
    assert "--keyring=/k.gpg" in " ".join(
        rootfs.commands.debootstrap("trixie", Path("/t"), "http://m", ["a"], Path("/k.gpg"))
    )


def test_guest_hierarchies_are_the_writable_systemd_and_cgroup2_ones() -> None:
    assert cgroups.guest_hierarchies(HYBRID_MOUNTINFO) == [
        Path("/sys/fs/cgroup/systemd"),
        Path("/sys/fs/cgroup/unified"),
    ]
    assert cgroups.guest_hierarchies(UNIFIED_MOUNTINFO) == [Path("/sys/fs/cgroup")]
    paths = cgroups.guest_cgroups(cgroups.guest_hierarchies(UNIFIED_MOUNTINFO), "abc123", "web")
    assert paths == [Path("/sys/fs/cgroup/hostmesh-sandbox/abc123-web")]


def test_cgroups_of_a_sandbox_are_found_by_name_and_removed_bottom_up(tmp_path) -> None:
    """On a plain directory tree: what the guest left below its cgroup goes first."""
    for host in ("web", "db"):
        (tmp_path / cgroups.PARENT / f"abc123-{host}" / "payload" / "system.slice").mkdir(parents=True)
    (tmp_path / cgroups.PARENT / "def456-web").mkdir()
    found = cgroups.sandbox_cgroups([tmp_path], "abc123")
    assert [p.name for p in found] == ["abc123-db", "abc123-web"]
    assert cgroups.remove(found) == [f"cgroup {p}" for p in found]
    assert [p.name for p in (tmp_path / cgroups.PARENT).iterdir()] == ["def456-web"]
    cgroups.remove([tmp_path / cgroups.PARENT / "def456-web"])
    assert not (tmp_path / cgroups.PARENT).exists(), "the shared parent goes with the last guest"


def test_failed_units_and_their_causes_from_systemctl() -> None:
    listing = (
        "sbx-fails.service  loaded failed failed sbx-fails.service\n"
        "systemd-sysusers.service loaded failed failed Create System Users\n"
    )
    assert degraded.failed_unit_names(listing) == ["sbx-fails.service", "systemd-sysusers.service"]
    assert degraded.failed_unit_names("") == []
    assert degraded.unit_causes(STATUS_BULLSEYE) == {
        "sbx-fails.service": "result exit-code, ExecStart status=1/FAILURE",
        "sbx-pre.service": "result exit-code, ExecStartPre status=3",
    }
    assert degraded.unit_causes(STATUS_TRIXIE) == {
        "systemd-sysusers.service": "result exit-code, status=219/CGROUP",
        "sbx-killed.service": "result signal, ExecStart signal=KILL",
        "sbx-timeout.service": "result timeout",
    }


def test_the_degraded_message_names_every_failed_unit_and_its_cause() -> None:
    causes = degraded.unit_causes(STATUS_TRIXIE)
    message = degraded.degraded_message(
        "host3", ["systemd-sysusers.service", "gone.service"], causes, "Dec 03 host3 systemd[1]: ... 219/CGROUP\n"
    )
    assert message.splitlines() == [
        "host3: booted degraded; failed units:",
        "  systemd-sysusers.service: result exit-code, status=219/CGROUP",
        "  gone.service: cause not reported by systemctl status",
        "journal of the failed units:",
        "Dec 03 host3 systemd[1]: ... 219/CGROUP",
    ]
