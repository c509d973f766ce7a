"""host_state: the stamp a role records, and the comparison that lets a re-run skip its tasks."""

import json
import os
from pathlib import Path

from module_runner import run_module

from ansible_collections.hostmesh.sidecar.plugins.module_utils import _host_state as core


def run(workdir: Path, check_mode: bool = False, state: str = "checked", **record) -> dict:
    """Run the module on one record."""
    return run_args(workdir, check_mode, records=[record], state=state)


def run_args(workdir: Path, check_mode: bool = False, **args) -> dict:
    return run_module("host_state", args, workdir, check_mode)


def fixture_tree(tmp_path: Path) -> dict:
    conf = tmp_path / "etc"
    conf.mkdir(mode=0o750)
    (conf / "agent.json").write_text('{"mode": "standalone"}\n')
    (conf / "agent.json").chmod(0o640)
    binary = tmp_path / "envoy"
    binary.write_bytes(b"\x7fELF" + b"\0" * 64)
    return {
        "path": str(tmp_path / "state.json"),
        "digest": "d1",
        "paths": [str(conf), str(conf / "agent.json")],
        "large_files": [str(binary)],
        "users": ["root"],
        "groups": ["root"],
    }


def test_record_then_check_is_in_sync(tmp_path):
    args = fixture_tree(tmp_path)
    first = run(tmp_path, state="recorded", **args)
    assert first["changed"] is True and first.get("failed") is not True, first
    assert (Path(args["path"]).stat().st_mode & 0o777) == 0o600
    again = run(tmp_path, state="recorded", **args)
    assert again["changed"] is False, again
    checked = run(tmp_path, **args)
    assert checked["changed"] is False and checked["in_sync"] is True, checked
    assert checked["records"] == [{"path": args["path"], "in_sync": True, "differences": [], "changed": False}]


def test_every_kind_of_drift_is_named(tmp_path):
    args = fixture_tree(tmp_path)
    run(tmp_path, state="recorded", **args)
    conf = Path(args["paths"][1])
    conf.write_text('{"mode": "xds"}\n')
    Path(args["paths"][0]).chmod(0o755)
    os.utime(args["large_files"][0], (1, 1))
    found = run(tmp_path, **args)
    assert found["in_sync"] is False
    text = "\n".join(found["records"][0]["differences"])
    assert str(conf) + ":" in text and '"sha1"' in text
    assert args["paths"][0] + ":" in text and '"0755"' in text
    assert args["large_files"][0] + ":" in text
    wanted_more = {**args}
    wanted_more["digest"] = "d2"
    assert run(tmp_path, **wanted_more)["records"][0]["differences"][0] == "the wanted state changed since the last run"
    conf.unlink()
    assert any(line.startswith(str(conf) + ": missing") for line in run(tmp_path, **args)["records"][0]["differences"])


def test_no_stamp_a_broken_one_or_a_new_path_is_not_in_sync(tmp_path):
    args = fixture_tree(tmp_path)
    assert run(tmp_path, **args)["records"][0]["differences"] == ["no record of an earlier run"]
    Path(args["path"]).write_text("{not json")
    assert run(tmp_path, **args)["in_sync"] is False
    run(tmp_path, state="recorded", **args)
    extra = tmp_path / "extra"
    extra.write_text("x")
    more_paths = {**args}
    more_paths["paths"] = args["paths"] + [str(extra)]
    found = run(tmp_path, **more_paths)
    assert found["records"][0]["differences"] == ["%s: not recorded by the last run" % extra]


def test_check_mode_records_nothing(tmp_path):
    args = fixture_tree(tmp_path)
    result = run(tmp_path, check_mode=True, state="recorded", **args)
    assert result["changed"] is True
    assert not Path(args["path"]).exists()


def test_check_mode_reports_a_stamp_whose_directory_a_real_run_would_create(tmp_path):
    args = fixture_tree(tmp_path)
    args["path"] = str(tmp_path / "not-yet" / "state.json")
    result = run(tmp_path, check_mode=True, state="recorded", **args)
    assert result.get("failed") is not True, result
    assert result["changed"] is True


def test_a_missing_directory_for_the_stamp_is_an_error_naming_path(tmp_path):
    args = fixture_tree(tmp_path)
    args["path"] = str(tmp_path / "nowhere" / "state.json")
    result = run(tmp_path, state="recorded", **args)
    assert result["failed"] is True
    assert result["msg"].startswith("records[0].path: got '%s'" % args["path"])


def test_several_records_are_checked_at_once_and_each_says_what_differs(tmp_path):
    first = fixture_tree(tmp_path)
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    (second_dir / "rules").write_text("rules\n")
    second = {"path": str(second_dir / "state.json"), "digest": "c1", "paths": [str(second_dir / "rules")]}
    recorded = run_args(tmp_path, records=[first, second], state="recorded")
    assert [item["changed"] for item in recorded["records"]] == [True, True]
    assert run_args(tmp_path, records=[first, second])["in_sync"] is True
    (second_dir / "rules").write_text("edited\n")
    found = run_args(tmp_path, records=[first, second])
    assert found["in_sync"] is False
    assert found["records"][0]["in_sync"] is True
    assert found["records"][1]["in_sync"] is False
    assert found["records"][1]["differences"][0].startswith(str(second_dir / "rules") + ":")
    assert "capture_in_sync" not in found


def test_recording_writes_no_stamp_when_one_directory_is_missing(tmp_path):
    first = fixture_tree(tmp_path)
    second = {"path": str(tmp_path / "nowhere" / "state.json"), "digest": "c1"}
    result = run_args(tmp_path, records=[first, second], state="recorded")
    assert result["failed"] is True
    assert result["msg"].startswith("records[1].path: got ")
    assert not Path(first["path"]).exists()


def test_a_bad_capture_option_is_named_and_nothing_is_read(tmp_path):
    args = fixture_tree(tmp_path)
    unknown = run_args(tmp_path, records=[args], capture={"mode": "redirect", "proxy_uids": [1337]})
    assert unknown["failed"] is True
    assert unknown["msg"] == "capture.proxy_uids: [1337] is not an option of hostmesh.sidecar.traffic_capture"
    bad = run_args(tmp_path, records=[args], capture={"mode": "sideways"})
    assert bad["failed"] is True
    assert bad["msg"].startswith("capture.mode: 'sideways' is not valid")
    assert bad["option"] == "capture.mode" and bad["value"] == "sideways"


def test_core_accounts_and_units():
    class Entry:
        pw_uid, pw_gid, pw_dir, pw_shell = 1337, 1337, "/nonexistent", "/usr/sbin/nologin"
        gr_gid, gr_mem = 1337, ["b", "a"]

    assert core.user_fingerprint(None) is None
    assert core.user_fingerprint(Entry) == {
        "uid": 1337,
        "gid": 1337,
        "home": "/nonexistent",
        "shell": "/usr/sbin/nologin",
    }
    assert core.group_fingerprint(Entry) == {"gid": 1337, "members": ["a", "b"]}
    before = core.stamp("d", {}, {"user p": {"uid": 1}}, {"a.service": {"enabled": "enabled", "active": "active"}})
    now_units = {"a.service": {"enabled": "enabled", "active": "failed"}}
    found = core.differences(before, "d", {}, {"user p": None}, now_units)
    assert found == [
        'user p: missing, was {"uid": 1}',
        'a.service: {"active": "failed", "enabled": "enabled"}, was {"active": "active", "enabled": "enabled"}',
    ]
    assert core.parse_stamp(core.stamp_text(before)) == before
    assert core.parse_stamp(json.dumps({"version": 0})) is None
