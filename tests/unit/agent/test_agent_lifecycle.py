"""Every path of the Agent's lifecycle, driven through its public constructor with fakes
(agent_fakes.py): no Envoy, no processes, no sleeping. Each test plays a timeline of
events in fake time through ``Agent.run()`` and reads what the agent did."""

from __future__ import annotations

import logging
import signal
import socket
from dataclasses import replace
from typing import Tuple

import pytest
from agent_fakes import FakeAdmin, FakeEnvoy, Harness, World, agent_config

from hostmesh_agent.admin import AdminError
from hostmesh_agent.agent import EXIT_CRASH_LOOP, EXIT_OK, EXIT_START_FAILED, check_reloadable
from hostmesh_agent.config import ConfigError, parse_config
from hostmesh_agent.lifecycle import SERVING, State
from hostmesh_agent.proxy import Fingerprint, ProxyError

READY_0 = (True, "ready: envoy epoch 0 live")


@pytest.fixture(autouse=True)
def _agent_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="hostmesh_agent")


def http_get(port: int, path: str) -> Tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    head, _sep, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body.decode()


def crash_soon(world: World, after: float = 0.01, code: int = 3):
    def start(epoch: int) -> FakeEnvoy:
        envoy = FakeEnvoy(world, epoch, ready_after=None)
        world.after(after, lambda: envoy.exit(code))
        return envoy

    return start


# --- start, ready, stop ------------------------------------------------------------------


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_start_becomes_ready_tells_systemd_once_and_serves_status(stop):
    h = Harness()
    port = h.cfg.ports.status
    before = h.agent.readiness()
    h.probe(0.01, "starting")
    h.probe(1.0, "ready")
    h.world.at(2.0, lambda: h.probes.update(health=http_get(port, "/healthz/ready")))
    h.world.at(2.0, lambda: h.probes.update(metrics=http_get(port, "/stats/prometheus")))
    h.world.signal_at(10.0, stop)

    assert h.agent.run() == EXIT_OK

    assert before == (False, "not ready: envoy is not running")
    assert h.probes["starting"] == (State.STARTING, (False, "not ready: envoy epoch 0 is starting"), False)
    assert h.probes["ready"] == (State.READY, READY_0, True)
    assert h.probes["health"] == (200, "ready: envoy epoch 0 live\n")
    code, metrics = h.probes["metrics"]
    assert code == 200 and metrics.startswith("envoy_server_live 1\n# HELP hostmesh_agent_restarts_total")
    assert "hostmesh_agent_ready 1\n" in metrics and "hostmesh_agent_epoch 0\n" in metrics
    assert h.notifier.messages() == [
        "STATUS=starting envoy epoch 0",
        "READY=1\nSTATUS=ready: envoy epoch 0",
        "STATUS=ready: envoy epoch 0",
        "STOPPING=1\nSTATUS=stopping: draining connections",
    ]
    m = h.agent.metrics
    assert (m.envoy_starts, m.restarts, m.hot_restarts, m.errors, m.ready) == (1, 0, 0, 0, False)
    assert h.starts() == [0]
    assert h.calls[:4] == [("prepare",), ("write_dynamic",), ("start", 0), ("cleanup", [0])]
    assert h.calls[-2:] == [("remove_shared_memory",), ("cleanup", [])]
    assert h.world.envoys[0].signals == [signal.SIGTERM]
    assert h.agent.state is State.STOPPED and h.agent.current is None
    assert (h.world.open_calls, h.world.close_calls) == (1, 1)


def test_sigterm_drains_until_the_bound_while_connections_stay_open(caplog):
    w = World()
    h = Harness(world=w, admin=FakeAdmin(w, connections=lambda: 3))
    w.signal_at(2.0, signal.SIGTERM)
    h.probe(3.0, "draining")

    assert h.agent.run() == EXIT_OK

    assert h.probes["draining"] == (State.DRAINING, (False, "stopping: draining connections"), False)
    assert h.admin.calls[0] == (pytest.approx(2.0), "drain_listeners")
    envoy = w.envoys[0]
    assert envoy.signals == [signal.SIGTERM]
    assert 7.0 <= envoy.exited_at <= 7.11  # SIGTERM + drain_timeout_s (5)
    assert "drain bound reached; stopping envoy with connections open" in caplog.text
    assert h.notifier.messages()[-1] == "STOPPING=1\nSTATUS=stopping: draining connections"
    assert h.calls[-2:] == [("remove_shared_memory",), ("cleanup", [])]


