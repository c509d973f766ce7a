"""The ``hostmesh-agent`` command line: run, bootstrap, validate, admin."""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional

from hostmesh_agent import __version__
from hostmesh_agent.admin import EnvoyAdmin
from hostmesh_agent.admin_command import READS, AdminCommandError, run_admin
from hostmesh_agent.agent import EXIT_START_FAILED, Agent
from hostmesh_agent.atomic_files import dump_json, write_atomic
from hostmesh_agent.clock import SystemClock
from hostmesh_agent.config import Config, ConfigError, load_config, with_node_defaults
from hostmesh_agent.envoy_stdout import EnvoyStdout
from hostmesh_agent.logs import setup_logging
from hostmesh_agent.mesh_dns import MeshDns
from hostmesh_agent.mesh_metrics import certificate_expiry, rbac_metrics
from hostmesh_agent.proxy import EnvoyProxy, ProxyError
from hostmesh_agent.resources import render_dynamic
from hostmesh_agent.rundir import RunDir
from hostmesh_agent.sdnotify import Notifier
from hostmesh_agent.signal_inbox import SignalInbox
from hostmesh_agent.status_server import StatusServer
from hostmesh_agent.telemetry import Telemetry

log = logging.getLogger("hostmesh_agent")

EXIT_CONFIG = 78  # EX_CONFIG: systemd's RestartPreventExitStatus= can name it


def detect_ip() -> str:
    """The address the host would use to reach the world; loopback if it has none.

    A UDP ``connect`` only asks the kernel for a route; no packet is sent.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed to anyone
            return sock.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def node_ip(cfg: Config) -> str:
    return detect_ip() if cfg.node.ip == "auto" else cfg.node.ip


def proxy_factory(
    detected_ip: str, stdout: Optional[EnvoyStdout] = None, dns: Optional[MeshDns] = None
) -> Callable[[Config], EnvoyProxy]:
    """The Proxy of a reloaded config: ``node.ip`` "auto" keeps the address found at start;
    ``stdout`` reads every Envoy's access-log lines and takes each config on, and so does
    the DNS server (its zone changes in place: no Envoy restart)."""

    def make(cfg: Config) -> EnvoyProxy:
        if dns is not None:
            dns.configure(cfg)
        if stdout is None:
            return EnvoyProxy(cfg, detected_ip if cfg.node.ip == "auto" else cfg.node.ip)
        stdout.configure(cfg)
        return EnvoyProxy(cfg, detected_ip if cfg.node.ip == "auto" else cfg.node.ip, stdout.attach)

    return make


def admin_for(cfg: Config) -> EnvoyAdmin:
    return EnvoyAdmin(RunDir(cfg.run_dir).admin_socket)


def mesh_metrics(telemetry: Telemetry, stdout: EnvoyStdout, dns: Optional[MeshDns] = None) -> Callable[[Config], str]:
    """What the merged metrics add after the agent's own: service telemetry, the access-log
    pipeline's counts, the DNS server's counters, policy counters, the certificate's expiry."""

    def render(cfg: Config) -> str:
        parts = [telemetry.render() if cfg.telemetry.enabled else "", stdout.render_metrics()]
        parts.append(dns.render_metrics() if dns is not None else "")
        return "".join([*parts, rbac_metrics(cfg, admin_for(cfg)), certificate_expiry(cfg)])

    return render


CAP_NET_ADMIN = 12


