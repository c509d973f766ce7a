"""The real Proxy and the real signal inbox, without Envoy: a shell script stands in for
the binary, real processes and real signals."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest

from hostmesh_agent.config import parse_config
from hostmesh_agent.proxy import EnvoyProxy, Fingerprint, ProxyError
from hostmesh_agent.signal_inbox import SignalInbox


def fake_envoy(directory: Path) -> str:
    """An executable that sleeps like a running Envoy, and records its argv."""
    path = directory / "envoy"
    path.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/argv"\nexec sleep 30\n')
    path.chmod(0o755)
    return str(path)


def proxy_for(tmp_path: Path, **doc) -> EnvoyProxy:
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "envoy": {"binary": fake_envoy(tmp_path)}, **doc})
    return EnvoyProxy(cfg, "10.0.0.7")


def test_fingerprint_ignores_listener_changes(tmp_path):
    a = proxy_for(tmp_path)
    b = proxy_for(tmp_path, inbound={"services": [{"name": "a", "port": 81}]})
    assert isinstance(a.fingerprint(), Fingerprint) and a.fingerprint() == b.fingerprint()
    c = EnvoyProxy(replace(a.cfg, trust_domain="example.org"), "10.0.0.7")
    assert c.fingerprint() != a.fingerprint()


def test_a_replaced_binary_changes_the_fingerprint(tmp_path):
    proxy = proxy_for(tmp_path)
    before = proxy.fingerprint()
    upgrade = tmp_path / "envoy.new"
    upgrade.write_text("#!/bin/sh\nexec sleep 30\n")
    upgrade.chmod(0o755)
    os.replace(upgrade, proxy.cfg.envoy.binary)
    assert proxy.fingerprint() != before
    assert proxy.fingerprint().config == before.config


def test_prepare_names_the_key_when_the_binary_is_missing_or_the_run_dir_unusable(tmp_path):
    missing = EnvoyProxy(parse_config({"run_dir": str(tmp_path), "envoy": {"binary": "/nonexistent/envoy"}}), "::1")
    with pytest.raises(ProxyError, match=r"envoy binary '/nonexistent/envoy' not found \(config key 'envoy.binary'\)"):
        missing.prepare()
    (tmp_path / "file").write_text("")
    blocked = proxy_for(tmp_path, run_dir=str(tmp_path / "file" / "run"))
    with pytest.raises(ProxyError, match=r"cannot create run dir .*/file/run: Not a directory"):
        blocked.prepare()


def test_start_writes_the_epoch_bootstrap_runs_the_binary_and_cleans_up(tmp_path):
    proxy = proxy_for(tmp_path)
    proxy.prepare()
    (tmp_path / "run" / "envoy-rev5.json").write_text("{}")  # an old epoch's leftover
    proc = proxy.start(1)
    try:
        assert proc.epoch == 1 and proc.exited() is None
        assert proc.wait(0.05) is None  # still running
        bootstrap = tmp_path / "run" / "envoy-rev1.json"
        assert bootstrap.stat().st_mode & 0o777 == 0o600
        deadline = time.monotonic() + 5
        while not (tmp_path / "argv").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        argv = (tmp_path / "argv").read_text().split()
        assert argv[:4] == ["-c", str(bootstrap), "--restart-epoch", "1"]
        proxy.cleanup([1])
        assert sorted(p.name for p in (tmp_path / "run").glob("envoy-rev*.json")) == ["envoy-rev1.json"]
    finally:
        proc.signal(signal.SIGTERM)
    assert proc.wait(5) == -signal.SIGTERM
    proc.signal(signal.SIGKILL)  # already gone: not an error
    proxy.cleanup(())
    assert list((tmp_path / "run").glob("envoy-rev*.json")) == []


def test_a_binary_that_cannot_be_executed_is_a_proxy_error(tmp_path):
    proxy = proxy_for(tmp_path)
    proxy.prepare()
    Path(proxy.cfg.envoy.binary).write_bytes(b"\x00\x01 not a program")
    with pytest.raises(ProxyError, match=r"cannot start .*/envoy: Exec format error"):
        proxy.start(0)


def test_signal_inbox_queues_signals_and_cuts_the_wait_short():
    before = signal.getsignal(signal.SIGUSR1)
    inbox = SignalInbox((signal.SIGUSR1, signal.SIGHUP))
    inbox.open()
    try:
        started = time.monotonic()
        inbox.wait(0.01)
        assert inbox.take() == []
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGHUP)
        inbox.wait(5.0)
        assert time.monotonic() - started < 2.0
        assert inbox.take() == [signal.SIGUSR1, signal.SIGHUP]
        assert inbox.take() == []
    finally:
        inbox.close()
    assert signal.getsignal(signal.SIGUSR1) == before


def test_envoys_standard_output_is_handed_to_its_reader_and_closes_when_it_exits(tmp_path):
    """With ``on_stdout`` each epoch's stdout is a pipe of its own for the agent to read."""
    script = tmp_path / "envoy"
    script.write_text('#!/bin/sh\necho "line from epoch $4"\necho "to stderr" >&2\n')
    script.chmod(0o755)
    handed = []
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "envoy": {"binary": str(script)}})
    proxy = EnvoyProxy(cfg, "10.0.0.7", on_stdout=lambda epoch, stream: handed.append((epoch, stream)))
    proxy.prepare()
    proc = proxy.start(2)
    assert proc.wait(5) == 0
    [(epoch, stream)] = handed
    assert epoch == 2
    assert stream.read() == b"line from epoch 2\n"  # the whole output, then EOF: Envoy is gone
    stream.close()
    # Without a reader Envoy writes to the agent's own stdout, as before.
    assert EnvoyProxy(cfg, "10.0.0.7").on_stdout is None
