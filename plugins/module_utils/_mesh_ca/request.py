# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""mesh_certificate's options, checked, as a Request (one workload) or Workloads (many).

Pure: every check happens here, before anything is read or written, and every
error names the option (``workloads[2].service_account`` in a batch) and the
value. The mesh_ca filters run the same checks so a host can test its own part.
"""

import os
import re
from collections import namedtuple

from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.errors import MeshCAError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_identity import NAME_EXPECTED, is_name

DNS_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([-A-Za-z0-9_]{0,62})(\.[A-Za-z0-9_][-A-Za-z0-9_]{0,62})*\.?$")

Request = namedtuple(
    "Request",
    [
        "ca_cert_path",
        "ca_key_path",
        "create_ca",
        "ca_common_name",
        "ca_days",
        "ca_name_constraints",
        "trust_domain",
        "namespace",
        "service_account",
        "dns_names",
        "cert_path",
        "key_path",
        "days",
        "renew_days",
        "force",
        "trust_bundle_path",
        "trust_extra",
    ],
)
REQUEST_DEFAULTS = {
    "create_ca": True,
    "ca_common_name": "hostmesh mesh CA",
    "ca_days": 3650,
    "ca_name_constraints": False,
    "trust_domain": "cluster.local",
    "namespace": "default",
    "service_account": None,
    "dns_names": (),
    "cert_path": None,
    "key_path": None,
    "days": 30,
    "renew_days": 10,
    "force": False,
    "trust_bundle_path": None,
    "trust_extra": (),
}

# name: the caller's label for the workload (an inventory host name, say);
# request: the shared CA options with this workload's identity and files.
Workload = namedtuple("Workload", ["name", "request"])
WORKLOAD_REQUIRED = ("name", "service_account", "cert_path", "key_path")
WORKLOAD_KEYS = (*WORKLOAD_REQUIRED, "namespace", "dns_names", "force")
# Options that describe one workload: given per entry of workloads instead.
SINGLE_ONLY = ("service_account", "cert_path", "key_path")


def make_request(params: dict) -> Request:
    """Check the options and return a Request; every error names the option and value."""
    values = dict(REQUEST_DEFAULTS)
    values.update({key: value for key, value in params.items() if value is not None and key in Request._fields})
    values["dns_names"] = tuple(values["dns_names"] or ())
    values["trust_extra"] = tuple(values["trust_extra"] or ())
    if values["trust_extra"] and not values["trust_bundle_path"]:
        raise MeshCAError("trust_extra: got %s; it needs trust_bundle_path to be set" % list(values["trust_extra"]))
    for key in ("ca_cert_path", "ca_key_path"):
        if not values.get(key):
            raise MeshCAError("%s is required" % key)
    for key in ("trust_domain", "namespace"):
        _check_name(key, values[key])
    issuing = values["cert_path"] is not None or values["key_path"] is not None
    if issuing:
        for key in ("cert_path", "key_path", "service_account"):
            if not values.get(key):
                raise MeshCAError("%s is required to issue a certificate (cert_path and key_path are set)" % key)
        _check_name("service_account", values["service_account"])
    _check_dns_names("dns_names", values["dns_names"])
    if not 1 <= values["days"] <= 3650:
        raise MeshCAError("days: got %r; expected 1 to 3650" % (values["days"],))
    if not 0 <= values["renew_days"] < values["days"]:
        raise MeshCAError(
            "renew_days: got %r; expected 0 or more and less than days (%r)" % (values["renew_days"], values["days"])
        )
    if not 1 <= values["ca_days"] <= 36500:
        raise MeshCAError("ca_days: got %r; expected 1 to 36500" % (values["ca_days"],))
    return Request(**values)


def make_workloads(base: Request, items: list) -> list:
    """One checked Workload per entry of workloads, sharing base's CA options; errors name workloads[i].<key>."""
    _check_batch_options(base)
    if not isinstance(items, (list, tuple)):
        raise MeshCAError("workloads: got %r; expected a list of mappings" % (items,))
    workloads = []
    names = {}
    for index, item in enumerate(items):
        workload = _make_workload(base, "workloads[%d]" % index, item)
        if workload.name in names:
            raise MeshCAError(
                "workloads[%d].name: got %r; %s has that name already, names must be unique"
                % (index, workload.name, names[workload.name])
            )
        names[workload.name] = "workloads[%d]" % index
        workloads.append(workload)
    _check_files_unique(workloads)
    return workloads


def _check_name(key, value):
    if not is_name(value):
        raise MeshCAError("%s: got %r; expected %s" % (key, value, NAME_EXPECTED))


def _check_dns_names(key, names):
    for name in names:
        if not isinstance(name, str) or not DNS_RE.match(name):
            raise MeshCAError("%s: got %r; expected DNS host names" % (key, name))


def _check_batch_options(base):
    for key in SINGLE_ONLY:
        if getattr(base, key):
            raise MeshCAError("%s: got %r; with workloads, set it in each workload instead" % (key, getattr(base, key)))
    if base.dns_names:
        raise MeshCAError("dns_names: got %s; with workloads, set it in each workload instead" % list(base.dns_names))
    if base.force:
        raise MeshCAError("force: got True; with workloads, set it in each workload instead")


def _make_workload(base, where, item):
    if not isinstance(item, dict):
        raise MeshCAError("%s: got %r; expected a mapping with %s" % (where, item, ", ".join(WORKLOAD_REQUIRED)))
    unknown = sorted(set(item) - set(WORKLOAD_KEYS))
    if unknown:
        raise MeshCAError("%s: unknown keys %s; expected some of %s" % (where, unknown, ", ".join(WORKLOAD_KEYS)))
    for key in WORKLOAD_REQUIRED:
        if item.get(key) in (None, ""):
            raise MeshCAError("%s.%s is required (got %r)" % (where, key, item.get(key)))
    for key in ("name", "cert_path", "key_path"):
        if not isinstance(item[key], str):
            raise MeshCAError("%s.%s: got %r; expected a string" % (where, key, item[key]))
    namespace = base.namespace if item.get("namespace") is None else item["namespace"]
    _check_name(where + ".namespace", namespace)
    _check_name(where + ".service_account", item["service_account"])
    dns_names = item.get("dns_names") or ()
    if not isinstance(dns_names, (list, tuple)):
        raise MeshCAError("%s.dns_names: got %r; expected a list of DNS host names" % (where, dns_names))
    _check_dns_names(where + ".dns_names", dns_names)
    force = item.get("force")
    if force is not None and not isinstance(force, bool):
        raise MeshCAError("%s.force: got %r; expected true or false" % (where, force))
    request = base._replace(
        namespace=namespace,
        service_account=item["service_account"],
        dns_names=tuple(dns_names),
        cert_path=item["cert_path"],
        key_path=item["key_path"],
        force=bool(force),
    )
    return Workload(item["name"], request)


def _check_files_unique(workloads):
    """Two workloads writing one file would replace each other's certificate on every run."""
    owners = {}
    for index, workload in enumerate(workloads):
        for key in ("cert_path", "key_path"):
            path = getattr(workload.request, key)
            where = "workloads[%d].%s" % (index, key)
            real = os.path.abspath(path)
            if real in owners:
                raise MeshCAError("%s: got %r; %s names the same file" % (where, path, owners[real]))
            owners[real] = where
