# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The mesh CA as mesh_certificate runs it: read what is, plan what should be, apply the plan.

``plan_certificate`` (one workload) and ``plan_workloads`` (many, against one
CA checked once) read the files and decide; ``apply_plan`` and
``apply_workloads`` create the CA and issue certificates as decided.
``plan_bundle``/``write_bundle`` keep the trust bundle, and
``plan_private_dir``/``apply_private_dir`` the directory holding the keys.
The decisions are plan.py's, the reading and writing files.py's, the making
of keys and certificates signing.py's.
"""

from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca import files
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.errors import MeshCAError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.pem import (
    CA,
    certificate_pem,
    chain_pem,
    parse_ca,
    private_key_pem,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.plan import (
    CERT_MODE,
    GITIGNORE,
    KEY_MODE,
    BatchPlan,
    Plan,
    bundle_plan,
    ca_to_create,
    private_dir_actions,
    private_dirs,
    workload_plan,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.signing import issue, new_ca, new_key


def load_ca(cert_path: str, key_path: str, now) -> CA:
    """The CA from its files (see pem.parse_ca); an error naming the file when one is missing."""
    cert_pem, key_pem = files.read(cert_path), files.read(key_path)
    if cert_pem is None or key_pem is None:
        missing = cert_path if cert_pem is None else key_path
        raise MeshCAError("CA file %s does not exist" % missing)
    return parse_ca(cert_pem, key_pem, cert_path, key_path, now)


def plan_ca(request, now) -> tuple:
    """(the CA, None while it is still to be created; whether to create it)."""
    if files.exists(request.ca_key_path) and not files.exists(request.ca_cert_path):
        # The key is written first: another run may be creating the CA right now.
        files.wait_for(request.ca_cert_path, seconds=10.0)
    if ca_to_create(request, files.exists(request.ca_cert_path), files.exists(request.ca_key_path)):
        return None, True
    return load_ca(request.ca_cert_path, request.ca_key_path, now), False


def plan_certificate(request, now) -> Plan:
    """Read the CA and the workload certificate in place and decide what to change."""
    ca, create_ca = plan_ca(request, now)
    return _plan_workload(request, ca, create_ca, now)


def plan_workloads(base, workloads, now) -> BatchPlan:
    """The CA read (or planned) once from base, then a Plan per workload, in order."""
    ca, create_ca = plan_ca(base, now)
    plans = tuple((workload.name, _plan_workload(workload.request, ca, create_ca, now)) for workload in workloads)
    return BatchPlan(base, ca, create_ca, plans)


def _plan_workload(request, ca, create_ca, now):
    found = files.read_workload(request) if request.cert_path and not create_ca else None
    return workload_plan(request, ca, create_ca, found, now)


def plan_bundle(request) -> tuple:
    """(content, changed) of the trust bundle; content is None while the CA is still to be created."""
    if not request.trust_bundle_path:
        return None, False
    sources = [("ca_cert_path", request.ca_cert_path)] + [("trust_extra", path) for path in request.trust_extra]
    found = tuple((option, path, files.read(path)) for option, path in sources)
    return bundle_plan(found, files.read(request.trust_bundle_path))


def write_bundle(request) -> bool:
    """Write the trust bundle if it differs; True when it was written."""
    content, differs = plan_bundle(request)
    if differs:
        files.write(request.trust_bundle_path, content, CERT_MODE)
    return differs


def plan_private_dir(path: str, paths=()) -> list:
    """What keeping path private takes (plan.private_dir_actions), directories on the way to paths included."""
    return private_dir_actions(path, files.look_at_private_dir(path, private_dirs(path, paths)))


def apply_private_dir(actions) -> None:
    """Carry out plan_private_dir's actions."""
    for action in actions:
        if action.kind == "mkdir":
            try:
                files.make_private_dirs(action.path)
            except OSError as error:
                raise MeshCAError(
                    "private_dir: cannot create %r (%s); give a directory the controller user can create"
                    % (action.path, error.strerror or error)
                ) from error
            files.set_mode(action.path, action.mode)
        elif action.kind == "chmod":
            files.set_mode(action.path, action.mode)
        else:
            files.write(action.path, GITIGNORE, action.mode)


def apply_plan(plan: Plan, now) -> tuple:
    """Create the CA and issue the certificate as planned; returns (ca, certificate or None, ca_created)."""
    ca, created = apply_ca(plan.request, plan.ca, plan.create_ca, now)
    return ca, apply_workload(plan, ca, now), created


def apply_workloads(batch: BatchPlan, now) -> tuple:
    """Apply a BatchPlan: the CA once, then each workload; returns (ca, ca_created, [(name, certificate)])."""
    ca, created = apply_ca(batch.base, batch.ca, batch.create_ca, now)
    return ca, created, [(name, apply_workload(plan, ca, now)) for name, plan in batch.plans]


def apply_ca(request, ca, create_ca: bool, now) -> tuple:
    """Create the CA when planned (unless another run just did); returns (ca, ca_created)."""
    if not create_ca:
        return ca, False
    created = _create_ca(request, now)
    if not created:
        files.wait_for(request.ca_cert_path)
    return load_ca(request.ca_cert_path, request.ca_key_path, now), created


def _create_ca(request, now):
    """Create the CA unless another run just did: its key first, exclusively, so only one run wins."""
    ca = new_ca(request, now)
    if not files.create_exclusive(request.ca_key_path, private_key_pem(ca.key), KEY_MODE):
        return False
    files.write(request.ca_cert_path, certificate_pem(ca.cert), CERT_MODE)
    return True


def apply_workload(plan: Plan, ca, now):
    """Issue, fix or keep the planned workload certificate, signed by ca; returns it (None without cert_path)."""
    request = plan.request
    if not request.cert_path:
        return None
    if not plan.reasons:
        if plan.key_mode:
            files.set_mode(request.key_path, KEY_MODE)
        return plan.current
    key = new_key()
    cert = issue(request, ca, key, now)
    # Key first: a reader that sees the new certificate also finds its key.
    files.write(request.key_path, private_key_pem(key), KEY_MODE)
    files.write(request.cert_path, chain_pem(cert, ca), CERT_MODE)
    return cert
