# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""hostmesh-capture-heal: put traffic capture back when something else removed it.

Run as root by hostmesh-capture-heal.service, which runs only while
hostmesh-capture.service is active (so never after a deliberate stop of the
sidecar, nor once capture is lifted). What capture should be is the rules file
traffic_capture wrote: its restore blocks are the expected state, and its
``apply`` is the repair, the same commands the module applied them with.

Like kube-proxy's periodic sync and canary chains: a check reads our part of
the live ruleset and compares it with the file; nothing is written unless it
differs. Checks run when ``nft monitor`` reports a ruleset change (nf_tables
backends), every ``--poll`` seconds where no events can be had
(iptables-legacy), and every ``--interval`` seconds anyway.

    capture_heal.py --rules-file FILE [--fail-mode closed|open] [--ready-url URL]
                    [--interval S] [--poll S] [--counter FILE] [--once]

Standard library only (Python 3.9+): hosts are often air-gapped.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Dict, List, NamedTuple, Optional, Tuple

_HEREDOC = re.compile(r"^\s*(\S+) (.*)<<'(\w+)'")
# Settle time after a ruleset event: a flush or restore arrives as a burst.
_SETTLE_S = 0.2
_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


# --- what capture should be: the rules file, parsed (pure) -----------------------------


class IptablesPart(NamedTuple):
    """One restore block of the rules file: a tool (iptables-nft-restore, ...) and our lines per table."""

    restore: str
    tables: Dict[str, List[str]]  # table -> our lines as `<save> -t TABLE` prints them, in order


class NftPart(NamedTuple):
    name: str  # our inet table
    listing: str  # as `nft -n -y list table inet NAME` prints it


class Expected(NamedTuple):
    iptables: Tuple[IptablesPart, ...]
    nft: Optional[NftPart]

    @property
    def events(self) -> bool:
        """Whether every part lives in nf_tables, so ``nft monitor`` sees each change."""
        return all("legacy" not in p.restore for p in self.iptables)


def parse_rules_file(text: str) -> Expected:
    """The restore blocks of a rules file traffic_capture wrote, as the live ruleset should read."""
    parts: List[IptablesPart] = []
    nft: Optional[NftPart] = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _HEREDOC.match(lines[i])
        i += 1
        if not m:
            continue
        tool, marker = m.group(1), m.group(3)
        block = []
        while i < len(lines) and lines[i] != marker:
            block.append(lines[i])
            i += 1
        i += 1
        if tool == "nft":
            listing = "\n".join(block)
            name = listing.split("{", 1)[0].split()[-1]
            nft = NftPart(name, listing)
        else:
            parts.append(IptablesPart(os.path.basename(tool), _restore_to_save(block)))
    return Expected(tuple(parts), nft)


def _restore_to_save(block: List[str]) -> Dict[str, List[str]]:
    """Our lines of a restore block in the form and order iptables-save prints them."""
    tables: Dict[str, List[str]] = {}
    for line in block:
        if line.startswith("*"):
            table = line[1:]
            chains: List[str] = []
            rules: List[str] = []
            jumps: List[str] = []
            tables[table] = []
        elif line.startswith(":"):
            chains.append(":%s" % line[1:].split()[0])
        elif line.startswith("-A "):
            rules.append(line)
        elif line.startswith("-I "):
            _verb, chain, _position, rest = line.split(" ", 3)
            jumps.append("-A %s %s" % (chain, rest))
        elif line == "COMMIT":
            tables[table] = _normal(chains, jumps, rules)
    return tables


def _normal(chains: List[str], jumps: List[str], rules: List[str]) -> List[str]:
    """One order for both sides: chains and jumps sorted, each chain's rules in their order."""
    by_chain: Dict[str, List[str]] = {}
    for rule in rules:
        by_chain.setdefault(rule.split()[1], []).append(rule)
    return sorted(chains) + sorted(jumps) + [r for chain in sorted(by_chain) for r in by_chain[chain]]


