#!/usr/bin/python
# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
---
module: mesh_certificate
short_description: Keep the standalone mesh's CA and workloads' SPIFFE certificates on the controller
version_added: "0.1.0"
description:
  - Creates the mesh CA when it does not exist (a self-signed EC P-256 root
    for the trust domain), or uses the one you bring.
  - With O(cert_path) and O(key_path), issues a workload certificate (a SPIFFE
    X.509-SVID) for C(spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>)
    with a new EC P-256 key, and re-issues it with a new key when fewer than
    O(renew_days) days remain, when its SPIFFE ID or DNS names no longer match,
    when the key does not match it, or when another CA signed it.
  - With O(workloads), does the same for many workloads in one run. The CA is
    created or checked once, then each workload is issued, renewed or kept by
    the same rules.
  - A certificate in place that is still right is left alone and the module
    reports no change.
  - With O(private_dir), also keeps the directory holding the keys private.
  - Meant to run on the controller (C(delegate_to) V(localhost)); the
    C(hostmesh.sidecar.mesh_ca) role runs it once per play batch, for every
    host of the batch, and hands the files to the agent role.
author:
  - hostmesh.sidecar maintainers (@hostmesh)
options:
  ca_cert_path:
    description:
      - The CA certificate (PEM). The first certificate signs; any that follow
        are its chain and go into the workload's certificate file after the
        workload's certificate (self-signed roots excepted).
    type: path
    required: true
  ca_key_path:
    description: The CA's private key (PEM, unencrypted). Written with mode C(0600) when created.
    type: path
    required: true
  create_ca:
    description:
      - Create the CA when neither O(ca_cert_path) nor O(ca_key_path) exists.
        With V(false) (bring your own CA) a missing CA is an error.
      - One of the two files without the other is always an error.
    type: bool
    default: true
  ca_common_name:
    description: Common name of a CA this module creates.
    type: str
    default: hostmesh mesh CA
  ca_days:
    description: Validity in days of a CA this module creates.
    type: int
    default: 3650
  ca_name_constraints:
    description:
      - Mark a CA this module creates as allowed to sign only URIs in
        O(trust_domain) (an X.509 name constraint). Verifiers that do not
        handle URI name constraints reject such a CA, so it is off by default.
    type: bool
    default: false
  trust_domain:
    description: SPIFFE trust domain (lower-case DNS-style name).
    type: str
    default: cluster.local
  namespace:
    description:
      - Namespace part of the SPIFFE ID.
      - With O(workloads), the namespace of each workload that does not give its own.
    type: str
    default: default
  service_account:
    description:
      - Service-account part of the SPIFFE ID. Required with O(cert_path).
      - Mutually exclusive with O(workloads).
    type: str
  dns_names:
    description:
      - DNS names added as DNS SANs (for example the host's name).
      - With O(workloads), give them per workload instead.
    type: list
    elements: str
    default: []
  cert_path:
    description:
      - Where the workload's certificate chain (PEM) is kept. Without it (and
        without O(workloads)) only the CA is checked or created.
      - Mutually exclusive with O(workloads).
    type: path
  key_path:
    description:
      - Where the workload's private key (PEM) is kept, mode C(0600). Required with O(cert_path).
      - Mutually exclusive with O(workloads).
    type: path
  days:
    description: Validity in days of a new workload certificate (capped at the CA's expiry).
    type: int
    default: 30
  renew_days:
    description: Re-issue the certificate when fewer than this many days of validity remain. Less than O(days).
    type: int
    default: 10
  force:
    description:
      - Re-issue the workload certificate (with a new key) even if it is still right.
      - With O(workloads), give it per workload instead.
    type: bool
    default: false
  workloads:
    description:
      - Many workloads in one run, each issued, renewed or kept exactly as a
        single one would be with O(cert_path). O(days), O(renew_days),
        O(trust_domain) and the CA options apply to all of them.
      - Every entry is checked before anything is written; an error names the
        entry (C(workloads[2].service_account)) and the value.
      - Mutually exclusive with O(cert_path), O(key_path) and O(service_account).
    type: list
    elements: dict
    suboptions:
      name:
        description:
          - A label for the workload, unique in the list (for example the
            inventory host name); it keys RV(workloads).
        type: str
        required: true
      service_account:
        description: Service-account part of the SPIFFE ID.
        type: str
        required: true
      namespace:
        description: Namespace part of the SPIFFE ID; O(namespace) when not given.
        type: str
      dns_names:
        description: DNS names added as DNS SANs.
        type: list
        elements: str
        default: []
      cert_path:
        description: Where the certificate chain (PEM) is kept; no two workloads may share a file.
        type: path
        required: true
      key_path:
        description: Where the private key (PEM) is kept, mode C(0600).
        type: path
        required: true
      force:
        description: Re-issue this certificate (with a new key) even if it is still right.
        type: bool
        default: false
  private_dir:
    description:
      - A directory to keep private, normally the one holding the CA and the
        workloads' keys. It is created when missing and kept at mode C(0700),
        with a C(.gitignore) (mode C(0600)) that keeps everything in it out of
        version control.
      - Directories below it on the way to the files this module writes are
        kept at mode C(0700) too.
    type: path
  trust_bundle_path:
    description:
      - When set, keep here the bundle peers verify against - the certificates
        of O(ca_cert_path), then those of each O(trust_extra) file, each once.
      - Use it to change CAs without a gap. Trust the new CA as an extra
        everywhere, then sign with it and trust the old one as an extra, then
        drop the extra.
    type: path
  trust_extra:
    description: More CA certificate files (PEM) to trust; needs O(trust_bundle_path).
    type: list
    elements: path
    default: []
attributes:
  check_mode:
    support: full
    description: Reports whether the CA would be created, the certificates issued and the directory put right, and writes nothing.
  diff_mode:
    support: none
    description: The result's RV(reasons) say what differs.
  platform:
    support: full
    platforms: posix
    description: Runs where the CA lives, normally the controller; needs the Python C(cryptography) library.
requirements:
  - cryptography (a dependency of ansible-core, so present on every controller)
notes:
  - Missing parent directories are created with mode C(0700).
  - Keys are written to a temporary file created with mode C(0600) and moved
    into place, so they are never readable by others, even for a moment.
  - Several hosts may run this at once against one CA; only one creates it.
seealso:
  - name: SPIFFE X.509-SVID
    description: The certificate profile issued here.
    link: https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md
"""

EXAMPLES = r"""
- name: Create the mesh CA once
  hostmesh.sidecar.mesh_certificate:
    ca_cert_path: "{{ playbook_dir }}/.hostmesh-ca/ca-cert.pem"
    ca_key_path: "{{ playbook_dir }}/.hostmesh-ca/ca-key.pem"
  delegate_to: localhost
  run_once: true

- name: Issue (or renew) this host's workload certificate
  hostmesh.sidecar.mesh_certificate:
    ca_cert_path: "{{ playbook_dir }}/.hostmesh-ca/ca-cert.pem"
    ca_key_path: "{{ playbook_dir }}/.hostmesh-ca/ca-key.pem"
    trust_domain: cluster.local
    namespace: default
    service_account: "{{ inventory_hostname }}"
    dns_names: ["{{ inventory_hostname }}"]
    cert_path: "{{ playbook_dir }}/.hostmesh-ca/hosts/{{ inventory_hostname }}/cert-chain.pem"
    key_path: "{{ playbook_dir }}/.hostmesh-ca/hosts/{{ inventory_hostname }}/key.pem"
  delegate_to: localhost
  register: workload_cert

- name: Keep the CA directory private, and every host's certificate, in one run
  hostmesh.sidecar.mesh_certificate:
    private_dir: "{{ playbook_dir }}/.hostmesh-ca"
    ca_cert_path: "{{ playbook_dir }}/.hostmesh-ca/ca-cert.pem"
    ca_key_path: "{{ playbook_dir }}/.hostmesh-ca/ca-key.pem"
    workloads:
      - name: web1
        service_account: web
        dns_names: [web1]
        cert_path: "{{ playbook_dir }}/.hostmesh-ca/hosts/web1/cert-chain.pem"
        key_path: "{{ playbook_dir }}/.hostmesh-ca/hosts/web1/key.pem"
      - name: db1
        namespace: data
        service_account: postgres
        cert_path: "{{ playbook_dir }}/.hostmesh-ca/hosts/db1/cert-chain.pem"
        key_path: "{{ playbook_dir }}/.hostmesh-ca/hosts/db1/key.pem"
  delegate_to: localhost
  run_once: true
  register: mesh_certs
# mesh_certs.workloads.web1.spiffe_id == "spiffe://cluster.local/ns/default/sa/web"

- name: Bring your own CA (an intermediate followed by its chain)
  hostmesh.sidecar.mesh_certificate:
    ca_cert_path: /etc/pki/mesh/intermediate-chain.pem
    ca_key_path: /etc/pki/mesh/intermediate-key.pem
    create_ca: false
    service_account: payments
    namespace: prod
    cert_path: /srv/mesh/payments-1/cert-chain.pem
    key_path: /srv/mesh/payments-1/key.pem
  delegate_to: localhost
"""

RETURN = r"""
spiffe_id:
  description: The workload's SPIFFE ID.
  returned: when O(cert_path) is set
  type: str
  sample: spiffe://cluster.local/ns/default/sa/web1
reasons:
  description:
    - Why the certificate was (or, in check mode, would be) issued; empty when it was left alone.
    - Empty with O(workloads); each workload has its own in RV(workloads).
  returned: always
  type: list
  elements: str
  sample: ["expires in 6.0 days (renewed with fewer than 10 left)"]
ca_created:
  description: Whether this run created the CA (or would, in check mode).
  returned: always
  type: bool
  sample: false
not_before:
  description: Start of the certificate's validity (ISO 8601, UTC).
  returned: when O(cert_path) is set and a certificate is in place after the run (not in check mode when one would be issued)
  type: str
  sample: "2026-01-01T09:55:00+00:00"
not_after:
  description: End of the certificate's validity (ISO 8601, UTC).
  returned: when O(cert_path) is set and a certificate is in place after the run (not in check mode when one would be issued)
  type: str
  sample: "2026-01-31T10:00:00+00:00"
serial_number:
  description: The certificate's serial number, in hexadecimal.
  returned: when RV(not_after) is
  type: str
  sample: 4f1c2a9e0b
ca_not_after:
  description: End of the CA's validity (ISO 8601, UTC).
  returned: when the CA exists after the run
  type: str
  sample: "2036-01-01T10:00:00+00:00"
trust_bundle_path:
  description: The trust bundle file.
  returned: when O(trust_bundle_path) is set
  type: str
  sample: /home/ops/mesh/.hostmesh-ca/trust-bundle.pem
cert_path:
  description: The certificate chain file.
  returned: when O(cert_path) is set
  type: str
  sample: /home/ops/mesh/.hostmesh-ca/hosts/web1/cert-chain.pem
key_path:
  description: The private key file.
  returned: when O(cert_path) is set
  type: str
  sample: /home/ops/mesh/.hostmesh-ca/hosts/web1/key.pem
ca_cert_path:
  description: The CA certificate file, the trust bundle peers verify against.
  returned: always
  type: str
  sample: /home/ops/mesh/.hostmesh-ca/ca-cert.pem
workloads:
  description:
    - For each workload of O(workloads), keyed by its C(name), what the module
      returns about a single one - C(spiffe_id), C(cert_path), C(key_path),
      C(reasons), C(changed), and C(not_before), C(not_after) and
      C(serial_number) when a certificate is in place after the run (not in
      check mode when one would be issued).
  returned: when O(workloads) is set
  type: dict
  sample:
    web1:
      spiffe_id: spiffe://cluster.local/ns/default/sa/web
      cert_path: /home/ops/mesh/.hostmesh-ca/hosts/web1/cert-chain.pem
      key_path: /home/ops/mesh/.hostmesh-ca/hosts/web1/key.pem
      reasons: []
      changed: false
      not_before: "2026-01-01T09:55:00+00:00"
      not_after: "2026-01-31T10:00:00+00:00"
      serial_number: 4f1c2a9e0b
private_dir:
  description: The directory kept private.
  returned: when O(private_dir) is set
  type: str
  sample: /home/ops/mesh/.hostmesh-ca
private_dir_changes:
  description: What was (or, in check mode, would be) put right in O(private_dir); empty when nothing.
  returned: when O(private_dir) is set
  type: list
  elements: str
  sample: ["/home/ops/mesh/.hostmesh-ca mode is 0755; wanted 0700"]
"""

import datetime

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.backend import (
    apply_plan,
    apply_private_dir,
    apply_workloads,
    plan_bundle,
    plan_certificate,
    plan_private_dir,
    plan_workloads,
    write_bundle,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.crypto import (
    CRYPTOGRAPHY_IMPORT_ERROR,
    HAS_CRYPTOGRAPHY,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.errors import MeshCAError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.pem import ca_expires_within, describe
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.plan import changed
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.request import make_request, make_workloads
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.spec import ARGUMENT_SPEC


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        supports_check_mode=True,
        required_together=[("cert_path", "key_path", "service_account")],
        mutually_exclusive=[("workloads", "cert_path"), ("workloads", "key_path"), ("workloads", "service_account")],
    )
    if not HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=CRYPTOGRAPHY_IMPORT_ERROR)
    now = datetime.datetime.now(datetime.timezone.utc)
    params = module.params
    try:
        # Everything is checked and planned before anything is written.
        request = make_request(params)
        workloads = None if params["workloads"] is None else make_workloads(request, params["workloads"])
        dir_actions = plan_dir(params["private_dir"], request, workloads)
        plan = plan_certificate(request, now) if workloads is None else plan_workloads(request, workloads, now)
        bundle_changed = plan_bundle(request)[1]
        if not module.check_mode:
            apply_private_dir(dir_actions)
        finish = finish_single if workloads is None else finish_workloads
        result, ca = finish(module, plan, bundle_changed, now)
    except (MeshCAError, OSError) as error:
        module.fail_json(msg=str(error))
    if params["private_dir"]:
        result.update(private_dir=params["private_dir"], private_dir_changes=[action.reason for action in dir_actions])
        result["changed"] = result["changed"] or bool(dir_actions)
    if ca is not None:
        result["ca_not_after"] = describe(ca.cert)["not_after"]
        warn_when_ca_ends_first(module, request, ca, now)
    module.exit_json(**result)


def plan_dir(path, request, workloads):
    """What keeping private_dir private takes, directories on the way to the files written here included."""
    if not path:
        return []
    requests = [request] if workloads is None else [workload.request for workload in workloads]
    files = [request.ca_cert_path, request.ca_key_path, request.trust_bundle_path]
    files += [name for each in requests for name in (each.cert_path, each.key_path)]
    return plan_private_dir(path, [name for name in files if name])


def finish_single(module, plan, bundle_changed, now):
    """Apply the plan for the CA and, with cert_path, one workload (not in check mode); returns (result, ca)."""
    request = plan.request
    result = {
        "changed": changed(plan),
        "reasons": workload_reasons(plan),
        "ca_created": plan.create_ca,
        "ca_cert_path": request.ca_cert_path,
    }
    ca, cert = plan.ca, plan.current
    if not module.check_mode:
        ca, cert, result["ca_created"] = apply_plan(plan, now)
        bundle_changed = write_bundle(request)
        # Another run may have created the CA first.
        result["changed"] = result["ca_created"] or bool(plan.reasons or plan.key_mode)
    result["changed"] = result["changed"] or bundle_changed
    if request.trust_bundle_path:
        result["trust_bundle_path"] = request.trust_bundle_path
    if request.cert_path:
        result.update(workload_result(plan, cert))
    return result, ca


def finish_workloads(module, batch, bundle_changed, now):
    """Apply the batch plan: the CA once, the trust bundle once, then every workload; returns (result, ca)."""
    base = batch.base
    ca, created = batch.ca, batch.create_ca
    certs = {name: plan.current for name, plan in batch.plans}
    if not module.check_mode:
        ca, created, issued = apply_workloads(batch, now)
        certs = dict(issued)
        bundle_changed = write_bundle(base)
    results = {
        name: dict(workload_result(plan, certs[name]), reasons=workload_reasons(plan), changed=changed(plan))
        for name, plan in batch.plans
    }
    result = {
        "changed": created or bundle_changed or any(each["changed"] for each in results.values()),
        "reasons": [],
        "ca_created": created,
        "ca_cert_path": base.ca_cert_path,
        "workloads": results,
    }
    if base.trust_bundle_path:
        result["trust_bundle_path"] = base.trust_bundle_path
    return result, ca


def workload_reasons(plan):
    return list(plan.reasons) + ([plan.key_mode] if plan.key_mode else [])


def workload_result(plan, cert):
    """What the module returns about one workload; validity and serial only for a certificate in place."""
    result = {"spiffe_id": plan.spiffe_id, "cert_path": plan.request.cert_path, "key_path": plan.request.key_path}
    if cert is not None:
        info = describe(cert)
        result.update(not_before=info["not_before"], not_after=info["not_after"], serial_number=info["serial_number"])
    return result


def warn_when_ca_ends_first(module, request, ca, now):
    if ca_expires_within(ca, now, request.days):
        module.warn(
            "the CA in %s expires on %s, sooner than a new certificate's %d days; certificates end with it."
            " Plan a new CA." % (request.ca_cert_path, describe(ca.cert)["not_after"], request.days)
        )


if __name__ == "__main__":
    main()
