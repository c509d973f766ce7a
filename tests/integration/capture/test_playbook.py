"""traffic_capture driven by the real ansible-playbook, as users run it."""

import os
import re
import sys

from netlab import COLLECTIONS

BIN = os.path.dirname(sys.executable)

PLAYBOOK = """
- name: Capture traffic
  hosts: all
  gather_facts: false
  tasks:
    - name: Apply the seed's chains
      hostmesh.sidecar.traffic_capture:
        chain_prefix: ISTIO_
        protect_established: false
        ip_families: [ipv4, ipv6]
      register: capture
    - name: Show the rendered rules
      ansible.builtin.debug:
        var: capture.rules.ipv4
"""


def play(lab, tmp_path, *flags):
    path = tmp_path / "capture.yml"
    path.write_text(PLAYBOOK)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    argv = [os.path.join(BIN, "ansible-playbook"), "-i", "localhost,", "-c", "local", *flags, str(path)]
    argv[1:1] = ["-e", "ansible_python_interpreter=%s" % sys.executable]
    proc = lab.run(lab.host, argv, check=False, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def recap(output):
    match = re.search(r"ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", output)
    return {key: int(value) for key, value in zip(("ok", "changed", "unreachable", "failed"), match.groups())}


def test_check_converge_then_idempotent(lab, tmp_path):
    before = lab.ruleset()
    checked = play(lab, tmp_path, "--check", "--diff")
    assert recap(checked)["changed"] == 1
    assert "+-A ISTIO_OUTPUT -j ISTIO_REDIRECT" in checked.replace("*nat ", "")
    assert lab.ruleset() == before, "check mode changed the host"

    first = play(lab, tmp_path)
    assert recap(first)["changed"] == 1
    assert "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN" in first

    second = play(lab, tmp_path)
    assert recap(second) == {"ok": 2, "changed": 0, "unreachable": 0, "failed": 0}