def ours_in_save(save: str, chains: List[str]) -> List[str]:
    """Our lines of one table's iptables-save text: our chains, their rules, the jumps into them."""
    names = {c[1:] for c in chains}
    declared, jumps, rules = [], [], []
    for line in save.splitlines():
        if line.startswith(":") and line[1:].split()[0] in names:
            declared.append(":%s" % line[1:].split()[0])
        elif line.startswith("-A "):
            words = line.split()
            if words[1] in names:
                rules.append(line)
            elif "-j" in words and words[words.index("-j") + 1] in names:
                jumps.append(line)
    return _normal(declared, jumps, rules)


def drift(expected: Expected, read) -> List[str]:
    """What differs between the live ruleset and the rules file, one line each; [] when in place.

    ``read(kind, *args)`` returns live text: ("save", tool, table) or ("nft", table name).
    """
    found = []
    for part in expected.iptables:
        save_tool = part.restore.replace("-restore", "-save")
        for table, want in sorted(part.tables.items()):
            chains = [line for line in want if line.startswith(":")]
            have = ours_in_save(read("save", save_tool, table), chains)
            if have != want:
                missing = [line for line in want if line not in have]
                extra = [line for line in have if line not in want]
                found.append(
                    "%s %s: %d of our %d lines missing%s%s"
                    % (
                        save_tool,
                        table,
                        len(missing),
                        len(want),
                        " (first: %s)" % missing[0] if missing else "",
                        ", %d not ours to keep (first: %s)" % (len(extra), extra[0]) if extra else "",
                    )
                )
    if expected.nft is not None:
        have = read("nft", expected.nft.name)
        if have.rstrip() != expected.nft.listing.rstrip():
            found.append("nft table inet %s: %s" % (expected.nft.name, "missing" if not have.strip() else "differs"))
    return found


# --- every command the reconciler runs -------------------------------------------------


