"""The agent and capture roles' plan entry points on the controller: the port contract reaches both, bad settings fail first.

The plans run with the real ansible-playbook against local hosts; they only
check variables and sum up (set_fact and assert), so nothing is changed.
"""

from __future__ import annotations

import json
from pathlib import Path

from module_runner import run_playbook

INVENTORY = """[mesh]
default
moved hostmesh_ports='{"outbound": 16001, "inbound": 16006, "status": 16020, "health": 16021, "prometheus": 16090}'
repeated hostmesh_ports='{"outbound": 16001}' hostmesh_capture_options='{"proxy_port": 16001}'
clash hostmesh_ports='{"outbound": 16001}' hostmesh_capture_options='{"proxy_port": 15001}'
shared hostmesh_ports='{"status": 15021}'
extra hostmesh_agent_config_extra='{"ports": {"status": 16020}}'
old_url hostmesh_agent_ready_url=http://127.0.0.1:15020/healthz/ready
[mesh:vars]
ansible_connection=local
ansible_python_interpreter={{ ansible_playbook_python }}
"""

PLAYBOOK = """- name: Plan the agent and capture as the sidecar role does, and show what they would apply
  hosts: mesh
  gather_facts: false
  vars:
    hostmesh_services: [{name: web, port: 8080, protocol: http}]
  tasks:
    - name: Plan the agent
      ansible.builtin.import_role:
        name: hostmesh.sidecar.agent
        tasks_from: plan
    - name: Plan capture
      ansible.builtin.import_role:
        name: hostmesh.sidecar.capture
        tasks_from: plan
    - name: Show the plans
      ansible.builtin.debug:
        msg:
          config: "{{ hostmesh_agent_config }}"
          agent_ready: "{{ hostmesh_agent_ready_endpoint }}"
          capture: "{{ hostmesh_capture_present_options }}"
          capture_ready: "{{ hostmesh_capture_ready_endpoint }}"
          records: "{{ [hostmesh_agent_record, hostmesh_capture_record] }}"
"""


CAPTURE_ONLY = """- name: Plan capture alone
  hosts: mesh
  gather_facts: false
  tasks:
    - name: Plan capture
      ansible.builtin.import_role:
        name: hostmesh.sidecar.capture
        tasks_from: plan
    - name: Show the exclusions
      ansible.builtin.debug:
        msg: "{{ hostmesh_capture_module_options.inbound_ports_exclude }}"
"""


def _run(tmp_path: Path):
    (tmp_path / "inventory.ini").write_text(INVENTORY)
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    return run_playbook(tmp_path, tmp_path / "inventory.ini", tmp_path / "play.yml")


def test_the_contract_reaches_capture_the_agent_and_the_readiness_urls(tmp_path: Path) -> None:
    proc, shown = _run(tmp_path)
    output = proc.stdout + proc.stderr
    assert set(shown) >= {"default", "moved", "repeated"}, output

    default = shown["default"]
    assert default["config"]["ports"] == {
        "admin": 15000,
        "outbound": 15001,
        "inbound": 15006,
        "status": 15020,
        "health": 15021,
        "prometheus": 15090,
        "dns": 15053,
    }
    capture = default["capture"]
    assert (capture["proxy_port"], capture["inbound_capture_port"], capture["dns_port"]) == (15001, 15006, 15053)
    assert default["config"]["ports"]["dns"] == capture["dns_port"]  # the agent's DNS is where capture sends DNS
    assert capture["inbound_ports_exclude"] == [22, 15090, 15021, 15020]
    assert default["agent_ready"] == default["capture_ready"] == "http://127.0.0.1:15020/healthz/ready"

    moved = shown["moved"]
    assert moved["config"]["ports"]["outbound"] == moved["capture"]["proxy_port"] == 16001
    assert moved["config"]["ports"]["inbound"] == moved["capture"]["inbound_capture_port"] == 16006
    assert moved["capture"]["inbound_ports_exclude"] == [22, 16090, 16021, 16020]
    assert moved["agent_ready"] == moved["capture_ready"] == "http://127.0.0.1:16020/healthz/ready"
    assert shown["repeated"]["capture"]["proxy_port"] == 16001

    # The records cover what each host is asked: moved ports are a different wanted state.
    for index in (0, 1):
        assert default["records"][index]["digest"] != moved["records"][index]["digest"]
    agent_record = default["records"][0]
    assert "/etc/hostmesh/agent.json" in agent_record["paths"]
    assert "/usr/local/lib/hostmesh/hostmesh_agent/agent.py" in agent_record["paths"]
    assert agent_record["users"] == ["hostmesh-proxy"] and agent_record["units"] == ["hostmesh-agent.service"]
    assert default["records"][1]["paths"] == [
        "/etc/hostmesh/capture-wait-ready",
        "/etc/hostmesh/capture-unit",
        "/etc/systemd/system/hostmesh-capture.service",
        "/etc/hostmesh/capture.rules",
    ]

    # A second run on an unchanged controller asks for the same state.
    (tmp_path / "again").mkdir()
    again = _run(tmp_path / "again")[1]
    assert [again[host]["records"] for host in ("default", "moved")] == [
        shown[host]["records"] for host in ("default", "moved")
    ]


def test_a_setting_against_the_contract_fails_that_host_in_the_plan(tmp_path: Path) -> None:
    proc, shown = _run(tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    # A failed host's last word is its error, not the plans.
    for host in ("clash", "shared", "extra", "old_url"):
        assert not isinstance(shown.get(host), dict), output
    assert (
        "host 'clash': hostmesh_capture_options.proxy_port: got 15001; expected 16001, the contract's"
        " hostmesh_ports.outbound, or the option left out: set it in hostmesh_ports, which capture and the agent both"
        " read" in output
    ), output
    assert "hostmesh_ports.status: got 15021; expected a port of its own: hostmesh_ports.health is 15021 too" in output
    assert "hostmesh_agent_config_extra.ports.status: got 16020; expected no ports here" in output
    assert "hostmesh_agent_ready_url is set" in output and "hostmesh_ports.status instead" in output
    print(json.dumps({host: shown[host]["agent_ready"] for host in shown if isinstance(shown[host], dict)}))


def test_the_capture_role_alone_refuses_a_port_the_agent_would_not_follow(tmp_path: Path) -> None:
    (tmp_path / "inventory.ini").write_text(INVENTORY)
    (tmp_path / "play.yml").write_text(CAPTURE_ONLY)
    proc, shown = run_playbook(tmp_path, tmp_path / "inventory.ini", tmp_path / "play.yml", "--limit", "clash,moved")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and not isinstance(shown.get("clash"), list), output
    assert shown["moved"] == [22, 16090, 16021, 16020]
    assert (
        "capture_options: host 'clash', hostmesh_capture_options.proxy_port: got 15001; expected 16001" in output
        or "sidecar_ports: host 'clash', hostmesh_capture_options.proxy_port: got 15001; expected 16001" in output
    ), output
