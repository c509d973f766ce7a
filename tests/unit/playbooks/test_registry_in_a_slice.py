"""A slice of the inventory (an AWX job slice, a --limit run) sees the whole registry.

Job slicing runs the playbook on part of the hosts but loads the whole
inventory; the onboard playbook's registry is every host the pattern names in
the inventory, so a host's upstreams in a slice are the same as in a run on
every host, when each host's address comes from the inventory.
"""

from pathlib import Path

from module_runner import run_playbook

INVENTORY = """[mesh]
web1 ansible_connection=local ansible_host=10.0.0.1 hostmesh_services='[{"name": "web", "port": 8080}]'
web2 ansible_connection=local ansible_host=10.0.0.2 hostmesh_services='[{"name": "web", "port": 8080}]'
db1 ansible_connection=local hostmesh_address=10.0.0.3 hostmesh_services='[{"name": "db", "port": 5432}]'
client ansible_connection=local ansible_host=10.0.0.4
[mesh:vars]
ansible_python_interpreter={{ ansible_playbook_python }}
"""

# The registry as playbooks/onboard.yml computes it.
PLAYBOOK = """- name: The onboard playbook's registry
  hosts: mesh
  gather_facts: false
  vars:
    hostmesh_mesh_hosts: "{{ query('ansible.builtin.inventory_hostnames', 'mesh') }}"
  tasks:
    - name: Show each host's upstreams
      ansible.builtin.debug:
        msg: "{{ hostvars | hostmesh.sidecar.mesh_upstreams(hostmesh_mesh_hosts, inventory_hostname, 'cluster.local') }}"
"""


def test_a_slice_gives_each_host_the_same_upstreams_as_a_whole_run(tmp_path: Path) -> None:
    (tmp_path / "inventory.ini").write_text(INVENTORY)
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    (tmp_path / "whole").mkdir()
    (tmp_path / "slice").mkdir()
    proc, whole = run_playbook(tmp_path / "whole", tmp_path / "inventory.ini", tmp_path / "play.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc, slice_ = run_playbook(
        tmp_path / "slice", tmp_path / "inventory.ini", tmp_path / "play.yml", "--limit", "client,db1"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(slice_) == ["client", "db1"]
    names = sorted(u["name"] for u in whole["client"])
    assert names == ["db", "web"], whole["client"]
    web = next(u for u in whole["client"] if u["name"] == "web")
    assert sorted(web["endpoints"]) == ["10.0.0.1:8080", "10.0.0.2:8080"], web
    for host in ("client", "db1"):
        assert slice_[host] == whole[host], (host, slice_[host], whole[host])
