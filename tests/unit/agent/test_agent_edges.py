"""The agent's small edges, without Envoy: admin parsing, readiness rule, status server,
metrics, sd_notify, atomic files, and that the docs list every config key."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from hostmesh_agent.admin import AdminError, EnvoyReadiness, parse_response, parse_stats, readiness_from_stats
from hostmesh_agent.agent import is_ready
from hostmesh_agent.atomic_files import write_atomic
from hostmesh_agent.config import all_keys, parse_config
from hostmesh_agent.metrics import AgentMetrics
from hostmesh_agent.sdnotify import Notifier
from hostmesh_agent.status_server import StatusServer, parse_request_head

DOCS = Path(__file__).resolve().parents[3] / "docs" / "agent.md"


def test_docs_list_every_config_key():
    text = DOCS.read_text()
    missing = [k for k in all_keys() if f"`{k}`" not in text]
    assert missing == []


def test_parse_stats_and_readiness():
    stats = parse_stats(
        "server.state: 0\nserver.hot_restart_epoch: 2\nlistener_manager.total_listeners_active: 4\n"
        "listener_manager.total_listeners_warming: 0\nlistener_manager.lds.update_success: 1\n"
        "cluster_manager.cds.update_success: 3\nsome.histogram: P0(nan,0) P25(nan,0)\n"
    )
    r = readiness_from_stats(stats)
    assert r == EnvoyReadiness(
        live=True, epoch=2, listeners_active=4, listeners_warming=0, lds_updates=1, cds_updates=3
    )
    standalone, xds = parse_config({}), parse_config({"mode": "xds", "xds": {"address": "cp:15012"}})
    assert is_ready(standalone, r, 2)
    assert not is_ready(standalone, r, 3)  # the parent answering during a hot restart
    assert not is_ready(standalone, EnvoyReadiness(True, 2, 3, 0, 1, 1), 2)  # a listener missing
    assert not is_ready(standalone, EnvoyReadiness(True, 2, 4, 1, 1, 1), 2)  # still warming
    assert not is_ready(xds, EnvoyReadiness(True, 0, 2, 0, 0, 1), 0)  # LIVE but no LDS yet
    assert is_ready(xds, EnvoyReadiness(True, 0, 2, 0, 1, 1), 0)


def test_parse_response_plain_and_chunked():
    assert parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", "x") == (200, b"ok")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert parse_response(chunked, "x") == (200, b"abcde")
    with pytest.raises(AdminError, match="malformed"):
        parse_response(b"garbage", "x")


def test_request_head_parsing():
    assert parse_request_head(b"GET /healthz/ready?x=1 HTTP/1.1\r\nHost: a\r\n\r\n") == ("GET", "/healthz/ready")
    with pytest.raises(ValueError):
        parse_request_head(b"nonsense\r\n\r\n")


def test_status_server_endpoints():
    state = {"ready": False}
    server = StatusServer(
        "127.0.0.1", 0, lambda: (state["ready"], "why"), lambda: b"envoy_x 1\nhostmesh_agent_ready 0\n"
    )
    server.start()
    try:

        def get(path: str) -> str:
            with socket.create_connection(("127.0.0.1", server.port), timeout=2) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            return data.decode()

        assert get("/healthz/ready").startswith("HTTP/1.1 503")
        state["ready"] = True
        assert get("/healthz/ready").startswith("HTTP/1.1 200")
        metrics = get("/stats/prometheus")
        assert metrics.startswith("HTTP/1.1 200") and "hostmesh_agent_ready 0" in metrics
        assert get("/nope").startswith("HTTP/1.1 404")
    finally:
        server.stop()


def test_metrics_render_in_prometheus_text_format():
    text = AgentMetrics(started_at=10.0, restarts=2, hot_restarts=3, epoch=3, ready=True).render(now=12.5)
    assert "# TYPE hostmesh_agent_restarts_total counter\nhostmesh_agent_restarts_total 2\n" in text
    assert "hostmesh_agent_epoch 3\n" in text
    assert "hostmesh_agent_ready 1\n" in text
    assert "hostmesh_agent_uptime_seconds 2.5\n" in text
    names = re.findall(r"^(hostmesh_agent_\w+) ", text, re.M)
    assert len(names) == len(set(names)) == 8


def test_sd_notify_messages_and_watchdog_interval(tmp_path):
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(1)
    n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
    assert n.watchdog_interval_s == 1.0
    assert n.send("READY=1", "STATUS=ready")
    assert sock.recv(100) == b"READY=1\nSTATUS=ready"
    sock.close()
    silent = Notifier({})
    assert silent.watchdog_interval_s is None and not silent.send("READY=1")
    assert Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "5", "WATCHDOG_PID": "1"}).watchdog_interval_s is None


def test_atomic_write_skips_identical_content(tmp_path):
    target = tmp_path / "lds.json"
    assert write_atomic(str(target), b"one")
    assert not write_atomic(str(target), b"one")
    assert write_atomic(str(target), b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lds.json"]
