"""The prometheus role's filters: scrape targets from the inventory, one `for` for every alert,
and the variables' checks; and a config built from them that promtool accepts."""

from __future__ import annotations

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from promtool import RULES, promtool

from ansible_collections.hostmesh.sidecar.plugins.filter.prometheus import (
    prometheus_alert_for,
    prometheus_problems,
    prometheus_targets,
)

HOSTVARS = {
    "web-2": {"ansible_host": "10.0.0.6", "hostmesh_ports": {"status": 16020}},
    "web-1": {"hostmesh_address": "10.0.0.5", "ansible_host": "192.0.2.1", "unrelated": "{{ broken"},
    "v6": {"ansible_host": "2001:db8::7"},
    "named": {},
}
GOOD = {
    "hostmesh_prometheus_targets": "mesh",
    "hostmesh_prometheus_scrape_interval": "15s",
    "hostmesh_prometheus_evaluation_interval": "1m30s",
    "hostmesh_prometheus_retention": "15d",
    "hostmesh_prometheus_alert_for": "",
    "hostmesh_prometheus_listen_address": "0.0.0.0:9090",
    "hostmesh_prometheus_alertmanagers": ["alerts.example:9093", "[2001:db8::9]:9093"],
}


def test_targets_are_each_hosts_status_port_labelled_with_its_name():
    assert prometheus_targets(HOSTVARS, ["web-2", "web-1", "v6", "named", "web-1"]) == [
        {"targets": ["named:15020"], "labels": {"host": "named"}},
        {"targets": ["[2001:db8::7]:15020"], "labels": {"host": "v6"}},
        {"targets": ["10.0.0.5:15020"], "labels": {"host": "web-1"}},
        {"targets": ["10.0.0.6:16020"], "labels": {"host": "web-2"}},
    ]


@pytest.mark.parametrize(
    ("hostvars", "message"),
    [
        ({"h": {"hostmesh_ports": {"status": 70000}}}, "prometheus_targets: host 'h', hostmesh_ports.status"),
        ({"h": {"hostmesh_ports": {"statsu": 1}}}, "prometheus_targets: host 'h', hostmesh_ports"),
        ({"h": {"ansible_host": "a b"}}, "prometheus_targets: host 'h', ansible_host: got \"a b\""),
    ],
)
def test_a_bad_host_is_named_with_its_variable(hostvars, message):
    with pytest.raises(AnsibleFilterError) as error:
        prometheus_targets(hostvars, ["h"])
    assert message in str(error.value)


def test_alert_for_sets_every_alert_and_leaves_the_file_otherwise_alone():
    rules = yaml.safe_load(RULES.read_text())
    assert prometheus_alert_for(rules, "") == rules
    short = prometheus_alert_for(rules, "10s")
    got = [rule for group in short["groups"] for rule in group["rules"]]
    assert {rule["for"] for rule in got} == {"10s"}
    assert [rule["expr"] for rule in got] == [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert {rule["for"] for group in rules["groups"] for rule in group["rules"]} != {"10s"}  # a copy


def test_alert_for_refuses_what_is_not_a_duration():
    with pytest.raises(AnsibleFilterError, match=r'hostmesh_prometheus_alert_for: got "10 seconds"'):
        prometheus_alert_for({"groups": []}, "10 seconds")


def test_good_settings_have_no_problems():
    assert prometheus_problems(GOOD, ["web-1"]) == []


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("hostmesh_prometheus_scrape_interval", "15", 'hostmesh_prometheus_scrape_interval: got "15"'),
        ("hostmesh_prometheus_evaluation_interval", "0s", 'hostmesh_prometheus_evaluation_interval: got "0s"'),
        ("hostmesh_prometheus_retention", "two weeks", 'hostmesh_prometheus_retention: got "two weeks"'),
        ("hostmesh_prometheus_alert_for", "soon", 'hostmesh_prometheus_alert_for: got "soon"'),
        ("hostmesh_prometheus_listen_address", "9090", 'hostmesh_prometheus_listen_address: got "9090"'),
        ("hostmesh_prometheus_listen_address", "::1:9090", 'hostmesh_prometheus_listen_address: got "::1:9090"'),
        ("hostmesh_prometheus_alertmanagers", [":9093"], 'hostmesh_prometheus_alertmanagers[0]: got ":9093"'),
    ],
)
def test_each_bad_value_is_named(key, value, message):
    problems = prometheus_problems({**GOOD, key: value}, ["web-1"])
    assert len(problems) == 1 and problems[0].startswith(message), problems


def test_a_pattern_that_names_no_host_is_refused():
    assert prometheus_problems(GOOD, []) == [
        'hostmesh_prometheus_targets: got "mesh"; it names no host of the inventory: expected the group'
        " or pattern of the mesh hosts to scrape"
    ]


def test_promtool_accepts_a_config_with_these_targets_and_the_rules(tmp_path):
    config = {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "hostmesh-sidecar",
                "metrics_path": "/stats/prometheus",
                "static_configs": prometheus_targets(HOSTVARS, list(HOSTVARS)),
            }
        ],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
