"""Shared helpers for the mesh tests: run the module and the filters as Ansible does, verify chains."""

import datetime
import json
import shutil
import subprocess
from collections import namedtuple
from pathlib import Path

import module_runner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store

# A CA made for a test: its certificate and key, and the files they were written to.
TestCA = namedtuple("TestCA", ["cert", "key", "cert_path", "key_path"])

ROOT = Path(__file__).resolve().parents[3]
COLLECTIONS = ROOT / ".build" / "collections"
MODULE = ROOT / "plugins" / "modules" / "mesh_certificate.py"


def run_module(args: dict, workdir: Path, check_mode: bool = False) -> dict:
    """Run mesh_certificate in a fresh Python the way Ansible does."""
    return module_runner.run_module("mesh_certificate", args, workdir, check_mode)


def each_hosts_json(tmp_path: Path, hostvars: dict, expression: str, first_tasks: str = "") -> dict:
    """Run a play over ``hostvars``' hosts (on this machine) that writes each host's ``expression``
    as JSON; returns {host: what it wrote}. ``first_tasks``: YAML tasks, indented as the play's, run first."""
    hosts = {
        host: dict(hv, ansible_connection="local", ansible_python_interpreter="{{ ansible_playbook_python }}")
        for host, hv in hostvars.items()
    }
    (tmp_path / "inventory.json").write_text(json.dumps({"mesh": {"hosts": hosts}}))
    (tmp_path / "playbook.yml").write_text(
        "- hosts: mesh\n"
        "  gather_facts: false\n"
        "  tasks:\n" + first_tasks + "    - ansible.builtin.copy:\n"
        '        content: "{{ ' + expression + ' | to_json }}"\n'
        '        dest: "' + str(tmp_path) + '/{{ inventory_hostname }}.json"\n'
        "        mode: '0644'\n"
        "      delegate_to: localhost\n"
    )
    proc, _shown = module_runner.run_playbook(tmp_path, tmp_path / "inventory.json", tmp_path / "playbook.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {host: json.loads((tmp_path / ("%s.json" % host)).read_text()) for host in hosts}


def load_pem_chain(path: Path) -> list:
    return x509.load_pem_x509_certificates(Path(path).read_bytes())


def verify_svid(ca_path: Path, chain_path: Path, spiffe_id: str, python: bool = True) -> None:
    """What a peer's TLS stack checks: the chain reaches the CA and the leaf names spiffe_id (and only it)."""
    leaf, *intermediates = load_pem_chain(chain_path)
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert uris == [spiffe_id]
    if python:
        roots = [c for c in load_pem_chain(ca_path) if c.issuer == c.subject]
        verifier = PolicyBuilder().store(Store(roots)).build_client_verifier()
        verified = verifier.verify(leaf, intermediates)
        names = [name.value for name in verified.subjects if isinstance(name, x509.UniformResourceIdentifier)]
        assert names == [spiffe_id]
    openssl = shutil.which("openssl")
    if openssl:
        argv = [openssl, "verify", "-purpose", "sslclient", "-CAfile", str(ca_path)]
        if intermediates:
            argv += ["-untrusted", str(chain_path)]
        proc = subprocess.run([*argv, str(chain_path)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0 and ": OK" in proc.stdout, proc.stdout + proc.stderr


def make_ca(tmp: Path, name: str = "Byo Root", issuer=None, days: int = 365) -> TestCA:
    """A CA written to tmp/<name>-cert.pem and -key.pem; with issuer=(cert, key) an intermediate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()), critical=False
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    slug = name.lower().replace(" ", "-")
    cert_path, key_path = tmp / ("%s-cert.pem" % slug), tmp / ("%s-key.pem" % slug)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    if issuer_cert is not None:
        pem += issuer_cert.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(pem)
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return TestCA(cert, key, cert_path, key_path)
