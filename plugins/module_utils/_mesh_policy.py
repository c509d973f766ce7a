# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Who may call whom: a service's ``allow`` rules from the inventory, as the agent's principals.

Pure functions on plain data. The inventory names callers by service,
service account, namespace or SPIFFE ID; the agent matches SPIFFE IDs only
(exact, or a prefix ending in "/"). Resolving one into the other needs a view
of the mesh's identities, built once per play from a list of hosts:

    [{"host": "web1", "namespace": "shop", "service_account": "web1",
      "spiffe_id": "spiffe://cluster.local/ns/shop/sa/web1",
      "services": ["web"], "app": "storefront"}, ...]

``identity_view`` turns that list into the view, and ``resolve_allow`` one
service's rules into the agent's ``allow``. Any registry that can list its
hosts this way can feed the view.
"""

import json
import re

from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_identity import NAME_EXPECTED, is_name

POLICY_DEFAULTS = ("allow", "deny")
# RFC 9110's methods and PATCH (RFC 5789).
HTTP_METHODS = ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")
CALLER_KEYS = ("services", "service_accounts", "namespaces", "spiffe_ids")
REQUEST_KEYS = ("methods", "paths")
RULE_KEYS = CALLER_KEYS + REQUEST_KEYS
# The agent's own rule for a SPIFFE ID or an ID prefix (roles/agent/files/hostmesh_agent/config.py).
SPIFFE_RE = re.compile(r"^spiffe://[a-z0-9._-]+/([A-Za-z0-9._-]+/)*([A-Za-z0-9._-]+)?$")


class PolicyError(ValueError):
    """A bad policy value; the message names the variable, the value and what is accepted."""


def _bad(variable, value, expected):
    return PolicyError("%s: got %s; expected %s" % (variable, json.dumps(value, default=str, sort_keys=True), expected))


def identity_view(trust_domain: str, hosts: list) -> dict:
    """The mesh's identities as the resolver reads them: who offers each service, the accounts and namespaces."""
    services = {}
    accounts = {}
    workloads = {}
    for host in hosts:
        identity = host["spiffe_id"]
        accounts["%s/%s" % (host["namespace"], host["service_account"])] = identity
        for name in host.get("services", ()):
            services.setdefault(name, set()).add(identity)
        app = host.get("app") or ""
        if app and app != host["service_account"]:
            workloads[identity] = app
    return {
        "trust_domain": trust_domain,
        "services": {name: sorted(ids) for name, ids in sorted(services.items())},
        "accounts": dict(sorted(accounts.items())),
        "namespaces": sorted({account.split("/", 1)[0] for account in accounts}),
        "workloads": dict(sorted(workloads.items())),
    }


def _names(where, rule, key):
    """The rule's list under key: present means at least one entry (an empty list would admit anyone)."""
    values = rule[key]
    if not isinstance(values, list) or not values:
        raise _bad("%s.%s" % (where, key), values, "a non-empty list")
    return values


def _known(values, limit=12):
    shown = sorted(values)[:limit]
    return ", ".join(shown) + (", ..." if len(values) > limit else "") if shown else "none"


def _caller_service(view, variable, value):
    if not is_name(value) or value not in view["services"]:
        raise _bad(variable, value, "a service some mesh host offers (known: %s)" % _known(view["services"]))
    return view["services"][value]


def _caller_account(view, variable, value, own_namespace):
    if not isinstance(value, str):
        raise _bad(variable, value, '"namespace/account" or "account" (in this host\'s namespace)')
    namespace, _sep, account = value.rpartition("/")
    namespace = namespace or own_namespace
    if not (is_name(namespace) and is_name(account)):
        raise _bad(variable, value, '"namespace/account" or "account", each %s' % NAME_EXPECTED)
    key = "%s/%s" % (namespace, account)
    if key not in view["accounts"]:
        raise _bad(variable, value, "a service account of a mesh host (known: %s)" % _known(view["accounts"]))
    return [view["accounts"][key]]


