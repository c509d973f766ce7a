"""mesh_certificate: the mesh CA and SPIFFE workload certificates, with real cryptography.

Most tests run the module as Ansible does (a JSON args file, a fresh Python);
a few drive the backend directly where a clock or a race must be arranged.
"""

import datetime
import json
import os
import shutil
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from mesh_helpers import COLLECTIONS, MODULE, load_pem_chain, make_ca, run_module, verify_svid

from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.backend import (
    apply_plan,
    load_ca,
    plan_certificate,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.errors import MeshCAError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.request import make_request, make_workloads
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.signing import issue, new_key

WEB1 = "spiffe://cluster.local/ns/default/sa/web1"


@pytest.fixture
def paths(tmp_path):
    ca_dir = tmp_path / "ca"
    return {
        "ca_cert_path": str(ca_dir / "ca-cert.pem"),
        "ca_key_path": str(ca_dir / "ca-key.pem"),
        "cert_path": str(ca_dir / "hosts" / "web1" / "cert-chain.pem"),
        "key_path": str(ca_dir / "hosts" / "web1" / "key.pem"),
    }


def web1(paths, **extra):
    return {**paths, "service_account": "web1", "dns_names": ["web1"], **extra}


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def contents(paths):
    return {path: Path(path).read_bytes() for path in paths.values()}


def leaf(path):
    return load_pem_chain(path)[0]


def test_creates_ca_and_issues_then_is_idempotent(tmp_path, paths):
    first = run_module(web1(paths), tmp_path)
    assert first["rc"] == 0, first
    assert first["changed"] is True and first["ca_created"] is True
    assert first["spiffe_id"] == WEB1
    assert mode(paths["ca_key_path"]) == 0o600 and mode(paths["key_path"]) == 0o600
    verify_svid(paths["ca_cert_path"], paths["cert_path"], WEB1)

    cert = leaf(paths["cert_path"])
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["web1"]
    assert first["not_after"] == cert.not_valid_after_utc.isoformat()
    lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(days=29, hours=23) < lifetime <= datetime.timedelta(days=30)
    ca = leaf(paths["ca_cert_path"])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    before = contents(paths)
    second = run_module(web1(paths), tmp_path)
    assert second["rc"] == 0 and second["changed"] is False, second
    assert second["reasons"] == [] and second["ca_created"] is False
    assert second["serial_number"] == first["serial_number"] and second["not_after"] == first["not_after"]
    assert contents(paths) == before


def test_check_mode_writes_nothing(tmp_path, paths):
    result = run_module(web1(paths), tmp_path, check_mode=True)
    assert result["rc"] == 0 and result["changed"] is True and result["ca_created"] is True, result
    assert "not_after" not in result
    assert not (tmp_path / "ca").exists()

    run_module(web1(paths), tmp_path)
    before = contents(paths)
    renamed = run_module(web1(paths, service_account="web9"), tmp_path, check_mode=True)
    assert renamed["changed"] is True and renamed["reasons"], renamed
    assert contents(paths) == before
    assert run_module(web1(paths), tmp_path, check_mode=True)["changed"] is False


def test_renews_near_expiry_with_a_new_key(tmp_path, paths):
    short = run_module(web1(paths, days=5, renew_days=1), tmp_path)
    assert short["changed"] is True
    old_key = Path(paths["key_path"]).read_bytes()
    # Five days left is plenty when renewing at one day left ...
    assert run_module(web1(paths, days=5, renew_days=1), tmp_path)["changed"] is False
    # ... and too few at the default ten.
    renewed = run_module(web1(paths), tmp_path)
    assert renewed["changed"] is True
    assert renewed["reasons"][0].startswith("expires in 5.0 days")
    assert renewed["serial_number"] != short["serial_number"]
    assert renewed["not_after"] > short["not_after"]
    assert Path(paths["key_path"]).read_bytes() != old_key
    verify_svid(paths["ca_cert_path"], paths["cert_path"], WEB1)
    assert run_module(web1(paths), tmp_path)["changed"] is False


def test_renews_when_the_clock_reaches_the_window(paths):
    """The backend with a clock moved forward: day 19 keeps the certificate, day 21 renews it."""
    request = make_request(web1(paths))
    start = datetime.datetime.now(datetime.timezone.utc)
    apply_plan(plan_certificate(request, start), start)
    assert plan_certificate(request, start + datetime.timedelta(days=19)).reasons == []
    later = start + datetime.timedelta(days=21)
    plan = plan_certificate(request, later)
    assert plan.reasons and plan.reasons[0].startswith("expires in")
    cert = apply_plan(plan, later)[1]
    assert cert.not_valid_after_utc == (later + datetime.timedelta(days=30)).replace(microsecond=0)


def test_san_change_reissues(tmp_path, paths):
    run_module(web1(paths), tmp_path)
    moved = run_module(web1(paths, namespace="prod"), tmp_path)
    assert moved["changed"] is True
    assert any(
        "URI SAN" in reason and "spiffe://cluster.local/ns/prod/sa/web1" in reason for reason in moved["reasons"]
    )
    verify_svid(paths["ca_cert_path"], paths["cert_path"], "spiffe://cluster.local/ns/prod/sa/web1")

    renamed = run_module(web1(paths, namespace="prod", dns_names=["web1", "web1.example.net"]), tmp_path)
    assert renamed["changed"] is True and any("DNS SANs" in reason for reason in renamed["reasons"])
    assert sorted(
        leaf(paths["cert_path"])
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value.get_values_for_type(x509.DNSName)
    ) == ["web1", "web1.example.net"]


def test_foreign_key_or_certificate_is_replaced(tmp_path, paths):
    run_module(web1(paths), tmp_path)
    other = dict(paths, cert_path=str(tmp_path / "other.pem"), key_path=str(tmp_path / "other-key.pem"))
    run_module(web1(other), tmp_path)
    # The key of another certificate.
    with open(other["key_path"], "rb") as src, open(paths["key_path"], "wb") as dst:
        dst.write(src.read())
    result = run_module(web1(paths), tmp_path)
    assert result["changed"] is True and "key does not match the certificate" in result["reasons"]
    # A certificate from another CA.
    byo = make_ca(tmp_path)
    run_module(web1(other, ca_cert_path=str(byo.cert_path), ca_key_path=str(byo.key_path), create_ca=False), tmp_path)
    for name in ("cert_path", "key_path"):
        with open(other[name], "rb") as src, open(paths[name], "wb") as dst:
            dst.write(src.read())
    result = run_module(web1(paths), tmp_path)
    assert result["changed"] is True and any("not issued by the CA" in r for r in result["reasons"])
    verify_svid(paths["ca_cert_path"], paths["cert_path"], WEB1)


def test_loose_key_mode_is_fixed_without_reissuing(tmp_path, paths):
    first = run_module(web1(paths), tmp_path)
    os.chmod(paths["key_path"], 0o644)
    fixed = run_module(web1(paths), tmp_path)
    assert fixed["changed"] is True and fixed["reasons"] == ["key mode is 0644; wanted 0600"]
    assert fixed["serial_number"] == first["serial_number"]
    assert mode(paths["key_path"]) == 0o600


def test_force_rotates(tmp_path, paths):
    first = run_module(web1(paths), tmp_path)
    forced = run_module(web1(paths, force=True), tmp_path)
    assert forced["changed"] is True and forced["reasons"] == ["force is set"]
    assert forced["serial_number"] != first["serial_number"]


def test_bring_your_own_intermediate_ca(tmp_path, paths):
    root = make_ca(tmp_path, "Corp Root")
    inter = make_ca(tmp_path, "Mesh Intermediate", issuer=(root.cert, root.key))
    root_path, inter_path, inter_key_path = root.cert_path, inter.cert_path, inter.key_path
    byo = web1(paths, ca_cert_path=str(inter_path), ca_key_path=str(inter_key_path), create_ca=False)
    first = run_module(byo, tmp_path)
    assert first["rc"] == 0 and first["changed"] is True and first["ca_created"] is False, first
    assert not (tmp_path / "ca" / "ca-cert.pem").exists()
    chain = load_pem_chain(paths["cert_path"])
    # Leaf then the intermediate; the root stays with the verifier.
    assert [c.subject.rfc4514_string() for c in chain[1:]] == ["CN=Mesh Intermediate"]
    verify_svid(root_path, paths["cert_path"], WEB1)
    assert run_module(byo, tmp_path)["changed"] is False


def test_bring_your_own_ca_errors(tmp_path, paths):
    missing = run_module(web1(paths, create_ca=False), tmp_path)
    assert missing["rc"] == 1 and "does not exist" in missing["msg"] and "create_ca is false" in missing["msg"]
    assert not (tmp_path / "ca").exists()

    cert_path = make_ca(tmp_path, "One").cert_path
    other_key_path = make_ca(tmp_path, "Two").key_path
    mismatch = run_module(web1(paths, ca_cert_path=str(cert_path), ca_key_path=str(other_key_path)), tmp_path)
    assert mismatch["rc"] == 1 and "does not match the certificate" in mismatch["msg"], mismatch

    half = dict(paths, ca_cert_path=str(cert_path), ca_key_path=str(tmp_path / "gone.pem"))
    lonely = run_module(web1(half), tmp_path)
    assert lonely["rc"] == 1 and "gone.pem does not exist" in lonely["msg"], lonely


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"service_account": "Web_1"}, "service_account: got 'Web_1'"),
        ({"trust_domain": "bad domain"}, "trust_domain: got 'bad domain'"),
        ({"renew_days": 30}, "renew_days: got 30"),
        ({"days": 0}, "days: got 0"),
        ({"dns_names": ["no spaces"]}, "dns_names: got 'no spaces'"),
    ],
)
def test_bad_options_name_option_and_value(tmp_path, paths, extra, message):
    result = run_module(web1(paths, **extra), tmp_path)
    assert result["rc"] == 1 and message in result["msg"], result
    assert not (tmp_path / "ca").exists()


