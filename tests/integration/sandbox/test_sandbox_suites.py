"""Hosts of Debian 11, 12 and 13 run what their release ships; a host can have systemd-resolved."""

from __future__ import annotations

import json
import re

import pytest
from sandbox_helpers import ansible, sh

from tools.sandbox import commands, suites
from tools.sandbox.sandbox import Sandbox

pytestmark = pytest.mark.sandbox

SUITE_OF = {"deb11": "bullseye", "deb12": "bookworm", "deb13": "trixie", "dns": "bookworm"}

# A DNS query for an A record over UDP, answered or not (stdlib only, run on the host).
DNS_QUERY = r"""
import socket, struct, sys
name, server = sys.argv[1], sys.argv[2]
query = struct.pack(">HHHHHH", 0x5342, 0x0100, 1, 0, 0, 0)
query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(3)
sock.sendto(query, (server, 53))
reply = sock.recv(512)
answers = struct.unpack(">H", reply[6:8])[0]
print("rcode=%d answers=%d" % (reply[3] & 0x0F, answers))
if answers:
    print("address=" + socket.inet_ntoa(reply[-4:]))
"""


@pytest.mark.parametrize("host", ["deb11", "deb12", "deb13"])
def test_each_suite_runs_its_release_of_python_systemd_iptables_and_nft(suites_sandbox: Sandbox, host: str) -> None:
    suite = suites.SUITES[SUITE_OF[host]]
    assert suites_sandbox.host_specs()[host].suite == suite.name
    assert sh(suites_sandbox, host, ". /etc/os-release; echo $VERSION_CODENAME $VERSION_ID") == (
        f"{suite.name} {suite.debian}"
    )
    assert sh(suites_sandbox, host, "python3 --version").startswith(f"Python {suite.python}.")
    assert sh(suites_sandbox, host, "systemctl --version").splitlines()[0].startswith(f"systemd {suite.systemd} ")
    assert re.match(
        rf"iptables v{re.escape(suite.iptables)} \(nf_tables\)", sh(suites_sandbox, host, "iptables --version")
    )
    assert sh(suites_sandbox, host, "nft --version").startswith(f"nftables v{suite.nftables} ")
    assert sh(suites_sandbox, host, "systemctl is-system-running") == "running"


def test_ansible_reaches_every_suite_and_the_inventory_names_it(suites_sandbox: Sandbox) -> None:
    proc = ansible(
        suites_sandbox,
        "sandbox",
        "ansible.builtin.setup",
        "-a",
        "filter=ansible_service_mgr,ansible_distribution_release,ansible_python_version",
        "-o",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    facts = {}
    for line in proc.stdout.splitlines():
        host, _sep, result = line.partition(" | SUCCESS => ")
        if result:
            facts[host] = json.loads(result)["ansible_facts"]
    assert set(facts) == set(SUITE_OF), proc.stdout
    inventory = suites_sandbox.inventory.read_text()
    for host, suite in SUITE_OF.items():
        assert facts[host]["ansible_service_mgr"] == "systemd", (host, facts[host])
        assert facts[host]["ansible_distribution_release"] == suite, (host, facts[host])
        assert facts[host]["ansible_python_version"].startswith(suites.SUITES[suite].python + "."), facts[host]
        assert f'        {host}:\n          ansible_host: "{suites_sandbox.hosts()[host]}"\n' in inventory
        assert f'          hostmesh_sandbox_suite: "{suite}"\n' in inventory.split(f"        {host}:\n", 1)[1]
    assert 'hostmesh_sandbox_profiles: ["resolved"]' in inventory.split("        dns:\n", 1)[1]


def test_a_resolved_host_resolves_through_the_stub(suites_sandbox: Sandbox) -> None:
    assert suites_sandbox.host_specs()["dns"].profiles == ("resolved",)
    assert sh(suites_sandbox, "dns", "systemctl is-active systemd-resolved") == "active"
    assert sh(suites_sandbox, "dns", "readlink /etc/resolv.conf") == "../run/systemd/resolve/stub-resolv.conf"
    assert "nameserver 127.0.0.53" in sh(suites_sandbox, "dns", "cat /etc/resolv.conf").splitlines()
    # resolved answers on its stub for the names in /etc/hosts (its ReadEtcHosts).
    proc = commands.run(
        commands.ssh(suites_sandbox.ssh_config, "dns", ["python3", "-", "deb13", "127.0.0.53"]),
        check=False,
        input_text=DNS_QUERY,
    )
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.split() == ["rcode=0", "answers=1", f"address={suites_sandbox.hosts()['deb13']}"]
    # A host without the profile has no stub: the same query finds nobody there.
    plain = commands.run(
        commands.ssh(suites_sandbox.ssh_config, "deb12", ["python3", "-", "deb13", "127.0.0.53"]),
        check=False,
        input_text=DNS_QUERY,
    )
    assert plain.returncode != 0 and "answers=" not in plain.stdout, plain.stdout
    assert "TimeoutError" in plain.stdout or "ConnectionRefused" in plain.stdout, plain.stdout
    assert suites_sandbox.ssh("deb12", ["systemctl cat systemd-resolved.service"]).returncode != 0