def test_sigterm_stops_envoy_as_soon_as_its_connections_end(caplog):
    w = World()
    h = Harness(world=w, admin=FakeAdmin(w, connections=lambda: 3 if w.elapsed < 3.5 else 0))
    w.signal_at(2.0, signal.SIGTERM)

    assert h.agent.run() == EXIT_OK

    assert 3.5 <= w.envoys[0].exited_at <= 3.61
    assert "drained in 1.5s" in caplog.text and "drain bound reached" not in caplog.text


def test_an_envoy_that_ignores_sigterm_is_killed_after_stop_timeout():
    w = World()
    h = Harness(world=w, start=lambda epoch: FakeEnvoy(w, epoch, ignores_sigterm=True))
    w.signal_at(2.0, signal.SIGTERM)

    assert h.agent.run() == EXIT_OK

    envoy = w.envoys[0]
    assert envoy.signals == [signal.SIGTERM, signal.SIGKILL]
    assert envoy.exited_at == pytest.approx(4.0)  # drained at once, then stop_timeout_s (2)


def test_a_hot_restart_parent_still_draining_gets_the_same_drain_bound():
    w = World()
    h = Harness(world=w)
    w.signal_at(1.0, signal.SIGUSR1)  # epoch 0 becomes the parent, and never exits by itself
    w.signal_at(3.0, signal.SIGTERM)

    assert h.agent.run() == EXIT_OK

    parent, child = w.envoys
    assert (parent.epoch, child.epoch) == (0, 1)
    assert parent.signals == child.signals == [signal.SIGTERM]
    assert 8.0 <= parent.exited_at <= 8.11  # SIGTERM + drain_timeout_s (5)


# --- crashes -------------------------------------------------------------------------------


def test_a_crash_restarts_epoch_0_after_a_backoff_that_grows(caplog):
    w = World()
    h = Harness(world=w)
    w.at(2.0, lambda: w.envoys[0].exit(1))
    h.probe(2.5, "backing off")
    w.at(4.0, lambda: w.envoys[1].exit(1))
    h.probe(7.0, "ready again")
    w.signal_at(8.0, signal.SIGTERM)

    assert h.agent.run() == EXIT_OK

    assert h.probes["backing off"] == (State.BACKING_OFF, (False, "not ready: envoy is not running"), False)
    assert h.probes["ready again"] == (State.READY, READY_0, True)
    assert h.starts() == [0, 0, 0]
    assert [e.started_at for e in w.envoys] == pytest.approx([0.0, 3.0, 6.0])  # 1 s, then 2 s
    assert "STATUS=envoy exited (1); restarting in 1.0s" in h.notifier.messages()
    assert "STATUS=envoy exited (1); restarting in 2.0s" in h.notifier.messages()
    assert sum("READY=1" in m for m in h.notifier.messages()) == 1
    m = h.agent.metrics
    assert (m.restarts, m.envoy_starts, m.errors) == (2, 3, 0)
    assert "envoy epoch 0 (pid 4000) exited with 1; restarting in 1.00s" in caplog.text


def test_a_crash_loop_past_its_bound_gives_up_with_exit_1():
    w = World()
    h = Harness(world=w, start=crash_soon(w))
    for t in (0.5, 2.0, 5.0):
        h.probe(t, f"at {t}")

    assert h.agent.run() == EXIT_CRASH_LOOP

    # max_consecutive_crashes is 3: the fourth crash in a row ends it (delays 1, 2, 4 s).
    assert [e.started_at for e in w.envoys] == pytest.approx([0.0, 1.01, 3.02, 7.03])
    assert all(p[0] is State.BACKING_OFF and not p[1][0] for p in h.probes.values())
    assert h.notifier.messages()[-1] == "STATUS=giving up: envoy crashed 4 times in a row"
    assert not any("READY=1" in m for m in h.notifier.messages())
    assert h.agent.metrics.restarts == 4
    assert h.agent.state is State.STOPPED


