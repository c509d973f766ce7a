"""The Grafana dashboard: every query parses as PromQL and reads only metrics the agent exports."""

from __future__ import annotations

import json
import re

import yaml
from agent_exports import PROMETHEUS_SERIES, exported_names, grafana_to_promql, merged_metrics_text, metric_names
from promtool import DASHBOARD, promtool, recording_rules


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _exprs(dashboard: dict):
    """Every PromQL expression: the panels' targets, and the selectors of the variables' label_values()."""
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["query"]["query"])
            assert match, variable
            yield f"variable {variable['name']!r}", match.group(1)


def test_the_dashboard_is_grafana_json_with_unique_ids_and_a_prometheus_datasource():
    dashboard = _dashboard()
    assert dashboard["uid"] == "hostmesh-sidecars"
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in _panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in dashboard["templating"]["list"])


def test_every_expression_parses(tmp_path):
    exprs = [grafana_to_promql(expr) for _where, expr in _exprs(_dashboard())]
    rules = tmp_path / "dashboard_exprs.yml"
    rules.write_text(yaml.safe_dump(recording_rules(exprs)))
    result = promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_a_broken_expression_is_caught(tmp_path):
    rules = tmp_path / "broken.yml"
    rules.write_text(yaml.safe_dump(recording_rules(["sum by (host) (rate(istio_requests_total[5m])"])))
    assert promtool("check", "rules", str(rules)).returncode != 0


def test_every_expression_reads_only_what_the_agent_exports(tmp_path):
    exported = exported_names(merged_metrics_text(tmp_path)) | PROMETHEUS_SERIES
    seen = set()
    for where, expr in _exprs(_dashboard()):
        used = metric_names(grafana_to_promql(expr))
        assert used <= exported, (where, used - exported)
        seen |= used
    # The dashboard shows each kind of metric the mesh has.
    for name in ("up", "hostmesh_agent_ready", "istio_requests_total", "istio_tcp_connections_opened_total",
                 "hostmesh_rbac_denied_total", "hostmesh_agent_certificate_expiry_timestamp_seconds"):  # fmt: skip
        assert name in seen, name
