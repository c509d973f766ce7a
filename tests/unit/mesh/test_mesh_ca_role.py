"""The mesh_ca role through ansible-playbook, on the controller: changed, then changed=0."""

import json
import os
import re
from collections import namedtuple
from pathlib import Path

from mesh_helpers import load_pem_chain, make_ca, run_module, verify_svid
from module_runner import run_playbook

PLAYBOOK = Path(__file__).resolve().parent / "mesh_ca_playbook.yml"
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)


# rc; changed: {host: count}; facts: {host: what the last task showed}; output.
PlayRun = namedtuple("PlayRun", ["rc", "changed", "facts", "output"])


def play(tmp_path, *args, inventory=("-i", "localhost,", "-c", "local"), environ=None) -> PlayRun:
    """Run the playbook with the role on the controller."""
    proc, facts = run_playbook(tmp_path, inventory[1], PLAYBOOK, *inventory[2:], *args, environ=environ)
    changed = {m.group(1): int(m.group(3)) for m in RECAP.finditer(proc.stdout)}
    return PlayRun(proc.returncode, changed, facts, proc.stdout + proc.stderr)


def test_converge_then_nothing_to_change(tmp_path):
    ca_dir = tmp_path / "ca"
    rc, changed, facts, output = play(tmp_path, "-e", "hostmesh_ca_dir=%s" % ca_dir)
    assert rc == 0, output
    assert changed["localhost"] > 0
    got = facts["localhost"]
    issued = got.pop("issued")
    assert got == {
        "cert": str(ca_dir / "hosts" / "localhost" / "cert-chain.pem"),
        "key": str(ca_dir / "hosts" / "localhost" / "key.pem"),
        "ca": str(ca_dir / "ca-cert.pem"),
        "spiffe_id": "spiffe://cluster.local/ns/default/sa/localhost",
    }
    assert issued["spiffe_id"] == got["spiffe_id"] and issued["reasons"] == ["the CA is created"]
    assert oct(os.stat(ca_dir).st_mode & 0o777) == "0o700"
    assert (ca_dir / ".gitignore").read_text() == "# Private keys of the mesh CA and hosts: never commit or share.\n*\n"
    assert oct(os.stat(ca_dir / ".gitignore").st_mode & 0o777) == "0o600"
    assert oct(os.stat(got["key"]).st_mode & 0o777) == "0o600"
    verify_svid(got["ca"], got["cert"], got["spiffe_id"])

    again = play(tmp_path, "-e", "hostmesh_ca_dir=%s" % ca_dir)
    assert again.rc == 0, again.output
    assert again.changed == {"localhost": 0}, again.output


def test_check_mode_on_a_fresh_controller_writes_nothing(tmp_path):
    ca_dir = tmp_path / "ca"
    rc, changed, facts, output = play(tmp_path, "--check", "-e", "hostmesh_ca_dir=%s" % ca_dir)
    assert rc == 0, output
    assert changed["localhost"] > 0
    assert facts["localhost"]["spiffe_id"] == "spiffe://cluster.local/ns/default/sa/localhost"
    assert not ca_dir.exists()


def test_rotate_and_identity_variables(tmp_path):
    ca_dir = tmp_path / "ca"
    base = ("-e", "hostmesh_ca_dir=%s" % ca_dir, "-e", "hostmesh_trust_domain=mesh.example")
    assert play(tmp_path, *base).rc == 0
    before = (ca_dir / "hosts" / "localhost" / "key.pem").read_bytes()
    rotated = play(tmp_path, *base, "-e", "hostmesh_cert_rotate=true")
    assert rotated.rc == 0 and rotated.changed == {"localhost": 1}, rotated.output
    assert (ca_dir / "hosts" / "localhost" / "key.pem").read_bytes() != before

    rc, changed, facts, output = play(
        tmp_path, *base, "-e", "hostmesh_namespace=prod", "-e", "hostmesh_service_account=api"
    )
    assert rc == 0 and changed == {"localhost": 1}, output
    assert facts["localhost"]["spiffe_id"] == "spiffe://mesh.example/ns/prod/sa/api"
    verify_svid(facts["localhost"]["ca"], facts["localhost"]["cert"], "spiffe://mesh.example/ns/prod/sa/api")


