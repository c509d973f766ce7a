"""After the side effect (upgrade.yml): the failed batch left each host as promised.

host1 (batch 1) runs Envoy 1.39.3; host2 (batch 2, whose new Envoy could not
start) still serves on 1.40.0 although its installed binary is the broken
one; host3 (batch 3) was not touched. Every sidecar is ready and the mesh
still carries host1's calls to host2.
"""

from __future__ import annotations

import json

import pytest
from sandbox_hosts import address_of

READY = "curl -sf --max-time 2 http://127.0.0.1:15021/healthz/ready"


def running_version(host) -> str:
    info = json.loads(host.check_output("/usr/local/bin/hostmesh-agent admin server_info"))
    return info["version"].split("/")[1]


@pytest.mark.parametrize("name", ["host1", "host2", "host3"])
def test_every_sidecar_is_ready(name, request):
    host = request.getfixturevalue(name)
    assert host.run(READY).rc == 0


def test_the_first_batch_runs_the_new_version(host1):
    assert running_version(host1) == "1.39.3"
    assert "/1.39.3/" in host1.check_output("/usr/local/bin/envoy --version")


def test_the_failed_host_keeps_serving_on_its_old_envoy(host1, host2):
    assert running_version(host2) == "1.40.0"
    assert "cannot start" in host2.check_output("cat /usr/local/bin/envoy")
    page = host1.check_output(f"curl -sf --max-time 5 http://{address_of(host2)}:8080/")
    assert "echo from host2" in page


def test_the_later_batch_was_not_touched(host3):
    assert running_version(host3) == "1.40.0"
    assert "/1.40.0/" in host3.check_output("/usr/local/bin/envoy --version")
