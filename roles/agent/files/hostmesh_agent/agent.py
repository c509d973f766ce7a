"""The Agent: owns Envoy's lifecycle — epochs, crash restarts, hot restarts, drain, exit.

It is handed what it supervises through small interfaces: a ``Proxy`` that runs
one Envoy (and a factory for the Proxy of a reloaded config), the Envoy admin
client, the clock and the signal inbox; cli.py wires the real ones, the unit
tests fakes. Its states and the moves between them are in lifecycle.py.

One thread (the main one) makes every lifecycle decision in ``run()``; signal
handlers only record the signal and wake the loop. The status server runs in
its own thread and only reads.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from hostmesh_agent.admin import Admin, AdminError, EnvoyReadiness
from hostmesh_agent.backoff import Backoff
from hostmesh_agent.clock import Clock
from hostmesh_agent.config import Config, ConfigError
from hostmesh_agent.envoy_exit import describe_exit
from hostmesh_agent.lifecycle import (
    CHECKS_TO_UNREADY,
    HEALTHY_POLL_S,
    READY_POLL_S,
    SERVING,
    State,
    Timers,
    check_transition,
    readiness,
)
from hostmesh_agent.metrics import AgentMetrics
from hostmesh_agent.proxy import EpochProcess, Fingerprint, Proxy, ProxyError
from hostmesh_agent.resources import DRAINED_STAT_PREFIXES, expected_listener_count
from hostmesh_agent.sdnotify import Notifier, SystemdStatus
from hostmesh_agent.signal_inbox import Inbox
from hostmesh_agent.status_server import StatusServer

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CRASH_LOOP = 1
EXIT_START_FAILED = 2

_DRAIN_POLL_S = 0.1


def is_ready(cfg: Config, r: EnvoyReadiness, epoch: int) -> bool:
    """Ready = the epoch we started is LIVE, has its first LDS and CDS, and its listeners.

    Checking the epoch matters during a hot restart: until the child takes the
    admin socket over, the parent (still LIVE) is the one answering.
    """
    if not (r.live and r.epoch == epoch and r.lds_updates >= 1 and r.cds_updates >= 1):
        return False
    if cfg.mode == "standalone":
        return r.listeners_active >= expected_listener_count(cfg) and r.listeners_warming == 0
    return True


def check_reloadable(running: Config, new: Config) -> None:
    """Keys a running agent cannot take on: a hot restart needs the same base id, and the
    old epochs' files live in the old run directory. Changing them needs a service restart."""
    for key, old, now in (
        ("envoy.base_id", running.envoy.base_id, new.envoy.base_id),
        ("run_dir", running.run_dir, new.run_dir),
    ):
        if old != now:
            raise ConfigError(
                f"config key '{key}': got {now!r} but the running agent uses {old!r}; "
                "this key takes effect only when the service restarts"
            )


@dataclass
class Applied:
    """What the running Envoy was last given, to tell which kind of change a new one is."""

    fingerprint: Optional[Fingerprint] = None  # a change needs a hot restart
    tls: str = ""  # the certificates' digest: a change is applied in place


