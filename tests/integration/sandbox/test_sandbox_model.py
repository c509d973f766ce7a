"""The sandbox's pure parts: apt source discovery, subnets, rendered files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.sandbox import inventory, network, rootfs, suites

DEB822 = """\
Types: deb
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main
"""


def test_apt_source_prefers_the_main_archive_from_deb822() -> None:
    src = rootfs.parse_apt_sources([DEB822], [])
    assert src == rootfs.AptSource("http://mirror.invalid/debian", "bookworm")


def test_apt_source_reads_one_line_format_and_skips_security() -> None:
    text = (
        "deb http://mirror.invalid/debian-security bookworm-security main\n"
        "deb [arch=amd64] http://mirror.invalid/debian bookworm main\n"
    )
    src = rootfs.parse_apt_sources([], [text])
    assert src == rootfs.AptSource("http://mirror.invalid/debian", "bookworm")


def test_apt_source_missing_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="no Debian archive"):
        rootfs.parse_apt_sources(["Types: deb-src\nURIs: x\nSuites: y\n"], [])


def test_cache_key_changes_with_the_package_list() -> None:
    packages = suites.BASE_PACKAGES
    base = rootfs.cache_key("bookworm", packages)
    assert base == rootfs.cache_key("bookworm", reversed(packages))
    assert base != rootfs.cache_key("bookworm", (*packages, "tcpdump"))
    assert base != rootfs.cache_key("trixie", packages)
    assert base != rootfs.cache_key("bookworm", packages, ["resolved"])


def test_subnet_skips_networks_in_use() -> None:
    assert network.pick_subnet([]) == "10.213.1.0/24"
    assert network.pick_subnet(["10.213.1.1/24", "10.213.2.0/24"]) == "10.213.3.0/24"


def test_subnet_exhausted_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no free /24"):
        network.pick_subnet(["10.213.0.0/16"])
    with pytest.raises(RuntimeError, match="no free /24"):
        network.pick_subnet(["10.0.0.0/8"])


def test_addresses_and_names_fit_the_layout() -> None:
    assert network.controller_address("10.213.7.0/24") == "10.213.7.1"
    assert network.host_address("10.213.7.0/24", 0) == "10.213.7.11"
    assert len(network.controller_link("abcdef")) <= 15
    assert len(network.host_peer_link("h" * 12)) <= 15
    assert network.host_mac("abcdef", "host1") == network.host_mac("abcdef", "host1")
    assert network.host_mac("abcdef", "host1").startswith("02:")


def test_inventory_and_ssh_config_name_every_host() -> None:
    hosts = {"host1": "10.213.7.11", "host2": "10.213.7.12"}
    inv = inventory.render_inventory(hosts, Path("/k/id"), Path("/k/ssh_config"), Path("/tmp/hm-ssh-abcdef"))
    assert '        host2:\n          ansible_host: "10.213.7.12"' in inv
    assert 'ansible_control_path_dir: "/tmp/hm-ssh-abcdef"' in inv
    assert 'ansible_ssh_common_args: "-F /k/ssh_config"' in inv
    with_vars = inventory.render_inventory(
        hosts,
        Path("/k/id"),
        Path("/k/ssh_config"),
        Path("/tmp/hm-ssh-abcdef"),
        {"host2": {"hostmesh_sandbox_suite": "trixie", "hostmesh_sandbox_profiles": ["resolved"]}},
    )
    assert (
        '        host2:\n          ansible_host: "10.213.7.12"\n'
        '          hostmesh_sandbox_suite: "trixie"\n'
        '          hostmesh_sandbox_profiles: ["resolved"]\n'
    ) in with_vars
    cfg = inventory.render_ssh_config(hosts, Path("/k/id"), Path("/k/known_hosts"))
    assert "Host host1 10.213.7.11\n  HostName 10.213.7.11" in cfg
    assert "StrictHostKeyChecking yes" in cfg
    known = inventory.render_known_hosts({"host1": ("10.213.7.11", ["ssh-ed25519 AAAA c"])})
    assert known == "host1,10.213.7.11 ssh-ed25519 AAAA\n"


def test_molecule_suite_refuses_scenarios_molecule_would_half_skip() -> None:
    from tools.sandbox import molecule_suite

    assert "capture" in molecule_suite.scenarios()
    for name in molecule_suite.scenarios():
        assert molecule_suite.check_scenario(name) == [], name
    assert "no extensions/molecule/nope/molecule.yml" in molecule_suite.check_scenario("nope")[0]


def test_molecule_suite_names_a_missing_playbook_and_missing_tests(tmp_path, monkeypatch) -> None:
    from tools.sandbox import molecule_suite

    scenario = tmp_path / "broken"
    scenario.mkdir()
    (scenario / "molecule.yml").write_text(
        "ansible:\n  playbooks:\n    create: ../resources/playbooks/create.yml\n"
        "    destroy: ../resources/playbooks/destroy.yml\n    converge: converge.yml\n"
        "verifier:\n  name: testinfra\n  directory: ../tests\n"
        "scenario:\n  test_sequence:\n    - side_effect\n    - side_effect other.yml\n"
    )
    monkeypatch.setattr(molecule_suite, "MOLECULE_DIR", tmp_path)
    problems = " ".join(molecule_suite.check_scenario("broken"))
    assert "the converge playbook converge.yml does not exist" in problems
    assert "the create playbook ../resources/playbooks/create.yml does not exist" in problems
    assert "no test_*.py in the verifier directory" in problems
    assert "the side_effect playbook other.yml does not exist" in problems
    assert "the sequence runs side_effect, but ansible.playbooks sets no side_effect playbook" in problems


def test_molecule_suite_recap_says_why_a_scenario_failed() -> None:
    from tools.sandbox import molecule_suite

    output = "\n".join(
        [
            "INFO     [fail_mode > side_effect] Executing",
            "TASK [Reboot] ******",
            "ok: [host2]",
            "fatal: [host1]: UNREACHABLE! => {"
            + '"changed": false, "msg": "Failed to connect to the host via ssh: timed out", "unreachable": true}',
            "PLAY RECAP *****",
            "host1 : ok=2 changed=1 unreachable=1 failed=0",
            "../resources/tests/fail_mode/test_fail_mode.py::test_open PASSED [ 50%]",
            "../resources/tests/fail_mode/test_fail_mode.py::test_closed FAILED [ 60%]",
            "FAILED ../resources/tests/fail_mode/test_fail_mode.py::test_closed - AssertionError: " + "x" * 600,
            "CRITICAL Idempotence test failed because of the following tasks:",
            "* [host1] => hostmesh.sidecar.capture : Apply capture",
            "fail_mode > destroy: Executed: Successful",
            "fail_mode > side_effect: Executed: Failed",
        ]
    )
    why = molecule_suite.why_failed(output)
    assert why[0].startswith("fatal: [host1]: UNREACHABLE!")
    assert any(line.startswith("FAILED ../resources/tests/fail_mode/test_fail_mode.py::test_closed - ") for line in why)
    assert "* [host1] => hostmesh.sidecar.capture : Apply capture" in why
    assert why[-1] == "fail_mode > side_effect: Executed: Failed"
    # Neither passing lines, nor a test's progress line, nor a successful step.
    assert not [line for line in why if "PASSED" in line or "[ 60%]" in line or "Successful" in line or "ok: " in line]
    assert max(len(line) for line in why) == molecule_suite.WHY_FAILED_MAX_CHARS
    assert molecule_suite.why_failed("ok: [host1]\nPLAY RECAP\n") == []
    many = molecule_suite.why_failed("\n".join(f"fatal: [host{i}]: FAILED!" for i in range(40)))
    assert len(many) == molecule_suite.WHY_FAILED_MAX_LINES + 1
    assert many[-1] == "... and 16 more such lines in the log above"


def test_stop_ssh_masters_by_address_leaves_other_masters_and_the_directory(tmp_path) -> None:
    import socket

    from tools.sandbox.sandbox import stop_ssh_masters

    listeners = []
    for name in ("10.213.1.11-22-root", "10.213.1.12-22-root", "10.213.2.11-22-root"):
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(tmp_path / name))
        listeners.append(sock)
    (tmp_path / "10.213.1.11-notes").write_text("not a socket")
    try:
        stopped = stop_ssh_masters(tmp_path, ["10.213.1.11", "10.213.1.12"])
        assert stopped == ["ssh master 10.213.1.11-22-root", "ssh master 10.213.1.12-22-root"]
        assert tmp_path.is_dir()
        everything = stop_ssh_masters(tmp_path)
        assert everything[-1] == f"dir {tmp_path}" and "ssh master 10.213.2.11-22-root" in everything
        assert not tmp_path.exists()
        assert stop_ssh_masters(tmp_path) == []
    finally:
        for sock in listeners:
            sock.close()


def test_run_refuses_a_sandbox_that_exists_and_leaves_it(tmp_path, capsys) -> None:
    """`run` creates (destroying first) and destroys its own hosts: never an existing sandbox's."""
    from tools.sandbox.__main__ import main

    state = tmp_path / "run" / "taken" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"subnet": "10.213.9.0/24", "hosts": {}}')
    assert main(["--base-dir", str(tmp_path), "--name", "taken", "run", "--", "true"]) == 1
    assert "sandbox taken exists" in capsys.readouterr().err
    assert state.read_text() == '{"subnet": "10.213.9.0/24", "hosts": {}}'