def test_bring_your_own_ca(tmp_path):
    corp = make_ca(tmp_path, "Corp Mesh")
    cert_path, key_path = corp.cert_path, corp.key_path
    ca_dir = tmp_path / "ca"
    byo = (
        "-e",
        "hostmesh_ca_dir=%s" % ca_dir,
        "-e",
        "hostmesh_ca_cert=%s" % cert_path,
        "-e",
        "hostmesh_ca_key=%s" % key_path,
    )
    run = play(tmp_path, *byo)
    assert run.rc == 0, run.output
    facts = run.facts
    assert facts["localhost"]["ca"] == str(cert_path)
    assert not (ca_dir / "ca-cert.pem").exists() and not (ca_dir / "ca-key.pem").exists()
    verify_svid(cert_path, facts["localhost"]["cert"], facts["localhost"]["spiffe_id"])
    assert play(tmp_path, *byo).changed == {"localhost": 0}

    half = play(tmp_path, "-e", "hostmesh_ca_dir=%s" % ca_dir, "-e", "hostmesh_ca_cert=%s" % cert_path)
    assert half.rc != 0 and "hostmesh_ca_cert and hostmesh_ca_key go together" in half.output


def fleet(tmp_path, hosts, host_vars=None) -> tuple:
    """An inventory of hosts run locally, with optional per-host variables; returns play()'s inventory argument."""
    host_vars = host_vars or {}
    lines = ["[mesh]"]
    for host in hosts:
        extra = "".join(" %s=%s" % (key, value) for key, value in host_vars.get(host, {}).items())
        lines.append("%s ansible_connection=local%s" % (host, extra))
    lines += ["[mesh:vars]", "ansible_python_interpreter={{ ansible_playbook_python }}"]
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("\n".join(lines) + "\n")
    return ("-i", str(inventory))


def module_runs(output: str) -> list:
    """The hosts the role's mesh_certificate task reported for, once per run of it (once per batch)."""
    runs = []
    for block in re.split(r"^TASK \[", output, flags=re.MULTILINE)[1:]:
        if block.startswith("hostmesh.sidecar.mesh_ca : Keep the CA directory private"):
            runs += re.findall(r"^(?:ok|changed): \[([^\]\s]+)", block, flags=re.MULTILINE)
    return runs


def test_a_fleet_is_served_by_one_module_run(tmp_path):
    """Five hosts: one module run creates the CA and issues every certificate; the re-run changes nothing."""
    hosts = ["vm%d" % i for i in range(5)]
    inventory = fleet(tmp_path, hosts)
    ca_dir = tmp_path / "ca"
    args = ("-e", "hostmesh_ca_dir=%s" % ca_dir, "--forks", "5")
    rc, changed, facts, output = play(tmp_path, *args, inventory=inventory)
    assert rc == 0, output
    assert module_runs(output) == ["vm0"], output
    assert changed["vm0"] > 0
    serials = {}
    for host in hosts:
        got = facts[host]
        assert got["cert"] == str(ca_dir / "hosts" / host / "cert-chain.pem")
        assert got["key"] == str(ca_dir / "hosts" / host / "key.pem")
        assert got["ca"] == str(ca_dir / "ca-cert.pem")
        assert got["spiffe_id"] == "spiffe://cluster.local/ns/default/sa/%s" % host
        # Each host reads its own part of the batch's registered result.
        assert got["issued"]["spiffe_id"] == got["spiffe_id"] and got["issued"]["cert_path"] == got["cert"]
        assert got["issued"]["changed"] is True
        assert oct(os.stat(got["key"]).st_mode & 0o777) == "0o600"
        verify_svid(got["ca"], got["cert"], got["spiffe_id"])
        serials[host] = got["issued"]["serial_number"]
    assert len(set(serials.values())) == len(hosts)
    for directory in (ca_dir, ca_dir / "hosts"):
        assert oct(os.stat(directory).st_mode & 0o777) == "0o700"

    again = play(tmp_path, *args, inventory=inventory)
    assert again.rc == 0 and set(again.changed.values()) == {0}, again.output
    assert module_runs(again.output) == ["vm0"], again.output
    assert {host: again.facts[host]["issued"]["serial_number"] for host in hosts} == serials
    assert all(again.facts[host]["issued"]["reasons"] == [] for host in hosts)