class Agent:
    def __init__(
        self,
        cfg: Config,
        proxy: Proxy,
        *,
        new_proxy: Callable[[Config], Proxy],
        load_config: Callable[[], Config],
        admin: Callable[[Config], Admin],
        notifier: Notifier,
        clock: Clock,
        signals: Inbox,
        status_server: Callable[..., StatusServer],
        extra_metrics: Optional[Callable[[Config], str]] = None,
    ) -> None:
        """``new_proxy`` makes the Proxy for a reloaded config, ``load_config`` re-reads the
        config on SIGHUP, ``admin`` gives the admin client for a config's address,
        ``status_server`` is StatusServer or a factory with its signature, and
        ``extra_metrics`` renders what the merged metrics add after the agent's own
        (service telemetry, policy counters)."""
        self.cfg = cfg
        self.proxy = proxy
        self._new_proxy = new_proxy
        self._load_config = load_config
        self._admin = admin
        self._clock = clock
        self._signals = signals
        self._serve_status = status_server
        self._extra_metrics = extra_metrics
        self.metrics = AgentMetrics(started_at=clock.now())
        self.systemd = SystemdStatus(notifier)
        s = cfg.supervise
        self.backoff = Backoff(
            s.backoff_initial_s, s.backoff_max_s, s.backoff_multiplier, s.healthy_reset_s, s.max_consecutive_crashes
        )
        self.state = State.STOPPED
        self.current: Optional[EpochProcess] = None
        self.parents: List[EpochProcess] = []  # epochs that handed over and are still draining
        self.timers = Timers()
        self.failed_checks = 0  # readiness polls failed in a row
        self.applied = Applied()
        self.hot_restart_pending = False
        self.status_server: Optional[StatusServer] = None

    # --- what the status server reads ------------------------------------------------

    def readiness(self) -> Tuple[bool, str]:
        current = self.current
        return readiness(self.state, current.epoch if current else None, self.metrics.epoch)

    def merged_metrics(self) -> bytes:
        body = b""
        try:
            body = self._admin(self.cfg).prometheus()
            if body and not body.endswith(b"\n"):
                body += b"\n"
        except AdminError as exc:
            log.debug("envoy stats unavailable: %s", exc)
        body += self.metrics.render(self._clock.now()).encode()
        if self._extra_metrics:
            body += self._extra_metrics(self.cfg).encode()
        return body

    # --- main loop ---------------------------------------------------------------------

    def run(self) -> int:
        """Run until told to stop (exit 0), a crash loop outlasts its bound (exit 1), or
        Envoy cannot be started at all (exit 2)."""
        try:
            self.proxy.prepare()
        except ProxyError as exc:
            log.error("%s", exc)
            return EXIT_START_FAILED
        try:
            self.status_server = self._serve_status(
                self.cfg.listen.status_address, self.cfg.ports.status, self.readiness, self.merged_metrics
            )
        except OSError as exc:
            log.error(
                "cannot serve status on %s:%d (config keys 'listen.status_address', 'ports.status'): %s",
                self.cfg.listen.status_address,
                self.cfg.ports.status,
                exc.strerror,
            )
            return EXIT_START_FAILED
        self._signals.open()
        self.status_server.start()
        try:
            self.proxy.write_dynamic()
            self.applied = Applied(self.proxy.fingerprint(), self.proxy.tls_fingerprint())
            self._start_fresh()
            while True:
                code = self._step()
                if code is not None:
                    return code
                now = self._clock.now()
                busy = bool(self.parents) or self.hot_restart_pending
                watchdog = self.systemd.next_watchdog(self.state in SERVING)
                self._signals.wait(self.timers.next_wakeup(now, self.state, watchdog, busy))
        finally:
            self._stop_all_envoys()
            self.status_server.stop()
            self._signals.close()
            self.proxy.cleanup(())
            if self.state is not State.STOPPED:
                self._enter(State.STOPPED)

    def _step(self) -> Optional[int]:
        """One pass over everything due; an exit status when the agent is done."""
        for sig in self._signals.take():
            self._on_signal(sig)
        if self.state is State.DRAINING:
            self._graceful_stop()
            return EXIT_OK
        now = self._clock.now()
        self._reap_parents()
        if self.current is not None and self.current.exited() is not None:
            code = self._on_current_exit(now)
            if code is not None:
                return code
        if self.state is State.BACKING_OFF and now >= self.timers.restart:
            self._start_fresh()
            if self.state is State.BACKING_OFF and self.backoff.exhausted:
                log.error("envoy could not be started %d times in a row, giving up", self.backoff.consecutive)
                self._enter(State.STOPPED)
                return EXIT_CRASH_LOOP
        if now >= self.timers.watch:
            self.timers.watch = now + self.cfg.supervise.watch_interval_s
            self._apply_changes(reason="watched files changed")
        if self.hot_restart_pending and self._can_hot_restart():
            self._hot_restart()
        if self.current is not None and now >= self.timers.health:
            self._check_health(now)
        self.systemd.watchdog(now, self.state in SERVING)
        return None

    def _enter(self, new: State) -> None:
        """Every change of state goes through here."""
        check_transition(self.state, new)
        log.debug("agent state: %s -> %s", self.state.value, new.value)
        self.state = new
        self.metrics.ready = new in SERVING
        if new is State.READY:
            self.failed_checks = 0

    # --- signals -----------------------------------------------------------------------

    def _on_signal(self, sig: int) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            log.info("received %s: stopping gracefully", signal.Signals(sig).name)
            if self.state is not State.DRAINING:
                self._enter(State.DRAINING)
        elif sig == signal.SIGUSR1:
            log.info("received SIGUSR1: hot restart requested")
            self.hot_restart_pending = True
        elif sig == signal.SIGHUP:
            log.info("received SIGHUP: re-reading config")
            self.reload()

    # --- starting and restarting -------------------------------------------------------

    def _start_fresh(self) -> None:
        """Start epoch 0: at boot, or after a crash when no older Envoy is left."""
        self._kill(self.parents)
        self.parents = []
        try:
            proc = self.proxy.start(0)
        except ProxyError as exc:
            log.error("%s", exc)
            self.metrics.errors += 1
            self.timers.restart = self._clock.now() + self.backoff.crashed()
            self._enter(State.BACKING_OFF)
            return
        self.metrics.envoy_starts += 1
        self.current = proc
        self._enter(State.STARTING)
        self.timers.expect_ready(self._clock.now(), self.cfg.supervise.ready_timeout_s)
        self.systemd.status(f"starting envoy epoch {proc.epoch}")
        self.proxy.cleanup([0])

    def _can_hot_restart(self) -> bool:
        # One hand-over at a time: Envoy's hot restart pairs one parent with one child.
        return (
            self.state is State.READY
            and self.current is not None
            and self.current.exited() is None
            and not self.parents
        )

    def _hot_restart(self) -> None:
        assert self.current is not None
        self.hot_restart_pending = False
        epoch = self.current.epoch + 1
        try:
            child = self.proxy.start(epoch)
        except ProxyError as exc:
            log.error("hot restart to epoch %d failed: %s", epoch, exc)
            self.metrics.errors += 1
            return
        self.metrics.envoy_starts += 1
        self.metrics.hot_restarts += 1
        self.parents.append(self.current)
        self.current = child
        self._enter(State.HOT_RESTARTING)
        self.timers.expect_ready(self._clock.now(), self.cfg.supervise.ready_timeout_s)
        self.systemd.status(f"hot restart: epoch {epoch} taking over")

    def _on_current_exit(self, now: float) -> Optional[int]:
        assert self.current is not None
        proc, code = self.current, self.current.exited()
        self.current = None
        if self.state is State.HOT_RESTARTING and self.parents:
            # The new epoch died before taking over; the parent is still serving.
            log.error(
                "envoy epoch %d exited with %s during hot restart; keeping epoch %d",
                proc.epoch,
                describe_exit(code),
                self.parents[-1].epoch,
            )
            self.metrics.errors += 1
            self.current = self.parents.pop()
            self._enter(State.READY)
            self.proxy.cleanup([p.epoch for p in self._alive()])
            return None
        self.metrics.restarts += 1
        delay = self.backoff.crashed()
        if self.backoff.exhausted:
            self._enter(State.STOPPED)
            log.error(
                "envoy exited with %s; %d crashes in a row, giving up",
                describe_exit(code),
                self.backoff.consecutive,
            )
            self.systemd.status(f"giving up: envoy crashed {self.backoff.consecutive} times in a row")
            return EXIT_CRASH_LOOP
        self.timers.restart = now + delay
        self._enter(State.BACKING_OFF)
        log.warning(
            "envoy epoch %d (pid %d) exited with %s; restarting in %.2fs",
            proc.epoch,
            proc.pid,
            describe_exit(code),
            delay,
        )
        self.systemd.status(f"envoy exited ({code}); restarting in {delay:.1f}s")
        return None

    def _reap_parents(self) -> None:
        still = [p for p in self.parents if p.exited() is None]
        if len(still) != len(self.parents):
            self.parents = still
            self.proxy.cleanup([p.epoch for p in self._alive()])

    def _alive(self) -> List[EpochProcess]:
        return [p for p in [*self.parents, self.current] if p is not None and p.exited() is None]

    # --- health ------------------------------------------------------------------------

    def _check_health(self, now: float) -> None:
        proc = self.current
        assert proc is not None
        try:
            healthy = is_ready(self.cfg, self._admin(self.cfg).readiness(), proc.epoch)
        except AdminError:
            healthy = False
        if healthy:
            self.failed_checks = 0
            self.backoff.healthy(now)
            if self.state is State.HOT_RESTARTING:
                log.info("hot restart done: epoch %d ready", proc.epoch)
            elif self.state is not State.READY:
                log.info("envoy epoch %d ready", proc.epoch)
            if self.state is not State.READY:
                self._enter(State.READY)
            self.metrics.epoch = proc.epoch
            self.systemd.ready(proc.epoch)
            self.timers.health = now + HEALTHY_POLL_S
            return
        self.failed_checks += 1
        if self.state is State.READY and self.failed_checks >= CHECKS_TO_UNREADY:
            log.warning("envoy epoch %d is no longer ready", proc.epoch)
            self._enter(State.NOT_READY)
            self.backoff.unhealthy()
            self.timers.ready_by = now + self.cfg.supervise.ready_timeout_s
        waiting = self.state is not State.READY  # for a new epoch, or one that stopped being ready
        if waiting and now > self.timers.ready_by:
            log.error(
                "envoy epoch %d not ready after %.0fs; restarting it",
                proc.epoch,
                self.cfg.supervise.ready_timeout_s,
            )
            self.metrics.errors += 1
            self._kill([proc])
            self.timers.ready_by = now + self.cfg.supervise.ready_timeout_s
        self.timers.health = now + (READY_POLL_S if waiting else HEALTHY_POLL_S)

    # --- changes -----------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: re-read the config; update files if that suffices, else hot restart."""
        try:
            cfg = self._load_config()
            check_reloadable(self.cfg, cfg)
        except ConfigError as exc:
            log.error("config reload rejected, keeping the running config: %s", exc)
            self.metrics.errors += 1
            return
        self.cfg = cfg
        self.proxy = self._new_proxy(cfg)
        self._apply_changes(reason="config reload")

    def _apply_changes(self, reason: str) -> None:
        """Write what changed into the watched files; a change they cannot carry (bootstrap,
        binary, control-plane credentials) asks for a hot restart."""
        try:
            changed = self.proxy.write_dynamic()
        except (OSError, ProxyError) as exc:
            log.error("cannot write dynamic config: %s", exc)
            self.metrics.errors += 1
            return
        tls = self.proxy.tls_fingerprint()
        if changed:
            self.metrics.config_reloads += 1
            what = "certificates" if tls != self.applied.tls else "listeners/clusters"
            log.info("%s: updated %s in place, no restart", reason, what)
        self.applied.tls = tls
        fp = self.proxy.fingerprint()
        if fp != self.applied.fingerprint:
            log.info("%s: bootstrap, binary or control-plane credentials changed; hot restart", reason)
            self.applied.fingerprint = fp
            self.hot_restart_pending = True

    # --- stopping ----------------------------------------------------------------------

    def _graceful_stop(self) -> None:
        self.systemd.stopping()
        s = self.cfg.supervise
        proc = self.current
        if proc is not None and proc.exited() is None:
            admin = self._admin(self.cfg)
            try:
                admin.drain_listeners()
            except AdminError as exc:
                log.warning("could not start drain: %s", exc)
            started = self._clock.now()
            deadline = started + s.drain_timeout_s
            while self._clock.now() < deadline and proc.exited() is None:
                try:
                    active = admin.active_connections(DRAINED_STAT_PREFIXES)
                except AdminError as exc:
                    log.warning("cannot count open connections, stopping now: %s", exc)
                    break
                log.debug("draining: %d inbound connections open", active)
                if active == 0:
                    log.info("drained in %.1fs", self._clock.now() - started)
                    break
                self._clock.sleep(_DRAIN_POLL_S)
            else:
                log.warning("drain bound reached; stopping envoy with connections open")
            # A hot restart's parent still finishing its connections gets the same bound.
            while self.parents and self._clock.now() < deadline:
                self._reap_parents()
                self._clock.sleep(_DRAIN_POLL_S)
        self._stop_all_envoys()
        log.info("stopped")

    def _stop_all_envoys(self) -> None:
        procs = self._alive()
        for p in procs:
            p.signal(signal.SIGTERM)
        deadline = self._clock.now() + self.cfg.supervise.stop_timeout_s
        for p in procs:
            p.wait(max(0.0, deadline - self._clock.now()))
        self._kill(procs)
        self.current = None
        self.parents = []
        if procs:
            self.proxy.remove_shared_memory()

    def _kill(self, procs: List[EpochProcess]) -> None:
        for p in procs:
            if p.exited() is None:
                p.signal(signal.SIGKILL)
                p.wait()
