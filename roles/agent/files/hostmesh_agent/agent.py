"""The Agent: owns Envoy's lifecycle — epochs, crash restarts, hot restarts, drain, exit.

One thread (the main one) makes every lifecycle decision in ``run()``; signal
handlers only record the signal and wake the loop. The status server runs in
its own thread and only reads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, List, Optional, Tuple

from hostmesh_agent.admin import AdminError, EnvoyAdmin, EnvoyReadiness
from hostmesh_agent.backoff import Backoff
from hostmesh_agent.config import Config, ConfigError, restart_relevant
from hostmesh_agent.metrics import AgentMetrics
from hostmesh_agent.proxy import EnvoyProcess, Proxy, ProxyError
from hostmesh_agent.resources import DRAINED_STAT_PREFIXES, expected_listener_count
from hostmesh_agent.sdnotify import Notifier
from hostmesh_agent.status_server import StatusServer

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CRASH_LOOP = 1
EXIT_START_FAILED = 2

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD)
_READY_POLL_S = 0.02
_HEALTHY_POLL_S = 1.0
_CHECKS_TO_UNREADY = 2


def is_ready(cfg: Config, r: EnvoyReadiness, epoch: int) -> bool:
    """Ready = the epoch we started is LIVE, has its first LDS and CDS, and its listeners.

    Checking the epoch matters during a hot restart: until the child takes the
    admin port over, the parent (still LIVE) is the one answering.
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


@dataclass(frozen=True)
class Fingerprint:
    """What, when it changes, needs a new Envoy process rather than a file update."""

    config: Tuple
    binary: Tuple
    xds_files: str


