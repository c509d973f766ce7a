"""Service policies: the ``allow`` schema, and the RBAC filters Envoy is given for it.

The whole rendering of a config with policies, access logs and tracing is checked against
``golden/dynamic-policy.json`` (regenerate with ``HOSTMESH_UPDATE_GOLDEN=1``); the tests
below pin what must hold whatever the golden file says.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List

import pytest
from test_agent_rendering import RUN, check_golden

from hostmesh_agent.config import ConfigError, parse_config
from hostmesh_agent.resources import render_dynamic

TLS = {"cert_file": "/etc/hostmesh/certs/cert.pem", "key_file": "/k.pem", "ca_file": "/ca.pem"}
CLIENT_A = "spiffe://cluster.local/ns/shop/sa/client-a"
TEAM_B = "spiffe://cluster.local/ns/team-b/"
POLICY = {
    "node": {"name": "web-1", "namespace": "shop", "service_account": "web", "labels": {"app": "web"}},
    "tls": TLS,
    "policy": {"default": "deny"},
    "access_log": {"enabled": True, "sampling": 0.25, "destination": "/var/log/hostmesh/access.log"},
    "tracing": {"collector": "otel.internal:4317", "sampling": 5},
    "inbound": {
        "services": [
            {
                "name": "web",
                "port": 8080,
                "protocol": "http",
                "tls": True,
                "allow": [
                    {"principals": [CLIENT_A, TEAM_B], "methods": ["GET", "HEAD"], "paths": ["/api/", "/healthz"]},
                    {"principals": ["spiffe://cluster.local/ns/shop/sa/admin"]},
                ],
            },
            {"name": "db", "port": 5432, "tls": True, "allow": [{"principals": [CLIENT_A]}]},
            {"name": "smtp", "port": 25, "tls": True, "server_first": True, "allow": [{"principals": [CLIENT_A]}]},
            {"name": "metrics", "port": 9100},
        ]
    },
    "outbound": {
        "services": [{"name": "api", "port": 9090, "protocol": "http", "endpoints": ["10.0.0.9:9090"]}],
    },
}


def _chains(cfg_doc: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The inbound listener's filter chains by name (``inbound|<port>``)."""
    files = render_dynamic(parse_config(cfg_doc), RUN, "f00d")
    [inbound] = [r for r in files[RUN.lds]["resources"] if r["name"] == "virtualInbound"]
    return {c["name"]: c for c in inbound["filter_chains"]}


def _names(chain: Dict[str, Any]) -> List[str]:
    return [f["name"] for f in chain["filters"]]


def _http_filters(chain: Dict[str, Any]) -> List[Dict[str, Any]]:
    return chain["filters"][0]["typed_config"]["http_filters"]


def test_policy_golden():
    check_golden("dynamic-policy.json", render_dynamic(parse_config(POLICY), RUN, "f00d"))


def test_http_service_gets_the_rbac_http_filter_before_the_router():
    web = _chains(POLICY)["inbound|8080"]
    assert _names(web) == ["envoy.filters.network.http_connection_manager"]
    rbac, router = _http_filters(web)
    assert (rbac["name"], router["name"]) == ("envoy.filters.http.rbac", "envoy.filters.http.router")
    rules = rbac["typed_config"]["rules"]
    assert rules["action"] == "ALLOW"
    first = rules["policies"]["allow[0]"]
    assert first["principals"] == [
        {"authenticated": {"principal_name": {"exact": CLIENT_A}}},
        {"authenticated": {"principal_name": {"prefix": TEAM_B}}},
    ]
    methods, paths = first["permissions"][0]["and_rules"]["rules"]
    assert [r["header"]["string_match"]["exact"] for r in methods["or_rules"]["rules"]] == ["GET", "HEAD"]
    assert [r["url_path"]["path"]["prefix"] for r in paths["or_rules"]["rules"]] == ["/api/", "/healthz"]
    # The second rule names a caller only: any method, any path.
    assert rules["policies"]["allow[1]"]["permissions"] == [{"any": True}]
    # Path rules match the decoded, normalised path.
    hcm = web["filters"][0]["typed_config"]
    assert (hcm["normalize_path"], hcm["merge_slashes"]) == (True, True)
    assert hcm["path_with_escaped_slashes_action"] == "UNESCAPE_AND_FORWARD"


