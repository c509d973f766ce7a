"""One host per Debian release in one mesh: each runs its own release, and every host calls every other's
application through both sidecars. Run after onboarding and again after a reboot."""

from __future__ import annotations

import itertools
import json

import pytest
from sandbox_hosts import _host, assert_sidecar_ready

# host -> (suite, python, systemd, iptables, nft): what each release ships (tools/sandbox/suites.py).
RELEASES = {
    "deb11": ("bullseye", "3.9", "247", "1.8.7", "0.9.8"),
    "deb12": ("bookworm", "3.11", "252", "1.8.9", "1.0.6"),
    "deb13": ("trixie", "3.13", "257", "1.8.11", "1.1.3"),
}
PAIRS = list(itertools.permutations(RELEASES, 2))


@pytest.fixture(scope="module")
def hosts():
    return {name: _host(name) for name in RELEASES}


def _vars(host) -> dict:
    return host.ansible.get_variables()


@pytest.mark.parametrize("name", RELEASES)
def test_each_host_runs_its_release(name, hosts) -> None:
    host = hosts[name]
    suite, python, systemd, iptables, nft = RELEASES[name]
    assert json.loads(host.file("/etc/sandbox-rootfs.json").content_string)["suite"] == suite
    assert host.check_output("python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'") == python
    assert host.check_output("systemctl --version").split()[1] == systemd
    assert host.check_output("iptables --version").startswith(f"iptables v{iptables} ")
    assert host.check_output("nft --version").split()[1] == f"v{nft}"


@pytest.mark.parametrize("name", RELEASES)
def test_sidecar_is_ready_with_capture_on(name, hosts) -> None:
    host = hosts[name]
    assert_sidecar_ready(host)
    nat = host.check_output("iptables -t nat -S")
    assert "REDIRECT --to-ports 15001" in nat and "REDIRECT --to-ports 15006" in nat, nat
    # The agent runs on the host's own python3.
    agent_pid = host.check_output("systemctl show -p MainPID --value hostmesh-agent.service")
    exe = host.check_output(f"readlink -f /proc/{agent_pid}/exe")
    assert exe.startswith("/usr/bin/python3"), exe


def _requests_sent(host, port: int, service: str) -> int:
    """The sidecar's count of requests sent to the service's outbound cluster."""
    stat = f"cluster.outbound|{port}||{service}.upstream_rq_total:"
    out = host.check_output("curl -s --unix-socket /run/hostmesh/admin.sock http://localhost/stats")
    return sum(int(line[len(stat) :]) for line in out.splitlines() if line.startswith(stat))


@pytest.mark.parametrize(("client", "server"), PAIRS, ids=[f"{c}-to-{s}" for c, s in PAIRS])
def test_call_goes_through_both_sidecars(client, server, hosts) -> None:
    caller, callee = hosts[client], hosts[server]
    service = _vars(callee)["hostmesh_services"][0]["name"]
    port = _vars(callee)["platforms_app_port"]
    sent = _requests_sent(caller, port, service)
    before = int(callee.check_output("journalctl -u echo-app.service --no-pager -o cat | wc -l"))
    body = caller.check_output(f"curl -sf --max-time 10 http://{_vars(callee)['ansible_host']}:{port}/")
    assert body.strip() == f"echo from {server}"
    # The caller's sidecar sent it upstream, over mTLS ...
    assert _requests_sent(caller, port, service) > sent
    # ... and it reached the application from the callee's sidecar (127.0.0.6).
    lines = callee.check_output("journalctl -u echo-app.service --no-pager -o cat").splitlines()[before:]
    assert lines and lines[-1].startswith("127.0.0.6 "), lines