def test_envoy_that_cannot_be_started_is_retried_with_backoff_then_given_up(caplog):
    def cannot_start(epoch):
        raise ProxyError("cannot start /usr/bin/envoy: Permission denied")

    h = Harness(start=cannot_start)

    assert h.agent.run() == EXIT_CRASH_LOOP

    assert h.starts() == [0, 0, 0, 0]
    assert h.world.elapsed == pytest.approx(7.0)  # tries at 0, 1, 3 and 7 s
    m = h.agent.metrics
    assert (m.errors, m.envoy_starts, m.restarts) == (4, 0, 0)
    assert "envoy could not be started 4 times in a row, giving up" in caplog.text


def test_envoy_never_ready_is_killed_after_ready_timeout_and_started_again(caplog):
    w = World()
    h = Harness(world=w, start=lambda epoch: FakeEnvoy(w, epoch, ready_after=None if not w.envoys else 0.05))
    h.probe(5.0, "waiting")
    w.signal_at(15.0, signal.SIGTERM)

    assert h.agent.run() == EXIT_OK

    first, second = w.envoys
    assert h.probes["waiting"] == (State.STARTING, (False, "not ready: envoy epoch 0 is starting"), False)
    assert first.signals == [signal.SIGKILL]
    assert 10.0 <= first.exited_at <= 10.03  # ready_timeout_s (10)
    assert second.started_at == pytest.approx(first.exited_at + 1.0, abs=0.03)
    assert "envoy epoch 0 not ready after 10s; restarting it" in caplog.text
    assert "STATUS=envoy exited (-9); restarting in 1.0s" in h.notifier.messages()
    m = h.agent.metrics
    assert (m.errors, m.restarts, m.epoch) == (1, 1, 0)


# --- readiness polls -----------------------------------------------------------------------


def test_one_missed_poll_is_not_yet_a_verdict_two_in_a_row_are(caplog):
    w = World()

    def answer():
        if 3.0 <= w.elapsed < 4.5:
            raise AdminError("envoy admin GET /stats: timed out")
        return admin.envoy_answer()

    admin = FakeAdmin(w, readiness=answer)
    h = Harness(world=w, admin=admin)
    h.probe(3.5, "one miss")
    h.probe(4.3, "two misses")
    h.probe(5.5, "back")
    w.signal_at(6.0, signal.SIGTERM)

    assert h.agent.run() == EXIT_OK

    assert h.probes["one miss"] == (State.READY, READY_0, True)
    assert h.probes["two misses"] == (State.NOT_READY, (False, "not ready: envoy epoch 0 is starting"), False)
    assert h.probes["back"] == (State.READY, READY_0, True)
    assert "envoy epoch 0 is no longer ready" in caplog.text
    assert h.starts() == [0] and h.agent.metrics.restarts == 0


def test_watchdog_pings_only_while_envoy_serves():
    w = World()

    def start(epoch):
        return FakeEnvoy(w, epoch, ready_after=3.0 if not w.envoys else 0.05)

    def answer():
        if 9.0 <= w.elapsed < 12.0:
            raise AdminError("envoy admin GET /stats: timed out")
        return admin.envoy_answer()

    admin = FakeAdmin(w, readiness=answer)
    h = Harness(world=w, admin=admin, start=start, watchdog_usec=2_000_000)  # a ping a second
    w.at(6.0, lambda: w.envoys[0].exit(1))  # then 1 s of backoff
    w.signal_at(14.0, signal.SIGTERM)

    assert h.agent.run() == EXIT_OK

    pings = [(t, s) for (t, m), s in zip(h.notifier.sent, h.notifier.states) if m == "WATCHDOG=1"]
    assert pings and all(s in SERVING for _t, s in pings)
    times = [t for t, _s in pings]
    assert not [t for t in times if t < 3.0]  # starting
    assert not [t for t in times if 6.0 <= t < 7.05]  # backing off, then starting
    assert not [t for t in times if 10.07 <= t < 12.0]  # no longer ready
    assert [round(t) for t in times] == [3, 4, 5, 7, 8, 9, 12, 13]


