"""host_state: the stamp a role records, and the comparison that lets a re-run skip its tasks."""

import json
import os
import subprocess
import sys
from pathlib import Path

from ansible_collections.hostmesh.sidecar.plugins.module_utils import _host_state as core

ROOT = Path(__file__).resolve().parents[3]
MODULE = ROOT / "plugins" / "modules" / "host_state.py"
COLLECTIONS = ROOT / ".build" / "collections"


def run(workdir: Path, check_mode: bool = False, **args) -> dict:
    """Run the module in a fresh Python the way Ansible does: a JSON args file as argv[1]."""
    if check_mode:
        args["_ansible_check_mode"] = True
    args_file = workdir / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS))
    proc = subprocess.run(
        [sys.executable, str(MODULE), str(args_file)], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout)


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
    assert checked == {"changed": False, "in_sync": True, "differences": [], "invocation": checked["invocation"]}


def test_every_kind_of_drift_is_named(tmp_path):
    args = fixture_tree(tmp_path)
    run(tmp_path, state="recorded", **args)
    conf = Path(args["paths"][1])
    conf.write_text('{"mode": "xds"}\n')
    Path(args["paths"][0]).chmod(0o755)
    os.utime(args["large_files"][0], (1, 1))
    found = run(tmp_path, **args)
    assert found["in_sync"] is False
    text = "\n".join(found["differences"])
    assert str(conf) + ":" in text and '"sha1"' in text
    assert args["paths"][0] + ":" in text and '"0755"' in text
    assert args["large_files"][0] + ":" in text
    wanted_more = {**args}
    wanted_more["digest"] = "d2"
    assert run(tmp_path, **wanted_more)["differences"][0] == "the wanted state changed since the last run"
    conf.unlink()
    assert any(line.startswith(str(conf) + ": missing") for line in run(tmp_path, **args)["differences"])


def test_no_stamp_a_broken_one_or_a_new_path_is_not_in_sync(tmp_path):
    args = fixture_tree(tmp_path)
    assert run(tmp_path, **args)["differences"] == ["no record of an earlier run"]
    Path(args["path"]).write_text("{not json")
    assert run(tmp_path, **args)["in_sync"] is False
    run(tmp_path, state="recorded", **args)
    extra = tmp_path / "extra"
    extra.write_text("x")
    more_paths = {**args}
    more_paths["paths"] = args["paths"] + [str(extra)]
    found = run(tmp_path, **more_paths)
    assert found["differences"] == ["%s: not recorded by the last run" % extra]


def test_check_mode_records_nothing(tmp_path):
    args = fixture_tree(tmp_path)
    result = run(tmp_path, check_mode=True, state="recorded", **args)
    assert result["changed"] is True
    assert not Path(args["path"]).exists()


def test_a_missing_directory_for_the_stamp_is_an_error_naming_path(tmp_path):
    args = fixture_tree(tmp_path)
    args["path"] = str(tmp_path / "nowhere" / "state.json")
    result = run(tmp_path, state="recorded", **args)
    assert result["failed"] is True
    assert result["msg"].startswith("path: got '%s'" % args["path"])


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