def test_each_host_gets_its_own_identity_and_rotation(tmp_path):
    """Per-host variables reach that host's certificate and facts only, though one run issues them all."""
    hosts = ["vm0", "vm1", "vm2"]
    ca_dir = tmp_path / "ca"
    args = ("-e", "hostmesh_ca_dir=%s" % ca_dir, "-e", "hostmesh_trust_domain=mesh.example")
    first = play(tmp_path, *args, inventory=fleet(tmp_path, hosts))
    assert first.rc == 0, first.output
    host_vars = {
        "vm1": {"hostmesh_namespace": "prod", "hostmesh_service_account": "api"},
        "vm2": {"hostmesh_cert_rotate": "true"},
    }
    run = play(tmp_path, *args, inventory=fleet(tmp_path, hosts, host_vars))
    assert run.rc == 0, run.output
    facts = run.facts
    assert facts["vm0"]["spiffe_id"] == "spiffe://mesh.example/ns/default/sa/vm0"
    assert facts["vm1"]["spiffe_id"] == "spiffe://mesh.example/ns/prod/sa/api"
    assert facts["vm0"]["issued"]["changed"] is False
    assert facts["vm1"]["issued"]["changed"] is True and any("URI SAN" in r for r in facts["vm1"]["issued"]["reasons"])
    assert facts["vm2"]["issued"]["reasons"] == ["force is set"]
    for host in hosts:
        verify_svid(facts[host]["ca"], facts[host]["cert"], facts[host]["spiffe_id"])
    assert facts["vm0"]["issued"]["serial_number"] == first.facts["vm0"]["issued"]["serial_number"]
    assert facts["vm2"]["issued"]["serial_number"] != first.facts["vm2"]["issued"]["serial_number"]


def test_hosts_left_out_get_nothing_even_when_first_in_the_batch(tmp_path):
    """hostmesh_ca_issue: false (xDS hosts) leaves a host out without skipping the batch's run for the others."""
    hosts = ["vm0", "vm1", "vm2"]
    ca_dir = tmp_path / "ca"
    mixed = fleet(tmp_path, hosts, {"vm0": {"hostmesh_ca_issue": "false"}})
    run = play(tmp_path, "-e", "hostmesh_ca_dir=%s" % ca_dir, inventory=mixed)
    assert run.rc == 0, run.output
    assert sorted(path.name for path in (ca_dir / "hosts").iterdir()) == ["vm1", "vm2"]
    # None, or "" where ansible-core before 2.19 renders a templated None.
    assert sorted(run.facts["vm0"]) == ["ca", "cert", "issued", "key", "spiffe_id"]
    assert all(value in (None, "") for value in run.facts["vm0"].values()), run.facts["vm0"]
    for host in ("vm1", "vm2"):
        verify_svid(run.facts[host]["ca"], run.facts[host]["cert"], run.facts[host]["spiffe_id"])

    nobody = tmp_path / "ca-none"
    none = fleet(tmp_path, hosts, {host: {"hostmesh_ca_issue": "false"} for host in hosts})
    skipped = play(tmp_path, "-e", "hostmesh_ca_dir=%s" % nobody, inventory=none)
    assert skipped.rc == 0, skipped.output
    assert not nobody.exists(), "a batch with no certificate to issue must not create a CA"


def test_serial_batches_and_limit(tmp_path):
    """One module run per batch, each for the batch's own hosts; --limit issues for the hosts it names only."""
    hosts = ["vm%d" % i for i in range(5)]
    inventory = fleet(tmp_path, hosts)
    ca_dir = tmp_path / "ca"
    limited = play(tmp_path, "-e", "hostmesh_ca_dir=%s" % ca_dir, "--limit", "vm1,vm3", inventory=inventory)
    assert limited.rc == 0, limited.output
    assert module_runs(limited.output) == ["vm1"], limited.output
    assert sorted(path.name for path in (ca_dir / "hosts").iterdir()) == ["vm1", "vm3"]
    assert sorted(limited.facts) == ["vm1", "vm3"]

    batched = play(tmp_path, "-e", "hostmesh_ca_dir=%s" % ca_dir, "-e", "mesh_serial=2", inventory=inventory)
    assert batched.rc == 0, batched.output
    assert module_runs(batched.output) == ["vm0", "vm2", "vm4"], batched.output
    for host in hosts:
        got = batched.facts[host]
        assert got["issued"]["changed"] is (host not in ("vm1", "vm3")), (host, got)
        verify_svid(got["ca"], got["cert"], got["spiffe_id"])


def test_check_mode_over_a_fleet_reports_every_certificate(tmp_path):
    hosts = ["vm0", "vm1", "vm2"]
    ca_dir = tmp_path / "ca"
    rc, changed, facts, output = play(
        tmp_path, "--check", "-e", "hostmesh_ca_dir=%s" % ca_dir, inventory=fleet(tmp_path, hosts)
    )
    assert rc == 0 and changed["vm0"] > 0, output
    for host in hosts:
        assert facts[host]["cert"] == str(ca_dir / "hosts" / host / "cert-chain.pem")
        assert facts[host]["issued"]["reasons"] == ["the CA is created"]
        assert "serial_number" not in facts[host]["issued"]
    assert not ca_dir.exists()


