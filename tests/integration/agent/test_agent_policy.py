"""Who may call whom, and seeing every call: service policies, access logs and Istio-named
telemetry with the real Envoy, behind the seed's capture rules.

The host serves ``web`` (http) and ``db`` (tcp), both mesh mTLS, each allowing client-a
only; callers in the peer namespace present client-a's or client-b's certificate (or
none), as another sidecar would.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from agent_netns import (
    HOST_IP,
    PROXY_UID,
    WEB_ID,
    agent_config,
    host_python,
    in_netns,
    issue_cert,
    make_ca,
    metric_sum,
    try_get,
    validate_config,
    wait_for,
)
from proxy_user_files import agent_path

pytestmark = [pytest.mark.netns, pytest.mark.envoy]

CLIENT_A = "spiffe://cluster.local/ns/demo/sa/client-a"
CLIENT_B = "spiffe://cluster.local/ns/other/sa/client-b"
DENIED = "rbac_access_denied_matched_policy[none]"
# Every access-log field docs/telemetry.md promises, by protocol.
TCP_FIELDS = {
    "start_time", "type", "direction", "service", "protocol", "peer_spiffe_id", "downstream_remote_address",
    "upstream_host", "upstream_cluster", "response_code", "response_flags", "response_code_details",
    "connection_termination_details", "upstream_transport_failure_reason", "duration_ms", "bytes_received",
    "bytes_sent",
}  # fmt: skip
HTTP_FIELDS = TCP_FIELDS | {"method", "path", "authority", "request_id", "trace_id"}


def _pki(workdir: Path) -> Dict[str, Any]:
    ca = make_ca(workdir)
    return {
        "ca": ca["ca"],
        "web": issue_cert(workdir, ca, "web", f"URI:{WEB_ID}"),
        "a": issue_cert(workdir, ca, "client-a", f"URI:{CLIENT_A}"),
        "b": issue_cert(workdir, ca, "client-b", f"URI:{CLIENT_B}"),
    }


def _log_dir(workdir: Path) -> Path:
    path = workdir / "log"
    path.mkdir()
    os.chown(path, PROXY_UID, PROXY_UID)
    return path


def policy_config(envoy_binary: str, workdir: Path, pki: Dict[str, Any], **overrides: Any) -> Dict[str, Any]:
    cert, key = pki["web"]
    return agent_config(
        envoy_binary,
        workdir,
        envoy={"file_flush_interval_ms": 100},
        tls={"cert_file": cert, "key_file": key, "ca_file": pki["ca"]},
        access_log={"enabled": True, "destination": str(workdir / "log" / "access.log")},
        inbound={
            "services": [
                {"name": "web", "port": 8080, "protocol": "http", "tls": True,
                 "allow": [{"principals": [CLIENT_A], "methods": ["GET"], "paths": ["/"]}]},
                {"name": "db", "port": 8081, "tls": True, "allow": [{"principals": [CLIENT_A]}]},
            ]
        },
        **overrides,
    )  # fmt: skip


def mtls_call(
    ns: str, port: int, ca: str, cert_key: Optional[Tuple[str, str]], payload: bytes, timeout: float = 3.0
) -> Dict[str, Any]:
    """One mTLS connection from namespace ``ns`` to the host: send ``payload``, read to the end.
    Returns what came back, how many bytes went each way, or the error that ended it."""

    def call() -> Dict[str, Any]:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # SPIFFE identities are URI SANs, not host names
        ctx.load_verify_locations(ca)
        if cert_key:
            ctx.load_cert_chain(*cert_key)
        data, error = b"", None
        try:
            with socket.create_connection((HOST_IP, port), timeout=timeout) as raw, ctx.wrap_socket(raw) as tls:
                tls.sendall(payload)
                while chunk := tls.recv(65536):
                    data += chunk
        except (OSError, ssl.SSLError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        return {"data": data, "sent": len(payload), "received": len(data), "error": error}

    return in_netns(ns, call)


def http_request(path: str = "/", method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n{extra}\r\n".encode()


def status_of(result: Dict[str, Any]) -> int:
    head = result["data"].split(b"\r\n", 1)[0].split(b" ")
    return int(head[1]) if len(head) > 1 and head[1].isdigit() else 0


def access_log(workdir: Path) -> List[Dict[str, Any]]:
    path = workdir / "log" / "access.log"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_client_a_served_client_b_refused_and_every_call_logged_and_counted(envoy_binary, topo, workdir, start_agent):
    topo.start_app(8080, 8081)
    pki = _pki(workdir)
    _log_dir(workdir)
    agent = start_agent(policy_config(envoy_binary, workdir, pki))
    agent.wait_ready()
    [envoy_pid] = agent.envoy_pids()

    # http: client-a is served; client-b gets 403, and so does client-a off its rule's method.
    a_calls = [mtls_call(topo.peer, 8080, pki["ca"], pki["a"], http_request(f"/item/{i}")) for i in range(5)]
    assert [status_of(r) for r in a_calls] == [200] * 5, a_calls
    assert a_calls[0]["data"].rstrip().endswith(b"8080 127.0.0.6")
    b_calls = [mtls_call(topo.peer, 8080, pki["ca"], pki["b"], http_request("/admin")) for _i in range(3)]
    assert [status_of(r) for r in b_calls] == [403] * 3, b_calls
    assert b_calls[0]["data"].endswith(b"RBAC: access denied")
    assert status_of(mtls_call(topo.peer, 8080, pki["ca"], pki["a"], http_request("/", "DELETE"))) == 403

    # tcp: client-a's bytes reach the application; client-b's connection is closed unanswered.
    tcp_a = [mtls_call(topo.peer, 8081, pki["ca"], pki["a"], http_request(f"/raw/{i}")) for i in range(4)]
    assert [status_of(r) for r in tcp_a] == [200] * 4, tcp_a
    tcp_b = [mtls_call(topo.peer, 8081, pki["ca"], pki["b"], http_request("/raw")) for _i in range(2)]
    assert [r["data"] for r in tcp_b] == [b"", b""], tcp_b
    # client-b never reached the application, not even its first byte: only client-a's four did.
    assert agent.stat("cluster.inbound|8081||db.upstream_cx_total") == 4

    # A caller without a mesh certificate, or in plain text, is refused by the TLS service itself.
    assert mtls_call(topo.peer, 8080, pki["ca"], None, http_request())["data"] == b""
    assert try_get(topo.peer, HOST_IP, 8080)[0] == 0
    assert try_get(topo.peer, HOST_IP, 8081)[0] == 0

    # The access log: one line per request and per connection, client-b's with its ID and the reason.
    def lines_in() -> List[Dict[str, Any]]:
        return [x for x in access_log(workdir) if x["type"] in ("DownstreamEnd", "TcpConnectionEnd")]

    wait_for(lambda: len([x for x in lines_in() if x["peer_spiffe_id"]]) >= 15, 10, "the access-log lines")
    lines = lines_in()
    web_b = [x for x in lines if x["service"] == "web" and x["peer_spiffe_id"] == CLIENT_B]
    assert len(web_b) == 3
    assert all(x["response_code"] == 403 and x["response_code_details"] == DENIED for x in web_b)
    assert (web_b[0]["method"], web_b[0]["path"], web_b[0]["direction"]) == ("GET", "/admin", "inbound")
    db_b = [x for x in lines if x["service"] == "db" and x["peer_spiffe_id"] == CLIENT_B]
    assert len(db_b) == 2 and all(x["connection_termination_details"] == DENIED for x in db_b)
    web_a = [x for x in lines if x["service"] == "web" and x["peer_spiffe_id"] == CLIENT_A and x["method"] == "GET"]
    assert len(web_a) == 5
    assert {x["path"] for x in web_a} == {f"/item/{i}" for i in range(5)}
    for x in web_a:
        assert set(x) == HTTP_FIELDS, set(x) ^ HTTP_FIELDS
        assert x["upstream_host"] == "127.0.0.1:8080" and x["response_flags"] == "-"
        assert x["bytes_sent"] > 0 and x["duration_ms"] >= 0 and x["authority"] == "web" and x["request_id"]
    db_a = [x for x in lines if x["service"] == "db" and x["peer_spiffe_id"] == CLIENT_A]
    assert len(db_a) == 4 and all(set(x) == TCP_FIELDS for x in db_a)
    # The journal (the agent's log) names the refused caller too.
    assert f"policy refused {CLIENT_B}" in agent.log()

    # Envoy's policy counters, per service, on the merged endpoint.
    def metrics() -> str:
        return agent.metrics()

    wait_for(lambda: metric_sum(metrics(), "istio_requests_total") >= 9, 5, "the request metrics")
    text = metrics()
    assert metric_sum(text, "hostmesh_rbac_allowed_total", service="web") == 5
    assert metric_sum(text, "hostmesh_rbac_denied_total", service="web") == 4
    assert metric_sum(text, "hostmesh_rbac_allowed_total", service="db") == 4
    assert metric_sum(text, "hostmesh_rbac_denied_total", service="db") == 2

    # Istio's metrics equal what the clients sent.
    dest = {"reporter": "destination", "destination_service_name": "web", "destination_workload": "web"}
    assert metric_sum(text, "istio_requests_total", source_principal=CLIENT_A, response_code="200", **dest) == 5
    assert metric_sum(text, "istio_requests_total", source_principal=CLIENT_B, response_code="403", **dest) == 3
    assert metric_sum(text, "istio_requests_total", source_principal=CLIENT_B, source_workload="client-b",
                      source_workload_namespace="other", destination_principal=WEB_ID,
                      connection_security_policy="mutual_tls",
                      destination_service="web.demo.mesh.internal") == 3  # fmt: skip
    assert metric_sum(text, "istio_request_duration_milliseconds_count", source_principal=CLIENT_A, **dest) == 6
    assert metric_sum(text, "istio_requests_total", source_principal=CLIENT_A, response_code="403", **dest) == 1
    body_bytes = sum(x["bytes_sent"] for x in web_a)
    assert metric_sum(text, "istio_response_bytes_sum", source_principal=CLIENT_A, response_code="200") == body_bytes
    db = {"reporter": "destination", "destination_service_name": "db"}
    assert metric_sum(text, "istio_tcp_connections_opened_total", source_principal=CLIENT_A, **db) == 4
    assert metric_sum(text, "istio_tcp_connections_closed_total", source_principal=CLIENT_A, **db) == 4
    assert metric_sum(text, "istio_tcp_received_bytes_total", source_principal=CLIENT_A, **db) == sum(
        r["sent"] for r in tcp_a
    )
    assert metric_sum(text, "istio_tcp_sent_bytes_total", source_principal=CLIENT_A, **db) == sum(
        r["received"] for r in tcp_a
    )
    assert metric_sum(text, "istio_tcp_connections_opened_total", source_principal=CLIENT_B, **db) == 2
    assert metric_sum(text, "istio_tcp_connections_closed_total", source_principal=CLIENT_B, **db) == 2
    assert metric_sum(text, "hostmesh_agent_access_log_dropped_lines_total") == 0
    assert metric_sum(text, "hostmesh_agent_certificate_expiry_timestamp_seconds") > time.time() + 86400
    # All of it with the one Envoy that started.
    assert agent.envoy_pids() == [envoy_pid] and agent.metric("hostmesh_agent_epoch") == 0


def test_policy_change_applies_in_place_and_loses_no_allowed_request(envoy_binary, topo, workdir, start_agent):
    topo.start_app(8080, 8081)
    pki = _pki(workdir)
    _log_dir(workdir)
    config = policy_config(envoy_binary, workdir, pki)
    agent = start_agent(config)
    agent.wait_ready()
    [envoy_pid] = agent.envoy_pids()
    stop = threading.Event()
    results: List[int] = []

    def client_a_loop() -> None:  # a new connection for every request, as the change lands
        while not stop.is_set():
            results.append(status_of(mtls_call(topo.peer, 8080, pki["ca"], pki["a"], http_request())))

    loop = threading.Thread(target=client_a_loop)
    loop.start()
    try:
        wait_for(lambda: len(results) >= 10, 10, "client-a's first requests")
        assert status_of(mtls_call(topo.peer, 8080, pki["ca"], pki["b"], http_request())) == 403
        before = agent.metric("hostmesh_agent_config_reloads_total")
        changed = copy.deepcopy(config)
        changed["inbound"]["services"][0]["allow"].append({"principals": ["spiffe://cluster.local/ns/other/"]})
        agent.write_config(changed)
        agent.signal(signal.SIGHUP)
        wait_for(
            lambda: status_of(mtls_call(topo.peer, 8080, pki["ca"], pki["b"], http_request())) == 200,
            10,
            "client-b's namespace to be allowed",
        )
        wait_for(lambda: agent.metric("hostmesh_agent_config_reloads_total") == before + 1, 3, "the reload")
        time.sleep(0.5)  # client-a keeps going after the change, too
    finally:
        stop.set()
        loop.join()
    assert len(results) > 20 and set(results) == {200}, [r for r in results if r != 200]
    assert agent.envoy_pids() == [envoy_pid]
    assert agent.metric("hostmesh_agent_epoch") == 0
    assert agent.metric("hostmesh_agent_hot_restarts_total") == 0
    assert "updated listeners/clusters in place, no restart" in agent.log()


def test_admin_socket_is_for_the_proxy_user_and_root_only(envoy_binary, topo, workdir, start_agent):
    agent = start_agent(agent_config(envoy_binary, workdir))
    agent.wait_ready()
    sock = Path(agent.admin_socket)
    st = sock.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (PROXY_UID, 0o600)
    assert agent.admin("/ready") == (200, "LIVE\n")  # root
    # No TCP admin any more: nothing answers on 15000, not even on the host's loopback.
    assert try_get(topo.host, "127.0.0.1", 15000, "/ready")[0] == 0

    def as_user(uid: int, *cmd: str) -> Tuple[int, str]:
        res = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
             "env", f"PYTHONPATH={agent_path()}", host_python(), "-S", *cmd],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return res.returncode, res.stdout + res.stderr

    probe = (
        "import socket,sys; s=socket.socket(socket.AF_UNIX)\n"
        "try:\n s.connect(sys.argv[1]); s.sendall(b'GET /ready HTTP/1.1\\r\\nHost: a\\r\\nConnection: close\\r\\n\\r\\n')\n"
        " print(s.recv(200).decode().split()[1])\n"
        "except OSError as e: print(type(e).__name__)\n"
    )
    assert as_user(PROXY_UID, "-c", probe, str(sock)) == (0, "200\n")
    for uid in (1000, 65534):  # another local user, and nobody
        assert as_user(uid, "-c", probe, str(sock)) == (0, "PermissionError\n")
    # The operator command: works for the proxy user, says why for anyone else.
    run_dir = str(sock.parent)
    assert as_user(PROXY_UID, "-m", "hostmesh_agent", "admin", "ready", "--run-dir", run_dir) == (0, "LIVE\n")
    code, out = as_user(65534, "-m", "hostmesh_agent", "admin", "ready", "--run-dir", run_dir)
    assert code == 1 and "permission denied on" in out and "run this as root or as uid 1337" in out, out
    code, out = as_user(PROXY_UID, "-m", "hostmesh_agent", "admin", "stats", "--filter", "^server.state$",
                        "--run-dir", run_dir)  # fmt: skip
    assert (code, out) == (0, "server.state: 0\n")

    # The opt-in TCP admin (listen.admin_tcp): on the loopback port, never for the peer.
    opted = copy.deepcopy(agent.config)
    opted["listen"] = {"admin_tcp": True}
    agent.write_config(opted)
    agent.signal(signal.SIGHUP)
    agent.wait_hand_over(1)  # a bootstrap change: hot restart
    assert try_get(topo.host, "127.0.0.1", 15000, "/ready") == (200, "LIVE\n")
    assert try_get(topo.peer, HOST_IP, 15000, "/ready")[0] == 0
    assert agent.admin("/ready") == (200, "LIVE\n")  # the socket stays


def test_validate_accepts_policies_access_logs_and_tracing(envoy_binary, workdir):
    pki = _pki(workdir)
    config = policy_config(envoy_binary, workdir, pki, tracing={"collector": "127.0.0.1:4317", "sampling": 25},
                           policy={"default": "deny"}, listen={"admin_tcp": True})  # fmt: skip
    config["inbound"]["services"].append({"name": "smtp", "port": 2525, "tls": True, "server_first": True,
                                          "allow": [{"principals": ["spiffe://cluster.local/ns/demo/"]}]})  # fmt: skip
    config["outbound"] = {"services": [{"name": "api", "port": 9090, "protocol": "http",
                                        "endpoints": ["10.77.0.2:9090"], "tls": True, "namespace": "backend"}]}  # fmt: skip
    res = validate_config(config, workdir / "agent.json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "listeners and clusters: ok (envoy --mode validate)" in res.stdout
