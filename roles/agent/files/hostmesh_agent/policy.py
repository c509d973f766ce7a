"""Who may call an inbound service: its ``allow`` rules as Envoy RBAC filters (pure).

A tcp service gets Envoy's RBAC network filter (a refused connection is closed), an
http service the RBAC HTTP filter (a refused request is answered 403). Both match the
caller by the URI SAN of its verified mesh certificate (``authenticated.principal_name``).
The filters live in the inbound filter chains, so a policy change is a rewrite of the
watched LDS file: Envoy applies it with no restart.

A service gets a filter when it has ``allow`` rules, or when the mesh default
(``policy.default``) is "deny"; with neither, nothing is rendered (everything allowed,
as before policies existed). A filter with no rules refuses everyone.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from hostmesh_agent.config import AllowRule, Config, InboundService

Json = Dict[str, Any]

NETWORK_RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
HTTP_RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
# What Envoy writes in RESPONSE_CODE_DETAILS (http) or CONNECTION_TERMINATION_DETAILS (tcp).
DENIED_DETAILS_PREFIX = "rbac_access_denied"
# Bytes a tcp connection may send before its first bytes have been checked (see tcp_proxy_options).
EARLY_DATA_BYTES = 65536


def has_policy(cfg: Config, svc: InboundService) -> bool:
    return bool(svc.allow) or cfg.policy.default == "deny"


def rbac_rules(svc: InboundService) -> Json:
    """Envoy's ``rules``: ALLOW a connection or request that any of the service's rules matches."""
    return {"action": "ALLOW", "policies": {f"allow[{i}]": _policy(rule) for i, rule in enumerate(svc.allow)}}


def _policy(rule: AllowRule) -> Json:
    principals = [_principal(p) for p in rule.principals] or [{"any": True}]
    permissions: List[Json] = []
    if rule.methods:
        permissions.append(_any_of([_method(m) for m in rule.methods]))
    if rule.paths:
        permissions.append(_any_of([{"url_path": {"path": {"prefix": p}}} for p in rule.paths]))
    if not permissions:
        permission: Json = {"any": True}
    elif len(permissions) == 1:
        permission = permissions[0]
    else:
        permission = {"and_rules": {"rules": permissions}}
    return {"permissions": [permission], "principals": principals}


def _principal(spiffe: str) -> Json:
    # A trailing "/" names every ID under that path: the whole namespace, the whole trust domain.
    match = {"prefix": spiffe} if spiffe.endswith("/") else {"exact": spiffe}
    return {"authenticated": {"principal_name": match}}


def _method(method: str) -> Json:
    return {"header": {"name": ":method", "string_match": {"exact": method}}}


def _any_of(permissions: List[Json]) -> Json:
    return permissions[0] if len(permissions) == 1 else {"or_rules": {"rules": permissions}}


def network_stat_prefix(cluster: str) -> str:
    """The network filter's stats are ``<this>rbac.allowed`` / ``<this>rbac.denied``."""
    return f"{cluster}."


def network_filter(svc: InboundService, cluster: str) -> Json:
    return {
        "name": "envoy.filters.network.rbac",
        "typed_config": {
            "@type": NETWORK_RBAC_TYPE,
            "stat_prefix": network_stat_prefix(cluster),
            "rules": rbac_rules(svc),
        },
    }


def http_filter(svc: InboundService) -> Json:
    """Stats as ``http.<connection manager's stat prefix>.rbac.allowed`` / ``.denied``."""
    return {"name": "envoy.filters.http.rbac", "typed_config": {"@type": HTTP_RBAC_TYPE, "rules": rbac_rules(svc)}}


def tcp_proxy_options(svc: InboundService) -> Json:
    """The network filter decides on a connection's first bytes. By default the TCP proxy would
    connect to the application at once, and a protocol whose server speaks first (a greeting)
    would show it to a caller about to be refused; so the application is connected only once
    the caller's first bytes have passed the policy. A ``server_first`` service (MySQL, SMTP,
    FTP, SSH: the client waits for the greeting) cannot wait for them, and is connected at once."""
    if svc.server_first:
        return {}
    return {"upstream_connect_mode": "ON_DOWNSTREAM_DATA", "max_early_data_bytes": EARLY_DATA_BYTES}


def path_normalisation(svc: InboundService) -> Json:
    """With path rules, the path is decoded and normalised before it is matched, so that
    ``/public/..%2Fadmin`` or ``//admin`` cannot slip past a prefix (the application then
    receives the normalised path)."""
    if not any(rule.paths for rule in svc.allow):
        return {}
    return {
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD",
    }


def is_denial(details: Optional[str]) -> bool:
    return bool(details) and str(details).startswith(DENIED_DETAILS_PREFIX)
