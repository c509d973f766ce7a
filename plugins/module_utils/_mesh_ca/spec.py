# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""mesh_certificate's argument spec, in one place: the module takes its options
through it, and the mesh_ca filters check a host's part with the same types
and defaults before the batch's one module run."""

WORKLOAD_SPEC = {
    "name": {"type": "str", "required": True},
    "service_account": {"type": "str", "required": True},
    "namespace": {"type": "str"},
    "dns_names": {"type": "list", "elements": "str", "default": []},
    "cert_path": {"type": "path", "required": True},
    "key_path": {"type": "path", "required": True, "no_log": False},
    "force": {"type": "bool", "default": False},
}

ARGUMENT_SPEC = {
    "ca_cert_path": {"type": "path", "required": True},
    "ca_key_path": {"type": "path", "required": True, "no_log": False},
    "create_ca": {"type": "bool", "default": True},
    "ca_common_name": {"type": "str", "default": "hostmesh mesh CA"},
    "ca_days": {"type": "int", "default": 3650},
    "ca_name_constraints": {"type": "bool", "default": False},
    "trust_domain": {"type": "str", "default": "cluster.local"},
    "namespace": {"type": "str", "default": "default"},
    "service_account": {"type": "str"},
    "dns_names": {"type": "list", "elements": "str", "default": []},
    "cert_path": {"type": "path"},
    "key_path": {"type": "path", "no_log": False},
    "days": {"type": "int", "default": 30},
    "renew_days": {"type": "int", "default": 10},
    "force": {"type": "bool", "default": False},
    "trust_bundle_path": {"type": "path"},
    "trust_extra": {"type": "list", "elements": "path", "default": []},
    "workloads": {"type": "list", "elements": "dict", "options": WORKLOAD_SPEC},
    "private_dir": {"type": "path"},
}
