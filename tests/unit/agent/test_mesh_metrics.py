"""The certificate's expiry (a DER reader checked against OpenSSL's own parse), the policy
counters from Envoy's stats, the admin socket client and ``hostmesh-agent admin``."""

from __future__ import annotations

import calendar
import os
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import List

import pytest
from test_telemetry import sample

from hostmesh_agent.admin import AdminError, EnvoyAdmin
from hostmesh_agent.admin_command import AdminCommandError, admin_path, check_access, run_admin
from hostmesh_agent.certificate import CertificateError, not_after_der, not_after_pem, read_not_after
from hostmesh_agent.cli import main
from hostmesh_agent.config import parse_config
from hostmesh_agent.mesh_metrics import certificate_expiry, rbac_stat_names, render_rbac

TLS_SERVICE = {"name": "db", "port": 5432, "tls": True, "allow": [{"principals": ["spiffe://cluster.local/ns/a/"]}]}


def make_cert(tmp_path: Path, days: int, name: str = "cert") -> Path:
    key, cert = tmp_path / f"{name}-key.pem", tmp_path / f"{name}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", str(days), "-subj", "/O=hostmesh test",
         "-addext", "subjectAltName=URI:spiffe://cluster.local/ns/shop/sa/web"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert


def openssl_not_after(path: Path) -> int:
    """What OpenSSL (through Python's ssl module) reads as the notAfter: the reference."""
    text = ssl._ssl._test_decode_cert(str(path))["notAfter"]  # a test-only oracle
    return calendar.timegm(time.strptime(text, "%b %d %H:%M:%S %Y GMT"))


@pytest.mark.parametrize("days", [1, 400, 9000, 40000])  # UTCTime up to 2049, GeneralizedTime from 2050
def test_not_after_matches_openssl(tmp_path, days):
    cert = make_cert(tmp_path, days)
    assert read_not_after(str(cert)) == openssl_not_after(cert)