# --- hot restarts --------------------------------------------------------------------------


def test_a_changed_fingerprint_means_a_hot_restart_one_hand_over_at_a_time(caplog):
    w = World()
    binary = {"identity": ("envoy", 1, 2, 3)}
    alive_at_start = []

    def start(epoch):
        alive_at_start.append(sum(e.returncode is None for e in w.envoys))
        if epoch:  # Envoy shuts the parent down after parent_shutdown_time_s
            parent = w.envoys[-1]
            w.after(3.0, lambda: parent.exit(0))
        return FakeEnvoy(w, epoch)

    h = Harness(world=w, start=start, fingerprint=lambda: Fingerprint(("config",), binary["identity"], ""))
    w.at(2.0, lambda: binary.update(identity=("envoy", 9, 9, 9)))  # an upgrade, seen at the 5 s watch
    h.probe(5.02, "handing over")
    h.probe(6.0, "epoch 1")
    w.signal_at(5.5, signal.SIGUSR1)  # asked again while epoch 0 still drains (until 8 s)
    w.signal_at(12.0, signal.SIGTERM)

    assert h.agent.run() == EXIT_OK

    assert h.starts() == [0, 1, 2]
    zero, one, two = w.envoys
    assert one.started_at == pytest.approx(5.0)
    assert two.started_at >= zero.exited_at == pytest.approx(8.0)
    assert alive_at_start == [0, 1, 1]  # never more than one parent
    assert h.probes["handing over"] == (State.HOT_RESTARTING, READY_0, True)
    assert h.probes["epoch 1"] == (State.READY, (True, "ready: envoy epoch 1 live"), True)
    assert ("cleanup", [1]) in h.calls  # epoch 0's bootstrap, once it has exited
    assert "STATUS=hot restart: epoch 1 taking over" in h.notifier.messages()
    assert "STATUS=hot restart: epoch 2 taking over" in h.notifier.messages()
    assert "watched files changed: bootstrap, binary or control-plane credentials changed; hot restart" in caplog.text
    assert "hot restart done: epoch 1 ready" in caplog.text
    m = h.agent.metrics
    assert (m.hot_restarts, m.epoch, m.restarts, m.envoy_starts, m.errors) == (2, 2, 0, 3, 0)


def test_a_hot_restart_waits_until_envoy_is_ready():
    w = World()
    h = Harness(world=w)
    w.signal_at(0.01, signal.SIGUSR1)  # while epoch 0 is still starting
    w.signal_at(2.0, signal.SIGTERM)

    assert h.agent.run() == EXIT_OK

    [ready_at] = h.notifier.times("READY=1\nSTATUS=ready: envoy epoch 0")
    assert h.starts() == [0, 1]
    assert w.envoys[1].started_at > ready_at


def test_a_new_epoch_dying_during_the_hot_restart_leaves_the_parent_serving(caplog):
    w = World()

    def start(epoch):
        envoy = FakeEnvoy(w, epoch, ready_after=None if epoch else 0.05)
        if epoch:
            w.after(0.5, lambda: envoy.exit(1))
        return envoy

    h = Harness(world=w, start=start)
    w.signal_at(2.0, signal.SIGUSR1)
    h.probe(2.2, "handing over")
    h.probe(3.0, "kept")
    w.signal_at(4.0, signal.SIGTERM)

    assert h.agent.run() == EXIT_OK

    assert h.starts() == [0, 1]
    assert h.probes["handing over"] == (State.HOT_RESTARTING, READY_0, True)
    assert h.probes["kept"] == (State.READY, READY_0, True)
    assert w.envoys[0].signals == [signal.SIGTERM]  # only at the stop: it kept serving
    assert ("cleanup", [0]) in h.calls
    assert "envoy epoch 1 exited with 1 during hot restart; keeping epoch 0" in caplog.text
    m = h.agent.metrics
    assert (m.errors, m.restarts, m.hot_restarts, m.epoch) == (1, 0, 1, 0)