def test_ca_only_and_ca_expiry_caps_the_certificate(tmp_path, paths):
    ca_only = {k: paths[k] for k in ("ca_cert_path", "ca_key_path")}
    created = run_module(dict(ca_only, ca_days=5), tmp_path)
    assert created["changed"] is True and "spiffe_id" not in created
    assert run_module(ca_only, tmp_path)["changed"] is False
    issued = run_module(web1(paths), tmp_path)
    assert issued["not_after"] == issued["ca_not_after"]
    # Warnings are structured (ansible-core 2.19) or plain text (older): look in their JSON.
    assert "Plan a new CA" in json.dumps(issued["warnings"])
    # Renewing cannot give more time than the CA has: no endless re-issue.
    assert run_module(web1(paths), tmp_path)["changed"] is False


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl command")
def test_name_constrained_ca_verifies(tmp_path, paths):
    result = run_module(web1(paths, ca_name_constraints=True, trust_domain="mesh.example"), tmp_path)
    assert result["rc"] == 0, result
    ca = leaf(paths["ca_cert_path"])
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    assert constraints.permitted_subtrees == [x509.UniformResourceIdentifier("mesh.example")]
    # OpenSSL honours URI name constraints; cryptography's verifier refuses them
    # (one reason the option is off by default).
    verify_svid(paths["ca_cert_path"], paths["cert_path"], "spiffe://mesh.example/ns/default/sa/web1", python=False)
    # The module refuses to issue outside the constraint ...
    outside = run_module(web1(paths, trust_domain="other.example"), tmp_path)
    assert outside["rc"] == 1 and "may only sign URIs in mesh.example" in outside["msg"], outside
    # ... and a certificate made anyway does not verify.
    now = datetime.datetime.now(datetime.timezone.utc)
    ca = load_ca(paths["ca_cert_path"], paths["ca_key_path"], now)
    stray = issue(make_request(web1(paths, trust_domain="other.example")), ca, new_key(), now)
    stray_path = tmp_path / "stray.pem"
    stray_path.write_bytes(stray.public_bytes(serialization.Encoding.PEM))
    proc = subprocess.run(
        ["openssl", "verify", "-CAfile", paths["ca_cert_path"], str(stray_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0 and "permitted subtree violation" in proc.stdout + proc.stderr


def test_many_hosts_at_once_share_one_ca(tmp_path):
    """Parallel runs (Ansible forks) against a CA that does not exist yet: one creates it, all use it."""
    ca_dir = tmp_path / "ca"
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS))

    def issue(index):
        host = "host%d" % index
        workdir = tmp_path / host
        workdir.mkdir()
        args = {
            "ca_cert_path": str(ca_dir / "ca-cert.pem"),
            "ca_key_path": str(ca_dir / "ca-key.pem"),
            "service_account": host,
            "cert_path": str(ca_dir / "hosts" / host / "cert-chain.pem"),
            "key_path": str(ca_dir / "hosts" / host / "key.pem"),
        }
        (workdir / "args.json").write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
        return subprocess.run(
            [sys.executable, str(MODULE), str(workdir / "args.json")],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(issue, range(8)))
    assert all(r.returncode == 0 for r in results), [r.stdout + r.stderr for r in results]
    assert sum('"ca_created": true' in r.stdout for r in results) == 1
    for index in range(8):
        host = "host%d" % index
        verify_svid(
            ca_dir / "ca-cert.pem",
            ca_dir / "hosts" / host / "cert-chain.pem",
            "spiffe://cluster.local/ns/default/sa/%s" % host,
        )


def test_trust_bundle_with_extra_cas(tmp_path, paths):
    other = make_ca(tmp_path, "Next Mesh CA")
    bundle = str(tmp_path / "ca" / "trust-bundle.pem")
    args = web1(paths, trust_bundle_path=bundle, trust_extra=[str(other.cert_path)])

    planned = run_module(args, tmp_path, check_mode=True)
    assert planned["rc"] == 0 and planned["changed"] is True, planned
    assert not (tmp_path / "ca").exists()

    first = run_module(args, tmp_path)
    assert first["rc"] == 0 and first["trust_bundle_path"] == bundle, first
    subjects = [c.subject.rfc4514_string() for c in load_pem_chain(bundle)]
    assert subjects == ["CN=hostmesh mesh CA,O=cluster.local", "CN=Next Mesh CA"]
    assert run_module(args, tmp_path)["changed"] is False
    # The same CA listed twice appears once.
    twice = run_module(
        web1(paths, trust_bundle_path=bundle, trust_extra=[paths["ca_cert_path"], str(other.cert_path)]), tmp_path
    )
    assert twice["changed"] is False
    # Dropping the extra rewrites the bundle, and nothing else changes.
    dropped = run_module(web1(paths, trust_bundle_path=bundle), tmp_path)
    assert dropped["changed"] is True and dropped["reasons"] == []
    assert len(load_pem_chain(bundle)) == 1


def test_trust_extra_errors(tmp_path, paths):
    alone = run_module(web1(paths, trust_extra=[str(tmp_path / "x.pem")]), tmp_path)
    assert alone["rc"] == 1 and "needs trust_bundle_path" in alone["msg"], alone
    bundle = str(tmp_path / "bundle.pem")
    missing = run_module(web1(paths, trust_bundle_path=bundle, trust_extra=[str(tmp_path / "x.pem")]), tmp_path)
    assert missing["rc"] == 1 and "x.pem does not exist" in missing["msg"], missing
    assert not (tmp_path / "ca").exists()
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    junk = run_module(web1(paths, trust_bundle_path=bundle, trust_extra=[str(tmp_path / "junk.pem")]), tmp_path)
    assert junk["rc"] == 1 and "junk.pem is not a PEM certificate" in junk["msg"], junk


# --- many workloads in one run ------------------------------------------------

HOSTS = ("web1", "web2", "db1")


def workload(ca_dir, name, **extra):
    host_dir = Path(ca_dir) / "hosts" / name
    return {
        "name": name,
        "service_account": name,
        "dns_names": [name],
        "cert_path": str(host_dir / "cert-chain.pem"),
        "key_path": str(host_dir / "key.pem"),
        **extra,
    }


def batch(tmp_path, hosts=HOSTS, overrides=None, **extra):
    """Module arguments for one run over hosts, the CA and every host's files under tmp_path/ca."""
    ca_dir = tmp_path / "ca"
    overrides = overrides or {}
    return {
        "ca_cert_path": str(ca_dir / "ca-cert.pem"),
        "ca_key_path": str(ca_dir / "ca-key.pem"),
        "workloads": [workload(ca_dir, name, **overrides.get(name, {})) for name in hosts],
        **extra,
    }


def serials(result):
    return {name: each["serial_number"] for name, each in result["workloads"].items()}


def test_workloads_issue_each_then_keep(tmp_path):
    args = batch(tmp_path, overrides={"db1": {"namespace": "data", "service_account": "postgres"}}, namespace="apps")
    first = run_module(args, tmp_path)
    assert first["rc"] == 0, first
    assert first["changed"] is True and first["ca_created"] is True and first["reasons"] == []
    assert sorted(first["workloads"]) == sorted(HOSTS)
    wanted = {
        "web1": "spiffe://cluster.local/ns/apps/sa/web1",
        "web2": "spiffe://cluster.local/ns/apps/sa/web2",
        "db1": "spiffe://cluster.local/ns/data/sa/postgres",
    }
    for entry in args["workloads"]:
        got = first["workloads"][entry["name"]]
        assert got["spiffe_id"] == wanted[entry["name"]]
        assert got["changed"] is True and got["reasons"] == ["the CA is created"]
        assert (got["cert_path"], got["key_path"]) == (entry["cert_path"], entry["key_path"])
        assert got["not_after"] == leaf(entry["cert_path"]).not_valid_after_utc.isoformat()
        assert mode(entry["key_path"]) == 0o600
        verify_svid(args["ca_cert_path"], entry["cert_path"], wanted[entry["name"]])
    assert len(set(serials(first).values())) == len(HOSTS)

    files = [path for entry in args["workloads"] for path in (entry["cert_path"], entry["key_path"])]
    before = {path: Path(path).read_bytes() for path in [*files, args["ca_cert_path"], args["ca_key_path"]]}
    second = run_module(args, tmp_path)
    assert second["rc"] == 0 and second["changed"] is False and second["ca_created"] is False, second
    assert all(each["changed"] is False and each["reasons"] == [] for each in second["workloads"].values())
    assert serials(second) == serials(first)
    assert {path: Path(path).read_bytes() for path in before} == before


def test_workloads_renew_only_the_one_near_expiry(tmp_path):
    args = batch(tmp_path)
    first = run_module(args, tmp_path)
    # web2's certificate is replaced by one with five days left, by the single form on the same files.
    short = {key: value for key, value in args["workloads"][1].items() if key != "name"}
    short.update(days=5, renew_days=1, force=True)
    single = run_module(dict(short, ca_cert_path=args["ca_cert_path"], ca_key_path=args["ca_key_path"]), tmp_path)
    assert single["rc"] == 0 and single["changed"] is True, single

    renewed = run_module(args, tmp_path)
    assert renewed["rc"] == 0 and renewed["changed"] is True, renewed
    assert renewed["workloads"]["web2"]["reasons"][0].startswith("expires in 5.0 days")
    assert renewed["workloads"]["web2"]["serial_number"] not in (
        first["workloads"]["web2"]["serial_number"],
        single["serial_number"],
    )
    for name in ("web1", "db1"):
        assert renewed["workloads"][name]["changed"] is False
        assert renewed["workloads"][name]["serial_number"] == first["workloads"][name]["serial_number"]
    assert run_module(args, tmp_path)["changed"] is False


def test_workloads_force_one(tmp_path):
    first = run_module(batch(tmp_path), tmp_path)
    old_key = Path(first["workloads"]["db1"]["key_path"]).read_bytes()
    forced = run_module(batch(tmp_path, overrides={"db1": {"force": True}}), tmp_path)
    assert forced["rc"] == 0 and forced["changed"] is True, forced
    assert forced["workloads"]["db1"]["reasons"] == ["force is set"]
    assert forced["workloads"]["db1"]["serial_number"] != first["workloads"]["db1"]["serial_number"]
    assert Path(forced["workloads"]["db1"]["key_path"]).read_bytes() != old_key
    assert {name: forced["workloads"][name]["changed"] for name in HOSTS} == {
        "web1": False,
        "web2": False,
        "db1": True,
    }


def test_workloads_fix_a_loose_key_mode_and_write_the_bundle_once(tmp_path):
    other = make_ca(tmp_path, "Next Mesh CA")
    bundle = str(tmp_path / "ca" / "trust-bundle.pem")
    args = batch(tmp_path, trust_bundle_path=bundle, trust_extra=[str(other.cert_path)])
    first = run_module(args, tmp_path)
    assert first["rc"] == 0 and first["trust_bundle_path"] == bundle, first
    assert len(load_pem_chain(bundle)) == 2
    for entry in args["workloads"]:
        verify_svid(bundle, entry["cert_path"], first["workloads"][entry["name"]]["spiffe_id"])
    os.chmod(args["workloads"][0]["key_path"], 0o644)
    fixed = run_module(args, tmp_path)
    assert fixed["changed"] is True and fixed["workloads"]["web1"]["reasons"] == ["key mode is 0644; wanted 0600"]
    assert serials(fixed) == serials(first)
    dropped = run_module(batch(tmp_path, trust_bundle_path=bundle), tmp_path)
    assert dropped["changed"] is True and not any(each["changed"] for each in dropped["workloads"].values())
    assert len(load_pem_chain(bundle)) == 1


def test_workloads_check_mode_writes_nothing(tmp_path):
    args = batch(tmp_path, private_dir=str(tmp_path / "ca"))
    planned = run_module(args, tmp_path, check_mode=True)
    assert planned["rc"] == 0 and planned["changed"] is True and planned["ca_created"] is True, planned
    for name in HOSTS:
        assert planned["workloads"][name]["reasons"] == ["the CA is created"]
        assert planned["workloads"][name]["spiffe_id"] == "spiffe://cluster.local/ns/default/sa/%s" % name
        assert "not_after" not in planned["workloads"][name]
    assert planned["private_dir_changes"]
    assert not (tmp_path / "ca").exists()

    run_module(args, tmp_path)
    files = sorted(path for path in (tmp_path / "ca").rglob("*") if path.is_file())
    before = {path: path.read_bytes() for path in files}
    renamed = batch(tmp_path, overrides={"web2": {"service_account": "web9"}}, private_dir=str(tmp_path / "ca"))
    result = run_module(renamed, tmp_path, check_mode=True)
    assert result["changed"] is True and [n for n in HOSTS if result["workloads"][n]["changed"]] == ["web2"], result
    assert sorted(path for path in (tmp_path / "ca").rglob("*") if path.is_file()) == files
    assert {path: path.read_bytes() for path in files} == before
    assert run_module(args, tmp_path, check_mode=True)["changed"] is False


def _bad(tmp_path, change):
    args = batch(tmp_path, private_dir=str(tmp_path / "ca"))
    change(args)
    return args


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a["workloads"][2].update(service_account="Web_1"), "workloads[2].service_account: got 'Web_1'"),
        (lambda a: a["workloads"][1].update(name="web1"), "workloads[1].name: got 'web1'; workloads[0] has that name"),
        (lambda a: a["workloads"][1].update(service_account=""), "workloads[1].service_account is required"),
        (lambda a: a["workloads"][2].pop("key_path"), "missing required arguments: key_path found in workloads"),
        (lambda a: a["workloads"][0].update(namespace="Prod"), "workloads[0].namespace: got 'Prod'"),
        (lambda a: a["workloads"][1].update(dns_names=["no spaces"]), "workloads[1].dns_names: got 'no spaces'"),
        (
            lambda a: a["workloads"][2].update(cert_path=a["workloads"][0]["cert_path"]),
            "workloads[2].cert_path: got '%s'; workloads[0].cert_path names the same file",
        ),
        (lambda a: a.update(cert_path="/nowhere/cert.pem"), "mutually exclusive: workloads|cert_path"),
        (lambda a: a.update(force=True), "force: got True; with workloads, set it in each workload"),
        (lambda a: a.update(renew_days=30), "renew_days: got 30"),
    ],
)
def test_workloads_bad_input_names_entry_and_writes_nothing(tmp_path, change, message):
    args = _bad(tmp_path, change)
    result = run_module(args, tmp_path)
    if "%s" in message:
        message = message % args["workloads"][0]["cert_path"]
    assert result["rc"] == 1 and message in result["msg"], result
    assert not (tmp_path / "ca").exists()


