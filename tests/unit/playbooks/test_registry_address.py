"""The onboard playbook gathers a host's default address only when the inventory gives the registry none."""

from pathlib import Path

from module_runner import run_playbook

ROOT = Path(__file__).resolve().parents[3]
TASKS = ROOT / "playbooks" / "tasks" / "registry_address.yml"

INVENTORY = """[mesh]
bare ansible_connection=local hostmesh_services='[{"name": "web", "port": 8080}]'
named ansible_connection=local ansible_host=127.0.0.1
addressed ansible_connection=local hostmesh_address=10.9.9.9
xds ansible_connection=local hostmesh_mode=xds
[mesh:vars]
ansible_python_interpreter={{ ansible_playbook_python }}
"""

PLAYBOOK = """- name: The onboard playbook's address step, then what the registry makes of it
  hosts: mesh
  gather_facts: false
  tasks:
    - name: Learn the default address of hosts the inventory gives none
      ansible.builtin.import_tasks: %s
    - name: Show the result
      ansible.builtin.debug:
        msg:
          gathered: "{{ ansible_default_ipv4 is defined }}"
          address: "{{ ansible_default_ipv4.address | default('') }}"
          upstreams: "{{ hostvars | hostmesh.sidecar.mesh_upstreams(['bare', 'named'], 'named')
                         if inventory_hostname == 'named' and hostvars['bare'].ansible_default_ipv4.address is defined
                         else [] }}"
"""


def test_only_a_host_without_address_gathers_and_the_registry_uses_it(tmp_path):
    (tmp_path / "inventory.ini").write_text(INVENTORY)
    (tmp_path / "play.yml").write_text(PLAYBOOK % TASKS)
    proc, shown = run_playbook(tmp_path, tmp_path / "inventory.ini", tmp_path / "play.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {host: shown[host]["gathered"] for host in shown} == {
        "bare": True,
        "named": False,
        "addressed": False,
        "xds": False,
    }
    address = shown["bare"]["address"]
    print("bare host default address:", address, "named host upstreams:", shown["named"]["upstreams"])
    if address:
        assert shown["named"]["upstreams"][0]["endpoints"] == ["%s:8080" % address], shown["named"]