def test_changing_cas_with_no_gap(tmp_path):
    """Trust the new CA everywhere, sign with it while trusting the old, drop the old: every step verifies."""
    old_dir, new_dir = tmp_path / "ca", tmp_path / "ca-next"
    first = play(tmp_path, "-e", "hostmesh_ca_dir=%s" % old_dir)
    assert first.rc == 0, first.output
    old_cert = old_dir / "hosts" / "localhost" / "cert-chain.pem"
    new_ca = run_module(
        {"ca_cert_path": str(new_dir / "ca-cert.pem"), "ca_key_path": str(new_dir / "ca-key.pem")}, tmp_path
    )
    assert new_ca["rc"] == 0 and new_ca["ca_created"] is True, new_ca

    # 1. Both CAs trusted; certificates still from the old one (only the bundle changes).
    extra = {"hostmesh_ca_dir": str(old_dir), "hostmesh_ca_trust_extra": [str(new_dir / "ca-cert.pem")]}
    step1 = play(tmp_path, "-e", json.dumps(extra))
    assert step1.rc == 0 and step1.changed == {"localhost": 1}, step1.output
    bundle = step1.facts["localhost"]["ca"]
    assert bundle == str(old_dir / "trust-bundle.pem") and len(load_pem_chain(bundle)) == 2
    verify_svid(bundle, old_cert, first.facts["localhost"]["spiffe_id"])

    # 2. Sign with the new CA, still trusting the old one.
    switched = {
        "hostmesh_ca_dir": str(old_dir),
        "hostmesh_ca_cert": str(new_dir / "ca-cert.pem"),
        "hostmesh_ca_key": str(new_dir / "ca-key.pem"),
        "hostmesh_ca_trust_extra": [str(old_dir / "ca-cert.pem")],
    }
    step2 = play(tmp_path, "-e", json.dumps(switched))
    assert step2.rc == 0 and step2.changed["localhost"] >= 1, step2.output
    cert = step2.facts["localhost"]["cert"]
    assert load_pem_chain(cert)[0].issuer == load_pem_chain(new_dir / "ca-cert.pem")[0].subject
    verify_svid(step2.facts["localhost"]["ca"], cert, step2.facts["localhost"]["spiffe_id"])
    assert play(tmp_path, "-e", json.dumps(switched)).changed == {"localhost": 0}

    # 3. Only the new CA.
    final = dict(switched, hostmesh_ca_trust_extra=[])
    step3 = play(tmp_path, "-e", json.dumps(final))
    assert step3.rc == 0 and step3.facts["localhost"]["ca"] == str(new_dir / "ca-cert.pem"), step3.output
    verify_svid(step3.facts["localhost"]["ca"], cert, step3.facts["localhost"]["spiffe_id"])


def test_bad_variables_fail_before_anything_is_written(tmp_path):
    ca_dir = tmp_path / "ca"
    typed = play(tmp_path, "-e", "hostmesh_ca_dir=%s" % ca_dir, "-e", "hostmesh_cert_days=soon")
    assert typed.rc != 0 and "hostmesh_cert_days" in typed.output, typed.output
    renew = play(tmp_path, "-e", "hostmesh_ca_dir=%s" % ca_dir, "-e", "hostmesh_cert_renew_days=30")
    assert renew.rc != 0 and "hostmesh_cert_renew_days: got 30; expected 0 or more" in renew.output, renew.output
    named = play(tmp_path, "-e", "hostmesh_ca_dir=%s" % ca_dir, "-e", "hostmesh_service_account=Web_1")
    assert named.rc != 0 and "hostmesh_service_account: got 'Web_1'" in named.output, named.output
    assert not (ca_dir / "hosts" / "localhost").exists()


def host_failures(output: str) -> dict:
    """{host: msg} of the hosts that failed a task."""
    return {
        match.group(1): json.loads(match.group(2))["msg"]
        for match in re.finditer(r"^fatal: \[([^\]]+)\]: FAILED! => (\{.*\})$", output, flags=re.MULTILINE)
    }


def test_a_host_with_a_bad_identity_fails_alone(tmp_path):
    """One bad host does not cost the rest of its batch their certificates."""
    hosts = ["vm0", "vm1", "vm2"]
    ca_dir = tmp_path / "ca"
    inventory = fleet(tmp_path, hosts, {"vm1": {"hostmesh_service_account": "Web_1"}})
    run = play(tmp_path, "-e", "hostmesh_ca_dir=%s" % ca_dir, inventory=inventory)
    assert run.rc != 0, run.output
    failures = host_failures(run.output)
    assert list(failures) == ["vm1"], run.output
    assert failures["vm1"].startswith("hostmesh_service_account: got 'Web_1'; expected a lower-case DNS-style name")
    assert module_runs(run.output) == ["vm0"], run.output
    assert sorted(path.name for path in (ca_dir / "hosts").iterdir()) == ["vm0", "vm2"]
    for host in ("vm0", "vm2"):
        verify_svid(run.facts[host]["ca"], run.facts[host]["cert"], run.facts[host]["spiffe_id"])