def test_not_after_reads_the_leaf_of_a_chain_and_refuses_garbage(tmp_path):
    leaf, other = make_cert(tmp_path, 3, "leaf"), make_cert(tmp_path, 300, "other")
    chain = leaf.read_bytes() + other.read_bytes()
    assert not_after_pem(chain) == openssl_not_after(leaf)
    for junk in (b"", b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n", b"no pem here"):
        with pytest.raises(CertificateError):
            not_after_pem(junk)
    der = ssl.PEM_cert_to_DER_cert(leaf.read_text())
    for cut in (1, 10, len(der) // 2):
        with pytest.raises(CertificateError):
            not_after_der(der[:cut])


def test_certificate_expiry_metric(tmp_path):
    cert = make_cert(tmp_path, 30)
    cfg = parse_config({"tls": {"cert_file": str(cert), "key_file": "/k", "ca_file": "/c"}})
    text = certificate_expiry(cfg)
    assert "# TYPE hostmesh_agent_certificate_expiry_timestamp_seconds gauge" in text
    assert sample(text, "hostmesh_agent_certificate_expiry_timestamp_seconds") == openssl_not_after(cert)
    assert certificate_expiry(parse_config({})) == ""  # no tls: no metric
    gone = parse_config({"tls": {"cert_file": str(tmp_path / "gone.pem"), "key_file": "/k", "ca_file": "/c"}})
    assert certificate_expiry(gone) == ""


def test_rss_cost_of_ssl_that_the_der_reader_avoids():
    """Why certificate.py reads DER itself: importing ssl costs RSS (printed, never asserted)."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import hostmesh_agent.certificate as c; "
        "rss=lambda: int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]); "
        "a=rss(); import ssl; print(a, rss())"
    )
    agent = Path(__file__).resolve().parents[3] / "roles" / "agent" / "files"
    out = subprocess.run(
        ["/usr/bin/python3", "-S", "-c", script, str(agent)], capture_output=True, text=True, check=True
    )
    before, after = map(int, out.stdout.split())
    print(f"RSS before ssl {before} KiB, after {after} KiB: +{(after - before) / 1024:.1f} MiB")
    assert after >= before


def test_rbac_counters_are_named_per_service_from_envoys_stats():
    cfg = parse_config(
        {
            "tls": {"cert_file": "/c", "key_file": "/k", "ca_file": "/ca"},
            "inbound": {
                "services": [
                    {"name": "web", "port": 8080, "protocol": "http", "allow": [{"paths": ["/"]}]},
                    TLS_SERVICE,
                    {"name": "open", "port": 9000},  # no rules, mesh default allow: no filter, no counter
                ]
            },
        }
    )
    names = rbac_stat_names(cfg)
    assert names == {
        "http.inbound|8080||web.rbac.allowed": ("web", "allowed"),
        "http.inbound|8080||web.rbac.denied": ("web", "denied"),
        "inbound|5432||db.rbac.allowed": ("db", "allowed"),
        "inbound|5432||db.rbac.denied": ("db", "denied"),
    }
    stats = {"http.inbound|8080||web.rbac.allowed": 7, "http.inbound|8080||web.rbac.denied": 2,
             "inbound|5432||db.rbac.allowed": 1}  # fmt: skip
    text = render_rbac(names, stats)
    assert sample(text, "hostmesh_rbac_allowed_total", service="web") == 7
    assert sample(text, "hostmesh_rbac_denied_total", service="web") == 2
    assert sample(text, "hostmesh_rbac_allowed_total", service="db") == 1
    assert sample(text, "hostmesh_rbac_denied_total", service="db") is None  # not reported yet
    assert text.count("# TYPE hostmesh_rbac_allowed_total counter") == 1
    assert rbac_stat_names(parse_config({"policy": {"default": "deny"}, "inbound": {"services": [
        {"name": "open", "port": 9000}]}})) == {"inbound|9000||open.rbac.allowed": ("open", "allowed"),
                                                "inbound|9000||open.rbac.denied": ("open", "denied")}  # fmt: skip


class AdminSocket:
    """A Unix socket answering like Envoy's admin: records each request line."""

    def __init__(self, path: Path, body: bytes = b"LIVE\n", status: int = 200) -> None:
        self.path = str(path)
        self.requests: List[str] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o600)
        self.sock.listen(8)
        reply = f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body
        threading.Thread(target=self._serve, args=(reply,), daemon=True).start()

    def _serve(self, reply: bytes) -> None:
        while True:
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                self.requests.append(data.split(b"\r\n")[0].decode())
                conn.sendall(reply)

    def close(self) -> None:
        self.sock.close()


def test_admin_client_speaks_http_over_the_unix_socket(tmp_path):
    server = AdminSocket(tmp_path / "admin.sock", b"server.state: 0\n")
    try:
        assert EnvoyAdmin(server.path).stats(("server.state", "inbound|5432||db.rbac.allowed")) == {"server.state": 0}
        # Every regular-expression character of a stat name is escaped: "|" must not mean "or".
        assert server.requests[0] == (
            "GET /stats?filter=%5E%28server%5C.state%7Cinbound%5C%7C5432%5C%7C%5C%7Cdb%5C.rbac%5C.allowed%29%24 HTTP/1.1"
        )
    finally:
        server.close()
    with pytest.raises(AdminError, match="envoy admin GET /ready"):
        EnvoyAdmin(str(tmp_path / "none.sock")).request("GET", "/ready")


def test_admin_command_checks_who_asks_before_connecting(tmp_path):
    server = AdminSocket(tmp_path / "admin.sock")
    try:
        owner = os.stat(server.path).st_uid
        assert run_admin(server.path, "ready", None, euid=owner) == (200, b"LIVE\n")
        assert run_admin(server.path, "ready", None, euid=0)[0] == 200
        with pytest.raises(
            AdminCommandError, match=r"belongs to uid \d+ \(the proxy user\), mode 0600; run this as root"
        ):
            check_access(server.path, euid=owner + 4242)
        assert server.requests == ["GET /ready HTTP/1.1"] * 2  # the refused one never connected
    finally:
        server.close()
    with pytest.raises(AdminCommandError, match=r"no admin socket at .*: is hostmesh-agent running"):
        check_access(str(tmp_path / "nothing.sock"), euid=0)
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gone:
        gone.bind(str(stale))  # a socket file nobody listens on (an Envoy that died)
    with pytest.raises(AdminCommandError, match=r"Envoy does not answer on .*stale\.sock: is it running"):
        run_admin(str(stale), "ready", None, euid=0)


def test_admin_paths():
    assert admin_path("config_dump") == "/config_dump"
    assert admin_path("stats", "rbac|ssl") == "/stats?filter=rbac%7Cssl"
    assert admin_path("clusters", "ignored") == "/clusters"


def test_admin_subcommand_prints_the_answer_and_exits_on_its_status(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    server = AdminSocket(run_dir / "admin.sock", b"PRE_INITIALIZING\n", status=503)
    try:
        assert main(["admin", "ready", "--run-dir", str(run_dir)]) == 1
        assert capsys.readouterr().out == "PRE_INITIALIZING\n"
    finally:
        server.close()
    assert main(["admin", "stats", "--run-dir", str(tmp_path / "elsewhere")]) == 1
    assert "hostmesh-agent admin: no admin socket at" in capsys.readouterr().err
