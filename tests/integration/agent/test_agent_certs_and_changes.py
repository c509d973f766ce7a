"""Changes under a running agent: mesh mTLS certificates, the Envoy binary, outbound capture."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest
from agent_netns import (
    HERE,
    HOST_IP,
    PEER_ID,
    PEER_IP,
    WEB_ID,
    agent_config,
    in_netns,
    issue_cert,
    mesh_pki,
    try_get,
    wait_for,
)

pytestmark = [pytest.mark.netns, pytest.mark.envoy]


def _mtls_get(ns: str, ca: str, cert: Optional[str], key: Optional[str]) -> Dict[str, object]:
    """A peer's mTLS request to the host's app port; returns the answer and the server's cert."""

    def call() -> Dict[str, object]:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # SPIFFE identities are URI SANs, not host names
        ctx.load_verify_locations(ca)
        if cert and key:
            ctx.load_cert_chain(cert, key)
        with socket.create_connection((HOST_IP, 8080), timeout=3) as raw, ctx.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
            tls.sendall(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
        return {"response": data.decode(errors="replace"), "cert": der}

    return in_netns(ns, call)


def _tls(cert_and_key: Tuple[str, str], ca: Dict[str, str]) -> Dict[str, str]:
    """The agent's ``tls`` section for one workload."""
    return {"cert_file": cert_and_key[0], "key_file": cert_and_key[1], "ca_file": ca["ca"]}


def test_mtls_inbound_and_certificate_rotation_without_restart(envoy_binary, topo, workdir, start_agent):
    topo.start_app(8080)
    ca, (cert, key), (peer_cert, peer_key) = mesh_pki(workdir)
    config = agent_config(
        envoy_binary,
        workdir,
        tls=_tls((cert, key), ca),
        inbound={"services": [{"name": "web", "port": 8080, "tls": True, "allowed_spiffe_ids": [PEER_ID]}]},
    )
    agent = start_agent(config)
    agent.wait_ready()
    [envoy_pid] = agent.envoy_pids()

    first = _mtls_get(topo.peer, ca["ca"], peer_cert, peer_key)
    assert first["response"].startswith("HTTP/1.1 200"), first["response"]
    assert first["response"].rstrip().endswith("8080 127.0.0.6")
    # Without a client certificate the sidecar refuses the connection.
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        _mtls_get(topo.peer, ca["ca"], None, None)["response"]

    # Rotate: a new key and certificate land with a rename, as a cert manager would do it.
    fresh = workdir / "fresh"
    fresh.mkdir()
    new_cert, new_key = issue_cert(fresh, ca, "web", f"URI:{WEB_ID}")
    os.replace(new_key, key)
    os.replace(new_cert, cert)
    expected = ssl.PEM_cert_to_DER_cert(Path(cert).read_text())
    wait_for(
        lambda: _mtls_get(topo.peer, ca["ca"], peer_cert, peer_key)["cert"] == expected,
        10,
        "Envoy to present the rotated certificate",
        step=0.2,
    )
    assert agent.envoy_pids() == [envoy_pid]  # the same process: no restart of any kind
    assert agent.metric("hostmesh_agent_epoch") == 0
    assert agent.metric("hostmesh_agent_hot_restarts_total") == 0
    # The agent noticed too and rewrote the SDS files (their version follows the files' contents).
    wait_for(lambda: agent.metric("hostmesh_agent_config_reloads_total") >= 1, 3, "SDS files rewritten")
    assert "updated certificates in place, no restart" in agent.log()


def test_new_envoy_binary_means_hot_restart(envoy_binary, topo, workdir, start_agent):
    topo.start_app(8080)
    binary = workdir / "envoy"
    shutil.copy2(envoy_binary, binary)
    config = agent_config(envoy_binary, workdir)
    config["envoy"]["binary"] = str(binary)
    agent = start_agent(config)
    agent.wait_ready()
    assert agent.metric("hostmesh_agent_epoch") == 0
    # An upgrade in place: a new file renamed over the old path.
    upgrade = workdir / "envoy.new"
    shutil.copy2(envoy_binary, upgrade)
    os.utime(upgrade, (time.time(), time.time() + 60))
    os.replace(upgrade, binary)
    wait_for(lambda: agent.metric("hostmesh_agent_epoch") == 1, 10, "hot restart onto the new binary")
    assert agent.metric("hostmesh_agent_restarts_total") == 0
    assert try_get(topo.peer, HOST_IP, 8080)[0] == 200


def test_outbound_is_captured_and_passed_through_to_original_destination(envoy_binary, topo, workdir, start_agent):
    topo.start_app(8080)
    topo.spawn(topo.peer, "python3", str(HERE / "app_server.py"), "9000")
    wait_for(lambda: try_get(topo.peer, PEER_IP, 9000)[0] == 200, 5, "peer app")
    agent = start_agent(agent_config(envoy_binary, workdir))
    agent.wait_ready()

    def outbound_connections() -> int:
        return agent.stat("listener.outbound.downstream_cx_total")

    before = outbound_connections()
    # A process on the host (not the proxy user) calls the peer: captured to 15001.
    code, body = try_get(topo.host, PEER_IP, 9000)
    assert (code, body.split()) == (200, ["9000", HOST_IP])
    assert outbound_connections() == before + 1


def test_sidecar_to_sidecar_mtls_with_spiffe_ids(envoy_binary, topo_both_captured, workdir, peer_workdir, start_agent):
    """Host app -> host sidecar (15001, mTLS origination) -> peer sidecar (15006, mTLS) -> peer app."""
    topo = topo_both_captured
    topo.start_app(9000, ns=topo.peer)
    ca, web, peer = mesh_pki(workdir)
    host_cfg = agent_config(
        envoy_binary,
        workdir,
        tls=_tls(web, ca),
        outbound={
            "services": [
                {
                    "name": "peer-web",
                    "port": 9000,
                    "endpoints": [f"{PEER_IP}:9000"],
                    "tls": True,
                    "spiffe_ids": [PEER_ID],
                }
            ]
        },
    )
    peer_cfg = agent_config(
        envoy_binary,
        peer_workdir,
        node={"name": "peer-1", "namespace": "demo", "ip": PEER_IP, "service_account": "peer"},
        tls=_tls(peer, ca),
        inbound={"services": [{"name": "peer-web", "port": 9000, "tls": True, "allowed_spiffe_ids": [WEB_ID]}]},
    )
    host_agent = start_agent(host_cfg)
    peer_agent = start_agent(peer_cfg, ns=topo.peer, where=peer_workdir)
    host_agent.wait_ready()
    peer_agent.wait_ready()

    # A plain-text call from a host process; the sidecars add mTLS on the wire.
    code, body = try_get(topo.host, PEER_IP, 9000)
    assert (code, body.split()) == (200, ["9000", "127.0.0.6"])

    assert host_agent.stat("cluster.outbound|9000||peer-web.ssl.handshake") >= 1
    assert peer_agent.stat("listener.inbound.ssl.handshake") >= 1

    # A peer that expects another identity refuses the host's certificate.
    strict = json.loads(peer_agent.config_path.read_text())
    strict["inbound"]["services"][0]["allowed_spiffe_ids"] = ["spiffe://cluster.local/ns/demo/sa/someone-else"]
    peer_agent.write_config(strict)
    peer_agent.signal(signal.SIGHUP)
    wait_for(lambda: try_get(topo.host, PEER_IP, 9000)[0] != 200, 5, "the peer to refuse the host's identity")
    assert peer_agent.metric("hostmesh_agent_epoch") == 0
