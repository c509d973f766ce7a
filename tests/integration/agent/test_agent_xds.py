"""hostmesh-agent in xDS mode: ADS over mutual TLS to a test control plane."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agent_netns import HERE, agent_config, make_pki, try_get, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.envoy]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ready_only_after_first_cds_and_lds(envoy_binary, topo, workdir, start_agent):
    topo.start_app(8080)
    pki = make_pki(workdir, "spiffe://cluster.local/ns/demo/sa/web", "istiod.test")
    token = workdir / "token"
    token.write_text("s3cret-token\n")
    token.chmod(0o644)
    release, report = workdir / "release", workdir / "ads-report.json"
    port = _free_port()  # in the host namespace, where nothing else listens
    ads = topo.spawn(
        topo.host, sys.executable, str(HERE / "ads_server.py"), "--port", str(port),
        "--cert", pki["server"], "--key", pki["server-key"], "--ca", pki["ca"],
        "--release-file", str(release), "--report", str(report), "--listen-port", "18080",
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert ads.stdout is not None and ads.stdout.readline().strip() == "serving"

    config = agent_config(
        envoy_binary,
        workdir,
        mode="xds",
        xds={
            "address": f"127.0.0.1:{port}",
            "sni": "istiod.test",
            "ca_file": pki["ca"],
            "cert_file": pki["client"],
            "key_file": pki["client-key"],
            "token_file": str(token),
            "cluster_id": "vm-cluster",
            "istio_version": "1.24.0",
            "initial_fetch_timeout_s": 1,
        },
    )
    del config["inbound"]
    agent = start_agent(config)

    # Connected over mTLS and asked for clusters, but nothing served yet: never ready,
    # even after Envoy gives up waiting for its first fetch and reports LIVE.
    wait_for(report.exists, 10, "the agent's Envoy to reach the ADS server")
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert agent.status("/healthz/ready")[0] == 503
        time.sleep(0.1)
    seen = json.loads(report.read_text())
    assert seen["authorization"] == "Bearer s3cret-token"
    node = seen["node"]
    assert node["id"] == "sidecar~10.77.0.1~web-1.demo~demo.svc.cluster.local"
    meta = node["metadata"]
    assert meta["CLUSTER_ID"] == "vm-cluster"
    assert meta["NAMESPACE"] == "demo"
    assert meta["SERVICE_ACCOUNT"] == "web"
    assert meta["ISTIO_VERSION"] == "1.24.0"
    assert meta["INSTANCE_IPS"] == "10.77.0.1"

    release.touch()
    agent.wait_ready(timeout=10)
    both = {
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "type.googleapis.com/envoy.config.listener.v3.Listener",
    }
    # Envoy ACKs right after applying, so the ACK may land a moment after readiness.
    wait_for(lambda: set(json.loads(report.read_text())["acks"]) >= both, 3, "ACKs for CDS and LDS")
    assert json.loads(report.read_text())["nacks"] == []
    # The served listener works: it forwards to the app.
    code, body = try_get(topo.host, "127.0.0.1", 18080)
    assert code == 200 and body.startswith("8080 "), body
    assert agent.metric("hostmesh_agent_ready") == 1

    # The token lives in the bootstrap: a rotated one means a hot restart onto it.
    token.write_text("rotated-token\n")
    wait_for(lambda: agent.metric("hostmesh_agent_epoch") == 1, 10, "hot restart onto the new token")
    assert json.loads(report.read_text())["authorization"] == "Bearer rotated-token"
    assert try_get(topo.host, "127.0.0.1", 18080)[0] == 200
    assert agent.metric("hostmesh_agent_restarts_total") == 0


def test_validate_command_checks_both_examples(envoy_binary, workdir):
    """``validate`` runs the bootstrap and the rendered listeners/clusters through Envoy."""
    examples = Path(__file__).resolve().parents[3] / "docs" / "examples"
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[3] / "roles/agent/files"),
           "PATH": f"{Path(envoy_binary).parent}:/usr/bin:/bin"}  # fmt: skip
    token = workdir / "token"
    token.write_text("t\n")
    xds = json.loads((examples / "agent-xds.json").read_text())
    pki = make_pki(workdir, "spiffe://cluster.local/ns/shop/sa/web", "istiod.istio-system.svc")
    xds["xds"].update(token_file=str(token), ca_file=pki["ca"], cert_file=pki["client"], key_file=pki["client-key"])
    (workdir / "xds.json").write_text(json.dumps(xds))
    for config, expect in (
        (examples / "agent-standalone.json", "listeners and clusters: ok"),
        (workdir / "xds.json", "bootstrap: ok"),
    ):
        res = subprocess.run(
            [sys.executable, "-S", "-m", "hostmesh_agent", "validate", "--config", str(config)],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert expect in res.stdout
    broken = json.loads((examples / "agent-standalone.json").read_text())
    broken["envoy"]["concurrency"] = "two"
    (workdir / "broken.json").write_text(json.dumps(broken))
    res = subprocess.run(
        [sys.executable, "-S", "-m", "hostmesh_agent", "validate", "--config", str(workdir / "broken.json")],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 78
    assert "config key 'envoy.concurrency': got \"two\"; expected an integer from 0 to 256" in res.stderr
