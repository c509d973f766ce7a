"""The agent's configuration: a JSON document parsed into frozen dataclasses.

Parsing is pure: it takes the decoded JSON and returns a ``Config`` or raises
``ConfigError`` whose message names the key, the bad value and what is accepted.
Every key here is documented in ``docs/agent.md``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Tuple

MODES = ("standalone", "xds")
LOG_LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "critical", "off")
IP_VERSIONS = ("v4", "v6")
PROTOCOLS = ("tcp", "http")
POLICY_DEFAULTS = ("allow", "deny")
JOURNAL = "journal"
# How the capture rules hand inbound connections to Envoy (traffic_capture's ``mode``).
INTERCEPTIONS = ("redirect", "tproxy")
LB_POLICIES = ("round_robin", "least_request", "random", "ring_hash")
HEALTH_CHECK_TYPES = ("none", "tcp", "http")
# Envoy's router retry conditions (x-envoy-retry-on and x-envoy-retry-grpc-on values).
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
DNS_PORT = 53
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_COMPONENT_LEVEL_RE = re.compile(r"^[a-z0-9_]+:[a-z]+(,[a-z0-9_]+:[a-z]+)*$")
# spiffe://<trust domain>/<path> with the SPIFFE spec's characters: an exact ID, or, ending
# in "/", a prefix naming every ID under that path ("spiffe://cluster.local/ns/team-a/").
_SPIFFE_RE = re.compile(r"^spiffe://[a-z0-9._-]+/([A-Za-z0-9._-]+/)*([A-Za-z0-9._-]+)?$")
_METHOD_RE = re.compile(r"^[A-Z]+$")


class ConfigError(ValueError):
    """A config key is unknown, missing or has a value we cannot accept."""


# --- small validators: each returns the accepted value or raises ConfigError ----------
#
# A check takes the key (for the message) and the decoded JSON value. Most are built from
# a test and the words for what is accepted, so that every refusal reads alike.

Check = Callable[[str, Any], Any]
Checks = Dict[str, Check]


def _fail(key: str, value: Any, accepted: str) -> ConfigError:
    return ConfigError(f"config key '{key}': got {json.dumps(value)}; expected {accepted}")


def _as_given(key: str, value: Any) -> Any:
    """The check that accepts anything: the start of a refined check."""
    return value


def _refined(check: Check, accepted: str, test: Callable[[Any], Any]) -> Check:
    """``check``, then ``test`` on what it returns: a value that fails the test is refused as
    not ``accepted``."""

    def refined(key: str, value: Any) -> Any:
        result = check(key, value)
        if not test(result):
            raise _fail(key, value, accepted)
        return result

    return refined


def _accept(accepted: str, test: Callable[[Any], Any]) -> Check:
    """A check that returns a value passing ``test`` and refuses any other as not ``accepted``."""
    return _refined(_as_given, accepted, test)


def _any_text(text: str) -> bool:
    return True


def _string(accepted: str, test: Callable[[str], Any] = _any_text) -> Check:
    """A check for a string that passes ``test``."""
    return _accept(accepted, lambda value: isinstance(value, str) and test(value))


def _or_literal(literal: str, check: Check) -> Check:
    """``check``, except that ``literal`` itself (an "unset" or "detect" word) is accepted as is."""
    return lambda key, value: value if value == literal else check(key, value)


def _converted(convert: Callable[[Any], Any], accepted: str) -> Check:
    """A check that returns ``convert(value)``; a value it cannot convert is refused as not ``accepted``."""

    def check(key: str, value: Any) -> Any:
        try:
            return convert(value)
        except (ValueError, TypeError):
            raise _fail(key, value, accepted) from None

    return check


def _number_between(lo: float, hi: float, kinds: Any) -> Callable[[Any], bool]:
    """A test for a number of ``kinds`` from ``lo`` to ``hi``; JSON's true and false are not numbers."""
    return lambda value: not isinstance(value, bool) and isinstance(value, kinds) and lo <= value <= hi


def _int_range(lo: int, hi: int) -> Check:
    return _accept(f"an integer from {lo} to {hi}", _number_between(lo, hi, int))


def _float_range(lo: float, hi: float) -> Check:
    check = _accept(f"a number from {lo} to {hi}", _number_between(lo, hi, (int, float)))
    return lambda key, value: float(check(key, value))


def _choice(*choices: str) -> Check:
    return _accept("one of " + ", ".join(json.dumps(c) for c in choices), lambda value: value in choices)


def _is_host_port(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host.strip("[]") and port.isdigit() and 1 <= int(port) <= 65535)


def _is_path_prefix(text: str) -> bool:
    return text.startswith("/") and "?" not in text and "#" not in text


def _is_request_path(text: str) -> bool:
    return text.startswith("/") and not any(c.isspace() for c in text) and "#" not in text


def _is_file_path(text: str) -> bool:
    return text.startswith("/") and not text.endswith("/")


def _is_retry_on(text: str) -> bool:
    """A comma-separated list of distinct words of ``RETRY_ON``."""
    words = text.split(",")
    return all(w in RETRY_ON for w in words) and len(set(words)) == len(words)


