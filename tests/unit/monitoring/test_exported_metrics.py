"""The helpers the alert and dashboard tests rely on: the agent's rendered names, and PromQL's metric names."""

from __future__ import annotations

from agent_exports import PROMETHEUS_SERIES, exported_names, merged_metrics_text, metric_names


def test_the_rendered_endpoint_has_every_family_the_docs_name(tmp_path):
    names = exported_names(merged_metrics_text(tmp_path))
    for name in (
        "hostmesh_agent_ready",
        "hostmesh_agent_restarts_total",
        "hostmesh_agent_certificate_expiry_timestamp_seconds",
        "hostmesh_rbac_allowed_total",
        "hostmesh_rbac_denied_total",
        "hostmesh_agent_access_log_dropped_lines_total",
        "istio_requests_total",
        "istio_request_duration_milliseconds_bucket",
        "istio_tcp_connections_opened_total",
        "hostmesh_agent_telemetry_series",
    ):
        assert name in names, name
    assert not names & PROMETHEUS_SERIES
    assert "hostmesh_capture_active" not in names


def test_metric_names_skips_functions_labels_keywords_and_strings():
    expr = (
        'sum by (host, le) (rate(istio_requests_total{job="x", response_code=~"5.."}[5m])) '
        "/ on (host) group_left sum without (a) (up offset 5m) > bool 0.05 "
        'and hostmesh_agent_ready{host="rate"} - time() < 7 * 86400 or vector(0)'
    )
    assert metric_names(expr) == {"istio_requests_total", "up", "hostmesh_agent_ready"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(a_bucket[1m])))") == {"a_bucket"}
