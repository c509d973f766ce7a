"""The mesh_ca role through ansible-playbook, on the controller: changed, then changed=0."""

import json
import os
import re
import subprocess
from collections import namedtuple
from pathlib import Path

from mesh_helpers import ANSIBLE_PLAYBOOK, COLLECTIONS, load_pem_chain, make_ca, run_module, verify_svid

PLAYBOOK = Path(__file__).resolve().parent / "mesh_ca_playbook.yml"
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)


# rc; changed: {host: count}; facts: {host: what the last task showed}; output.
PlayRun = namedtuple("PlayRun", ["rc", "changed", "facts", "output"])


def play(tmp_path, *args, inventory=("-i", "localhost,", "-c", "local")) -> PlayRun:
    """Run the playbook with the role on the controller."""
    tree = tmp_path / "tree"
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_CALLBACKS_ENABLED="ansible.builtin.tree",
        ANSIBLE_CALLBACK_TREE_DIR=str(tree),
    )
    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), *inventory, str(PLAYBOOK), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    output = proc.stdout + proc.stderr
    changed = {m.group(1): int(m.group(3)) for m in RECAP.finditer(proc.stdout)}
    facts = {}
    if tree.is_dir():
        for path in tree.iterdir():
            facts[path.name] = json.loads(path.read_text()).get("msg")
    return PlayRun(proc.returncode, changed, facts, output)


def test_converge_then_nothing_to_change(tmp_path):
    ca_dir = tmp_path / "ca"
    rc, changed, facts, output = play(tmp_path, "-e", "hostmesh_ca_dir=%s" % ca_dir)
    assert rc == 0, output
    assert changed["localhost"] > 0
    got = facts["localhost"]
    assert got == {
        "cert": str(ca_dir / "hosts" / "localhost" / "cert-chain.pem"),
        "key": str(ca_dir / "hosts" / "localhost" / "key.pem"),
        "ca": str(ca_dir / "ca-cert.pem"),
        "spiffe_id": "spiffe://cluster.local/ns/default/sa/localhost",
    }
    assert oct(os.stat(ca_dir).st_mode & 0o777) == "0o700"
    assert (ca_dir / ".gitignore").read_text().splitlines()[-1] == "*"
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


def test_a_fleet_shares_one_ca(tmp_path):
    """Five hosts: the CA is created once, each host gets its own identity, the re-run changes nothing."""
    hosts = ["vm%d" % i for i in range(5)]
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        "[mesh]\n"
        + "".join("%s ansible_connection=local\n" % host for host in hosts)
        + "[mesh:vars]\nansible_python_interpreter={{ ansible_playbook_python }}\n"
    )
    ca_dir = tmp_path / "ca"
    args = ("-e", "hostmesh_ca_dir=%s" % ca_dir, "--forks", "5")
    rc, changed, facts, output = play(tmp_path, *args, inventory=("-i", str(inventory)))
    assert rc == 0, output
    assert all(changed[host] > 0 for host in hosts)
    for host in hosts:
        assert facts[host]["spiffe_id"] == "spiffe://cluster.local/ns/default/sa/%s" % host
        verify_svid(ca_dir / "ca-cert.pem", facts[host]["cert"], facts[host]["spiffe_id"])
    again = play(tmp_path, *args, inventory=("-i", str(inventory)))
    assert again.rc == 0 and set(again.changed.values()) == {0}, again.output


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
    assert renew.rc != 0 and "must be less than hostmesh_cert_days" in renew.output, renew.output
    named = play(tmp_path, "-e", "hostmesh_ca_dir=%s" % ca_dir, "-e", "hostmesh_service_account=Web_1")
    assert named.rc != 0 and "service_account: got 'Web_1'" in named.output, named.output
    assert not (ca_dir / "hosts" / "localhost").exists()