def test_private_dir_is_kept_private(tmp_path):
    ca_dir = tmp_path / "ca"
    gitignore = ca_dir / ".gitignore"
    args = batch(tmp_path, hosts=("web1",), private_dir=str(ca_dir))
    first = run_module(args, tmp_path)
    assert first["rc"] == 0 and first["private_dir"] == str(ca_dir), first
    assert first["private_dir_changes"] == ["%s does not exist" % ca_dir, "%s does not exist" % gitignore]
    assert gitignore.read_text() == "# Private keys of the mesh CA and hosts: never commit or share.\n*\n"
    assert mode(gitignore) == 0o600
    for directory in (ca_dir, ca_dir / "hosts", ca_dir / "hosts" / "web1"):
        assert mode(directory) == 0o700, directory
    assert run_module(args, tmp_path)["changed"] is False

    # Loosened by hand: the directories' modes and the .gitignore's are put back, and nothing else.
    for directory in (ca_dir, ca_dir / "hosts"):
        os.chmod(directory, 0o755)
    os.chmod(gitignore, 0o644)
    inode = os.stat(gitignore).st_ino
    checked = run_module(args, tmp_path, check_mode=True)
    assert checked["changed"] is True and len(checked["private_dir_changes"]) == 3, checked
    assert mode(ca_dir) == 0o755
    fixed = run_module(args, tmp_path)
    assert fixed["changed"] is True and fixed["private_dir_changes"] == [
        "%s mode is 0755; wanted 0700" % ca_dir,
        "%s mode is 0755; wanted 0700" % (ca_dir / "hosts"),
        "%s mode is 0644; wanted 0600" % gitignore,
    ]
    assert fixed["workloads"]["web1"]["changed"] is False
    assert mode(ca_dir) == 0o700 and mode(ca_dir / "hosts") == 0o700 and mode(gitignore) == 0o600
    assert os.stat(gitignore).st_ino == inode

    gitignore.write_text("*.pem\n")
    rewritten = run_module(args, tmp_path)
    assert rewritten["private_dir_changes"] == ["%s differs" % gitignore]
    assert gitignore.read_text().endswith("\n*\n") and mode(gitignore) == 0o600
    assert run_module(args, tmp_path)["changed"] is False


