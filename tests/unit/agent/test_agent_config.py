"""Config parsing: defaults, every error names the key, the value and what is accepted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hostmesh_agent.config import (
    Config,
    ConfigError,
    load_config,
    parse_config,
    service_cluster,
    service_node,
    with_node_defaults,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "docs" / "examples"


def test_empty_config_gives_documented_defaults():
    cfg = parse_config({})
    assert cfg == Config()
    assert cfg.mode == "standalone"
    assert (cfg.ports.admin, cfg.ports.outbound, cfg.ports.inbound) == (15000, 15001, 15006)
    assert (cfg.ports.status, cfg.ports.health, cfg.ports.prometheus) == (15020, 15021, 15090)
    assert cfg.listen.admin_address == "127.0.0.1"


@pytest.mark.parametrize("name", ["agent-standalone.json", "agent-xds.json"])
def test_shipped_examples_parse(name):
    cfg = load_config(str(EXAMPLES / name))
    assert cfg.mode in ("standalone", "xds")


def test_standalone_example_matches_the_issue():
    cfg = load_config(str(EXAMPLES / "agent-standalone.json"))
    assert cfg.envoy.binary == "envoy"
    assert [(s.name, s.port) for s in cfg.inbound.services] == [("web", 8080)]
    assert cfg.outbound.passthrough


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"colour": "blue"}, "unknown config key 'colour'; accepted keys: access_log, dns, envoy, inbound"),
        ({"envoy": {"concurency": 2}}, "unknown config key 'envoy.concurency'"),
        ({"mode": "mesh"}, 'config key \'mode\': got "mesh"; expected one of "standalone", "xds"'),
        ({"envoy": {"concurrency": -1}}, "'envoy.concurrency': got -1; expected an integer from 0"),
        ({"envoy": {"concurrency": True}}, "'envoy.concurrency': got true"),
        ({"ports": {"admin": 70000}}, "'ports.admin': got 70000; expected an integer from 1 to 65535"),
        ({"listen": {"admin_address": "0.0.0.0"}}, "'listen.admin_address': got \"0.0.0.0\"; expected a loopback"),
        ({"node": {"ip": "10.0.0.300"}}, "'node.ip': got \"10.0.0.300\"; expected an IP address"),
        ({"node": {"name": "Web_1"}}, "'node.name': got \"Web_1\"; expected a lower-case DNS-style name"),
        ({"envoy": {"log_level": "loud"}}, '\'envoy.log_level\': got "loud"; expected one of "trace"'),
        ({"envoy": {"component_log_level": "misc"}}, "'envoy.component_log_level': got \"misc\""),
        ({"inbound": {"services": [{"port": 8080}]}}, "config key 'inbound.services[0].name' is required"),
        (
            {"inbound": {"services": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}},
            "'inbound.services[1].port': 80 is already used by 'inbound.services[0]'",
        ),
        ({"inbound": {"services": [{"name": "a", "port": 15006}]}}, "is the sidecar's own 'ports.inbound'"),
        ({"outbound": {"services": [{"name": "db", "port": 5432}]}}, "'outbound.services[0].endpoints' is required"),
        (
            {"outbound": {"services": [{"name": "db", "port": 5432, "endpoints": ["db"]}]}},
            '\'outbound.services[0].endpoints[0]\': got "db"; expected "host:port"',
        ),
        ({"ports": {"status": 15000}}, "'ports.status': 15000 is already used by 'ports.admin'"),
        ({"mode": "xds"}, "config key 'xds.address' is required when 'mode' is \"xds\""),
        (
            {"mode": "xds", "xds": {"address": "istiod:15012", "cert_file": "/c"}},
            "'xds.cert_file' and 'xds.key_file' go together",
        ),
        ({"inbound": {"services": [{"name": "a", "port": 80, "tls": True}]}}, "'inbound.services[0].tls' is true but"),
        ({"tls": {"cert_file": "/c"}}, "'tls.cert_file' is set but not all of"),
        (
            {"envoy": {"drain_time_s": 60, "parent_shutdown_time_s": 30}},
            "'envoy.parent_shutdown_time_s': got 30; expected more than 'envoy.drain_time_s' (60)",
        ),
        ({"supervise": {"backoff_initial_s": 5, "backoff_max_s": 1}}, "'supervise.backoff_max_s': got 1.0"),
        ([], "config: got []; expected an object"),
    ],
)
def test_errors_name_key_value_and_accepted(doc, message):
    with pytest.raises(ConfigError) as exc:
        parse_config(doc)
    assert message in str(exc.value)


def test_unreadable_and_invalid_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read config file .*missing\.json"):
        load_config(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match=r"bad\.json is not valid JSON"):
        load_config(str(bad))


def test_run_dir_override_and_node_defaults(tmp_path):
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"run_dir": "/somewhere"}))
    cfg = with_node_defaults(load_config(str(path), run_dir="/elsewhere"), "VM_42.example")
    assert cfg.run_dir == "/elsewhere"
    assert cfg.node.name == "vm-42.example"


def test_node_identity_in_the_seeds_form():
    cfg = parse_config({"node": {"name": "sleep-1", "namespace": "default", "cluster": "sleep.default"}})
    assert service_node(cfg, "172.18.0.11") == "sidecar~172.18.0.11~sleep-1.default~default.svc.cluster.local"
    assert service_cluster(cfg) == "sleep.default"
    assert service_cluster(parse_config({"node": {"name": "web"}})) == "web.default"


def test_outbound_services_may_share_a_port_when_networks_differ():
    db = {"name": "db-a", "port": 5432, "endpoints": ["10.1.0.5:5432"], "match_cidrs": ["10.1.0.0/24"]}
    other = {"name": "db-b", "port": 5432, "endpoints": ["10.2.0.5:5432"], "match_cidrs": ["10.2.0.0/24"]}
    cfg = parse_config({"outbound": {"services": [db, other]}})
    assert [s.name for s in cfg.outbound.services] == ["db-a", "db-b"]
    with pytest.raises(ConfigError, match=r"'outbound.services\[1\].port': 5432 is already used"):
        parse_config({"outbound": {"services": [db, {**other, "match_cidrs": ["10.1.0.0/24"]}]}})