class Agent:
    def __init__(
        self,
        cfg: Config,
        ip: str,
        load_config: Callable[[], Config],
        environ: Optional[dict] = None,
    ) -> None:
        self.cfg = cfg
        self.proxy = Proxy(cfg, ip)
        self._load_config = load_config
        self._ip = ip
        self.notifier = Notifier(environ if environ is not None else dict(os.environ))
        self.metrics = AgentMetrics(started_at=time.monotonic())
        s = cfg.supervise
        self.backoff = Backoff(
            s.backoff_initial_s,
            s.backoff_max_s,
            s.backoff_multiplier,
            s.healthy_reset_s,
            s.max_consecutive_crashes,
        )
        self.current: Optional[EnvoyProcess] = None
        self.draining: List[EnvoyProcess] = []
        self.ready = False
        self.stopping = False
        self._signals: Deque[int] = deque()
        self._restart_at: Optional[float] = None
        self._hot_restart_wanted = False
        self._hot_restart_in_flight = False
        self._fingerprint: Optional[Fingerprint] = None
        self._tls_fingerprint = ""
        self._next_watch = 0.0
        self._next_health = 0.0
        self._next_watchdog = 0.0
        self._ready_deadline = 0.0
        self._notified_ready = False
        self._failed_checks = 0
        self._last_status = ""
        self._wake_r, self._wake_w = socket.socketpair()
        self.status_server: Optional[StatusServer] = None

    # --- what the status server reads ------------------------------------------------

    def readiness(self) -> Tuple[bool, str]:
        if self.stopping:
            return False, "stopping: draining connections"
        if self.ready:
            return True, f"ready: envoy epoch {self.metrics.epoch} live"
        if self.current is None:
            return False, "not ready: envoy is not running"
        return False, f"not ready: envoy epoch {self.current.epoch} is starting"

    def merged_metrics(self) -> bytes:
        body = b""
        try:
            body = self._admin().prometheus()
            if body and not body.endswith(b"\n"):
                body += b"\n"
        except AdminError as exc:
            log.debug("envoy stats unavailable: %s", exc)
        return body + self.metrics.render(time.monotonic()).encode()

    # --- main loop ---------------------------------------------------------------------

    def run(self) -> int:
        """Run until told to stop (exit 0) or a crash loop outlasts its bound (exit 1)."""
        try:
            self.proxy.prepare_run_dir()
            self.proxy.binary()
        except ProxyError as exc:
            log.error("%s", exc)
            return EXIT_START_FAILED
        try:
            self.status_server = StatusServer(
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
        self._install_signals()
        self.status_server.start()
        try:
            self.proxy.write_dynamic()
            self._tls_fingerprint = self.proxy.tls_fingerprint()
            self._fingerprint = self._take_fingerprint(self.proxy)
            self._start_fresh()
            return self._loop()
        finally:
            self._stop_all_envoys()
            self.status_server.stop()
            self.proxy.cleanup(())

    def _loop(self) -> int:
        while True:
            self._handle_signals()
            if self.stopping:
                self._graceful_stop()
                return EXIT_OK
            now = time.monotonic()
            self._reap_draining()
            if self.current is not None and self.current.exited() is not None:
                code = self._on_current_exit(now)
                if code is not None:
                    return code
            if self.current is None and self._restart_at is not None and now >= self._restart_at:
                self._start_fresh()
                if self.current is None and self.backoff.exhausted:
                    log.error("envoy could not be started %d times in a row, giving up", self.backoff.consecutive)
                    return EXIT_CRASH_LOOP
            if now >= self._next_watch:
                self._next_watch = now + self.cfg.supervise.watch_interval_s
                self._watch_for_changes()
            if self._hot_restart_wanted and self._can_hot_restart():
                self._hot_restart()
            if self.current is not None and now >= self._next_health:
                self._check_health(now)
            self._watchdog(now)
            self._sleep(self._next_wakeup(now))

    def _next_wakeup(self, now: float) -> float:
        deadlines = [self._next_watch, self._next_health if self.current else now + 1.0]
        if self._restart_at is not None:
            deadlines.append(self._restart_at)
        if self.notifier.watchdog_interval_s:
            deadlines.append(self._next_watchdog)
        if self.draining or self._hot_restart_wanted:
            deadlines.append(now + 0.2)
        return max(0.0, min(deadlines) - now)

    def _sleep(self, timeout: float) -> None:
        readable = select.select([self._wake_r], [], [], timeout)[0]
        if readable:
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(4096)

    # --- signals -----------------------------------------------------------------------

    def _install_signals(self) -> None:
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in _SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.popleft()
            if sig in (signal.SIGTERM, signal.SIGINT):
                log.info("received %s: stopping gracefully", signal.Signals(sig).name)
                self.stopping = True
            elif sig == signal.SIGUSR1:
                log.info("received SIGUSR1: hot restart requested")
                self._hot_restart_wanted = True
            elif sig == signal.SIGHUP:
                log.info("received SIGHUP: re-reading config")
                self.reload()

    # --- starting and restarting -------------------------------------------------------

    def _take_fingerprint(self, proxy: Proxy) -> Fingerprint:
        try:
            binary = proxy.binary_identity()
        except (ProxyError, OSError):
            binary = ()
        return Fingerprint(tuple(repr(x) for x in restart_relevant(proxy.cfg)), binary, proxy.xds_fingerprint())

    def _start_fresh(self) -> None:
        """Start epoch 0: at boot, or after a crash when no older Envoy is left."""
        self._restart_at = None
        self._kill(self.draining)
        self.draining = []
        try:
            self.current = self.proxy.start(0)
        except ProxyError as exc:
            log.error("%s", exc)
            self.metrics.errors += 1
            self._restart_at = time.monotonic() + self.backoff.crashed()
            return
        self.metrics.envoy_starts += 1
        self._began_waiting_for_ready()
        self.proxy.cleanup([0])

    def _began_waiting_for_ready(self) -> None:
        self._next_health = time.monotonic()
        self._ready_deadline = time.monotonic() + self.cfg.supervise.ready_timeout_s
        self._status(f"starting envoy epoch {self.current.epoch if self.current else '?'}")

    def _can_hot_restart(self) -> bool:
        # One hand-over at a time: Envoy's hot restart pairs one parent with one child.
        return (
            self.current is not None
            and self.current.exited() is None
            and not self.draining
            and not self._hot_restart_in_flight
            and self.ready
        )

    def _hot_restart(self) -> None:
        assert self.current is not None
        self._hot_restart_wanted = False
        epoch = self.current.epoch + 1
        try:
            child = self.proxy.start(epoch)
        except ProxyError as exc:
            log.error("hot restart to epoch %d failed: %s", epoch, exc)
            self.metrics.errors += 1
            return
        self.metrics.envoy_starts += 1
        self.metrics.hot_restarts += 1
        self.draining.append(self.current)
        self.current = child
        self._hot_restart_in_flight = True
        self._next_health = time.monotonic()
        self._ready_deadline = time.monotonic() + self.cfg.supervise.ready_timeout_s
        self._status(f"hot restart: epoch {epoch} taking over")

    def _on_current_exit(self, now: float) -> Optional[int]:
        assert self.current is not None
        proc, code = self.current, self.current.exited()
        self.current = None
        if self._hot_restart_in_flight and self.draining:
            # The new epoch died before taking over; the parent is still serving.
            log.error(
                "envoy epoch %d exited with %s during hot restart; keeping epoch %d",
                proc.epoch,
                code,
                self.draining[-1].epoch,
            )
            self.metrics.errors += 1
            self.current = self.draining.pop()
            self._hot_restart_in_flight = False
            self.proxy.cleanup([p.epoch for p in self._alive()])
            return None
        self._hot_restart_in_flight = False
        self.ready = False
        self.metrics.ready = False
        self.metrics.restarts += 1
        delay = self.backoff.crashed()
        if self.backoff.exhausted:
            log.error(
                "envoy exited with %s; %d crashes in a row, giving up",
                code,
                self.backoff.consecutive,
            )
            self._status(f"giving up: envoy crashed {self.backoff.consecutive} times in a row")
            return EXIT_CRASH_LOOP
        log.warning(
            "envoy epoch %d (pid %d) exited with %s; restarting in %.2fs",
            proc.epoch,
            proc.pid,
            code,
            delay,
        )
        self._status(f"envoy exited ({code}); restarting in {delay:.1f}s")
        self._restart_at = now + delay
        return None

    def _reap_draining(self) -> None:
        still = [p for p in self.draining if p.exited() is None]
        if len(still) != len(self.draining):
            self.draining = still
            self.proxy.cleanup([p.epoch for p in self._alive()])

    def _alive(self) -> List[EnvoyProcess]:
        return [p for p in [*self.draining, self.current] if p is not None and p.exited() is None]

    # --- health ------------------------------------------------------------------------

    def _admin(self) -> EnvoyAdmin:
        return EnvoyAdmin(self.cfg.listen.admin_address, self.cfg.ports.admin)

    def _check_health(self, now: float) -> None:
        try:
            healthy = is_ready(self.cfg, self._admin().readiness(), self.current.epoch)
        except AdminError:
            healthy = False
        self._failed_checks = 0 if healthy else self._failed_checks + 1
        if healthy:
            self.backoff.healthy(now)
            if self._hot_restart_in_flight:
                self._hot_restart_in_flight = False
                log.info("hot restart done: epoch %d ready", self.current.epoch)
            if not self.ready:
                log.info("envoy epoch %d ready", self.current.epoch)
            self.ready = True
            self.metrics.epoch = self.current.epoch
            if not self._notified_ready:
                self._notified_ready = True
                self.notifier.send("READY=1", f"STATUS=ready: envoy epoch {self.current.epoch}")
            else:
                self._status(f"ready: envoy epoch {self.current.epoch}")
            self._next_health = now + _HEALTHY_POLL_S
        else:
            # One missed poll (a slow admin answer under load) is not yet a verdict.
            if not self._hot_restart_in_flight and self.ready and self._failed_checks >= _CHECKS_TO_UNREADY:
                log.warning("envoy epoch %d is no longer ready", self.current.epoch)
                self.ready = False
                self.backoff.unhealthy()
                self._ready_deadline = now + self.cfg.supervise.ready_timeout_s
            if now > self._ready_deadline and (not self.ready or self._hot_restart_in_flight):
                log.error(
                    "envoy epoch %d not ready after %.0fs; restarting it",
                    self.current.epoch,
                    self.cfg.supervise.ready_timeout_s,
                )
                self.metrics.errors += 1
                self._kill([self.current])
                self._ready_deadline = now + self.cfg.supervise.ready_timeout_s
            fast = not self.ready or self._hot_restart_in_flight
            self._next_health = now + (_READY_POLL_S if fast else _HEALTHY_POLL_S)
        self.metrics.ready = self.ready

    def _watchdog(self, now: float) -> None:
        interval = self.notifier.watchdog_interval_s
        if interval and now >= self._next_watchdog and self.ready:
            self.notifier.send("WATCHDOG=1")
            self._next_watchdog = now + interval

    def _status(self, text: str) -> None:
        if self._last_status != text:
            self._last_status = text
            self.notifier.status(text)

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
        self.proxy = Proxy(cfg, self._ip if cfg.node.ip == "auto" else cfg.node.ip)
        self._apply_changes(reason="config reload")

    def _watch_for_changes(self) -> None:
        """Poll for what can change under us: certificates and the Envoy binary."""
        self._apply_changes(reason="watched files changed")

    def _apply_changes(self, reason: str) -> None:
        try:
            self.proxy.prepare_run_dir()
            changed = self.proxy.write_dynamic()
        except (OSError, ProxyError) as exc:
            log.error("cannot write dynamic config: %s", exc)
            self.metrics.errors += 1
            return
        tls = self.proxy.tls_fingerprint()
        if changed:
            self.metrics.config_reloads += 1
            what = "certificates" if tls != self._tls_fingerprint else "listeners/clusters"
            log.info("%s: updated %s in place, no restart", reason, what)
        self._tls_fingerprint = tls
        fp = self._take_fingerprint(self.proxy)
        if fp != self._fingerprint:
            log.info("%s: bootstrap, binary or control-plane credentials changed; hot restart", reason)
            self._fingerprint = fp
            self._hot_restart_wanted = True

    # --- stopping ----------------------------------------------------------------------

    def _graceful_stop(self) -> None:
        self.ready = False
        self.metrics.ready = False
        self.notifier.send("STOPPING=1", "STATUS=stopping: draining connections")
        s = self.cfg.supervise
        if self.current is not None and self.current.exited() is None:
            admin = self._admin()
            try:
                admin.drain_listeners()
            except AdminError as exc:
                log.warning("could not start drain: %s", exc)
            started = time.monotonic()
            deadline = started + s.drain_timeout_s
            while time.monotonic() < deadline and self.current.exited() is None:
                try:
                    active = admin.active_connections(DRAINED_STAT_PREFIXES)
                except AdminError as exc:
                    log.warning("cannot count open connections, stopping now: %s", exc)
                    break
                log.debug("draining: %d inbound connections open", active)
                if active == 0:
                    log.info("drained in %.1fs", time.monotonic() - started)
                    break
                time.sleep(0.1)
            else:
                log.warning("drain bound reached; stopping envoy with connections open")
            # A hot restart's parent still finishing its connections gets the same bound.
            while self.draining and time.monotonic() < deadline:
                self._reap_draining()
                time.sleep(0.1)
        self._stop_all_envoys()
        log.info("stopped")

    def _stop_all_envoys(self) -> None:
        procs = self._alive()
        for p in procs:
            _signal(p, signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.supervise.stop_timeout_s
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(max(0.0, deadline - time.monotonic()))
        self._kill(procs)
        self.current = None
        self.draining = []
        if procs:
            self.proxy.remove_shared_memory()

    def _kill(self, procs: List[EnvoyProcess]) -> None:
        for p in procs:
            if p.exited() is None:
                _signal(p, signal.SIGKILL)
                p.popen.wait()


def _signal(proc: EnvoyProcess, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.popen.send_signal(sig)