def _caller_namespace(view, variable, value):
    if not is_name(value) or value not in view["namespaces"]:
        raise _bad(variable, value, "a namespace of a mesh host (known: %s)" % _known(view["namespaces"]))
    return ["spiffe://%s/ns/%s/" % (view["trust_domain"], value)]


def _caller_spiffe_id(variable, value):
    if not isinstance(value, str) or not SPIFFE_RE.match(value):
        raise _bad(
            variable,
            value,
            'a SPIFFE ID such as "spiffe://cluster.local/ns/shop/sa/web", or a prefix ending in "/" '
            'such as "spiffe://cluster.local/ns/team-a/" (no wildcards)',
        )
    return [value]


def _method(variable, value):
    if not isinstance(value, str) or value.upper() not in HTTP_METHODS:
        raise _bad(variable, value, "an HTTP method, one of %s" % ", ".join(HTTP_METHODS))
    return value.upper()


def _path(variable, value):
    if not isinstance(value, str) or not value.startswith("/") or "?" in value or "#" in value:
        raise _bad(variable, value, 'an absolute path prefix such as "/api/" (no query, no fragment)')
    return value


def _principals(view, where, rule, own_namespace):
    principals = set()
    for key in CALLER_KEYS:
        if key not in rule:
            continue
        for index, value in enumerate(_names(where, rule, key)):
            variable = "%s.%s[%d]" % (where, key, index)
            if key == "services":
                principals.update(_caller_service(view, variable, value))
            elif key == "service_accounts":
                principals.update(_caller_account(view, variable, value, own_namespace))
            elif key == "namespaces":
                principals.update(_caller_namespace(view, variable, value))
            else:
                principals.update(_caller_spiffe_id(variable, value))
    return sorted(principals)


def resolve_rule(view: dict, where: str, rule, service: dict, own_namespace: str) -> dict:
    """One inventory rule as the agent's: its callers as SPIFFE IDs, its methods and paths checked."""
    if not isinstance(rule, dict):
        raise _bad(where, rule, "a mapping with any of %s" % ", ".join(RULE_KEYS))
    unknown = sorted(key for key in rule if key not in RULE_KEYS)
    if unknown:
        raise _bad("%s.%s" % (where, unknown[0]), rule[unknown[0]], "only the keys %s" % ", ".join(RULE_KEYS))
    resolved = {}
    principals = _principals(view, where, rule, own_namespace)
    if principals:
        if not service["tls"]:
            raise _bad(
                where,
                rule,
                "no callers named on a service with tls false (a caller's identity is its mesh certificate), "
                "or tls true on %s" % service["where"],
            )
        resolved["principals"] = principals
    for key, check in (("methods", _method), ("paths", _path)):
        if key not in rule:
            continue
        values = _names(where, rule, key)
        if service["protocol"] != "http":
            raise _bad(
                "%s.%s" % (where, key), values, "%s only on http services (this one is %s)" % (key, service["protocol"])
            )
        checked = [check("%s.%s[%d]" % (where, key, index), value) for index, value in enumerate(values)]
        resolved[key] = sorted(set(checked)) if key == "methods" else list(dict.fromkeys(checked))
    return resolved


def resolve_allow(view: dict, where: str, rules, service: dict, own_namespace: str) -> list:
    """A service's ``allow`` as the agent takes it. ``service`` has its ``protocol``, ``tls`` and ``where``."""
    if not isinstance(rules, list):
        raise _bad(
            where,
            rules,
            "a list of rules, each naming callers (%s) and, for http, methods and paths" % (", ".join(CALLER_KEYS)),
        )
    return [
        resolve_rule(view, "%s[%d]" % (where, index), rule, service, own_namespace) for index, rule in enumerate(rules)
    ]


def policy_default(variable: str, value) -> str:
    """The mesh-wide default, checked."""
    if value not in POLICY_DEFAULTS:
        raise _bad(variable, value, "one of %s" % ", ".join(POLICY_DEFAULTS))
    return value
