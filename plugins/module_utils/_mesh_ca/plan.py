# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What should be, against what is: the CA, each workload's certificate, the trust bundle, the private directory.

Pure: the backend reads the files (files.py) and hands in what it found;
nothing here touches the disk. Check mode is a plan that is not applied.
"""

import datetime
import os
from collections import namedtuple

from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.crypto import hashes
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.errors import MeshCAError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.pem import (
    certificate_pem,
    chain_pem,
    is_p256,
    issued_by,
    load_certificates,
    load_private_key,
    not_after,
    not_before,
    permitted_uri_hosts,
    same_key,
    sans,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_identity import spiffe_id

# How the CA's files are kept: keys readable by their owner only.
KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700
GITIGNORE = b"# Private keys of the mesh CA and hosts: never commit or share.\n*\n"
GITIGNORE_MODE = 0o600

# ca: the loaded CA (None when it is still to be created); create_ca: whether
# apply creates it; reasons: why the workload certificate is (re-)issued, empty
# when the one in place is valid; current: the valid certificate in place;
# key_mode: why the key file's mode is put right, when only that is wrong.
Plan = namedtuple("Plan", ["request", "spiffe_id", "ca", "create_ca", "reasons", "current", "key_mode"])
# Many workloads against one CA: base holds the shared CA options, ca and
# create_ca are read once, plans is ((name, Plan), ...) in the caller's order.
BatchPlan = namedtuple("BatchPlan", ["base", "ca", "create_ca", "plans"])
# A workload's files as found: the certificate and key file contents (None
# when missing) and the key file's mode (None when missing).
WorkloadFiles = namedtuple("WorkloadFiles", ["cert_pem", "key_pem", "key_mode"])
# A private directory as found. kind: "missing", "directory" or "other";
# dirs: ((path, mode), ...) of the directory and of those below it that must be
# private, each that exists; gitignore: its .gitignore's content (None when
# missing) and gitignore_mode its mode.
PrivateDir = namedtuple("PrivateDir", ["kind", "dirs", "gitignore", "gitignore_mode"])
# kind: "mkdir", "chmod" or "write"; reason: what is wrong, as reported.
DirAction = namedtuple("DirAction", ["kind", "path", "mode", "reason"])


def changed(plan: Plan) -> bool:
    return bool(plan.create_ca or plan.reasons or plan.key_mode)


def ca_to_create(request, cert_exists: bool, key_exists: bool) -> bool:
    """Whether to create the CA, given which of its files exist; an error when one is missing or creating is off."""
    if not cert_exists and not key_exists:
        if not request.create_ca:
            raise MeshCAError(
                "the CA does not exist (ca_cert_path %s, ca_key_path %s) and create_ca is false"
                % (request.ca_cert_path, request.ca_key_path)
            )
        return True
    if not (cert_exists and key_exists):
        missing = request.ca_cert_path if not cert_exists else request.ca_key_path
        raise MeshCAError("CA file %s does not exist while its pair does; restore it or remove both" % missing)
    return False


def workload_plan(request, ca, create_ca: bool, found, now: datetime.datetime) -> Plan:
    """Decide about the request's workload certificate, given the CA and what is in its files
    (found: WorkloadFiles; unused, and may be None, while the CA is to be created or without cert_path)."""
    wanted = spiffe_id(request.trust_domain, request.namespace, request.service_account or "")
    if create_ca:
        reasons = ["the CA is created"] if request.cert_path else []
        return Plan(request, wanted, None, True, reasons, None, None)
    if not request.cert_path:
        return Plan(request, wanted, ca, False, [], None, None)
    check_uri_constraints(ca, request)
    reasons = certificate_problems(request, ca, found.cert_pem, found.key_pem, now)
    if reasons:
        return Plan(request, wanted, ca, False, reasons, None, None)
    current = load_certificates(found.cert_pem)[0]
    return Plan(request, wanted, ca, False, [], current, key_mode_problem(found.key_mode))


def certificate_problems(request, ca, cert_pem, key_pem, now: datetime.datetime) -> list:
    """Why the workload certificate in place must be re-issued; empty when it is fine."""
    wanted = spiffe_id(request.trust_domain, request.namespace, request.service_account)
    if cert_pem is None:
        return ["no certificate at %s" % request.cert_path]
    if key_pem is None:
        return ["no key at %s" % request.key_path]
    try:
        certs = load_certificates(cert_pem)
        key = load_private_key(key_pem)
    except (ValueError, TypeError):
        return ["certificate or key is not readable PEM"]
    cert = certs[0]
    problems = []
    if not is_p256(key):
        problems.append("key is not EC P-256")
    if not same_key(key, cert.public_key()):
        problems.append("key does not match the certificate")
    if not issued_by(cert, ca.cert):
        problems.append("not issued by the CA in %s" % request.ca_cert_path)
    uris, dns = sans(cert)
    if uris != [wanted]:
        problems.append("URI SAN is %s; wanted %s" % (uris or "missing", wanted))
    if sorted(set(dns)) != sorted(set(request.dns_names)):
        problems.append("DNS SANs are %s; wanted %s" % (sorted(dns), sorted(set(request.dns_names))))
    if cert_pem != chain_pem(cert, ca):
        problems.append("certificate file does not hold the certificate followed by the CA chain")
    if not_before(cert) > now:
        problems.append("not valid before %s" % not_before(cert).isoformat())
    left = not_after(cert) - now
    # A certificate capped at the CA's own expiry cannot be renewed for longer.
    if left < datetime.timedelta(days=request.renew_days) and not_after(cert) < not_after(ca.cert):
        problems.append(
            "expires in %.1f days (renewed with fewer than %d left)"
            % (left.total_seconds() / 86400, request.renew_days)
        )
    if request.force and not problems:
        problems.append("force is set")
    return problems


def key_mode_problem(mode):
    """A reason when the key file (of this mode; None when missing) is readable by others than its owner."""
    if mode is None or mode == KEY_MODE:
        return None
    return "key mode is %04o; wanted %04o" % (mode, KEY_MODE)


def check_uri_constraints(ca, request) -> None:
    """Refuse to issue what peers would reject: a SPIFFE ID outside the CA's name constraints."""
    for cert in ca.chain:
        permitted = permitted_uri_hosts(cert)
        if permitted is not None and not _uri_host_permitted(request.trust_domain, permitted):
            raise MeshCAError(
                "trust_domain: got %r; the CA in %s may only sign URIs in %s (name constraints)"
                % (request.trust_domain, request.ca_cert_path, ", ".join(permitted))
            )


