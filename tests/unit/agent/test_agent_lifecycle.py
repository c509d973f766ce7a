"""The Agent's decisions with a fake Proxy: crash restarts, the crash bound, hot restart
fallback, reload vs hot restart. No Envoy, no processes, no sleeping."""

from __future__ import annotations

from dataclasses import replace
from typing import List, Optional

import pytest

from hostmesh_agent.admin import AdminError, EnvoyReadiness
from hostmesh_agent.agent import EXIT_CRASH_LOOP, Agent, Fingerprint, check_reloadable
from hostmesh_agent.config import ConfigError, parse_config
from hostmesh_agent.proxy import EnvoyProcess


class FakePopen:
    def __init__(self) -> None:
        self.returncode: Optional[int] = None
        self.pid = 4242
        self.signals: List[int] = []

    def poll(self) -> Optional[int]:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        self.returncode = -sig

    def wait(self, timeout: Optional[float] = None) -> int:
        return self.returncode if self.returncode is not None else 0


class FakeProxy:
    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.started: List[int] = []
        self.dynamic_writes = 0
        self.dynamic_changes = False

    def start(self, epoch: int) -> EnvoyProcess:
        self.started.append(epoch)
        return EnvoyProcess(epoch=epoch, popen=FakePopen(), started_at=0.0)

    def cleanup(self, live_epochs) -> None:
        pass

    def prepare_run_dir(self) -> None:
        pass

    def write_dynamic(self) -> bool:
        self.dynamic_writes += 1
        return self.dynamic_changes

    def tls_fingerprint(self) -> str:
        return ""

    def xds_fingerprint(self) -> str:
        return ""

    def binary_identity(self):
        return ("envoy", 1, 2, 3)

    def remove_shared_memory(self) -> None:
        pass


def make_agent(max_crashes: int = 2, load=None) -> Agent:
    cfg = parse_config({"supervise": {"max_consecutive_crashes": max_crashes, "backoff_initial_s": 1}})
    agent = Agent(cfg, "10.0.0.1", load or (lambda: cfg), environ={})
    agent.proxy = FakeProxy(cfg)
    agent._fingerprint = agent._take_fingerprint(agent.proxy)
    return agent


def test_crash_restarts_with_backoff_then_gives_up():
    agent = make_agent(max_crashes=2)
    agent._start_fresh()
    assert agent.proxy.started == [0]
    agent.current.popen.returncode = 1
    assert agent._on_current_exit(now=100.0) is None
    assert agent._restart_at == 101.0 and agent.metrics.restarts == 1 and not agent.ready
    agent._start_fresh()
    agent.current.popen.returncode = 1
    assert agent._on_current_exit(now=200.0) is None
    assert agent._restart_at == 202.0  # doubled
    agent._start_fresh()
    agent.current.popen.returncode = 1
    assert agent._on_current_exit(now=300.0) == EXIT_CRASH_LOOP


def test_new_epoch_dying_during_hot_restart_leaves_the_parent_serving():
    agent = make_agent()
    agent._start_fresh()
    parent = agent.current
    agent.ready = True
    agent._hot_restart()
    assert agent.proxy.started == [0, 1] and agent.draining == [parent]
    agent.current.popen.returncode = 1
    assert agent._on_current_exit(now=1.0) is None
    assert agent.current is parent and agent.draining == []
    assert agent.metrics.errors == 1 and agent.metrics.restarts == 0
    assert agent._restart_at is None


def test_hot_restart_waits_for_readiness_and_one_hand_over_at_a_time():
    agent = make_agent()
    agent._start_fresh()
    assert not agent._can_hot_restart()  # not ready yet
    agent.ready = True
    assert agent._can_hot_restart()
    agent._hot_restart()
    assert not agent._can_hot_restart()  # the parent is still draining


def test_reload_updates_files_without_restart_unless_the_bootstrap_changes(monkeypatch):
    base = parse_config({"supervise": {"backoff_initial_s": 1}})
    listeners_only = replace(base, inbound=parse_config({"inbound": {"services": [{"name": "a", "port": 81}]}}).inbound)
    new_log_level = replace(listeners_only, envoy=replace(base.envoy, log_level="debug"))
    configs = [listeners_only, new_log_level]
    agent = make_agent(load=lambda: configs.pop(0))

    def proxy_with_changed_files(cfg, ip):
        proxy = FakeProxy(cfg)
        proxy.dynamic_changes = True
        return proxy

    monkeypatch.setattr("hostmesh_agent.agent.Proxy", proxy_with_changed_files)
    agent.reload()
    assert agent.metrics.config_reloads == 1 and not agent._hot_restart_wanted
    agent.reload()  # the log level is on Envoy's command line: a new process
    assert agent._hot_restart_wanted


def test_invalid_reload_keeps_running_config():
    def bad():
        raise ConfigError("config key 'x': nope")

    agent = make_agent(load=bad)
    before = agent.cfg
    agent.reload()
    assert agent.cfg is before and agent.metrics.errors == 1


def test_fingerprint_ignores_listener_changes():
    a = parse_config({})
    b = parse_config({"inbound": {"services": [{"name": "a", "port": 81}]}})
    agent = make_agent()
    fa = agent._take_fingerprint(FakeProxy(a))
    fb = agent._take_fingerprint(FakeProxy(b))
    assert isinstance(fa, Fingerprint) and fa == fb
    fc = agent._take_fingerprint(FakeProxy(replace(a, trust_domain="example.org")))
    assert fc != fa


@pytest.mark.parametrize("stopping", [True, False])
def test_readiness_reasons(stopping):
    agent = make_agent()
    agent.stopping = stopping
    ok, reason = agent.readiness()
    assert not ok
    assert reason.startswith("stopping" if stopping else "not ready")


def test_one_missed_health_poll_is_not_yet_unready(monkeypatch):
    agent = make_agent()
    agent._start_fresh()
    answers = [
        EnvoyReadiness(True, 0, 4, 0, 1, 1),
        AdminError("slow"),
        AdminError("slow"),
        EnvoyReadiness(True, 0, 4, 0, 1, 1),
    ]

    class FakeAdmin:
        def readiness(self):
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    monkeypatch.setattr(agent, "_admin", FakeAdmin)
    agent._check_health(now=1.0)
    assert agent.ready
    agent._check_health(now=2.0)
    assert agent.ready  # one miss
    agent._check_health(now=3.0)
    assert not agent.ready  # two in a row
    agent._check_health(now=4.0)
    assert agent.ready


@pytest.mark.parametrize(
    ("change", "key"),
    [({"envoy": {"base_id": 7}}, "envoy.base_id"), ({"run_dir": "/elsewhere"}, "run_dir")],
)
def test_reload_refuses_keys_that_need_a_service_restart(change, key):
    new = parse_config(change)
    agent = make_agent(load=lambda: new)
    before = agent.cfg
    agent.reload()
    assert agent.cfg is before and agent.metrics.errors == 1
    with pytest.raises(ConfigError, match=f"config key '{key}'.*takes effect only when the service restarts"):
        check_reloadable(before, new)
