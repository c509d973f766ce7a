"""Record, from Istio's own rules, the fate of every grid packet in every Istio capture case.

Istio's ``tools/istio-iptables`` tests each case of ``run_test.go`` against a golden
listing of the rules it writes (``testdata/<case>.golden``). This script reads those
listings from an istio/istio checkout, runs our evaluator (``tests/tools/packet_fate``)
over each case's packets (``tests/unit/capture/istio_cases``), and writes the fates
into the case's file, under its "recorded" line, with the Istio commit they came
from. Istio's text itself is never stored here: only the fates.

Usage, from the collection's root::

    git clone https://github.com/istio/istio /tmp/istio     # or a bare mirror
    .venv/bin/python tools/istio_fate_record.py /tmp/istio [--rev REV] [--check]

``--rev`` picks the commit (bare repositories and checkouts alike; default: the
work tree of a checkout, HEAD of a bare repository). ``--check`` writes nothing
and exits 1 when a recorded fate differs from what Istio's rules give now. It
also fails when run_test.go and our case files do not list the same cases, and
reports each Istio rule no grid packet reaches (a gap in the grid).
"""

import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "tools"))

from packet_fate import decide, parse_rules  # noqa: E402
from packet_fate.cases import load_cases, load_host, write_recorded_fates  # noqa: E402
from packet_fate.netfilter import rule_at, rule_keys  # noqa: E402

CAPTURE = "tools/istio-iptables/pkg/capture"
# Lines of a golden listing that are commands the test ran, not rules.
COMMAND_LINES = ("iptables-save", "ip6tables-save")


class IstioSource:
    """Files of an istio/istio checkout or bare repository, at one commit."""

    def __init__(self, path, rev=None):
        self.path = path
        self.rev = rev
        self.bare = not os.path.isdir(os.path.join(path, CAPTURE))
        if self.bare and rev is None:
            self.rev = "HEAD"

    def read(self, relative):
        if self.rev is None:
            with open(os.path.join(self.path, relative)) as handle:
                return handle.read()
        return self._git("show", "%s:%s" % (self.rev, relative))

    def commit(self):
        try:
            return self._git("rev-parse", self.rev or "HEAD").strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown (not a git checkout)"

    def _git(self, *args):
        """The one external command this script runs."""
        where = ["--git-dir", self.path] if self.bare else ["-C", self.path]
        return subprocess.run(["git", *where, *args], check=True, capture_output=True, text=True).stdout


def case_names(run_test_go):
    """The names of getCommonTestCases' cases, in order."""
    body = run_test_go.split("func getCommonTestCases", 1)[1].split("\nfunc ", 1)[0]
    return re.findall(r'^\t\t\t"([A-Za-z0-9_.-]+)",$', body, flags=re.MULTILINE)


def split_families(golden, families):
    """The restore input of each family, from a golden listing (IPv4's first, then IPv6's).

    Istio's builder writes each family's tables in name order, so a table name that
    does not sort after the previous one starts the next family's input."""
    blocks, current, last = [], [], None
    for raw in golden.splitlines():
        line = raw.strip()
        if not line or line in COMMAND_LINES:
            continue
        if line.startswith("*"):
            table = line[1:].strip()
            if last is not None and table <= last:
                blocks.append(current)
                current = []
            last = table
        elif not line.startswith(("-", ":", "COMMIT")):
            raise ValueError("unexpected line in a golden listing: %r" % line)
        current.append(line)
    if current:
        blocks.append(current)
    if len(blocks) != len(families):
        raise ValueError("the listing holds %d families' rules, the case has %s" % (len(blocks), ", ".join(families)))
    return {family: "\n".join(lines) for family, lines in zip(families, blocks)}


def record(source, check=False, out=sys.stdout):
    host = load_host()
    cases = {case.name: case for case in load_cases()}
    istio = case_names(source.read(CAPTURE + "/run_test.go"))
    problems = []
    missing, extra = sorted(set(istio) - set(cases)), sorted(set(cases) - set(istio))
    if missing or extra:
        problems.append(
            "cases in run_test.go without a case file: %s; case files Istio has no case for: %s" % (missing, extra)
        )
    commit = source.commit()
    for name in istio:
        if name not in cases:
            continue
        case = cases[name]
        texts = split_families(source.read("%s/testdata/%s.golden" % (CAPTURE, name)), case.families)
        rulesets = {family: parse_rules(text) for family, text in texts.items()}
        case_host = host.with_policy_routes(case.istio_policy_routes)
        fates, hits = {}, set()
        for packet in case.packets:
            decision = decide(rulesets, case_host, packet)
            fates[packet.text] = str(decision.fate)
            hits |= {(packet.family, key) for key in decision.hits}
        unhit = [
            (family, key) for family, rules in rulesets.items() for key in rule_keys(rules) if (family, key) not in hits
        ]
        for family, key in unhit:
            rule = rule_at(rulesets[family], key)
            print("%s: no packet reaches %s %s %s #%d: %s" % (name, family, *key[:2], key[2] + 1, rule.text), file=out)
        if check:
            if case.istio_fates != fates or case.istio_source != commit:
                changed = sorted(t for t in fates if (case.istio_fates or {}).get(t) != fates[t])
                problems.append(
                    "%s: recorded fates differ from Istio %s for %d packet(s): %s"
                    % (name, commit, len(changed), changed[:5])
                )
        elif write_recorded_fates(case, fates, commit):
            print("%s: recorded %d fates" % (name, len(fates)), file=out)
    for problem in problems:
        print("problem: " + problem, file=out)
    return 1 if problems else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("istio", help="path of an istio/istio checkout or bare repository")
    parser.add_argument("--rev", help="the commit to read (default: the work tree, or HEAD when bare)")
    parser.add_argument("--check", action="store_true", help="compare with what is recorded; write nothing")
    args = parser.parse_args(argv)
    return record(IstioSource(args.istio, args.rev), check=args.check)


if __name__ == "__main__":
    sys.exit(main())