def _uri_host_permitted(host, permitted):
    # RFC 5280: "example.com" is that host only; ".example.com" any host below it.
    return any(host == p or (p.startswith(".") and host.endswith(p)) for p in permitted)


def bundle_plan(sources, current):
    """(content, changed) of the trust bundle; content is None while the CA is still to be created.

    sources: ((option, path, content or None), ...), the CA file first, then
    each trust_extra file; current: the bundle file's content (None when missing).
    """
    ca_pem = sources[0][2]
    if ca_pem is None:
        for _option, path, pem in sources[1:]:
            if pem is None:
                raise MeshCAError("trust_extra: %s does not exist" % path)
        return None, True
    content = trust_bundle(sources)
    return content, current != content


def trust_bundle(sources) -> bytes:
    """The certificates peers trust: the CA file's, then each extra file's, each once."""
    seen = set()
    blocks = []
    for option, path, pem in sources:
        if pem is None:
            raise MeshCAError("%s: %s does not exist" % (option, path))
        try:
            certs = load_certificates(pem)
        except ValueError as error:
            raise MeshCAError("%s: %s is not a PEM certificate: %s" % (option, path, error)) from error
        for cert in certs:
            fingerprint = cert.fingerprint(hashes.SHA256())
            if fingerprint not in seen:
                seen.add(fingerprint)
                blocks.append(certificate_pem(cert))
    return b"".join(blocks)


def private_dirs(top: str, files) -> list:
    """The directories to keep private: top, then those strictly below it on the way to each of files,
    outermost first (a file outside top adds none)."""
    root = os.path.abspath(top)
    found = [top]
    for path in files:
        directory = os.path.dirname(os.path.abspath(path))
        chain = []
        while directory != root and os.path.dirname(directory) != directory:
            chain.append(directory)
            directory = os.path.dirname(directory)
        if directory == root:
            found.extend(d for d in reversed(chain) if d not in found)
    return found


def private_dir_actions(path: str, found) -> list:
    """What keeping path private takes, given found (a PrivateDir): mode 0700 on it and the directories
    found below it, a .gitignore of everything at 0600. Empty when all is as it should be."""
    gitignore = os.path.join(path, ".gitignore")
    if found.kind == "missing":
        return [
            DirAction("mkdir", path, DIR_MODE, "%s does not exist" % path),
            DirAction("write", gitignore, GITIGNORE_MODE, "%s does not exist" % gitignore),
        ]
    if found.kind != "directory":
        raise MeshCAError("private_dir: got %r; it exists and is not a directory" % path)
    actions = [_chmod_action(directory, mode, DIR_MODE) for directory, mode in found.dirs]
    if found.gitignore != GITIGNORE:
        reason = "%s does not exist" % gitignore if found.gitignore is None else "%s differs" % gitignore
        actions.append(DirAction("write", gitignore, GITIGNORE_MODE, reason))
    else:
        actions.append(_chmod_action(gitignore, found.gitignore_mode, GITIGNORE_MODE))
    return [action for action in actions if action is not None]


def _chmod_action(path, current, mode):
    if current is None or current == mode:
        return None
    return DirAction("chmod", path, mode, "%s mode is %04o; wanted %04o" % (path, current, mode))
