"""Sandbox hosts behave like small VMs: systemd, SSH, their own firewall, reboots."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from sandbox_helpers import REPO_ROOT, ansible, sh

from tools.sandbox import machines
from tools.sandbox.sandbox import Sandbox

pytestmark = pytest.mark.sandbox

PROBE_UNIT = """\
[Unit]
Description=sandbox test: proves enabled units start at boot

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'cat /proc/sys/kernel/random/boot_id > /run/sbx-probe-boot'

[Install]
WantedBy=multi-user.target
"""


def cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """``python3 -m tools.sandbox`` with these arguments, from the repository's root."""
    return subprocess.run(
        ["python3", "-m", "tools.sandbox", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def boot_id(sb: Sandbox, host: str) -> str:
    return sh(sb, host, "cat /proc/sys/kernel/random/boot_id")


def test_hosts_run_systemd_as_pid1_and_accept_ssh(sandbox: Sandbox) -> None:
    for host in ("host1", "host2"):
        assert sh(sandbox, host, "ps -o comm= -p 1") == "systemd"
        # A degraded boot fails create() (test_sandbox_limits.py), so every host runs clean.
        state = sandbox.ssh(host, ["systemctl is-system-running"]).stdout.strip()
        assert state == "running", state
        assert sh(sandbox, host, "hostname") == host


def test_ansible_reaches_hosts_and_sees_systemd(sandbox: Sandbox) -> None:
    proc = ansible(
        sandbox,
        "sandbox",
        "ansible.builtin.setup",
        "-a",
        "filter=ansible_service_mgr",
        "-o",
        timeout=180,
        ANSIBLE_HOST_KEY_CHECKING="True",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count('"ansible_service_mgr": "systemd"') == 2, proc.stdout
    # Ansible's connection masters are the sandbox's own, never shared with a
    # later sandbox that gets the same addresses.
    # (Ansible names each master's socket after the address, port and user.)
    masters = [path.name for path in sandbox.control_dir.iterdir() if path.is_socket()]
    assert len(masters) == 2, masters


def test_host_reaches_peer_by_address_and_name(sandbox: Sandbox) -> None:
    sh(
        sandbox,
        "host2",
        "mkdir -p /srv/www && echo hello-from-host2 > /srv/www/index.html && "
        "systemd-run --unit sbx-web -p WorkingDirectory=/srv/www "
        "python3 -m http.server 8080 --bind 0.0.0.0",
    )
    address = sandbox.hosts()["host2"]
    deadline = time.monotonic() + 15
    while True:
        proc = sandbox.ssh("host1", [f"curl -sf --max-time 2 http://{address}:8080/index.html"])
        if proc.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert proc.stdout.strip() == "hello-from-host2"
    assert sh(sandbox, "host1", "curl -sf --max-time 2 http://host2:8080/") == "hello-from-host2"
    sh(sandbox, "host2", "systemctl stop sbx-web")


def test_each_host_has_its_own_firewall(sandbox: Sandbox) -> None:
    rule = "-A OUTPUT -p tcp -m tcp --dport 9 -m comment --comment sbx-own-fw -j REJECT"
    sh(sandbox, "host1", f"iptables {rule.replace('-A', '-I', 1)} && sysctl -qw net.ipv4.ip_forward=1")
    try:
        assert "sbx-own-fw" in sh(sandbox, "host1", "iptables-save")
        assert "sbx-own-fw" not in sh(sandbox, "host2", "iptables-save")
        assert sh(sandbox, "host2", "sysctl -n net.ipv4.ip_forward") == "0"
        machine = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False)
        assert "sbx-own-fw" not in machine.stdout
    finally:
        sh(
            sandbox,
            "host1",
            "iptables -D OUTPUT -p tcp --dport 9 -m comment "
            "--comment sbx-own-fw -j REJECT; sysctl -qw net.ipv4.ip_forward=0",
        )


def test_reboot_keeps_files_and_starts_enabled_units(sandbox: Sandbox) -> None:
    sh(sandbox, "host1", f"cat > /etc/systemd/system/sbx-probe.service <<'EOF'\n{PROBE_UNIT}EOF")
    sh(
        sandbox,
        "host1",
        "systemctl daemon-reload && systemctl enable sbx-probe.service && "
        "echo kept > /root/marker && iptables -t nat -N SBX_TEST",
    )
    before = boot_id(sandbox, "host1")
    # What an SSH login leaves cannot hold a shutdown for minutes (see rootfs.SYSTEM_CONF_DROPIN).
    session = sh(sandbox, "host1", "cat /proc/self/cgroup").rsplit("/", 1)[1]
    assert session.startswith("session-") and session.endswith(".scope"), session
    for unit, bound in (("user@0.service", "5s"), (session, "10s")):
        assert sh(sandbox, "host1", f"systemctl show -p TimeoutStopUSec --value {unit}") == bound, unit

    sandbox.reboot("host1")

    assert boot_id(sandbox, "host1") != before
    assert sh(sandbox, "host1", "cat /root/marker") == "kept"
    assert sh(sandbox, "host1", "systemctl is-active sbx-probe.service") == "active"
    assert sh(sandbox, "host1", "cat /run/sbx-probe-boot") == boot_id(sandbox, "host1")
    # Like a VM's kernel, a rebooted host starts with an empty ruleset.
    assert "SBX_TEST" not in sh(sandbox, "host1", "iptables-save -t nat")
    # The peer still reaches it at the same address.
    sh(sandbox, "host2", "ping -c1 -W2 host1 >/dev/null")


def test_reboot_from_inside_the_guest_boots_it_again(sandbox: Sandbox) -> None:
    before = boot_id(sandbox, "host2")
    sandbox.ssh("host2", ["systemctl reboot"])
    deadline = time.monotonic() + 60
    after = before
    while after == before and time.monotonic() < deadline:
        time.sleep(0.5)
        proc = sandbox.ssh("host2", ["cat /proc/sys/kernel/random/boot_id"], timeout=10)
        after = proc.stdout.strip() if proc.returncode == 0 else before
    assert after != before, "host2 did not come back after `systemctl reboot`"
    sandbox.wait_ready("host2")
    assert sandbox.status()["hosts"]["host2"]["boots"] >= 2


def test_destroy_removes_everything_even_after_a_killed_run(make_sandbox) -> None:
    sb = make_sandbox("pytest-destroy")
    sb.create(["solo"])
    assert sb.status()["hosts"]["solo"]["running"]
    # An Ansible run leaves an SSH connection master behind (ControlPersist).
    proc = ansible(sb, "solo", "ansible.builtin.ping", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [path for path in sb.control_dir.iterdir() if path.is_socket()]
    # Simulate a run killed hard: the supervisor dies without tearing anything down.
    runtime = json.loads((sb.dir / "hosts/solo/runtime.json").read_text())
    os.kill(runtime["supervisor_pid"], signal.SIGKILL)
    time.sleep(0.5)
    assert sb.leftovers(), "expected the orphaned host to still be there"

    sb.destroy()

    assert sb.leftovers() == []
    assert not machines.alive(runtime["nspawn_pid"])
    assert not sb.control_dir.exists()
    masters = subprocess.run(["pgrep", "-f", f"ssh: {sb.control_dir}/"], capture_output=True, text=True, check=False)
    assert masters.stdout == "", "the sandbox's SSH connection masters must be stopped"
    sb.destroy()  # idempotent
    assert sb.leftovers() == []


def test_cli_run_creates_runs_and_always_destroys(make_sandbox) -> None:
    sb = make_sandbox("pytest-cli-run")
    proc = cli(
        "--name", sb.name, "run", "--hosts", "one", "--",
        "sh", "-c", 'ssh -F "$SANDBOX_SSH_CONFIG" one systemctl is-system-running; exit 3',
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "running"
    # A failing command prints each host's diagnostics.
    assert "===== sandbox pytest-cli-run host one =====" in proc.stderr
    assert sb.leftovers() == []


def test_cli_names_a_bad_suite_and_boots_nothing(make_sandbox) -> None:
    sb = make_sandbox("pytest-cli-suite")
    proc = cli("--name", sb.name, "create", "--hosts", "web,db:buster", timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (
        "sandbox create failed: host 'db:buster': suite 'buster' is not one the sandbox builds; "
        "use one of: bullseye, bookworm, trixie"
    ) in proc.stderr
    assert sb.leftovers() == []


def test_cli_status_of_a_missing_sandbox() -> None:
    proc = cli("--name", "pytest-never-made", "status", "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["created"] is False
