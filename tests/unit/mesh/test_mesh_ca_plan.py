"""The mesh CA's decisions as pure functions: what was found goes in, a plan comes out, no file is touched."""

import datetime
import re

import pytest

from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.errors import MeshCAError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.pem import (
    certificate_pem,
    chain_pem,
    private_key_pem,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.plan import (
    GITIGNORE,
    DirAction,
    PrivateDir,
    WorkloadFiles,
    bundle_plan,
    ca_to_create,
    certificate_problems,
    key_mode_problem,
    private_dir_actions,
    private_dirs,
    workload_plan,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.request import make_request
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.signing import issue, new_ca, new_key

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
# Paths only name files in messages here: nothing is read or written.
REQUEST = make_request(
    {
        "ca_cert_path": "/nowhere/ca-cert.pem",
        "ca_key_path": "/nowhere/ca-key.pem",
        "service_account": "web1",
        "dns_names": ["web1"],
        "cert_path": "/nowhere/hosts/web1/cert-chain.pem",
        "key_path": "/nowhere/hosts/web1/key.pem",
    }
)


def issued(request=REQUEST, ca=None, now=NOW):
    ca = ca or new_ca(request, now)
    key = new_key()
    return ca, chain_pem(issue(request, ca, key, now), ca), private_key_pem(key)


def test_ca_to_create_follows_which_files_exist():
    assert ca_to_create(REQUEST, False, False) is True
    assert ca_to_create(REQUEST, True, True) is False
    with pytest.raises(MeshCAError, match=re.escape("CA file /nowhere/ca-key.pem does not exist while its pair does")):
        ca_to_create(REQUEST, True, False)
    with pytest.raises(MeshCAError, match="create_ca is false"):
        ca_to_create(REQUEST._replace(create_ca=False), False, False)


def test_a_certificate_just_issued_has_no_problems_and_each_change_is_named():
    ca, cert_pem, key_pem = issued()
    assert certificate_problems(REQUEST, ca, cert_pem, key_pem, NOW) == []
    moved = REQUEST._replace(namespace="prod", dns_names=("web1", "web1.example"))
    assert certificate_problems(moved, ca, cert_pem, key_pem, NOW) == [
        "URI SAN is ['spiffe://cluster.local/ns/default/sa/web1']; wanted spiffe://cluster.local/ns/prod/sa/web1",
        "DNS SANs are ['web1']; wanted ['web1', 'web1.example']",
    ]
    other_ca = new_ca(REQUEST, NOW)
    assert "not issued by the CA in /nowhere/ca-cert.pem" in certificate_problems(
        REQUEST, other_ca, cert_pem, key_pem, NOW
    )
    late = NOW + datetime.timedelta(days=25)
    assert certificate_problems(REQUEST, ca, cert_pem, key_pem, late)[0].startswith("expires in 5.0 days")
    assert certificate_problems(REQUEST, ca, None, key_pem, NOW) == ["no certificate at %s" % REQUEST.cert_path]
    assert certificate_problems(REQUEST, ca, b"junk", key_pem, NOW) == ["certificate or key is not readable PEM"]


def test_workload_plan_keeps_a_good_certificate_and_flags_only_a_loose_key_mode():
    ca, cert_pem, key_pem = issued()
    kept = workload_plan(REQUEST, ca, False, WorkloadFiles(cert_pem, key_pem, 0o600), NOW)
    assert kept.reasons == [] and kept.key_mode is None and kept.current is not None
    loose = workload_plan(REQUEST, ca, False, WorkloadFiles(cert_pem, key_pem, 0o644), NOW)
    assert loose.reasons == [] and loose.key_mode == "key mode is 0644; wanted 0600"
    # While the CA is still to be created, nothing about the workload's files is needed.
    created = workload_plan(REQUEST, None, True, None, NOW)
    assert created.reasons == ["the CA is created"] and created.spiffe_id == "spiffe://cluster.local/ns/default/sa/web1"


def test_key_mode_problem():
    assert key_mode_problem(None) is None and key_mode_problem(0o600) is None
    assert key_mode_problem(0o640) == "key mode is 0640; wanted 0600"


def test_bundle_plan_puts_each_certificate_in_once_and_knows_when_it_is_current():
    ca = new_ca(REQUEST, NOW)
    extra = new_ca(REQUEST, NOW)
    ca_pem, extra_pem = certificate_pem(ca.cert), certificate_pem(extra.cert)
    sources = (
        ("ca_cert_path", "/ca.pem", ca_pem),
        ("trust_extra", "/a.pem", extra_pem),
        ("trust_extra", "/b.pem", ca_pem),
    )
    content, changed = bundle_plan(sources, None)
    assert content == ca_pem + extra_pem and changed is True
    assert bundle_plan(sources, content) == (content, False)
    # The CA is still to be created: the bundle follows it, but a missing extra is an error now.
    assert bundle_plan((("ca_cert_path", "/ca.pem", None),), None) == (None, True)
    with pytest.raises(MeshCAError, match=re.escape("trust_extra: /a.pem does not exist")):
        bundle_plan((("ca_cert_path", "/ca.pem", None), ("trust_extra", "/a.pem", None)), None)
    with pytest.raises(MeshCAError, match=re.escape("trust_extra: /a.pem is not a PEM certificate")):
        bundle_plan((("ca_cert_path", "/ca.pem", ca_pem), ("trust_extra", "/a.pem", b"junk")), None)


def test_private_dirs_are_the_top_and_those_on_the_way_to_the_files_inside_it():
    files = ["/ca/ca-key.pem", "/ca/hosts/web1/key.pem", "/ca/hosts/web1/cert-chain.pem", "/elsewhere/x.pem"]
    assert private_dirs("/ca", files) == ["/ca", "/ca/hosts", "/ca/hosts/web1"]


def test_private_dir_actions_from_what_was_found():
    missing = private_dir_actions("/ca", PrivateDir("missing", (), None, None))
    assert [(a.kind, a.path, a.mode) for a in missing] == [("mkdir", "/ca", 0o700), ("write", "/ca/.gitignore", 0o600)]
    with pytest.raises(MeshCAError, match="private_dir: got '/ca'; it exists and is not a directory"):
        private_dir_actions("/ca", PrivateDir("other", (), None, None))
    right = PrivateDir("directory", (("/ca", 0o700), ("/ca/hosts", 0o700)), GITIGNORE, 0o600)
    assert private_dir_actions("/ca", right) == []
    loose = PrivateDir("directory", (("/ca", 0o755), ("/ca/hosts", 0o700)), b"*.pem\n", 0o644)
    assert private_dir_actions("/ca", loose) == [
        DirAction("chmod", "/ca", 0o700, "/ca mode is 0755; wanted 0700"),
        DirAction("write", "/ca/.gitignore", 0o600, "/ca/.gitignore differs"),
    ]
    loose_gitignore = right._replace(gitignore_mode=0o644)
    assert private_dir_actions("/ca", loose_gitignore) == [
        DirAction("chmod", "/ca/.gitignore", 0o600, "/ca/.gitignore mode is 0644; wanted 0600")
    ]