class Host:
    """The host edge: the commands, the readiness probe and the repair counter."""

    def __init__(self, rules_file: str, ready_url: str, counter: str) -> None:
        self.rules_file = rules_file
        self.ready_url = ready_url
        self.counter = counter

    @staticmethod
    def _run(argv: List[str]) -> Tuple[int, str, str]:
        proc = subprocess.run(argv, capture_output=True, text=True, env=_ENV, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    def read(self, kind: str, *args: str) -> str:
        if kind == "save":
            tool, table = args
            rc, out, _err = self._run([tool, "-t", table])
            # A table never made (nothing in it) prints nothing or fails alike: none of ours.
            return out if rc == 0 else ""
        rc, out, _err = self._run(["nft", "-n", "-y", "list", "table", "inet", args[0]])
        return out if rc == 0 else ""

    def repair(self) -> Tuple[int, str]:
        """Restore capture as the module applied it: the rules file's own `apply`."""
        rc, out, err = self._run(["/bin/sh", self.rules_file, "apply"])
        return rc, (out + err).strip()

    def monitor(self) -> Optional[subprocess.Popen]:
        """`nft monitor`, whose lines are ruleset changes; None without nft."""
        try:
            return subprocess.Popen(
                ["nft", "monitor"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_ENV, bufsize=0
            )
        except OSError:
            return None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.ready_url, timeout=2) as reply:
                return reply.status == 200
        except Exception:
            return False

    def count_repair(self, add: int = 1) -> int:
        """Add to the counter file the agent serves as hostmesh_capture_repairs_total (0: make it)."""
        try:
            with open(self.counter, encoding="ascii") as fh:
                total = int(fh.read().strip() or 0) + add
        except (OSError, ValueError):
            total = add
        if add == 0 and os.path.exists(self.counter):
            return total
        part = self.counter + ".part"
        with open(part, "w", encoding="ascii") as fh:
            fh.write("%d\n" % total)
        os.chmod(part, 0o644)
        os.replace(part, self.counter)
        return total


# --- the loop --------------------------------------------------------------------------


class Reconciler:
    def __init__(self, host: Host, fail_mode: str, log=print) -> None:
        self.host = host
        self.fail_mode = fail_mode
        self.log = log
        self.stamp: Tuple[int, int] = (0, 0)
        self.holding = False  # a drift left alone while the sidecar is not ready (fail_mode open)
        self.expected = self.load()

    def load(self) -> Expected:
        """The rules file as it is now; read again only when it changed (a playbook run rewrote it)."""
        st = os.stat(self.host.rules_file)
        if (st.st_mtime_ns, st.st_size) != self.stamp:
            with open(self.host.rules_file, encoding="utf-8") as fh:
                self.expected = parse_rules_file(fh.read())
            self.stamp = (st.st_mtime_ns, st.st_size)
        return self.expected

    def check(self) -> str:
        """One check, and a repair when needed: "in place", "repaired", "held" or "failed"."""
        try:
            self.load()
        except OSError as error:
            self.log("cannot read the rules file %s: %s" % (self.host.rules_file, error))
            return "failed"
        found = drift(self.expected, self.host.read)
        if not found:
            return "in place"
        if self.fail_mode == "open" and not self.host.ready():
            if not self.holding:  # said once per wait, not at every poll
                self.log(
                    "capture drifted but the sidecar is not ready: left off (fail_mode open): %s" % "; ".join(found)
                )
            self.holding = True
            return "held"
        self.holding = False
        started = time.monotonic()
        rc, output = self.host.repair()
        took = (time.monotonic() - started) * 1000
        if rc != 0:
            self.log("capture drifted and the repair failed (rc %d): %s; %s" % (rc, "; ".join(found), output))
            return "failed"
        total = self.host.count_repair()
        self.log("capture repaired in %.0f ms (repair %d): %s" % (took, total, "; ".join(found)))
        return "repaired"

    def run(self, interval: float, poll: float) -> None:
        monitor = self.host.monitor() if self.expected.events else None
        wait = interval if monitor else poll
        self.log(
            "watching capture from %s: %s, a full check every %gs"
            % (self.host.rules_file, "nft monitor events" if monitor else "polling", wait)
        )
        self.host.count_repair(0)  # the counter reads 0 from the start
        outcome = self.check()
        while True:
            # Drifted but held back or failed: look again soon.
            timeout = min(wait, poll) if outcome in ("held", "failed") else wait
            if monitor is None:
                time.sleep(timeout)
            elif _wait_for_event(monitor, timeout) is None:
                self.log("nft monitor ended; polling instead")
                monitor, wait = None, poll
            outcome = self.check()


def _wait_for_event(monitor: subprocess.Popen, timeout: float) -> Optional[bool]:
    """True after a burst of events has settled, False on timeout, None if the monitor ended."""
    fd = monitor.stdout.fileno()
    readable, _writable, _failed = select.select([fd], [], [], timeout)
    if not readable:
        return False
    while readable:
        if not os.read(fd, 65536):
            return None
        readable, _writable, _failed = select.select([fd], [], [], _SETTLE_S)
    return True


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="hostmesh-capture-heal", description=__doc__.split("\n\n", maxsplit=1)[0])
    p.add_argument("--rules-file", required=True)
    p.add_argument("--fail-mode", choices=("closed", "open"), default="closed")
    p.add_argument("--ready-url", default="http://127.0.0.1:15020/healthz/ready")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between checks with no event")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between checks where no events can be had")
    p.add_argument("--counter", default="/run/hostmesh-capture-heal/repairs")
    p.add_argument("--once", action="store_true", help="check (and repair) once, then exit")
    args = p.parse_args(argv)
    for name in ("interval", "poll"):
        if getattr(args, name) <= 0:
            p.error("--%s: got %s; expected a number of seconds above 0" % (name, getattr(args, name)))

    def log(text: str) -> None:
        print(text, flush=True)

    try:
        reconciler = Reconciler(Host(args.rules_file, args.ready_url, args.counter), args.fail_mode, log)
    except OSError as error:
        log("cannot read the rules file %s: %s" % (args.rules_file, error))
        return 1
    if args.once:
        return 0 if reconciler.check() in ("in place", "repaired", "held") else 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    reconciler.run(args.interval, args.poll)
    return 0


if __name__ == "__main__":
    sys.exit(main())