def test_private_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "ca").write_text("not a directory\n")
    result = run_module(batch(tmp_path, private_dir=str(tmp_path / "ca")), tmp_path)
    assert result["rc"] == 1 and "private_dir: got '%s'" % (tmp_path / "ca") in result["msg"], result


def test_make_workloads_checks_the_list_itself(paths):
    base = make_request({k: paths[k] for k in ("ca_cert_path", "ca_key_path")})
    with pytest.raises(MeshCAError, match=r"workloads\[0\]: got 'web1'; expected a mapping"):
        make_workloads(base, ["web1"])
    with pytest.raises(MeshCAError, match=r"workloads\[0\]: unknown keys \['sa'\]"):
        make_workloads(base, [dict(workload("/ca", "web1"), sa="x")])
    with pytest.raises(MeshCAError, match=r"workloads\[0\]\.force: got 'yes'"):
        make_workloads(base, [workload("/ca", "web1", force="yes")])
    assert make_workloads(base, []) == []


def test_a_private_dir_that_cannot_be_created_is_named(tmp_path):
    # /proc refuses new directories, even to root.
    ca_dir = "/proc/hostmesh-ca-test/ca"
    args = batch(tmp_path, hosts=("web1",), private_dir=ca_dir)
    args.update(ca_cert_path=ca_dir + "/ca-cert.pem", ca_key_path=ca_dir + "/ca-key.pem")
    result = run_module(args, tmp_path)
    assert result["rc"] == 1, result
    assert result["msg"].startswith("private_dir: cannot create '/proc/hostmesh-ca-test/ca' ("), result
    assert not os.path.exists("/proc/hostmesh-ca-test")