def has_capability(cap: int, status_path: str = "/proc/self/status") -> Optional[bool]:
    """Whether this process holds capability ``cap`` (effective set); None if unknown."""
    try:
        with open(status_path, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> cap & 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _warn_tproxy_without_capability(cfg: Config) -> None:
    """Envoy's transparent listener needs CAP_NET_ADMIN; without it Envoy rejects the
    listener and never becomes ready. Only a warning: Envoy may get it another way
    (file capabilities on its binary)."""
    if cfg.inbound.tproxy and has_capability(CAP_NET_ADMIN) is False:
        log.warning(
            'inbound.interception is "tproxy" but the agent has no CAP_NET_ADMIN to pass on: Envoy will '
            "refuse its transparent inbound listener unless its binary has the capability "
            "(the unit needs AmbientCapabilities=CAP_NET_ADMIN)"
        )


def _load(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config, args.run_dir)
    return with_node_defaults(cfg, socket.gethostname())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hostmesh-agent",
        description="Write Envoy's bootstrap, run and supervise Envoy as a mesh sidecar.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "run and supervise Envoy until SIGTERM"),
        ("bootstrap", "print the Envoy bootstrap the agent would use"),
        ("validate", "check the config and, when Envoy is present, the bootstrap"),
    ):
        sp = sub.add_parser(name, help=text, description=text)
        sp.add_argument("--config", required=True, help="agent config file (JSON)")
        sp.add_argument("--run-dir", help="overrides the config's run_dir")
        sp.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    text = "read Envoy's admin API through its socket (as root or the proxy user)"
    sp = sub.add_parser("admin", help=text, description=text)
    sp.add_argument("what", choices=sorted(READS), help="what to read")
    sp.add_argument("--config", help="agent config file (JSON), for its run_dir")
    sp.add_argument("--run-dir", help=f"the agent's run directory (default: the config's, else {Config().run_dir})")
    sp.add_argument("--filter", help="with stats: only the stats whose names match this regular expression")
    sp.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    return p


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args)
    telemetry = Telemetry(cfg)
    stdout = EnvoyStdout(cfg, telemetry, sys.stdout.buffer, time.monotonic)
    dns = MeshDns()
    try:
        dns.configure(cfg, strict=True)  # before Envoy: capture may send the host's queries here
    except OSError as exc:
        log.error("%s (config keys 'dns.address', 'ports.dns')", exc)
        return EXIT_START_FAILED
    new_proxy = proxy_factory(node_ip(cfg), stdout, dns)
    agent = Agent(
        cfg,
        new_proxy(cfg),
        new_proxy=new_proxy,
        load_config=lambda: _load(args),
        admin=admin_for,
        notifier=Notifier(os.environ),
        clock=SystemClock(),
        signals=SignalInbox(),
        status_server=StatusServer,
        extra_metrics=mesh_metrics(telemetry, stdout, dns),
    )
    log.info(
        "hostmesh-agent %s starting: mode %s, %s interception, run dir %s",
        __version__,
        cfg.mode,
        cfg.inbound.interception,
        cfg.run_dir,
    )
    _warn_tproxy_without_capability(cfg)
    stdout.start()
    try:
        return agent.run()
    finally:
        stdout.stop()
        dns.stop()


def cmd_bootstrap(args: argparse.Namespace) -> int:
    cfg = _load(args)
    proxy = EnvoyProxy(cfg, node_ip(cfg))
    json.dump(proxy.bootstrap(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Config errors exit 78; with Envoy on PATH, the bootstrap must pass ``--mode validate``."""
    cfg = _load(args)
    print(f"config {args.config}: ok (mode {cfg.mode})")
    if not shutil.which(cfg.envoy.binary):
        print(f"envoy binary {cfg.envoy.binary!r} not found; bootstrap not checked by Envoy")
        return 0
    with tempfile.TemporaryDirectory(prefix="hostmesh-validate-") as tmp:
        proxy = EnvoyProxy(replace(cfg, run_dir=tmp), node_ip(cfg))
        proxy.prepare_run_dir()
        proxy.write_dynamic()
        docs = [("bootstrap", proxy.bootstrap())]
        if cfg.mode == "standalone":
            dynamic = render_dynamic(proxy.cfg, proxy.run_dir, "validate")
            docs.append(("listeners and clusters", inline_dynamic(docs[0][1], dynamic, proxy.run_dir)))
        for what, doc in docs:
            path = os.path.join(tmp, "validate.json")
            write_atomic(path, dump_json(doc), mode=0o600)
            result = subprocess.run(
                [proxy.binary(), "--mode", "validate", "-c", path, "-l", "error"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                sys.stderr.write(result.stdout + result.stderr)
                print(f"{what}: rejected by envoy --mode validate", file=sys.stderr)
                return 1
            print(f"{what}: ok (envoy --mode validate)")
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    """Print what Envoy's admin API answers; exit 1 unless it answers 200 (``ready``: not ready)."""
    if args.run_dir:
        run_dir = args.run_dir
    elif args.config:
        run_dir = load_config(args.config).run_dir
    else:
        run_dir = Config().run_dir
    try:
        status, body = run_admin(RunDir(run_dir).admin_socket, args.what, args.filter, os.geteuid())
    except AdminCommandError as exc:
        print(f"hostmesh-agent admin: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(body)
    sys.stdout.flush()
    return 0 if status == 200 else 1


def inline_dynamic(bootstrap: Dict[str, Any], dynamic: Dict[str, Any], run_dir: RunDir) -> Dict[str, Any]:
    """A copy of the bootstrap with the watched LDS/CDS files' resources made static.

    ``envoy --mode validate`` does not read dynamic resources, so this is how
    the listeners and clusters the agent writes get checked by Envoy itself.
    """
    doc = copy.deepcopy(bootstrap)
    strip = [{k: v for k, v in r.items() if k != "@type"} for r in dynamic[run_dir.lds]["resources"]]
    doc["static_resources"]["listeners"] += strip
    strip = [{k: v for k, v in r.items() if k != "@type"} for r in dynamic[run_dir.cds]["resources"]]
    doc["static_resources"]["clusters"] += strip
    del doc["dynamic_resources"]
    return doc


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.log_level, os.environ)
    commands = {"run": cmd_run, "bootstrap": cmd_bootstrap, "validate": cmd_validate, "admin": cmd_admin}
    try:
        return commands[args.command](args)
    except ConfigError as exc:
        print(f"hostmesh-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ProxyError as exc:
        print(f"hostmesh-agent: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `hostmesh-agent bootstrap ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