def test_tcp_service_gets_the_network_filter_and_connects_only_after_the_first_bytes():
    db = _chains(POLICY)["inbound|5432"]
    assert _names(db) == ["envoy.filters.network.rbac", "envoy.filters.network.tcp_proxy"]
    rbac = db["filters"][0]["typed_config"]
    assert rbac["stat_prefix"] == "inbound|5432||db."
    assert rbac["rules"]["policies"]["allow[0]"]["principals"] == [
        {"authenticated": {"principal_name": {"exact": CLIENT_A}}}
    ]
    proxy = db["filters"][1]["typed_config"]
    assert proxy["upstream_connect_mode"] == "ON_DOWNSTREAM_DATA"
    assert proxy["max_early_data_bytes"] > 0
    # A server-first protocol cannot wait for the caller's bytes: the application is connected at once.
    smtp = _chains(POLICY)["inbound|25"]["filters"][1]["typed_config"]
    assert "upstream_connect_mode" not in smtp


def test_mesh_default_deny_guards_a_service_without_rules_and_allows_no_one():
    metrics = _chains(POLICY)["inbound|9100"]
    assert _names(metrics)[0] == "envoy.filters.network.rbac"
    assert metrics["filters"][0]["typed_config"]["rules"] == {"action": "ALLOW", "policies": {}}


def test_mesh_default_allow_renders_no_filter_for_a_service_without_rules():
    doc = copy.deepcopy(POLICY)
    doc["policy"]["default"] = "allow"
    chains = _chains(doc)
    assert _names(chains["inbound|9100"]) == ["envoy.filters.network.tcp_proxy"]
    assert "upstream_connect_mode" not in chains["inbound|9100"]["filters"][0]["typed_config"]
    assert _names(chains["inbound|5432"])[0] == "envoy.filters.network.rbac"  # its own rules still apply
    # With no policy at all (the default config), nothing changes for the http chain either.
    plain = _chains({"inbound": {"services": [{"name": "web", "port": 8080, "protocol": "http"}]}})["inbound|8080"]
    assert [f["name"] for f in _http_filters(plain)] == ["envoy.filters.http.router"]
    assert "normalize_path" not in plain["filters"][0]["typed_config"]


def test_a_rule_without_principals_admits_any_caller_for_its_methods_and_paths():
    doc = {"inbound": {"services": [{"name": "web", "port": 80, "protocol": "http", "allow": [{"paths": ["/pub/"]}]}]}}
    [rbac, _router] = _http_filters(_chains(doc)["inbound|80"])
    policy = rbac["typed_config"]["rules"]["policies"]["allow[0]"]
    assert policy["principals"] == [{"any": True}]
    assert policy["permissions"] == [{"url_path": {"path": {"prefix": "/pub/"}}}]


