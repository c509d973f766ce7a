"""The capture core through a fake host edge that lists the exact commands (test_commands.yaml).

Each case feeds ``run_command`` from its list of commands: a command that is
not the next one listed (argv and standard input), or one listed and never
run, fails the case; so does looking up a binary or reading a file the case
does not name. The result, or the error's type and message, must be exactly
the recorded one.
"""

import os
from collections import Counter

import pytest
import yaml

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.errors import CaptureError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.host import HostCommands
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.options import parse_options
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.run import check_capture, run_capture
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.spec import validate_params

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "test_commands.yaml")) as _handle:
    CASES = yaml.safe_load(_handle)["cases"]
READS = ("-save", "list", "show")  # words of the commands that only read


class FakeHost:
    """The three callables HostCommands runs on, answering from one case."""

    def __init__(self, case):
        self.case = case
        self.commands = list(case["commands"])
        self.ran = []

    def run_command(self, argv, data=None):
        position = len(self.ran)
        assert position < len(self.commands), "unexpected command %r (data %r) after the %d listed" % (
            argv,
            data,
            len(self.commands),
        )
        expected = self.commands[position]
        assert list(argv) == expected["argv"], "command %d: ran %r, expected %r" % (position, argv, expected["argv"])
        assert data == expected.get("data"), "command %d (%s): data %r, expected %r" % (
            position,
            " ".join(argv),
            data,
            expected.get("data"),
        )
        self.ran.append(argv)
        return expected["rc"], expected.get("out", ""), expected.get("err", "")

    def find_binary(self, name):
        assert name in self.case["binaries"], "looked up %r, which the case does not name" % name
        return self.case["binaries"][name]

    def read_file(self, path):
        assert path in self.case["files"], "read %r, which the case does not name" % path
        return self.case["files"][path]

    def assert_all_ran(self):
        missing = [" ".join(command["argv"]) for command in self.commands[len(self.ran) :]]
        assert not missing, "commands listed and never run: %s" % missing


def run_case(case):
    """(outcome, fake): the result dict (or {"type", "message"} of the error) and the fake host."""
    fake = FakeHost(case)
    options = parse_options(validate_params(case["options"]), case.get("ssh_port"))[0]
    host = HostCommands(fake.run_command, fake.find_binary, fake.read_file, options.lock_wait)
    try:
        if case.get("entry") == "check":
            outcome = {"differences": check_capture(options, host, fake.read_file)}
        else:
            result = run_capture(options, host, case.get("check_mode", False))
            outcome = {key: result[key] for key in case.get("result", {})}
    except CaptureError as error:
        outcome = {"type": type(error).__name__, "message": str(error)}
    return outcome, fake


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_case(case):
    outcome, fake = run_case(case)
    assert outcome == case.get("result", case.get("error"))
    fake.assert_all_ran()


NO_OPS = [case for case in CASES if case.get("result", {}).get("changed") is False]


def test_there_are_no_op_cases():
    assert {case["id"] for case in NO_OPS} >= {
        "no_op_both_families_nft_with_legacy_tools",
        "no_op_with_legacy_tables_loaded",
    }


@pytest.mark.parametrize("case", NO_OPS, ids=[case["id"] for case in NO_OPS])
def test_a_no_op_run_reads_each_thing_once_and_writes_nothing(case):
    commands = [(*command["argv"], command.get("data")) for command in case["commands"]]
    assert max(Counter(commands).values()) == 1
    for command in case["commands"]:
        assert any(word in " ".join(command["argv"]) or word in (command.get("data") or "") for word in READS)


def test_a_no_op_run_on_a_host_without_legacy_tables_makes_five_commands():
    case = next(case for case in CASES if case["id"] == "no_op_both_families_nft_with_legacy_tools")
    assert [os.path.basename(command["argv"][0]) for command in case["commands"]] == [
        "iptables-nft-save",
        "ip6tables-nft-save",
        "nft",
        "ip",
        "ip",
    ]


def test_check_mode_runs_only_the_snapshot():
    checked = next(case for case in CASES if case["id"] == "check_mode_reads_only")
    applied = next(case for case in CASES if case["id"] == "first_apply_both_families")
    assert checked["commands"] == applied["commands"][: len(checked["commands"])]
    assert checked["result"]["added"] == applied["result"]["added"]


def test_the_fake_refuses_an_unlisted_command():
    case = dict(next(case for case in CASES if case["id"] == "first_apply_both_families"))
    case["commands"] = case["commands"][:-1]
    with pytest.raises(AssertionError, match="unexpected command"):
        run_case(case)


def test_the_fake_refuses_a_command_listed_and_not_run():
    case = dict(next(case for case in CASES if case["id"] == "no_op_both_families_nft_with_legacy_tools"))
    case["commands"] = [*case["commands"], {"argv": ["/usr/sbin/iptables-nft-save"], "rc": 0}]
    fake = run_case(case)[1]
    with pytest.raises(AssertionError, match="never run"):
        fake.assert_all_ran()
