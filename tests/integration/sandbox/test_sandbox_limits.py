"""What sandbox hosts share with the machine: inotify limits and cgroups; and degraded boots fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.sandbox import cgroups, inotify, machines
from tools.sandbox.sandbox import Sandbox, SandboxError

pytestmark = pytest.mark.sandbox

REPO_ROOT = Path(__file__).resolve().parents[3]
FAILING_UNIT = """\
[Unit]
Description=sandbox test: fails at every boot

[Service]
Type=oneshot
ExecStart=/bin/false

[Install]
WantedBy=multi-user.target
"""


def read_limit() -> int:
    return inotify.ProcSysctl().read(inotify.INSTANCES)


def lease_dirs() -> list[str]:
    try:
        return list(json.loads(inotify.RECORD.read_text())["leases"])
    except (OSError, ValueError):
        return []


def test_inotify_limit_is_raised_while_a_sandbox_lives_and_put_back_after(make_sandbox, monkeypatch) -> None:
    before = read_limit()
    # Pretend each host needs more than is free, whatever the machine runs now.
    monkeypatch.setattr(inotify, "ROOT_INSTANCES_PER_HOST", before)
    sb = make_sandbox("pytest-inotify")
    sb.create(["solo"])

    during = read_limit()
    in_use = inotify.usage().instances.get(0, 0)
    assert during > before and during >= in_use + before, (before, during, in_use)
    assert str(sb.dir) in lease_dirs()
    # The host is up with that limit: systemd, logind and a login hold theirs.
    assert sb.ssh("solo", ["systemctl is-system-running"]).stdout.strip() == "running"

    sb.destroy()

    assert read_limit() == before
    assert str(sb.dir) not in lease_dirs()


def test_a_read_only_proc_sys_refuses_hosts_beyond_the_limit_and_creates_nothing(make_sandbox) -> None:
    sb = make_sandbox("pytest-inotify-ro")
    limit = read_limit()
    # More hosts than the current limit can take for the proxy user.
    hosts = limit // inotify.PROXY_INSTANCES_PER_HOST + 1
    script = (
        "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && "
        f"exec {sys.executable} -m tools.sandbox --name {sb.name} create -n {hosts}"
    )
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{inotify.INSTANCES} is {limit}, but {hosts} sandbox host(s) need " in proc.stderr
    assert "Read-only file system" in proc.stderr
    assert f"sysctl -w {inotify.INSTANCES}=" in proc.stderr
    assert read_limit() == limit
    assert sb.leftovers() == []
    assert str(sb.dir) not in lease_dirs()


def test_each_guest_has_a_cgroup_of_its_own(sandbox: Sandbox) -> None:
    """Guests sharing one cgroup removed each other's units' cgroups (status=219/CGROUP)."""
    seen = {}
    for host in ("host1", "host2"):
        leader = machines.current_leader(sandbox.dir, host)
        lines = Path(f"/proc/{leader}/cgroup").read_text().splitlines()
        paths = {line.split(":", 2)[1]: line.split(":", 2)[2] for line in lines}
        own = f"/{cgroups.PARENT}/{sandbox.id}-{host}/payload/init.scope"
        assert paths["name=systemd"] == own or paths[""] == own, paths
        seen[host] = own
        # And no unit of the guest failed for want of its cgroup.
        journal = sandbox.ssh(host, ["journalctl -b --no-pager | grep -c 219/CGROUP || true"]).stdout.strip()
        assert journal == "0", f"{host}: units failed with 219/CGROUP"
    assert seen["host1"] != seen["host2"]


def test_a_degraded_boot_fails_naming_the_unit_and_its_status(make_sandbox) -> None:
    sb = make_sandbox("pytest-degraded")
    sb.create(["solo"])
    setup = (
        f"cat > /etc/systemd/system/sbx-fails.service <<'EOF'\n{FAILING_UNIT}EOF\n"
        "systemctl daemon-reload && systemctl enable -q sbx-fails.service"
    )
    assert sb.ssh("solo", [setup]).returncode == 0

    with pytest.raises(SandboxError) as caught:
        sb.reboot("solo")

    message = str(caught.value)
    assert message.startswith("solo: booted degraded; failed units:\n")
    assert "  sbx-fails.service: result exit-code, ExecStart status=1/FAILURE\n" in message
    assert "sbx-fails.service: Main process exited, code=exited, status=1/FAILURE" in message
    # Tolerated by name, the same boot is fine.
    sb.reboot("solo", tolerate_failed=["sbx-fails.service"])
    assert sb.ssh("solo", ["systemctl is-failed sbx-fails.service"]).stdout.strip() == "failed"
    sb.destroy()
    assert sb.leftovers() == []
