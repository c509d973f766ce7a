"""The shipped alert rules: valid for promtool, their unit tests pass (and can fail), and they
read only metrics a sidecar's status port serves."""

from __future__ import annotations

import shutil

import pytest
import yaml
from agent_exports import PROMETHEUS_SERIES, exported_names, merged_metrics_text, metric_names
from promtool import RULES, RULES_TEST, promtool

ALERTS = {
    "HostmeshSidecarDown",
    "HostmeshSidecarNotReady",
    "HostmeshEnvoyRestarting",
    "HostmeshCertificateExpiring",
    "HostmeshCertificateExpired",
    "HostmeshRequestErrorRateHigh",
    "HostmeshRequestsDenied",
    "HostmeshAccessLogDropping",
    "HostmeshCaptureLifted",
}


def _rules():
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_and_has_a_severity_and_a_summary():
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    rules = _rules()
    assert {rule["alert"] for rule in rules} == ALERTS == tested
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


@pytest.mark.parametrize(
    ("alert", "old", "new"),
    [
        ("HostmeshRequestErrorRateHigh", "> 0.05", "> 0.5"),
        ("HostmeshSidecarDown", "== 0", "== 1"),
        ("HostmeshCertificateExpiring", "7 * 86400", "3 * 86400"),
    ],
)
def test_the_unit_tests_fail_when_a_rule_is_wrong(tmp_path, alert, old, new):
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                assert old in rule["expr"]
                rule["expr"] = rule["expr"].replace(old, new)
    (tmp_path / RULES.name).write_text(yaml.safe_dump(doc))
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    result = promtool("test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert result.returncode != 0
    assert f"alertname: {alert}" in result.stdout + result.stderr


def test_the_rules_read_only_what_the_agent_exports(tmp_path):
    exported = exported_names(merged_metrics_text(tmp_path)) | PROMETHEUS_SERIES
    for rule in _rules():
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= exported, (rule["alert"], used - exported)