def test_a_host_whose_ca_settings_differ_from_the_mesh_fails_alone(tmp_path):
    """The mesh's settings are the ones most of the batch has; the odd host fails, even when it comes first."""
    hosts = ["vm0", "vm1", "vm2"]
    ca_dir = tmp_path / "ca"
    inventory = fleet(tmp_path, hosts, {"vm0": {"hostmesh_trust_domain": "other.example", "hostmesh_cert_days": 20}})
    run = play(tmp_path, "-e", "hostmesh_ca_dir=%s" % ca_dir, inventory=inventory)
    assert run.rc != 0, run.output
    failures = host_failures(run.output)
    assert list(failures) == ["vm0"], run.output
    assert failures["vm0"] == (
        'hostmesh_trust_domain is "other.example" on vm0 but "cluster.local" on vm1, vm2: the CA settings are'
        " the mesh's and must be the same on every host; hostmesh_cert_days is 20 on vm0 but 30 on vm1,"
        " vm2: the CA settings are the mesh's and must be the same on every host"
    )
    # The batch's run is vm1's now, with the mesh's settings.
    assert module_runs(run.output) == ["vm1"], run.output
    assert sorted(path.name for path in (ca_dir / "hosts").iterdir()) == ["vm1", "vm2"]
    for host in ("vm1", "vm2"):
        assert run.facts[host]["spiffe_id"] == "spiffe://cluster.local/ns/default/sa/%s" % host
        verify_svid(run.facts[host]["ca"], run.facts[host]["cert"], run.facts[host]["spiffe_id"])


def _without_xdg(**extra) -> dict:
    environ = {key: value for key, value in os.environ.items() if key != "XDG_DATA_HOME"}
    environ.update(extra)
    return environ


def test_by_default_the_ca_is_the_controller_users_own_outside_the_playbook_dir(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    run = play(tmp_path, "-e", "hostmesh_trust_domain=mesh.example", environ=_without_xdg(HOME=str(home)))
    assert run.rc == 0, run.output
    ca_dir = home / ".local" / "share" / "hostmesh" / "ca" / "mesh.example"
    assert run.facts["localhost"]["ca"] == str(ca_dir / "ca-cert.pem")
    assert (ca_dir / "ca-key.pem").is_file() and (ca_dir / "hosts" / "localhost" / "key.pem").is_file()
    # Every directory the role made on the way is private, not only the last.
    for made in (home / ".local", home / ".local" / "share", home / ".local" / "share" / "hostmesh", ca_dir):
        assert oct(os.stat(made).st_mode & 0o777) == "0o700", made
    assert not (PLAYBOOK.parent / ".hostmesh-ca").exists()

    # XDG_DATA_HOME, when set to an absolute path, is the data home instead.
    data = tmp_path / "data"
    xdg = play(tmp_path, environ=_without_xdg(HOME=str(home), XDG_DATA_HOME=str(data)))
    assert xdg.rc == 0, xdg.output
    assert xdg.facts["localhost"]["ca"] == str(data / "hostmesh" / "ca" / "cluster.local" / "ca-cert.pem")


def test_a_ca_dir_that_cannot_be_created_fails_naming_it_and_writes_nothing(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory would have to be\n")
    wanted = blocker / "ca"
    run = play(tmp_path, "-e", "hostmesh_ca_dir=%s" % wanted)
    assert run.rc != 0
    assert "hostmesh_ca_dir: got '%s'; it cannot be created: %s is not a directory" % (wanted, blocker) in run.output
    assert "mesh_certificate" not in run.output.partition("fatal:")[2].partition("\n")[0]
    assert blocker.read_text() == "a file where a directory would have to be\n"

    # With no HOME to default to, the variable is asked for by name.
    no_home = {key: value for key, value in _without_xdg().items() if key != "HOME"}
    homeless = play(tmp_path, environ=no_home)
    assert homeless.rc != 0
    # The message is shown as JSON, its quotes escaped, by ansible-core before 2.19.
    shown = homeless.output.replace('\\"', '"')
    assert 'hostmesh_ca_dir: got ""; set it to a controller directory for the mesh CA' in shown, homeless.output
