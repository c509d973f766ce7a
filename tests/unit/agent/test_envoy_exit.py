"""Diagnosis of an ended Envoy: a crash is told from a config Envoy rejected."""

from hostmesh_agent.envoy_exit import CRASHED, OK, REJECTED, describe_exit, diagnose, first_critical

ASSERT_LINES = (
    "[2026-12-03 10:00:00.000][12][critical][assert] [source/common/filesystem/inotify/watcher_impl.cc:25] "
    "assert failure: inotify_fd_ >= 0. Details: Consider increasing value of user.max_inotify_watches via sysctl\n"
    "[2026-12-03 10:00:00.001][12][critical][backtrace] [./source/server/backtrace.h:127] Caught Aborted, "
    "suspect faulting address 0x53900000010\n"
)
REJECT_LINES = (
    "[2026-12-03 10:00:00.000][7][info][main] [source/server/server.cc:433] initializing epoch 0\n"
    "[2026-12-03 10:00:00.002][7][critical][main] [source/server/server.cc:131] error initializing "
    "configuration 'validate.json': Unable to parse JSON as proto (INVALID_ARGUMENT:invalid JSON)\n"
    "[2026-12-03 10:00:00.003][7][critical][main] [source/server/server.cc:140] second critical line\n"
)


def test_an_assert_and_sigabrt_is_a_crash_with_the_inotify_hint():
    verdict = diagnose(-6, ASSERT_LINES)
    assert verdict.kind == CRASHED
    assert "assert failure: inotify_fd_ >= 0" in verdict.critical
    text = verdict.summary("bootstrap")
    assert text.startswith("bootstrap: not judged: envoy crashed (signal SIGABRT)")
    assert "rejected" not in text
    assert "fs.inotify.max_user_instances" in text


def test_a_negative_exit_alone_is_a_crash():
    verdict = diagnose(-11, "")
    assert verdict.kind == CRASHED
    assert verdict.critical is None
    assert "signal SIGSEGV" in verdict.summary("bootstrap")
    assert "inotify" in verdict.hint  # the generic hint still names the usual host limits


def test_crash_markers_with_an_ordinary_exit_status_are_a_crash():
    # a wrapper script that reports its child's abort as exit 1, or a shell's 128 + 6
    assert diagnose(1, ASSERT_LINES).kind == CRASHED
    assert diagnose(134, "").kind == CRASHED


def test_exit_1_with_a_critical_line_is_a_rejected_config():
    verdict = diagnose(1, REJECT_LINES)
    assert verdict.kind == REJECTED
    assert verdict.critical.endswith("Unable to parse JSON as proto (INVALID_ARGUMENT:invalid JSON)")
    text = verdict.summary("listeners and clusters")
    assert text.startswith("listeners and clusters: rejected by envoy --mode validate (exit 1); first critical line: ")
    assert "second critical line" not in text
    assert "inotify" not in text


def test_exit_0_is_ok():
    assert diagnose(0, "").kind == OK
    assert diagnose(0, "").summary("bootstrap") == "bootstrap: ok (envoy --mode validate)"


def test_first_critical_trims_a_very_long_line():
    line = first_critical(["x [critical] " + "y" * 1000])
    assert len(line) == 400 and line.endswith("...")
    assert first_critical(["[info] nothing"]) is None


def test_the_agent_log_words_for_an_exit():
    assert describe_exit(1) == "1"
    assert describe_exit(-6).startswith("-6 (signal SIGABRT: crashed, not a config rejection")
    assert "OOM" in describe_exit(-9)
    assert "segmentation" in describe_exit(-11)
    assert "signal SIGTERM" in describe_exit(-15)
