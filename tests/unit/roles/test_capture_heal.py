"""The capture reconciler's pure part and its decisions, through a fake host edge.

The rules file and the save listing in golden/ were written by the real
traffic_capture and iptables-nft-save in a network namespace; the other cases
render their rules file with the module's own code.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(ROOT / "tests" / "unit" / "capture"))

from helpers import options  # noqa: E402

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.iptables import (  # noqa: E402
    desired_tables,
    render_full,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.nft_render import render_table  # noqa: E402
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.rules import build_family  # noqa: E402
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.script import render_script  # noqa: E402


def _load():
    path = ROOT / "roles" / "capture" / "files" / "capture_heal.py"
    spec = importlib.util.spec_from_file_location("capture_heal", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


heal = _load()
RULES = (GOLDEN / "capture_heal.rules").read_text()
SAVE = (GOLDEN / "capture_heal_nat_save.txt").read_text()
DOCKER = (
    ":DOCKER - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n"
    "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n"
)


def with_foreign(save: str) -> str:
    """The save with Docker's nat rules in it, as a host running containers has."""
    return save.replace(":HOSTMESH_INBOUND", DOCKER.splitlines()[0] + "\n:HOSTMESH_INBOUND", 1).replace(
        "COMMIT", "\n".join(DOCKER.splitlines()[1:]) + "\nCOMMIT", 1
    )


def reader(saves: dict, nft: str = ""):
    def read(kind, *args):
        if kind == "save":
            return saves.get(args, "")
        return nft

    return read


def test_the_rules_file_gives_our_lines_as_iptables_save_prints_them() -> None:
    expected = heal.parse_rules_file(RULES)
    assert expected.events and expected.nft is None
    (part,) = expected.iptables
    assert part.restore == "iptables-nft-restore"
    assert list(part.tables) == ["nat"]
    assert part.tables["nat"] == heal.ours_in_save(SAVE, [line for line in part.tables["nat"] if line[0] == ":"])
    assert "-A PREROUTING -p tcp -j HOSTMESH_INBOUND" in part.tables["nat"]
    assert len(part.tables["nat"]) == 24


def test_capture_in_place_is_no_drift_whatever_else_the_table_holds() -> None:
    expected = heal.parse_rules_file(RULES)
    assert heal.drift(expected, reader({("iptables-nft-save", "nat"): SAVE})) == []
    assert heal.drift(expected, reader({("iptables-nft-save", "nat"): with_foreign(SAVE)})) == []


@pytest.mark.parametrize(
    ("what", "save", "missing"),
    [
        ("a flushed table (iptables -t nat -F)", "\n".join(x for x in SAVE.splitlines() if not x.startswith("-A")), 20),
        ("an old file restored (no capture)", "\n".join(x for x in SAVE.splitlines() if "HOSTMESH_" not in x), 24),
        ("one jump deleted", SAVE.replace("-A OUTPUT -p tcp -j HOSTMESH_OUTPUT\n", ""), 1),
        ("nft flush ruleset (no table at all)", "", 24),
    ],
)
def test_every_removal_is_drift_and_says_what_is_missing(what, save, missing) -> None:
    found = heal.drift(heal.parse_rules_file(RULES), reader({("iptables-nft-save", "nat"): save}))
    assert len(found) == 1, what
    assert found[0].startswith("iptables-nft-save nat: %d of our 24 lines missing" % missing), found


def test_a_rule_of_ours_changed_or_added_is_drift() -> None:
    changed = SAVE.replace("--to-ports 15006", "--to-ports 15007")
    found = heal.drift(heal.parse_rules_file(RULES), reader({("iptables-nft-save", "nat"): changed}))
    assert found and "1 not ours to keep" in found[0] and "15007" in found[0]


def _family_part(family: str, legacy: bool = False, **params):
    desired = desired_tables(build_family(options(**params), family, ["192.0.2.53"] if family == "ipv4" else []))
    tool = "iptables-legacy" if legacy else "iptables-nft"
    prefix = "ip6" if family == "ipv6" else "ip"
    cmd = prefix + tool[len("ip") :]
    return (cmd, cmd + "-restore", desired, render_full(desired))


def test_tproxy_and_both_families_are_read_per_tool_and_table() -> None:
    parts = [_family_part("ipv4", mode="tproxy", dns_redirect=True), _family_part("ipv6", mode="tproxy")]
    script = render_script("/etc/hostmesh/capture.rules", parts, None, [], 30)
    expected = heal.parse_rules_file(script)
    assert [p.restore for p in expected.iptables] == ["iptables-nft-restore", "ip6tables-nft-restore"]
    assert {"mangle", "nat", "raw"} <= set(expected.iptables[0].tables)
    # The host reads as the module applied it: each table's save is its restore text with the jumps appended.
    saves = {}
    for (cmd, _restore, _desired, _text), part in zip(parts, expected.iptables):
        for table, lines in part.tables.items():
            saves[(cmd + "-save", table)] = "*%s\n%s\nCOMMIT\n" % (table, "\n".join(lines))
    assert heal.drift(expected, reader(saves)) == []
    saves[("ip6tables-nft-save", "mangle")] = ""
    found = heal.drift(expected, reader(saves))
    assert len(found) == 1 and found[0].startswith("ip6tables-nft-save mangle:"), found


