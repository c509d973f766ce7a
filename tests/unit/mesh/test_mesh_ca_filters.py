"""The mesh_ca role's per-host checks: the module's own rules, spelt with the role's variables."""

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.hostmesh.sidecar.plugins.filter.mesh_ca import (
    mesh_ca_batch_problems,
    mesh_ca_default_dir,
    mesh_ca_dir_problems,
    mesh_workload_problems,
)

SETTINGS = {"ca_cert_path": "/ca/cert.pem", "ca_key_path": "/ca/key.pem", "days": 30, "renew_days": 10}
WORKLOAD = {"name": "vm0", "service_account": "vm0", "cert_path": "/ca/vm0/cert.pem", "key_path": "/ca/vm0/key.pem"}
NAMES = {"namespace": "hostmesh_namespace", "renew_days": "hostmesh_cert_renew_days"}


def test_a_good_workload_has_no_problem() -> None:
    assert mesh_workload_problems(WORKLOAD, SETTINGS, NAMES) == []
    assert mesh_workload_problems({**WORKLOAD, "namespace": "prod", "dns_names": ["vm0.example"]}, SETTINGS) == []


def test_the_problem_names_the_variable_and_the_value() -> None:
    assert mesh_workload_problems({**WORKLOAD, "namespace": "Prod"}, SETTINGS, NAMES) == [
        "hostmesh_namespace: got 'Prod'; expected a lower-case DNS-style name (letters, digits, '-', '.')"
    ]
    # Without a name for it, the module's option stays as the module spells it.
    assert mesh_workload_problems({**WORKLOAD, "dns_names": ["bad name"]}, SETTINGS, NAMES) == [
        "dns_names: got 'bad name'; expected DNS host names"
    ]
    assert mesh_workload_problems(WORKLOAD, {**SETTINGS, "renew_days": 30}, NAMES) == [
        "hostmesh_cert_renew_days: got 30; expected 0 or more and less than days (30)"
    ]


def test_the_mesh_value_is_the_most_common_and_the_earliest_among_equals() -> None:
    batch = {"vm0": {"domain": "a"}, "vm1": {"domain": "b"}, "vm2": {"domain": "b"}}
    assert mesh_ca_batch_problems(batch, "vm1") == []
    assert mesh_ca_batch_problems(batch, "vm0") == [
        'domain is "a" on vm0 but "b" on vm1, vm2: the CA settings are the mesh\'s and must be the same on every host'
    ]
    tie = {"vm0": {"domain": "a"}, "vm1": {"domain": "b"}}
    assert mesh_ca_batch_problems(tie, "vm0") == []
    assert mesh_ca_batch_problems(tie, "vm1")[0].startswith('domain is "b" on vm1 but "a" on vm0:')


def test_lists_compare_whole_and_long_host_lists_are_counted() -> None:
    batch = {"vm%d" % i: {"extra": ["/ca/corp.pem"]} for i in range(6)}
    batch["odd"] = {"extra": []}
    assert mesh_ca_batch_problems(batch, "vm5") == []
    assert mesh_ca_batch_problems(batch, "odd") == [
        'extra is [] on odd but ["/ca/corp.pem"] on vm0, vm1, vm2 and 3 more: the CA settings are the mesh\'s'
        " and must be the same on every host"
    ]


def test_bad_arguments_are_named() -> None:
    with pytest.raises(AnsibleFilterError, match="'vm9' is not one of the batch's hosts"):
        mesh_ca_batch_problems({"vm0": {}}, "vm9")
    with pytest.raises(AnsibleFilterError, match="expected a workload mapping"):
        mesh_workload_problems("vm0", SETTINGS)


def test_settings_are_taken_with_the_module_types() -> None:
    # Before ansible-core 2.19 a templated "{{ x | int }}" inside a dict stays a string.
    templated = {**SETTINGS, "days": "30", "renew_days": "10", "create_ca": "yes"}
    assert mesh_workload_problems({**WORKLOAD, "force": "false"}, templated, NAMES) == []
    # ansible-core's own wording of the type error differs between releases; the
    # variable, the option and the type asked for are what every release says.
    [problem] = mesh_workload_problems(WORKLOAD, {**SETTINGS, "renew_days": "many"}, NAMES)
    assert problem.startswith("hostmesh_cert_renew_days: argument 'renew_days' is of type "), problem
    assert "unable to convert to int" in problem, problem


def test_the_default_ca_dir_is_the_users_data_home() -> None:
    assert mesh_ca_default_dir("", "/home/ops", "cluster.local") == "/home/ops/.local/share/hostmesh/ca/cluster.local"
    assert mesh_ca_default_dir("/srv/data", "/home/ops", "mesh.example") == "/srv/data/hostmesh/ca/mesh.example"
    # A relative XDG_DATA_HOME is ignored, as the XDG spec says; no usable home gives "".
    assert mesh_ca_default_dir("data", "/home/ops", "m") == "/home/ops/.local/share/hostmesh/ca/m"
    assert mesh_ca_default_dir("", "", "m") == ""
    assert mesh_ca_default_dir(None, "relative", "m") == ""


def test_ca_dir_problems_name_the_variable_and_the_value(tmp_path) -> None:
    assert mesh_ca_dir_problems(str(tmp_path / "new" / "ca")) == []
    assert mesh_ca_dir_problems(str(tmp_path)) == []
    assert mesh_ca_dir_problems("ca") == ["hostmesh_ca_dir: got 'ca'; expected an absolute path on the controller"]
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert mesh_ca_dir_problems(str(a_file), "my_dir") == [
        "my_dir: got '%s'; it exists and is not a directory" % a_file
    ]
    assert mesh_ca_dir_problems(str(a_file / "x" / "ca")) == [
        "hostmesh_ca_dir: got '%s'; it cannot be created: %s is not a directory" % (a_file / "x" / "ca", a_file)
    ]
    assert mesh_ca_dir_problems("")[0].startswith('hostmesh_ca_dir: got ""; set it to a controller directory')
    assert nothing_made(tmp_path) == ["file"]


def nothing_made(directory) -> list:
    return sorted(path.name for path in directory.iterdir())
