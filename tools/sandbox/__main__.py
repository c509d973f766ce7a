"""Command line: ``python3 -m tools.sandbox COMMAND`` from the repository root.

rootfs [--suite S] [--profile P]   build (or reuse) a cached Debian rootfs
create [--hosts a,b:trixie,c+resolved | -n N] [--suite S] [--profile P]
                             boot fresh hosts, write inventory and ssh config
status                       hosts, addresses, running or not (--json)
reboot HOST                  power off and boot the same rootfs again
stop HOST / start HOST       power one host off (as a VM whose host died) / boot it again
shell HOST [CMD...]          SSH in (interactive without CMD)
diagnose [HOST...]           journal of our units, rulesets, logs
destroy [--all]              remove every trace of the sandbox
run -- CMD...                create, run CMD with SANDBOX_* set, always destroy
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import subprocess
import sys
import time

from tools.sandbox import commands, rootfs, suites
from tools.sandbox.sandbox import DEFAULT_BASE, Sandbox, SandboxError, access_info, all_sandboxes

# Commands that do one thing to one host, and the Sandbox method that does it.
_HOST_ACTIONS = {"reboot": Sandbox.reboot, "stop": Sandbox.stop_host, "start": Sandbox.start_host}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _host_specs(args: argparse.Namespace) -> list[str]:
    """Host specs as given (NAME[:SUITE][+PROFILE...]), or host1..N."""
    if args.hosts:
        return [h for h in args.hosts.split(",") if h]
    return [f"host{i + 1}" for i in range(args.count)]


def _add_suite_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--suite",
        default=suites.DEFAULT_SUITE,
        choices=list(suites.SUITES),
        help=f"Debian suite of hosts that name none (default {suites.DEFAULT_SUITE})",
    )
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        choices=list(suites.PROFILES),
        help="profile of hosts that name none (repeatable): "
        + "; ".join(f"{p.name}: {p.description}" for p in suites.PROFILES.values()),
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m tools.sandbox",
        description="Real systemd hosts (systemd-nspawn) for tests, molecule and the demo.",
    )
    p.add_argument("--name", default=os.environ.get("SANDBOX_NAME", "default"))
    p.add_argument("--base-dir", default=str(DEFAULT_BASE), help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)
    _add_suite_options(sub.add_parser("rootfs", help="build or reuse a cached rootfs"))
    for name in ("create", "run"):
        c = sub.add_parser(name)
        c.add_argument("--hosts", help="comma-separated hosts: NAME[:SUITE][+PROFILE...], e.g. web,db:trixie")
        c.add_argument("-n", "--count", type=int, default=2, help="number of hosts (host1..N)")
        _add_suite_options(c)
        c.add_argument(
            "--tolerate-failed",
            action="append",
            default=[],
            metavar="UNIT",
            help="a unit that may fail at boot without failing the create (repeatable)",
        )
        c.add_argument(
            "--default-route",
            action="store_true",
            help="give every host an on-link IPv4 default route, as a VM has (resolvers and VIPs routed)",
        )
        c.add_argument("--json", action="store_true", help="print access details as JSON")
        if name == "run":
            c.add_argument("cmd", nargs=argparse.REMAINDER)
    st = sub.add_parser("status")
    st.add_argument("--json", action="store_true")
    for name in _HOST_ACTIONS:
        sub.add_parser(name).add_argument("host")
    sh = sub.add_parser("shell")
    sh.add_argument("host")
    sh.add_argument("cmd", nargs=argparse.REMAINDER)
    d = sub.add_parser("diagnose")
    d.add_argument("host", nargs="*")
    d.add_argument("--unit", action="append", default=[], help="extra unit to show")
    x = sub.add_parser("destroy")
    x.add_argument("--all", action="store_true", help="every sandbox of this checkout, also ones other runs are using")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if os.geteuid() != 0 and args.command != "status":
        _log("the sandbox needs root (network namespaces, systemd-nspawn)")
        return 2
    sb = Sandbox(args.name, base_dir=args.base_dir, log=_log)
    try:
        return _dispatch(args, sb)
    except (SandboxError, commands.CommandError, RuntimeError) as exc:
        _log(f"sandbox {args.command} failed: {exc}")
        return 1


def _dispatch(args: argparse.Namespace, sb: Sandbox) -> int:
    if args.command == "rootfs":
        started = time.monotonic()
        tree = rootfs.ensure_rootfs(sb.base_dir / "rootfs", args.suite, args.profile, log=_log)
        _log(f"rootfs ready in {time.monotonic() - started:.1f}s: {tree}")
        return 0
    if args.command == "create":
        timings = sb.create(_host_specs(args), **_create_options(args))
        if args.json:
            print(json.dumps({**access_info(sb), "timings": timings}, indent=2))
        return 0
    if args.command == "run":
        return _run(args, sb)
    if args.command == "status":
        info = sb.status()
        if args.json:
            print(json.dumps(info, indent=2))
        elif not info.get("created"):
            print(f"sandbox {sb.name}: not created")
        else:
            print(f"sandbox {sb.name} on {info['subnet']}; inventory {info['inventory']}")
            for host, h in info["hosts"].items():
                state = f"running (pid {h['leader_pid']})" if h["running"] else "stopped"
                kind = h["suite"] + "".join(f"+{p}" for p in h["profiles"])
                print(f"  {host:12} {h['address']:15} {kind:18} {state}, boots: {h['boots']}")
        return 0
    if args.command in _HOST_ACTIONS:
        _HOST_ACTIONS[args.command](sb, args.host)
        return 0
    if args.command == "shell":
        sb.leader(args.host)
        argv = commands.ssh(sb.ssh_config, args.host, args.cmd, tty=not args.cmd)
        os.execvp(argv[0], argv)
    if args.command == "diagnose":
        for host in args.host or list(sb.hosts()):
            print(sb.diagnose(host, units=args.unit))
        return 0
    if args.command == "destroy":
        names = all_sandboxes(sb.base_dir) if args.all else [sb.name]
        for name in names:
            Sandbox(name, base_dir=sb.base_dir, log=_log).destroy()
        if args.all:
            # Leases of runs that crashed and whose files are gone, too.
            sb.budget.release()
        return 0
    raise SandboxError(f"unknown command {args.command!r}")


def _create_options(args: argparse.Namespace) -> dict:
    return {
        "suite": args.suite,
        "profiles": args.profile,
        "tolerate_failed": args.tolerate_failed,
        "default_route": args.default_route,
    }


def _run(args: argparse.Namespace, sb: Sandbox) -> int:
    """Create, run one command against the hosts, destroy whatever happens."""
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise SandboxError("run needs a command after --")
    if sb.state():
        # create would destroy the hosts of that sandbox first (molecule's, say).
        raise SandboxError(
            f"sandbox {sb.name} exists, and run creates and destroys hosts of its own: "
            "use 'shell HOST CMD' on its hosts, another --name, or 'destroy' first"
        )
    atexit.register(sb.destroy)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sb.create(_host_specs(args), **_create_options(args))
    env = dict(
        os.environ,
        SANDBOX_NAME=sb.name,
        SANDBOX_INVENTORY=str(sb.inventory),
        SANDBOX_SSH_CONFIG=str(sb.ssh_config),
    )
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        for host in sb.hosts():
            print(sb.diagnose(host), file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