def test_legacy_iptables_cannot_be_watched_by_events() -> None:
    script = render_script("/r", [_family_part("ipv4", legacy=True)], None, [], 30)
    expected = heal.parse_rules_file(script)
    assert expected.iptables[0].restore == "iptables-legacy-restore"
    assert not expected.events


def test_the_nftables_backend_compares_our_table_listing() -> None:
    table = render_table("hostmesh", [build_family(options(backend="nftables"), "ipv4", [])])
    script = render_script("/r", [], ("hostmesh", table), [], 30)
    expected = heal.parse_rules_file(script)
    assert expected.iptables == () and expected.nft.name == "hostmesh"
    assert heal.drift(expected, reader({}, nft=table)) == []
    assert heal.drift(expected, reader({}, nft="")) == ["nft table inet hostmesh: missing"]
    assert heal.drift(expected, reader({}, nft=table.replace("15001", "15002"))) == ["nft table inet hostmesh: differs"]


class FakeHost:
    def __init__(self, rules_file: str, saves: dict, ready: bool = True, repair_rc: int = 0) -> None:
        self.rules_file = rules_file
        self.saves = saves
        self._ready = ready
        self.repair_rc = repair_rc
        self.repairs = 0
        self.reads = []

    def read(self, kind, *args):
        self.reads.append((kind, *args))
        return self.saves.get(args, "")

    def ready(self):
        return self._ready

    def repair(self):
        self.repairs += 1
        if self.repair_rc == 0:
            self.saves[("iptables-nft-save", "nat")] = SAVE
        return self.repair_rc, "" if self.repair_rc == 0 else "iptables-nft-restore: line 3 failed"

    def count_repair(self):
        return self.repairs


@pytest.fixture
def rules_file(tmp_path: Path) -> str:
    path = tmp_path / "capture.rules"
    path.write_text(RULES)
    return str(path)


def test_in_place_nothing_is_run_but_the_reads(rules_file) -> None:
    host = FakeHost(rules_file, {("iptables-nft-save", "nat"): SAVE})
    logs = []
    assert heal.Reconciler(host, "closed", logs.append).check() == "in place"
    assert host.repairs == 0 and logs == []
    assert host.reads == [("save", "iptables-nft-save", "nat")]


@pytest.mark.parametrize("ready", [True, False])
def test_failing_closed_repairs_whether_or_not_the_sidecar_is_ready(rules_file, ready) -> None:
    host = FakeHost(rules_file, {}, ready=ready)
    logs = []
    assert heal.Reconciler(host, "closed", logs.append).check() == "repaired"
    assert host.repairs == 1
    assert logs[0].startswith("capture repaired in ") and "(repair 1): iptables-nft-save nat: 24 of our 24" in logs[0]


def test_failing_open_holds_while_the_sidecar_is_not_ready_then_repairs(rules_file) -> None:
    host = FakeHost(rules_file, {}, ready=False)
    logs = []
    reconciler = heal.Reconciler(host, "open", logs.append)
    assert reconciler.check() == "held"
    assert reconciler.check() == "held"
    assert host.repairs == 0 and len(logs) == 1
    assert "sidecar is not ready: left off (fail_mode open)" in logs[0]
    host._ready = True
    assert reconciler.check() == "repaired"
    assert reconciler.check() == "in place"
    assert host.repairs == 1


def test_a_failed_repair_is_logged_with_the_tool_output(rules_file) -> None:
    host = FakeHost(rules_file, {}, repair_rc=1)
    logs = []
    assert heal.Reconciler(host, "closed", logs.append).check() == "failed"
    assert "repair failed (rc 1)" in logs[0] and "line 3 failed" in logs[0]


def test_a_rewritten_rules_file_is_read_again(rules_file) -> None:
    host = FakeHost(rules_file, {("iptables-nft-save", "nat"): SAVE})
    reconciler = heal.Reconciler(host, "closed", lambda _: None)
    assert reconciler.check() == "in place"
    Path(rules_file).write_text(RULES.replace("--to-ports 15006", "--to-ports 15007"))
    assert reconciler.check() == "repaired"


def test_the_counter_file_counts_up_and_the_agent_serves_it(tmp_path: Path) -> None:
    from hostmesh_agent.capture_repairs import capture_repairs

    counter = str(tmp_path / "repairs")
    assert capture_repairs(counter) == ""
    host = heal.Host("/r", "http://127.0.0.1:1/", counter)
    assert host.count_repair(0) == 0
    assert capture_repairs(counter).endswith("hostmesh_capture_repairs_total 0\n")
    assert [host.count_repair() for _repair in range(3)] == [1, 2, 3]
    assert host.count_repair(0) == 3
    text = capture_repairs(counter)
    assert "# TYPE hostmesh_capture_repairs_total counter" in text
    assert text.endswith("hostmesh_capture_repairs_total 3\n")


@pytest.mark.parametrize("flag", ["--interval", "--poll"])
def test_a_bad_interval_is_refused_naming_it(flag, capsys) -> None:
    with pytest.raises(SystemExit):
        heal.main(["--rules-file", "/r", flag, "0"])
    assert "%s: got 0.0; expected a number of seconds above 0" % flag in capsys.readouterr().err