def test_a_new_epoch_never_ready_is_killed_and_the_parent_kept():
    w = World()
    h = Harness(world=w, start=lambda epoch: FakeEnvoy(w, epoch, ready_after=None if epoch else 0.05))
    w.signal_at(2.0, signal.SIGUSR1)
    h.probe(13.0, "kept")
    w.signal_at(14.0, signal.SIGTERM)

    assert h.agent.run() == EXIT_OK

    parent, child = w.envoys
    assert child.signals == [signal.SIGKILL] and 12.0 <= child.exited_at <= 12.03
    assert h.probes["kept"] == (State.READY, READY_0, True)
    assert parent.signals == [signal.SIGTERM]
    m = h.agent.metrics
    assert (m.errors, m.restarts, m.epoch) == (2, 0, 0)  # not ready in time, then its exit


# --- reloads and watched files -------------------------------------------------------------


def test_sighup_rewrites_files_for_listener_changes_and_hot_restarts_for_the_bootstrap(caplog):
    base = agent_config()
    listeners_only = replace(base, inbound=parse_config({"inbound": {"services": [{"name": "a", "port": 81}]}}).inbound)
    new_log_level = replace(listeners_only, envoy=replace(base.envoy, log_level="debug"))
    configs = [listeners_only, new_log_level]
    h = Harness(base, load_config=lambda: configs.pop(0))
    h.world.signal_at(2.0, signal.SIGHUP)
    h.world.at(3.0, lambda: h.probes.update(after_first=(h.starts(), h.agent.metrics.config_reloads)))
    h.world.signal_at(4.0, signal.SIGHUP)  # the log level is on Envoy's command line: a new process
    h.world.signal_at(6.0, signal.SIGTERM)

    assert h.agent.run() == EXIT_OK

    assert h.probes["after_first"] == ([0], 1)  # no restart of any kind
    assert "config reload: updated listeners/clusters in place, no restart" in caplog.text
    assert h.starts() == [0, 1]
    assert "config reload: bootstrap, binary or control-plane credentials changed; hot restart" in caplog.text
    assert h.agent.cfg is new_log_level and h.agent.proxy is h.proxies[-1] and len(h.proxies) == 3
    m = h.agent.metrics
    assert (m.config_reloads, m.hot_restarts, m.errors) == (1, 1, 0)


def test_merged_metrics_end_with_what_extra_metrics_renders_for_the_running_config():
    base = agent_config()
    reloaded = replace(base, telemetry=replace(base.telemetry, domain="corp.example"))
    seen = []

    def extra(cfg) -> str:
        seen.append(cfg.telemetry.domain)
        return f'istio_requests_total{{destination_service="web.shop.{cfg.telemetry.domain}"}} 1\n'

    h = Harness(base, load_config=lambda: reloaded, extra_metrics=extra)
    h.world.at(1.0, lambda: h.probes.update(before=h.agent.merged_metrics().decode()))
    h.world.signal_at(2.0, signal.SIGHUP)
    h.world.at(3.0, lambda: h.probes.update(after=h.agent.merged_metrics().decode()))
    h.world.signal_at(4.0, signal.SIGTERM)

    assert h.agent.run() == EXIT_OK
    before = h.probes["before"]
    assert before.startswith("envoy_server_live 1\n")  # Envoy's, then the agent's, then the extra ones
    assert before.index("hostmesh_agent_ready 1") < before.index("istio_requests_total")
    assert before.endswith('istio_requests_total{destination_service="web.shop.mesh.internal"} 1\n')
    assert h.probes["after"].endswith('{destination_service="web.shop.corp.example"} 1\n')
    assert seen == ["mesh.internal", "corp.example"]
    # The telemetry config lives in the watched files' world: no restart for it.
    assert h.starts() == [0]