@pytest.mark.parametrize(
    ("service", "message"),
    [
        (
            {"name": "w", "port": 80, "tls": True, "allow": [{"principals": ["spiffe://cluster.local/ns/a/sa/*"]}]},
            "'inbound.services[0].allow[0].principals[0]': got \"spiffe://cluster.local/ns/a/sa/*\"; expected a SPIFFE ID",
        ),
        (
            {"name": "w", "port": 80, "tls": True, "allow": [{"principals": ["cluster.local/ns/a/sa/b"]}]},
            "'inbound.services[0].allow[0].principals[0]': got \"cluster.local/ns/a/sa/b\"",
        ),
        (
            {"name": "w", "port": 80, "allow": [{"principals": [CLIENT_A]}]},
            "'inbound.services[0].allow[0].principals': got [\"spiffe://cluster.local/ns/shop/sa/client-a\"] but "
            "'inbound.services[0].tls' is false",
        ),
        (
            {"name": "w", "port": 80, "tls": True, "allow": [{"principals": [CLIENT_A], "methods": ["GET"]}]},
            '\'inbound.services[0].allow[0].methods\': got ["GET"] for a "tcp" service',
        ),
        (
            {"name": "w", "port": 80, "protocol": "http", "allow": [{"paths": ["/a/"]}, {"paths": ["api"]}]},
            "'inbound.services[0].allow[1].paths[0]': got \"api\"; expected an absolute path prefix",
        ),
        (
            {"name": "w", "port": 80, "protocol": "http", "allow": [{"methods": ["get"]}]},
            "'inbound.services[0].allow[0].methods[0]': got \"get\"; expected an HTTP method in capitals",
        ),
        (
            {"name": "w", "port": 80, "allow": [{"principal": [CLIENT_A]}]},
            "unknown config key 'inbound.services[0].allow[0].principal'; accepted keys: methods, paths, principals",
        ),
        ({"name": "w", "port": 80, "allow": {"principals": []}}, "'inbound.services[0].allow': got {"),
        ({"name": "w", "port": 80, "server_first": "yes"}, "'inbound.services[0].server_first': got \"yes\""),
    ],
)
def test_policy_errors_name_key_value_and_accepted(service, message):
    with pytest.raises(ConfigError) as exc:
        parse_config({"tls": TLS, "inbound": {"services": [service]}})
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {"policy": {"default": "block"}},
            'config key \'policy.default\': got "block"; expected one of "allow", "deny"',
        ),
        ({"access_log": {"sampling": 1.5}}, "'access_log.sampling': got 1.5; expected a number from 0 to 1"),
        ({"access_log": {"destination": "stdout"}}, '\'access_log.destination\': got "stdout"; expected "journal"'),
        ({"access_log": {"destination": "/var/log/"}}, "'access_log.destination': got \"/var/log/\""),
        ({"telemetry": {"max_series": 5}}, "'telemetry.max_series': got 5; expected an integer from 10 to 100000"),
        (
            {"telemetry": {"workloads": {"spiffe://cluster.local/ns/a/": "a"}}},
            '\'telemetry.workloads["spiffe://cluster.local/ns/a/"]\': got "spiffe://cluster.local/ns/a/"; '
            "expected a whole SPIFFE ID",
        ),
        (
            {"telemetry": {"workloads": {"spiffe://cluster.local/ns/a/sa/b": "B"}}},
            '\'telemetry.workloads["spiffe://cluster.local/ns/a/sa/b"]\': got "B"; expected a lower-case',
        ),
        ({"tracing": {"collector": "otel"}}, '\'tracing.collector\': got "otel"; expected "host:port"'),
        ({"tracing": {"sampling": 101}}, "'tracing.sampling': got 101; expected a number from 0 to 100"),
        ({"listen": {"admin_tcp": 1}}, "'listen.admin_tcp': got 1; expected true or false"),
        ({"envoy": {"file_flush_interval_ms": 0}}, "'envoy.file_flush_interval_ms': got 0; expected an integer"),
    ],
)
def test_mesh_section_errors(doc, message):
    with pytest.raises(ConfigError) as exc:
        parse_config(doc)
    assert message in str(exc.value)


def test_mesh_section_defaults():
    cfg = parse_config({})
    assert cfg.policy.default == "allow"
    assert (cfg.access_log.enabled, cfg.access_log.sampling, cfg.access_log.destination) == (False, 1.0, "journal")
    assert (cfg.telemetry.enabled, cfg.telemetry.domain, cfg.telemetry.max_series) == (True, "mesh.internal", 500)
    assert (cfg.tracing.collector, cfg.tracing.enabled, cfg.tracing.sampling) == ("", False, 1.0)
    assert (cfg.listen.admin_tcp, cfg.envoy.file_flush_interval_ms) == (False, 1000)


def test_policy_changes_live_in_the_watched_files_only():
    """A new rule rewrites LDS and nothing that needs a new Envoy."""
    from hostmesh_agent.config import restart_relevant

    before = parse_config(POLICY)
    doc = copy.deepcopy(POLICY)
    doc["inbound"]["services"][1]["allow"][0]["principals"].append("spiffe://cluster.local/ns/shop/sa/client-b")
    doc["access_log"]["sampling"] = 1.0
    doc["tracing"]["sampling"] = 50
    after = parse_config(doc)
    assert restart_relevant(before) == restart_relevant(after)
    a, b = render_dynamic(before, RUN, "x"), render_dynamic(after, RUN, "x")
    assert a[RUN.lds]["version_info"] != b[RUN.lds]["version_info"]


def test_no_access_log_or_tracing_when_both_are_off():
    doc = {
        "telemetry": {"enabled": False},
        "inbound": {"services": [{"name": "web", "port": 8080, "protocol": "http"}, {"name": "db", "port": 5432}]},
    }
    files = render_dynamic(parse_config(doc), RUN, "x")
    text = str(files[RUN.lds])
    assert "access_log" not in text and "tracing" not in text
    assert "opentelemetry_collector" not in str(files[RUN.cds])
