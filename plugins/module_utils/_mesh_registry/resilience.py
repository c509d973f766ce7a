# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A service's resilience settings: load balancing, health, timeouts, retries, limits.

They come from two places: the mesh-wide ``hostmesh_mesh_defaults`` and the
service's own ``hostmesh_services`` entry, which wins key by key (sections such
as ``retries`` merge field by field). Each value is checked against what the
agent accepts (its config.py holds the same ranges); only the keys a user set
are passed on, so the agent's own defaults stay the one place for those.
"""

from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_registry.errors import RegistryError

LB_POLICIES = ("round_robin", "least_request", "random", "ring_hash")
HEALTH_CHECK_TYPES = ("none", "tcp", "http")
# Envoy's router retry conditions.
RETRY_ON = (
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
)


class _Refused(ValueError):
    """A value a check refused; carries what is accepted."""


def _number(low, high):
    def check(value):
        if isinstance(value, str):
            try:
                value = float(value) if "." in value else int(value)
            except ValueError:
                raise _Refused("a number from %s to %s" % (low, high)) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise _Refused("a number from %s to %s" % (low, high))
        return value

    return check


def _integer(low, high):
    def check(value):
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Refused("an integer from %d to %d" % (low, high))
        return value

    return check


def _choice(*choices):
    def check(value):
        if value not in choices:
            raise _Refused("one of %s" % ", ".join(choices))
        return value

    return check


def _flag(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "false", "no", "off"):
        return value.lower() in ("true", "yes", "on")
    raise _Refused("true or false")


def _path(value):
    if not isinstance(value, str) or not value.startswith("/") or any(c.isspace() for c in value) or "#" in value:
        raise _Refused('an absolute request path such as "/healthz" (no spaces, no fragment)')
    return value


def _retry_on(value):
    words = value.split(",") if isinstance(value, str) else []
    if not words or any(word not in RETRY_ON for word in words) or len(set(words)) != len(words):
        raise _Refused("a comma-separated list of distinct retry conditions from %s" % ", ".join(RETRY_ON))
    return value


SECTIONS = {
    "outlier_detection": {
        "enabled": _flag,
        "consecutive_errors": _integer(1, 1000),
        "interval_s": _number(0.1, 3600),
        "base_ejection_s": _number(0.1, 86400),
        "max_ejection_percent": _integer(0, 100),
    },
    "health_check": {
        "type": _choice(*HEALTH_CHECK_TYPES),
        "path": _path,
        "interval_s": _number(0.1, 3600),
        "timeout_s": _number(0.01, 3600),
        "unhealthy_threshold": _integer(1, 100),
        "healthy_threshold": _integer(1, 100),
    },
    "retries": {
        "attempts": _integer(0, 10),
        "retry_on": _retry_on,
        "per_try_timeout_s": _number(0, 86400),
        "idempotent_only": _flag,
    },
    "circuit_breakers": {
        "max_connections": _integer(1, 1000000000),
        "max_pending_requests": _integer(1, 1000000000),
        "max_requests": _integer(1, 1000000000),
        "max_retries": _integer(0, 1000000000),
    },
}
SCALARS = {
    "lb_policy": _choice(*LB_POLICIES),
    "connect_timeout_s": _number(0.01, 3600),
    "request_timeout_s": _number(0, 86400),
    "idle_timeout_s": _number(0, 604800),
    "connect_attempts": _integer(1, 10),
}
# Every setting, in the order the docs list them.
FIELDS = (
    "lb_policy",
    "connect_timeout_s",
    "outlier_detection",
    "health_check",
    "circuit_breakers",
    "request_timeout_s",
    "retries",
    "idle_timeout_s",
    "connect_attempts",
)
# Settings that mean something for one protocol only.
ONLY_FOR = {"request_timeout_s": "http", "retries": "http", "idle_timeout_s": "tcp", "connect_attempts": "tcp"}


def _section(host, where, value, checks):
    if not isinstance(value, dict):
        raise RegistryError(host, where, value, "a mapping with keys among %s" % ", ".join(checks))
    out = {}
    for key in sorted(value):
        if key not in checks:
            raise RegistryError(host, "%s.%s" % (where, key), value[key], "a key among %s" % ", ".join(checks))
        try:
            out[key] = checks[key](value[key])
        except _Refused as refused:
            raise RegistryError(host, "%s.%s" % (where, key), value[key], str(refused)) from None
    return out


def check_settings(host: str, where: str, given: dict, protocol=None) -> dict:
    """The resilience keys of ``given``, checked; ``where`` is the variable named in errors.

    With ``protocol`` (a service entry), a setting for the other protocol is an
    error; without it (the mesh defaults), any setting may be given.
    """
    out = {}
    for key in FIELDS:
        if key not in given:
            continue
        if protocol is not None and ONLY_FOR.get(key, protocol) != protocol:
            raise RegistryError(
                host,
                "%s.%s" % (where, key),
                given[key],
                "no %s on a %s service: it applies to protocol %s only" % (key, protocol, ONLY_FOR[key]),
            )
        if key in SECTIONS:
            out[key] = _section(host, "%s.%s" % (where, key), given[key], SECTIONS[key])
        else:
            try:
                out[key] = SCALARS[key](given[key])
            except _Refused as refused:
                raise RegistryError(host, "%s.%s" % (where, key), given[key], str(refused)) from None
    return out


def check_mesh_defaults(host: str, given) -> dict:
    """``hostmesh_mesh_defaults`` checked: only resilience settings, each a value the agent accepts."""
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise RegistryError(host, "hostmesh_mesh_defaults", given, "a mapping of settings among %s" % ", ".join(FIELDS))
    for key in sorted(given):
        if key not in FIELDS:
            raise RegistryError(
                host, "hostmesh_mesh_defaults.%s" % key, given[key], "a key among %s" % ", ".join(FIELDS)
            )
    return check_settings(host, "hostmesh_mesh_defaults", given)


def merged_settings(defaults: dict, own: dict, protocol: str) -> dict:
    """The settings a service's callers use: its own over the mesh defaults, for its protocol only."""
    merged = {}
    for key in FIELDS:
        if ONLY_FOR.get(key, protocol) != protocol:
            continue
        if key in SECTIONS and (key in defaults or key in own):
            merged[key] = dict(defaults.get(key, {}), **own.get(key, {}))
        elif key in own:
            merged[key] = own[key]
        elif key in defaults:
            merged[key] = defaults[key]
    return merged
