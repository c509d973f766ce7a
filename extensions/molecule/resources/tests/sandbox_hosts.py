"""Shared by the scenarios' testinfra tests: named hosts, the probe, common checks, diagnostics on failure.

Each test folder's conftest.py imports everything from here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import testinfra

REPO_ROOT = Path(__file__).resolve().parents[4]
# The capture tests' probe, the same one the namespace tests run.
PROBE_SRC = REPO_ROOT / "tests/tools/tcp_probe.py"
PROBE_PATH = "/usr/local/lib/tcp_probe.py"
PROBE = f"python3 {PROBE_PATH}"
SANDBOX_NAME = f"molecule-{os.environ.get('MOLECULE_SCENARIO_NAME', 'capture')}"


def _host(name: str):
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={inventory}")


def address_of(host) -> str:
    return host.ansible.get_variables()["ansible_host"]


def controller_of(host) -> str:
    """The address Ansible reaches the host from, as the host sees it."""
    return host.check_output("echo $SSH_CONNECTION").split()[0]


def connect(host, target: str, port: int, uid: int | None = None) -> dict:
    """Connect with the probe from the host (as uid, if given); its answer: label, addresses, original_dst."""
    cmd = f"{PROBE} connect {target} {port}" + (f" --uid {uid}" if uid is not None else "")
    result = host.run(cmd)
    assert result.rc == 0, f"{cmd} failed on {host.backend.host}: {result.stdout}{result.stderr}"
    return json.loads(result.stdout)


def assert_outbound_redirected_to_15001(host1, host2, probe, port: int) -> None:
    """host1's connection to host2:port lands on host1's outbound capture listener, its original destination kept."""
    probe(host1, "outbound-host1", 15001)
    target = address_of(host2)
    answer = connect(host1, target, port)
    assert answer["label"] == "outbound-host1"
    assert answer["original_dst"] == f"{target}:{port}"


def inbound_answer(host1, host2, probe, port: int, uid: int, label: str, transparent: bool = False) -> dict:
    """As uid, host1 connects to host2:port: host2's inbound capture listener (15006) takes it from host1's address."""
    probe(host2, label, 15006, transparent=transparent)
    answer = connect(host1, address_of(host2), port, uid=uid)
    assert answer["label"] == label
    assert answer["peer"].split(":")[0] == address_of(host1)
    return answer


def excluded_inbound_answer(host1, host2, probe, uid: int) -> dict:
    """As uid, host1 connects to host2's excluded port 15021: host2's listener there must answer itself."""
    probe(host2, "direct-host2", 15021)
    answer = connect(host1, address_of(host2), 15021, uid=uid)
    assert answer["label"] == "direct-host2"
    return answer


def assert_sidecar_ready(host) -> None:
    """The agent and capture units are enabled, and the sidecar answers ready (within a minute)."""
    for unit in ("hostmesh-agent.service", "hostmesh-capture.service"):
        assert host.service(unit).is_enabled, unit
    # Bounded wait: right after a reboot the sidecar may still be starting.
    ready = host.run(
        "for i in $(seq 60); do "
        "code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:15021/healthz/ready); "
        '[ "$code" = 200 ] && echo 200 && exit 0; sleep 1; done; echo "$code"; exit 1'
    )
    assert ready.stdout.strip() == "200", ready.stdout + ready.stderr
    assert host.service("hostmesh-agent.service").is_running


@pytest.fixture(scope="module")
def host1():
    return _host("host1")


@pytest.fixture(scope="module")
def host2():
    return _host("host2")


@pytest.fixture(scope="module")
def probe(host1, host2):
    """Install the probe on both hosts; yield a starter for listeners; stop them after."""
    started: list[tuple[object, str]] = []
    for host in (host1, host2):
        host.ansible("ansible.builtin.copy", f"src={PROBE_SRC} dest={PROBE_PATH} mode=0644", check=False)

    def serve(host, label: str, port: int, transparent: bool = False) -> None:
        unit = f"capture-probe-{port}"
        host.run(f"systemctl stop {unit} 2>/dev/null; systemctl reset-failed {unit} 2>/dev/null")
        host.run_expect(
            [0],
            f"systemd-run --unit {unit} {PROBE} serve {port} --label {label} --family 4"
            + (" --transparent" if transparent else ""),
        )
        host.run_expect([0], f"for i in $(seq 50); do ss -ltn | grep -q ':{port} ' && exit 0; sleep 0.1; done; exit 1")
        started.append((host, unit))

    yield serve
    for host, unit in started:
        host.run(f"systemctl stop {unit}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failed test, attach each host's journal, rulesets and logs to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        proc = subprocess.run(
            [sys.executable, "-m", "tools.sandbox", "--name", SANDBOX_NAME, "diagnose", "--unit", "capture-probe-*"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        report.sections.append(("sandbox diagnostics", proc.stdout + proc.stderr))
