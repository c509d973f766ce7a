# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""traffic_capture's argument spec: the one place its options, types, choices and defaults live.

traffic_capture hands it to AnsibleModule; host_state checks its ``capture``
dict against it with ``validate_params``, so both accept exactly the same
values. The option defaults and the fields of CaptureOptions derive from it,
and a unit test holds the module's DOCUMENTATION to it.
"""

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.errors import OptionError


def capture_argument_spec() -> dict:
    """A fresh argument spec (callers may change their copy)."""
    return {
        "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        "mode": {"type": "str", "choices": ["redirect", "tproxy"], "default": "redirect"},
        "proxy_port": {"type": "int", "default": 15001},
        "inbound_capture_port": {"type": "int", "default": 15006},
        "proxy_uid": {"type": "list", "elements": "raw", "default": [1337]},
        "proxy_gid": {"type": "list", "elements": "raw", "default": [1337]},
        "inbound_ports": {"type": "list", "elements": "raw", "default": ["*"]},
        "inbound_ports_exclude": {"type": "list", "elements": "raw", "default": [22, 15090, 15021, 15020]},
        "outbound_cidrs": {"type": "list", "elements": "str", "default": ["*"]},
        "outbound_cidrs_exclude": {"type": "list", "elements": "str", "default": []},
        "outbound_ports": {"type": "list", "elements": "raw", "default": []},
        "outbound_ports_exclude": {"type": "list", "elements": "raw", "default": []},
        "exclude_interfaces": {"type": "list", "elements": "str", "default": []},
        "virtual_interfaces": {"type": "list", "elements": "str", "default": []},
        "outbound_owner_groups": {"type": "list", "elements": "raw", "default": []},
        "outbound_owner_groups_exclude": {"type": "list", "elements": "raw", "default": []},
        "inbound_tunnel_port": {"type": "int", "default": 15008},
        "inbound_forwarded": {"type": "bool", "default": False},
        "host_loopback_cidr": {"type": "str", "default": "127.0.0.1/32"},
        "ip_families": {"type": "raw", "default": "auto"},
        "dns_redirect": {"type": "bool", "default": False},
        "dns_capture_all": {"type": "bool", "default": False},
        "dns_port": {"type": "int", "default": 15053},
        "drop_invalid": {"type": "bool", "default": False},
        "protect_established": {"type": "bool", "default": True},
        "tproxy_mark": {"type": "int", "default": 1337},
        "tproxy_route_table": {"type": "int", "default": 133},
        "chain_prefix": {"type": "str", "default": "HOSTMESH_"},
        "backend": {
            "type": "str",
            "choices": ["auto", "iptables-nft", "iptables-legacy", "nftables"],
            "default": "auto",
        },
        "lock_wait": {"type": "int", "default": 30},
        "rules_file": {"type": "path"},
    }


def validate_params(params: dict) -> dict:
    """``params`` typed, converted and completed with defaults exactly as AnsibleModule would.

    For a caller that gets traffic_capture's options inside another module's
    argument (host_state's ``capture``). Raises OptionError naming the first
    option whose value the spec refuses; unknown names are the caller's to refuse.
    """
    spec = capture_argument_spec()
    result = ArgumentSpecValidator(spec).validate(params)
    if not result.error_messages:
        return result.validated_parameters
    # The validator's messages do not say which option they are about: ask each alone.
    for name in spec:
        if name in params:
            alone = ArgumentSpecValidator({name: spec[name]}).validate({name: params[name]})
            if alone.error_messages:
                raise OptionError(name, params[name], alone.error_messages[0])
    raise OptionError(", ".join(sorted(params)), params, result.error_messages[0])
