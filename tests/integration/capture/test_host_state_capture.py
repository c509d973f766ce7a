"""host_state compares the live capture rules with traffic_capture's options, in a real namespace."""

import os

import pytest

HOST_STATE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
    "plugins",
    "modules",
    "host_state.py",
)


def check(lab, capture, tmp_path):
    record = {"path": str(tmp_path / "capture.state"), "digest": "d", "paths": []}
    return lab.module(module=HOST_STATE, records=[record], capture=capture)


@pytest.mark.parametrize("backend", ["iptables-nft", "iptables-legacy", "nftables"])
def test_live_rules_in_sync_until_one_is_deleted(lab, tmp_path, backend):
    options = {
        "backend": backend,
        "mode": "redirect",
        "ip_families": ["ipv4", "ipv6"],
        "rules_file": str(tmp_path / "capture.rules"),
    }
    before = lab.ruleset()
    unknown = check(lab, options, tmp_path)
    assert unknown["capture_in_sync"] is False
    assert any(line.startswith("missing ") for line in unknown["capture_differences"]), unknown
    assert lab.ruleset() == before, "checking must change nothing"

    lab.ok(**options)
    applied = lab.ruleset()
    found = check(lab, options, tmp_path)
    assert not found.get("failed"), found.get("msg")
    assert found["capture_in_sync"] is True and found["capture_differences"] == [], found
    # The record itself was never written, so the whole answer is still "not in sync".
    assert found["in_sync"] is False and found["records"][0]["differences"] == ["no record of an earlier run"]

    if backend == "nftables":
        lab.run(lab.host, ["nft", "flush", "chain", "inet", "hostmesh", "nat_OUTPUT"])
    else:
        binary = "iptables-nft" if backend == "iptables-nft" else "iptables-legacy"
        lab.run(lab.host, [binary, "-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", "HOSTMESH_OUTPUT"])
    assert lab.ruleset() != applied
    drifted = check(lab, options, tmp_path)
    assert drifted["capture_in_sync"] is False and drifted["in_sync"] is False
    assert drifted["capture_differences"], drifted


def test_an_edited_rules_file_is_a_difference(lab, tmp_path):
    rules_file = tmp_path / "capture.rules"
    options = {"mode": "redirect", "rules_file": str(rules_file)}
    lab.ok(**options)
    assert check(lab, options, tmp_path)["capture_in_sync"] is True
    rules_file.write_text(rules_file.read_text() + "# edited\n")
    found = check(lab, options, tmp_path)
    assert found["capture_differences"] == ["%s: differs from the rules" % rules_file]
    rules_file.unlink()
    assert check(lab, options, tmp_path)["capture_differences"] == ["%s: differs from the rules" % rules_file]


def test_capture_absent_is_in_sync_on_a_clean_host(lab, tmp_path):
    found = check(lab, {"state": "absent", "rules_file": str(tmp_path / "capture.rules")}, tmp_path)
    assert found["capture_in_sync"] is True, found