def test_rotated_certificates_are_applied_in_place(caplog):
    certs = {"digest": "aaaa"}
    h = Harness(tls_fingerprint=lambda: certs["digest"])
    h.world.at(2.0, lambda: certs.update(digest="bbbb"))  # seen at the 5 s watch
    h.world.signal_at(6.0, signal.SIGTERM)

    assert h.agent.run() == EXIT_OK

    assert h.starts() == [0]
    assert h.agent.metrics.config_reloads == 1
    assert "watched files changed: updated certificates in place, no restart" in caplog.text


def test_a_rejected_reload_keeps_the_running_config(caplog):
    def bad():
        raise ConfigError("config key 'inbound.services[1].name': \"web\" is already used")

    h = Harness(load_config=bad)
    before = h.agent.cfg
    h.world.signal_at(2.0, signal.SIGHUP)
    h.probe(2.5, "after")
    h.world.signal_at(3.0, signal.SIGTERM)

    assert h.agent.run() == EXIT_OK

    assert h.agent.cfg is before and len(h.proxies) == 1 and h.starts() == [0]
    assert h.probes["after"] == (State.READY, READY_0, True)
    assert h.agent.metrics.errors == 1 and h.agent.metrics.config_reloads == 0
    assert "config reload rejected, keeping the running config: config key 'inbound.services[1].name'" in caplog.text


@pytest.mark.parametrize(
    ("change", "key"),
    [({"envoy": {"base_id": 7}}, "envoy.base_id"), ({"run_dir": "/elsewhere"}, "run_dir")],
)
def test_reload_refuses_keys_that_need_a_service_restart(change, key):
    new = parse_config(change)
    h = Harness(load_config=lambda: new)
    before = h.agent.cfg
    h.world.signal_at(2.0, signal.SIGHUP)
    h.world.signal_at(3.0, signal.SIGTERM)

    assert h.agent.run() == EXIT_OK

    assert h.agent.cfg is before and h.agent.metrics.errors == 1 and h.starts() == [0]
    with pytest.raises(ConfigError, match=f"config key '{key}'.*takes effect only when the service restarts"):
        check_reloadable(before, new)


# --- cannot start at all -------------------------------------------------------------------


def test_a_missing_binary_exits_2_before_anything_runs(caplog):
    def missing():
        raise ProxyError("envoy binary 'envoy' not found (config key 'envoy.binary')")

    h = Harness(prepare=missing)

    assert h.agent.run() == EXIT_START_FAILED

    assert h.calls == [("prepare",)]
    assert h.world.open_calls == 0 and h.notifier.messages() == []
    assert "envoy binary 'envoy' not found (config key 'envoy.binary')" in caplog.text
    with socket.socket() as s:  # no status server was left behind
        s.bind(("127.0.0.1", h.cfg.ports.status))


def test_a_status_port_in_use_exits_2(caplog):
    h = Harness()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", h.cfg.ports.status))
        taken.listen()
        assert h.agent.run() == EXIT_START_FAILED
    assert h.starts() == []
    assert (
        f"cannot serve status on 127.0.0.1:{h.cfg.ports.status} (config keys 'listen.status_address',"
        " 'ports.status'): Address already in use" in caplog.text
    )


def test_an_envoy_killed_by_sigabrt_is_logged_as_a_crash_not_a_rejection(caplog):
    w = World()
    h = Harness(world=w)
    w.at(2.0, lambda: w.envoys[0].exit(-6))
    h.probe(7.0, "ready again")
    w.signal_at(8.0, signal.SIGTERM)

    assert h.agent.run() == EXIT_OK

    assert h.probes["ready again"] == (State.READY, READY_0, True)
    assert (
        "envoy epoch 0 (pid 4000) exited with -6 (signal SIGABRT: crashed, not a config rejection: "
        "Envoy aborted (a failed assert: look for its [critical] line)" in caplog.text
    )
    assert "inotify" in caplog.text