def dns_upstream(value: str) -> Tuple[str, int]:
    """A DNS upstream's (address, port): "ip" (port 53), "ip:port" or "[v6]:port"."""
    try:
        return str(ipaddress.ip_address(value)), DNS_PORT
    except ValueError:
        pass
    host, sep, port = value.rpartition(":")
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise ValueError(value)
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(value)
    return str(ipaddress.ip_address(host.strip("[]"))), int(port)


def _is_dns_upstream(value: Any) -> bool:
    try:
        dns_upstream(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


_str = _string("a string")
_nonempty_str = _string("a non-empty string", bool)
_name = _string("a lower-case DNS-style name (a-z, 0-9, '-', '.')", _NAME_RE.match)
_name_or_empty = _or_literal("", _name)
_bool = _accept("true or false", lambda value: isinstance(value, bool))
_ip = _converted(lambda value: str(ipaddress.ip_address(value)), 'an IP address such as "10.0.0.5"')
_ip_or_auto = _or_literal("auto", _ip)
_loopback_ip = _refined(
    _ip,
    "a loopback address (the admin API must never leave the host)",
    lambda ip: ipaddress.ip_address(ip).is_loopback,
)
_cidr = _converted(
    lambda value: str(ipaddress.ip_network(value, strict=False)), 'an IP address or CIDR such as "10.0.0.0/24"'
)
_host_port = _string('"host:port" with a port from 1 to 65535', _is_host_port)
_host_port_or_empty = _or_literal("", _host_port)
_component_levels = _or_literal(
    "", _string('"component:level[,component:level...]" such as "misc:error"', _COMPONENT_LEVEL_RE.match)
)
_spiffe_id = _string(
    'a SPIFFE ID such as "spiffe://cluster.local/ns/shop/sa/web", or an ID prefix ending in "/" '
    'such as "spiffe://cluster.local/ns/team-a/" (no wildcards)',
    _SPIFFE_RE.match,
)
_exact_spiffe_id = _refined(
    _spiffe_id,
    'a whole SPIFFE ID such as "spiffe://cluster.local/ns/shop/sa/web" (not a prefix)',
    lambda spiffe: not spiffe.endswith("/"),
)
_http_method = _string('an HTTP method in capitals such as "GET"', _METHOD_RE.match)
_path_prefix = _string('an absolute path prefix such as "/api/" (no query, no fragment)', _is_path_prefix)
_http_path = _string('an absolute request path such as "/healthz" (no spaces, no fragment)', _is_request_path)
_log_destination = _or_literal(
    JOURNAL,
    _string(f'"{JOURNAL}" (the agent\'s standard output) or the absolute path of a file', _is_file_path),
)
_retry_on = _string("a comma-separated list of distinct retry conditions from " + ", ".join(RETRY_ON), _is_retry_on)
_dns_upstream = _accept(
    'an IP address, "ip:port" or "[ipv6]:port", such as "10.0.0.2" or "10.0.0.2:53"', _is_dns_upstream
)


def _workload_map(key: str, value: Any) -> Dict[str, str]:
    for spiffe, name in _str_map(key, value).items():
        _exact_spiffe_id(f"{key}[{json.dumps(spiffe)}]", spiffe)
        _name(f"{key}[{json.dumps(spiffe)}]", name)
    return dict(value)


def _list_of(item: Callable[[str, Any], Any]) -> Callable[[str, Any], Tuple[Any, ...]]:
    def check(key: str, value: Any) -> Tuple[Any, ...]:
        if not isinstance(value, list):
            raise _fail(key, value, "a list")
        return tuple(item(f"{key}[{i}]", v) for i, v in enumerate(value))

    return check


def _str_map(key: str, value: Any) -> Dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _fail(key, value, "an object of string keys to string values")
    return dict(value)


PORT = _int_range(1, 65535)


# --- the schema ---------------------------------------------------------------------
#
# Each section is a frozen dataclass whose fields are its keys: a field's default is the
# key's default (none: the key is required) and its metadata holds the check its value
# must pass (``_meta``), so a key is declared once.


def _meta(check: Check, items: Optional[type] = None) -> Dict[str, Any]:
    """A key's field metadata: the check its value must pass; for a list of objects, their class."""
    return {"check": check, "items": items}


def _checks(section: type) -> Checks:
    return {f.name: f.metadata["check"] for f in fields(section)}


def _required(section: type) -> Tuple[str, ...]:
    return tuple(f.name for f in fields(section) if f.default is MISSING and f.default_factory is MISSING)


def _object(key: str, value: Any, checks: Checks, required: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """Validate one JSON object against its checks; unknown keys are errors."""
    where = f"config key '{key}'" if key else "config"
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: got {json.dumps(value)}; expected an object")
    for k in value:
        if k not in checks:
            accepted = ", ".join(sorted(checks))
            raise ConfigError(f"unknown config key '{_join(key, k)}'; accepted keys: {accepted}")
    for k in required:
        if k not in value:
            raise ConfigError(f"config key '{_join(key, k)}' is required")
    return {k: checks[k](_join(key, k), v) for k, v in value.items()}


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _section(section: type) -> Check:
    """The check of a whole section: an object of the section's own keys."""
    return lambda key, value: section(**_object(key, value, _checks(section), _required(section)))


def _services(key: str, value: Any, service: type, match_on: Callable[[Any], Any]) -> Tuple[Any, ...]:
    """A list of services with unique names and unique traffic matches (``match_on``)."""
    if not isinstance(value, list):
        raise _fail(key, value, "a list of objects")
    out = [_section(service)(f"{key}[{i}]", v) for i, v in enumerate(value)]
    seen: Dict[Any, int] = {}
    for i, svc in enumerate(out):
        for field_name, ident in (("name", svc.name), ("port", match_on(svc))):
            if (field_name, ident) in seen:
                raise ConfigError(
                    f"config key '{key}[{i}].{field_name}': {json.dumps(getattr(svc, field_name))} is "
                    f"already used by '{key}[{seen[(field_name, ident)]}]'; expected each service to have "
                    f"its own {'name' if field_name == 'name' else 'port (and match_cidrs)'}"
                )
            seen[(field_name, ident)] = i
    return tuple(out)


# --- sections -----------------------------------------------------------------------


@dataclass(frozen=True)
class NodeConfig:
    """Who this sidecar is; becomes Envoy's node id, cluster and metadata."""

    name: str = field(default="", metadata=_meta(_name))
    namespace: str = field(default="default", metadata=_meta(_name))
    domain: str = field(default="", metadata=_meta(_name))
    cluster: str = field(default="", metadata=_meta(_name))
    ip: str = field(default="auto", metadata=_meta(_ip_or_auto))
    service_account: str = field(default="default", metadata=_meta(_name))
    labels: Dict[str, str] = field(default_factory=dict, metadata=_meta(_str_map))
    zone: str = field(default="", metadata=_meta(_name_or_empty))


@dataclass(frozen=True)
class EnvoyConfig:
    """How to run Envoy: the binary and the command-line flags the seed shows."""

    binary: str = field(default="envoy", metadata=_meta(_nonempty_str))
    base_id: int = field(default=1337, metadata=_meta(_int_range(0, 4294967)))
    concurrency: int = field(default=2, metadata=_meta(_int_range(0, 256)))
    log_level: str = field(default="warning", metadata=_meta(_choice(*LOG_LEVELS)))
    component_log_level: str = field(default="misc:error", metadata=_meta(_component_levels))
    log_format: str = field(default="%Y-%m-%dT%T.%fZ\t%l\tenvoy %n\t%v", metadata=_meta(_nonempty_str))
    drain_time_s: int = field(default=45, metadata=_meta(_int_range(0, 3600)))
    parent_shutdown_time_s: int = field(default=60, metadata=_meta(_int_range(1, 3600)))
    local_address_ip_version: str = field(default="v4", metadata=_meta(_choice(*IP_VERSIONS)))
    max_downstream_connections: int = field(default=100000, metadata=_meta(_int_range(1, 10_000_000)))
    file_flush_interval_ms: int = field(default=1000, metadata=_meta(_int_range(10, 60000)))
    extra_args: Tuple[str, ...] = field(default=(), metadata=_meta(_list_of(_str)))


@dataclass(frozen=True)
class PortsConfig:
    admin: int = field(default=15000, metadata=_meta(PORT))
    outbound: int = field(default=15001, metadata=_meta(PORT))
    inbound: int = field(default=15006, metadata=_meta(PORT))
    status: int = field(default=15020, metadata=_meta(PORT))
    health: int = field(default=15021, metadata=_meta(PORT))
    prometheus: int = field(default=15090, metadata=_meta(PORT))
    dns: int = field(default=15053, metadata=_meta(PORT))


@dataclass(frozen=True)
class ListenConfig:
    """Addresses to bind: the rest is for peers. Envoy's admin API is a Unix socket in the run
    directory; ``admin_tcp`` also opens it on ``admin_address``:``ports.admin`` (loopback only)."""

    admin_address: str = field(default="127.0.0.1", metadata=_meta(_loopback_ip))
    admin_tcp: bool = field(default=False, metadata=_meta(_bool))
    status_address: str = field(default="0.0.0.0", metadata=_meta(_ip))
    inbound_address: str = field(default="0.0.0.0", metadata=_meta(_ip))
    outbound_address: str = field(default="0.0.0.0", metadata=_meta(_ip))


@dataclass(frozen=True)
class SuperviseConfig:
    """Restart backoff, crash-loop bound, drain bound and change-watch period."""

    backoff_initial_s: float = field(default=0.2, metadata=_meta(_float_range(0.01, 60)))
    backoff_max_s: float = field(default=30.0, metadata=_meta(_float_range(0.01, 3600)))
    backoff_multiplier: float = field(default=2.0, metadata=_meta(_float_range(1, 10)))
    healthy_reset_s: float = field(default=60.0, metadata=_meta(_float_range(0, 86400)))
    max_consecutive_crashes: int = field(default=10, metadata=_meta(_int_range(0, 10000)))
    drain_timeout_s: float = field(default=30.0, metadata=_meta(_float_range(0, 3600)))
    stop_timeout_s: float = field(default=10.0, metadata=_meta(_float_range(0.1, 600)))
    ready_timeout_s: float = field(default=60.0, metadata=_meta(_float_range(1, 3600)))
    watch_interval_s: float = field(default=5.0, metadata=_meta(_float_range(0.1, 3600)))


@dataclass(frozen=True)
class TlsConfig:
    """Workload certificate for mesh mTLS (SPIFFE IDs issued by the mesh CA)."""

    cert_file: str = field(default="", metadata=_meta(_str))
    key_file: str = field(default="", metadata=_meta(_str))
    ca_file: str = field(default="", metadata=_meta(_str))

    @property
    def configured(self) -> bool:
        return bool(self.cert_file and self.key_file and self.ca_file)


@dataclass(frozen=True)
class AllowRule:
    """One rule of a service's policy: a caller listed in ``principals`` (any caller when
    empty) may use one of ``methods`` on a path under one of ``paths`` (http only; any when empty)."""

    principals: Tuple[str, ...] = field(default=(), metadata=_meta(_list_of(_spiffe_id)))
    methods: Tuple[str, ...] = field(default=(), metadata=_meta(_list_of(_http_method)))
    paths: Tuple[str, ...] = field(default=(), metadata=_meta(_list_of(_path_prefix)))


@dataclass(frozen=True)
class InboundService:
    name: str = field(metadata=_meta(_name))
    port: int = field(metadata=_meta(PORT))
    target_port: int = field(default=0, metadata=_meta(PORT))
    protocol: str = field(default="tcp", metadata=_meta(_choice(*PROTOCOLS)))
    tls: bool = field(default=False, metadata=_meta(_bool))
    allowed_spiffe_ids: Tuple[str, ...] = field(default=(), metadata=_meta(_list_of(_nonempty_str)))
    allow: Tuple[AllowRule, ...] = field(default=(), metadata=_meta(_list_of(_section(AllowRule)), AllowRule))
    server_first: bool = field(default=False, metadata=_meta(_bool))

    @property
    def app_port(self) -> int:
        return self.target_port or self.port


def _inbound_services(key: str, value: Any) -> Tuple[InboundService, ...]:
    return _services(key, value, InboundService, lambda svc: svc.port)


@dataclass(frozen=True)
class InboundConfig:
    """Inbound traffic. With ``interception`` "tproxy" the capture rules divert
    connections with TPROXY: Envoy's inbound listener must be transparent, and it
    reaches the application at the address the client dialed, from the client's
    own address, marked ``tproxy_mark`` so that the reply is routed back to it."""

    services: Tuple[InboundService, ...] = field(default=(), metadata=_meta(_inbound_services, InboundService))
    passthrough: bool = field(default=True, metadata=_meta(_bool))
    app_address: str = field(default="127.0.0.1", metadata=_meta(_ip))
    source_address: str = field(default="127.0.0.6", metadata=_meta(_ip))
    interception: str = field(default="redirect", metadata=_meta(_choice(*INTERCEPTIONS)))
    tproxy_mark: int = field(default=1337, metadata=_meta(_int_range(1, 0xFFFFFFFF)))

    @property
    def tproxy(self) -> bool:
        return self.interception == "tproxy"


@dataclass(frozen=True)
class Endpoint:
    """One replica of an outbound service; ``zone`` is its locality (see ``node.zone``)."""

    address: str = field(metadata=_meta(_nonempty_str))
    port: int = field(metadata=_meta(PORT))
    zone: str = field(default="", metadata=_meta(_name_or_empty))


def _endpoint(key: str, value: Any) -> Endpoint:
    """A "host:port" string (the older form) or an object with address, port and zone."""
    if isinstance(value, dict):
        return _section(Endpoint)(key, value)
    host, _sep, port = _host_port(key, value).rpartition(":")
    return Endpoint(host.strip("[]"), int(port))


@dataclass(frozen=True)
class OutlierDetection:
    """Passive health: an endpoint that fails ``consecutive_errors`` times in a row (connect
    failures, resets, 5xx) is ejected for ``base_ejection_s`` (longer each time again)."""

    enabled: bool = field(default=True, metadata=_meta(_bool))
    consecutive_errors: int = field(default=5, metadata=_meta(_int_range(1, 1000)))
    interval_s: float = field(default=5.0, metadata=_meta(_float_range(0.1, 3600)))
    base_ejection_s: float = field(default=30.0, metadata=_meta(_float_range(0.1, 86400)))
    max_ejection_percent: int = field(default=50, metadata=_meta(_int_range(0, 100)))


@dataclass(frozen=True)
class HealthCheck:
    """Active health checks by Envoy: none, a TCP connect, or an HTTP GET of ``path``."""

    type: str = field(default="none", metadata=_meta(_choice(*HEALTH_CHECK_TYPES)))
    path: str = field(default="/", metadata=_meta(_http_path))
    interval_s: float = field(default=5.0, metadata=_meta(_float_range(0.1, 3600)))
    timeout_s: float = field(default=2.0, metadata=_meta(_float_range(0.01, 3600)))
    unhealthy_threshold: int = field(default=2, metadata=_meta(_int_range(1, 100)))
    healthy_threshold: int = field(default=1, metadata=_meta(_int_range(1, 100)))


@dataclass(frozen=True)
class Retries:
    """HTTP retries (ignored for tcp): ``attempts`` retries on ``retry_on``; with
    ``idempotent_only`` only GET, HEAD, OPTIONS, PUT, DELETE and TRACE are retried."""

    attempts: int = field(default=2, metadata=_meta(_int_range(0, 10)))
    retry_on: str = field(default="connect-failure,refused-stream,unavailable,5xx,reset", metadata=_meta(_retry_on))
    per_try_timeout_s: float = field(default=0.0, metadata=_meta(_float_range(0, 86400)))
    idempotent_only: bool = field(default=True, metadata=_meta(_bool))


@dataclass(frozen=True)
class CircuitBreakers:
    """Envoy's per-cluster limits (default priority and the failover priority alike)."""

    max_connections: int = field(default=1024, metadata=_meta(_int_range(1, 1_000_000_000)))
    max_pending_requests: int = field(default=1024, metadata=_meta(_int_range(1, 1_000_000_000)))
    max_requests: int = field(default=1024, metadata=_meta(_int_range(1, 1_000_000_000)))
    max_retries: int = field(default=3, metadata=_meta(_int_range(0, 1_000_000_000)))


@dataclass(frozen=True)
class OutboundService:
    name: str = field(metadata=_meta(_name))
    port: int = field(metadata=_meta(PORT))
    endpoints: Tuple[Endpoint, ...] = field(default=(), metadata=_meta(_list_of(_endpoint), Endpoint))
    match_cidrs: Tuple[str, ...] = field(default=(), metadata=_meta(_list_of(_cidr)))
    protocol: str = field(default="tcp", metadata=_meta(_choice(*PROTOCOLS)))
    tls: bool = field(default=False, metadata=_meta(_bool))
    spiffe_ids: Tuple[str, ...] = field(default=(), metadata=_meta(_list_of(_nonempty_str)))
    namespace: str = field(default="", metadata=_meta(_name_or_empty))
    vips: Tuple[str, ...] = field(default=(), metadata=_meta(_list_of(_ip)))
    lb_policy: str = field(default="round_robin", metadata=_meta(_choice(*LB_POLICIES)))
    connect_timeout_s: float = field(default=10.0, metadata=_meta(_float_range(0.01, 3600)))
    outlier_detection: OutlierDetection = field(
        default_factory=OutlierDetection, metadata=_meta(_section(OutlierDetection), OutlierDetection)
    )
    health_check: HealthCheck = field(default_factory=HealthCheck, metadata=_meta(_section(HealthCheck), HealthCheck))
    request_timeout_s: float = field(default=15.0, metadata=_meta(_float_range(0, 86400)))
    retries: Retries = field(default_factory=Retries, metadata=_meta(_section(Retries), Retries))
    idle_timeout_s: float = field(default=3600.0, metadata=_meta(_float_range(0, 86400 * 7)))
    connect_attempts: int = field(default=1, metadata=_meta(_int_range(1, 10)))
    circuit_breakers: CircuitBreakers = field(
        default_factory=CircuitBreakers, metadata=_meta(_section(CircuitBreakers), CircuitBreakers)
    )


def _outbound_services(key: str, value: Any) -> Tuple[OutboundService, ...]:
    # Two upstreams may share a port when their destination networks or VIPs tell them apart.
    return _services(key, value, OutboundService, lambda svc: (svc.port, svc.match_cidrs, svc.vips))


@dataclass(frozen=True)
class OutboundConfig:
    services: Tuple[OutboundService, ...] = field(default=(), metadata=_meta(_outbound_services, OutboundService))
    passthrough: bool = field(default=True, metadata=_meta(_bool))


def _outbound(key: str, value: Any) -> OutboundConfig:
    parsed = _section(OutboundConfig)(key, value)
    for i, svc in enumerate(parsed.services):
        if not svc.endpoints:
            raise ConfigError(
                f"config key '{key}.services[{i}].endpoints' is required; expected at least one \"host:port\""
            )
    return parsed


@dataclass(frozen=True)
class DnsConfig:
    """The agent's DNS server for mesh names, on ``address``:``ports.dns`` (UDP and TCP)."""

    enabled: bool = field(default=False, metadata=_meta(_bool))
    domain: str = field(default="mesh.internal", metadata=_meta(_name))
    address: str = field(default="127.0.0.1", metadata=_meta(_ip))
    upstreams: Tuple[str, ...] = field(default=(), metadata=_meta(_list_of(_dns_upstream)))
    ttl_s: int = field(default=30, metadata=_meta(_int_range(0, 86400)))


@dataclass(frozen=True)
class XdsConfig:
    """An external control plane reached over ADS (gRPC) with TLS."""

    address: str = field(default="", metadata=_meta(_host_port))
    sni: str = field(default="", metadata=_meta(_str))
    ca_file: str = field(default="", metadata=_meta(_str))
    cert_file: str = field(default="", metadata=_meta(_str))
    key_file: str = field(default="", metadata=_meta(_str))
    token_file: str = field(default="", metadata=_meta(_str))
    cluster_id: str = field(default="Kubernetes", metadata=_meta(_nonempty_str))
    mesh_id: str = field(default="", metadata=_meta(_str))
    network: str = field(default="", metadata=_meta(_str))
    istio_version: str = field(default="", metadata=_meta(_str))
    metadata: Dict[str, str] = field(default_factory=dict, metadata=_meta(_str_map))
    initial_fetch_timeout_s: float = field(default=15.0, metadata=_meta(_float_range(0, 600)))


@dataclass(frozen=True)
class PolicyConfig:
    """Mesh-wide authorization: what a service without ``allow`` rules accepts."""

    default: str = field(default="allow", metadata=_meta(_choice(*POLICY_DEFAULTS)))


@dataclass(frozen=True)
class AccessLogConfig:
    """Where the access-log lines Envoy writes (one per tcp connection, per http request) go."""

    enabled: bool = field(default=False, metadata=_meta(_bool))
    sampling: float = field(default=1.0, metadata=_meta(_float_range(0, 1)))
    destination: str = field(default=JOURNAL, metadata=_meta(_log_destination))


@dataclass(frozen=True)
class TelemetryConfig:
    """Istio-named service metrics the agent computes from every access-log line."""

    enabled: bool = field(default=True, metadata=_meta(_bool))
    domain: str = field(default="mesh.internal", metadata=_meta(_name))
    workloads: Dict[str, str] = field(default_factory=dict, metadata=_meta(_workload_map))
    max_series: int = field(default=500, metadata=_meta(_int_range(10, 100000)))


@dataclass(frozen=True)
class TracingConfig:
    """OpenTelemetry tracing of http services; off while ``collector`` is empty."""

    collector: str = field(default="", metadata=_meta(_host_port_or_empty))
    sampling: float = field(default=1.0, metadata=_meta(_float_range(0, 100)))

    @property
    def enabled(self) -> bool:
        return bool(self.collector)


@dataclass(frozen=True)
class Config:
    mode: str = field(default="standalone", metadata=_meta(_choice(*MODES)))
    run_dir: str = field(default="/run/hostmesh", metadata=_meta(_nonempty_str))
    trust_domain: str = field(default="cluster.local", metadata=_meta(_name))
    node: NodeConfig = field(default_factory=NodeConfig, metadata=_meta(_section(NodeConfig)))
    envoy: EnvoyConfig = field(default_factory=EnvoyConfig, metadata=_meta(_section(EnvoyConfig)))
    ports: PortsConfig = field(default_factory=PortsConfig, metadata=_meta(_section(PortsConfig)))
    listen: ListenConfig = field(default_factory=ListenConfig, metadata=_meta(_section(ListenConfig)))
    supervise: SuperviseConfig = field(default_factory=SuperviseConfig, metadata=_meta(_section(SuperviseConfig)))
    tls: TlsConfig = field(default_factory=TlsConfig, metadata=_meta(_section(TlsConfig)))
    inbound: InboundConfig = field(default_factory=InboundConfig, metadata=_meta(_section(InboundConfig)))
    outbound: OutboundConfig = field(default_factory=OutboundConfig, metadata=_meta(_outbound))
    xds: XdsConfig = field(default_factory=XdsConfig, metadata=_meta(_section(XdsConfig)))
    dns: DnsConfig = field(default_factory=DnsConfig, metadata=_meta(_section(DnsConfig)))
    policy: PolicyConfig = field(default_factory=PolicyConfig, metadata=_meta(_section(PolicyConfig)))
    access_log: AccessLogConfig = field(default_factory=AccessLogConfig, metadata=_meta(_section(AccessLogConfig)))
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig, metadata=_meta(_section(TelemetryConfig)))
    tracing: TracingConfig = field(default_factory=TracingConfig, metadata=_meta(_section(TracingConfig)))


def all_keys() -> List[str]:
    """Every accepted key, dotted (``inbound.services[].port``); docs must list each one."""
    keys = []
    for top in fields(Config):
        if is_dataclass(top.default_factory):
            keys += _section_keys(top.name, top.default_factory)
        else:
            keys.append(top.name)
    return keys


def _section_keys(prefix: str, section: type) -> List[str]:
    keys = []
    for f in fields(section):
        keys.append(f"{prefix}.{f.name}")
        items = f.metadata["items"]
        if items:
            nested = f.default_factory is items  # a section inside, not a list of them
            keys += _section_keys(f"{prefix}.{f.name}" + ("" if nested else "[]"), items)
    return keys


def parse_config(data: Any, run_dir: Optional[str] = None) -> Config:
    """Turn decoded JSON into a Config, checking every key and the whole."""
    cfg = Config(**_object("", data, _checks(Config)))
    if "domain" not in data.get("telemetry", {}):
        cfg = replace(cfg, telemetry=replace(cfg.telemetry, domain=cfg.dns.domain))
    if run_dir is not None:
        cfg = replace(cfg, run_dir=run_dir)
    _check_whole(cfg)
    return cfg


def load_config(path: str, run_dir: Optional[str] = None) -> Config:
    """Read and parse the config file; errors name the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    return parse_config(data, run_dir)


def _check_whole(cfg: Config) -> None:
    """Rules that span keys: port clashes, mode requirements, TLS prerequisites."""
    ports = cfg.ports
    used: Dict[int, str] = {}
    for f in fields(ports):
        port = getattr(ports, f.name)
        if port in used:
            raise ConfigError(
                f"config key 'ports.{f.name}': {port} is already used by 'ports.{used[port]}'; "
                "expected a distinct port for each"
            )
        used[port] = f.name
    for i, svc in enumerate(cfg.inbound.services):
        if svc.app_port in used:
            raise ConfigError(
                f"config key 'inbound.services[{i}].port': {svc.app_port} is the sidecar's own "
                f"'ports.{used[svc.app_port]}'; expected an application port"
            )
    if cfg.supervise.backoff_max_s < cfg.supervise.backoff_initial_s:
        raise ConfigError(
            f"config key 'supervise.backoff_max_s': got {cfg.supervise.backoff_max_s}; "
            f"expected at least 'supervise.backoff_initial_s' ({cfg.supervise.backoff_initial_s})"
        )
    if cfg.envoy.parent_shutdown_time_s <= cfg.envoy.drain_time_s:
        raise ConfigError(
            f"config key 'envoy.parent_shutdown_time_s': got {cfg.envoy.parent_shutdown_time_s};"
            f" expected more than 'envoy.drain_time_s' ({cfg.envoy.drain_time_s})"
        )
    if cfg.mode == "xds" and not cfg.xds.address:
        raise ConfigError("config key 'xds.address' is required when 'mode' is \"xds\"")
    if cfg.mode == "xds":
        tls_keys = ("cert_file", "key_file")
        given = [k for k in tls_keys if getattr(cfg.xds, k)]
        if given and len(given) != len(tls_keys):
            raise ConfigError(f"config keys 'xds.cert_file' and 'xds.key_file' go together; got only 'xds.{given[0]}'")
    _check_interception(cfg.inbound)
    _check_policies(cfg.inbound)
    _check_vips(cfg.outbound)
    _check_dns(cfg)
    wants_tls = [f"inbound.services[{i}]" for i, s in enumerate(cfg.inbound.services) if s.tls]
    wants_tls += [f"outbound.services[{i}]" for i, s in enumerate(cfg.outbound.services) if s.tls]
    if wants_tls and not cfg.tls.configured:
        raise ConfigError(
            f"config key '{wants_tls[0]}.tls' is true but 'tls.cert_file', 'tls.key_file' and "
            "'tls.ca_file' are not all set; expected the workload certificate, key and mesh CA"
        )
    given = [k for k in ("cert_file", "key_file", "ca_file") if getattr(cfg.tls, k)]
    if given and not cfg.tls.configured:
        raise ConfigError(
            f"config key 'tls.{given[0]}' is set but not all of 'tls.cert_file', 'tls.key_file',"
            " 'tls.ca_file' are; expected all three or none"
        )


def _check_vips(outbound: OutboundConfig) -> None:
    """A listener's filter chain matches a VIP and port: two services cannot share one."""
    seen: Dict[Tuple[str, int], int] = {}
    for i, svc in enumerate(outbound.services):
        for j, vip in enumerate(svc.vips):
            if (vip, svc.port) in seen:
                raise ConfigError(
                    f"config key 'outbound.services[{i}].vips[{j}]': {json.dumps(vip)} with port {svc.port} is "
                    f"already used by 'outbound.services[{seen[(vip, svc.port)]}]'; expected each service "
                    "to have its own virtual IPs"
                )
            seen[(vip, svc.port)] = i


def mesh_names(cfg: Config) -> Dict[str, Tuple[List[str], List[str]]]:
    """The mesh zone: ``<name>.<domain>`` and ``<name>.<namespace>.<domain>`` of every outbound
    service that has virtual IPs -> (IPv4 VIPs, IPv6 VIPs)."""
    zone: Dict[str, Tuple[List[str], List[str]]] = {}
    for svc in cfg.outbound.services:
        if not svc.vips:
            continue
        ipv4 = [v for v in svc.vips if ipaddress.ip_address(v).version == 4]
        ipv6 = [v for v in svc.vips if ipaddress.ip_address(v).version == 6]
        for fqdn in service_fqdns(svc, cfg.dns.domain):
            zone[fqdn] = (ipv4, ipv6)
    return zone


def service_fqdns(svc: OutboundService, domain: str) -> List[str]:
    """The names a service answers to: ``<name>.<domain>``, and with a namespace
    ``<name>.<namespace>.<domain>`` too."""
    names = [svc.name] + ([f"{svc.name}.{svc.namespace}"] if svc.namespace else [])
    return [f"{name}.{domain}" for name in names]


def _check_dns(cfg: Config) -> None:
    """The DNS server answers on one address (UDP replies leave from where the query went),
    never forwards to itself, and every mesh name must be a name it can answer."""
    if not cfg.dns.enabled:
        return
    if ipaddress.ip_address(cfg.dns.address).is_unspecified:
        raise _fail("dns.address", cfg.dns.address, 'one address such as "127.0.0.1", not a wildcard')
    own = {_canonical_ip(cfg.dns.address), "127.0.0.1", "::1"}
    if cfg.node.ip != "auto":
        own.add(_canonical_ip(cfg.node.ip))
    for i, text in enumerate(cfg.dns.upstreams):
        address, port = dns_upstream(text)
        if port == cfg.ports.dns and _canonical_ip(address) in own:
            raise _fail(
                f"dns.upstreams[{i}]",
                text,
                f"a resolver other than the agent itself (port {cfg.ports.dns} on this host is the agent's DNS)",
            )
    seen: Dict[str, int] = {}
    for i, svc in enumerate(cfg.outbound.services):
        if not svc.vips:
            continue
        for fqdn in service_fqdns(svc, cfg.dns.domain):
            if fqdn in seen and seen[fqdn] != i:
                raise ConfigError(
                    f"config key 'outbound.services[{i}].name': {json.dumps(svc.name)} gives the mesh name "
                    f"{fqdn!r}, which 'outbound.services[{seen[fqdn]}]' has already; expected distinct names"
                )
            seen[fqdn] = i
            for label in fqdn.split("."):
                if len(label) > 63:
                    raise ConfigError(
                        f"config key 'outbound.services[{i}].name': the mesh name {fqdn!r} has a label longer "
                        "than 63 characters; expected DNS labels of 1 to 63 characters"
                    )
            if len(fqdn) > 253:
                raise ConfigError(
                    f"config key 'outbound.services[{i}].name': the mesh name {fqdn!r} is longer than 253 "
                    "characters; expected a shorter name or dns.domain"
                )


def _canonical_ip(address: str) -> str:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def _check_policies(inbound: InboundConfig) -> None:
    """A caller's identity is its mesh certificate, so naming callers needs ``tls``; methods
    and paths need an http service (a tcp connection has neither)."""
    for i, svc in enumerate(inbound.services):
        for j, rule in enumerate(svc.allow):
            key = f"inbound.services[{i}].allow[{j}]"
            if rule.principals and not svc.tls:
                raise ConfigError(
                    f"config key '{key}.principals': got {json.dumps(list(rule.principals))} but "
                    f"'inbound.services[{i}].tls' is false; expected \"tls\": true (a caller's SPIFFE ID comes "
                    "from its mesh certificate), or no principals (any caller)"
                )
            for what in ("methods", "paths"):
                if getattr(rule, what) and svc.protocol != "http":
                    raise ConfigError(
                        f"config key '{key}.{what}': got {json.dumps(list(getattr(rule, what)))} for a "
                        f'"{svc.protocol}" service; expected them only with "protocol": "http"'
                    )


def _check_interception(inbound: InboundConfig) -> None:
    """In tproxy mode Envoy reaches the application where the client meant to go, as the
    client: the redirect-mode addresses would make a loopback hop the application
    could not answer (a reply from 127.0.0.1 cannot be routed to a peer's address)."""
    if not inbound.tproxy:
        return
    for key in ("app_address", "source_address"):
        value = getattr(inbound, key)
        if value != getattr(InboundConfig, key):
            raise ConfigError(
                f"config key 'inbound.{key}': got {json.dumps(value)}; expected it left out when "
                "'inbound.interception' is \"tproxy\" (Envoy then connects to the address the client "
                "dialed, from the client's own address)"
            )


def service_node(cfg: Config, ip: str) -> str:
    """Envoy's --service-node in the seed's form: sidecar~IP~name.namespace~domain."""
    return f"sidecar~{ip}~{cfg.node.name}.{cfg.node.namespace}~{node_domain(cfg)}"


def node_domain(cfg: Config) -> str:
    return cfg.node.domain or f"{cfg.node.namespace}.svc.cluster.local"


def service_cluster(cfg: Config) -> str:
    """Envoy's --service-cluster, as the seed shows: <service>.<namespace>."""
    return cfg.node.cluster or f"{cfg.node.name}.{cfg.node.namespace}"


def spiffe_id(cfg: Config) -> str:
    return f"spiffe://{cfg.trust_domain}/ns/{cfg.node.namespace}/sa/{cfg.node.service_account}"


def with_node_defaults(cfg: Config, hostname: str) -> Config:
    """Fill node.name from the host name when the config leaves it out."""
    if cfg.node.name:
        return cfg
    name = re.sub(r"[^a-z0-9.-]", "-", hostname.lower()).strip("-.") or "host"
    return replace(cfg, node=replace(cfg.node, name=name))


def restart_relevant(cfg: Config) -> List[Any]:
    """The parts of the config that live in the bootstrap or on Envoy's command line."""
    return [
        cfg.mode,
        cfg.trust_domain,
        cfg.inbound.interception,  # node metadata INTERCEPTION_MODE
        cfg.node,
        cfg.envoy,
        replace(cfg.ports, dns=0),  # the DNS port is the agent's own listener, not Envoy's
        cfg.listen,
        cfg.xds,
        cfg.run_dir,
    ]
