"""Fakes for driving the Agent through its public constructor, with no Envoy and no sleeping.

``World`` is the clock and the signal inbox in one: time moves only when the Agent
waits or sleeps, and events scheduled with ``after()`` fire when their time comes
(an Envoy exits, a signal arrives). ``FakeProxy`` and ``FakeAdmin`` take their
behaviour from function fields, as istio's agent tests do; a field left out does
the usual thing. Everything they are asked is recorded for the test to read.
"""

from __future__ import annotations

import functools
import heapq
import signal
import socket
from typing import Any, Callable, Dict, List, Optional, Tuple

from hostmesh_agent.admin import AdminError, EnvoyReadiness
from hostmesh_agent.agent import Agent
from hostmesh_agent.config import Config, parse_config, restart_relevant
from hostmesh_agent.proxy import Fingerprint
from hostmesh_agent.sdnotify import Notifier
from hostmesh_agent.status_server import StatusServer

T0 = 1000.0  # the fake clock's reading when a test starts


class World:
    """Fake time and signals. A test that would run past ``limit_s`` of fake time fails."""

    def __init__(self, limit_s: float = 3600.0, max_waits: int = 100_000) -> None:
        self.t = T0
        self.limit_s = limit_s
        self.max_waits = max_waits
        self.waits = 0
        self._events: List[Tuple[float, int, Callable[[], Any]]] = []
        self._seq = 0
        self._signals: List[int] = []
        self.envoys: List[FakeEnvoy] = []
        self.dynamic_files: Any = None  # what the watched files hold, as FakeProxy wrote them
        self.open_calls = 0
        self.close_calls = 0

    # --- Clock -------------------------------------------------------------------------
    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self._advance(self.t + max(0.0, seconds), until=lambda: False)

    # --- Inbox -------------------------------------------------------------------------
    def open(self) -> None:
        self.open_calls += 1

    def close(self) -> None:
        self.close_calls += 1

    def wait(self, timeout: float) -> None:
        self.waits += 1
        if self.waits > self.max_waits:
            raise AssertionError(f"the agent's loop went round {self.max_waits} times: a busy loop?")
        self._advance(self.t + timeout, until=lambda: bool(self._signals))

    def take(self) -> List[int]:
        taken, self._signals = self._signals, []
        return taken

    # --- what tests use ----------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return self.t - T0

    def after(self, delay: float, fn: Callable[[], Any]) -> None:
        """Run ``fn`` once ``delay`` seconds of fake time have passed from now."""
        self._seq += 1
        heapq.heappush(self._events, (self.t + delay, self._seq, fn))

    def at(self, elapsed: float, fn: Callable[[], Any]) -> None:
        """Run ``fn`` when ``elapsed`` seconds have passed since the test started."""
        self.after(T0 + elapsed - self.t, fn)

    def send(self, sig: int) -> None:
        """A signal reaches the agent (and cuts its wait short)."""
        self._signals.append(sig)

    def signal_at(self, elapsed: float, sig: int) -> None:
        self.at(elapsed, lambda: self.send(sig))

    def serving_envoy(self) -> Optional[FakeEnvoy]:
        """The Envoy answering on the admin socket: the newest epoch that is up."""
        up = [e for e in self.envoys if e.serving(self.t)]
        return max(up, key=lambda e: e.epoch) if up else None

    def _advance(self, deadline: float, until: Callable[[], bool]) -> None:
        while self._events and self._events[0][0] <= deadline and not until():
            when, _seq, fn = heapq.heappop(self._events)
            self.t = max(self.t, when)
            fn()
        if not until():
            self.t = max(self.t, deadline)
        if self.elapsed > self.limit_s:
            raise AssertionError(f"the agent was still running after {self.limit_s}s of fake time")


class FakeEnvoy:
    """A started Envoy as data: up ``ready_after`` seconds after its start (None: never), it
    exits when a test says so, or on SIGKILL, or on SIGTERM unless it ignores that."""

    def __init__(self, world: World, epoch: int, ready_after: Optional[float] = 0.05, ignores_sigterm=False) -> None:
        self.world = world
        self.epoch = epoch
        self.pid = 4000 + len(world.envoys)
        self.started_at = world.elapsed
        self.ready_at = None if ready_after is None else world.t + ready_after
        self.ignores_sigterm = ignores_sigterm
        self.returncode: Optional[int] = None
        self.exited_at: Optional[float] = None
        self.signals: List[int] = []
        world.envoys.append(self)

    def serving(self, now: float) -> bool:
        return self.returncode is None and self.ready_at is not None and now >= self.ready_at

    def exit(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self.exited_at = self.world.elapsed
            self.world.send(signal.SIGCHLD)

    # --- EpochProcess ------------------------------------------------------------------
    def exited(self) -> Optional[int]:
        return self.returncode

    def signal(self, sig: int) -> None:
        self.signals.append(sig)
        if sig == signal.SIGKILL or (sig == signal.SIGTERM and not self.ignores_sigterm):
            self.exit(-sig)

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        if self.returncode is None:
            if timeout is None:
                raise AssertionError(f"the agent would wait forever for envoy epoch {self.epoch}")
            self.world._advance(self.world.t + timeout, until=lambda: self.returncode is not None)
        return self.returncode


class FakeProxy:
    """A Proxy for one config. Fields: ``prepare()``, ``start(epoch) -> FakeEnvoy``,
    ``write_dynamic() -> bool``, ``fingerprint() -> Fingerprint``, ``tls_fingerprint() -> str``."""

    def __init__(
        self,
        world: World,
        cfg: Config,
        calls: Optional[List[Tuple]] = None,
        *,
        prepare: Optional[Callable[[], None]] = None,
        start: Optional[Callable[[int], FakeEnvoy]] = None,
        write_dynamic: Optional[Callable[[], bool]] = None,
        fingerprint: Optional[Callable[[], Fingerprint]] = None,
        tls_fingerprint: Optional[Callable[[], str]] = None,
    ) -> None:
        self.world = world
        self.cfg = cfg
        self.calls: List[Tuple] = [] if calls is None else calls
        self._prepare = prepare
        self._start = start
        self._write_dynamic = write_dynamic
        self._fingerprint = fingerprint
        self._tls_fingerprint = tls_fingerprint

    def prepare(self) -> None:
        self.calls.append(("prepare",))
        if self._prepare:
            self._prepare()

    def write_dynamic(self) -> bool:
        self.calls.append(("write_dynamic",))
        if self._write_dynamic:
            return self._write_dynamic()
        # As the real files: rewritten (and reported) only when what they hold changes.
        content = (self.cfg.inbound, self.cfg.outbound, self.cfg.tls, self.tls_fingerprint())
        changed, self.world.dynamic_files = self.world.dynamic_files != content, content
        return changed

    def fingerprint(self) -> Fingerprint:
        if self._fingerprint:
            return self._fingerprint()
        return Fingerprint(tuple(repr(x) for x in restart_relevant(self.cfg)), ("envoy", 1, 2, 3), "")

    def tls_fingerprint(self) -> str:
        return self._tls_fingerprint() if self._tls_fingerprint else ""

    def start(self, epoch: int) -> FakeEnvoy:
        self.calls.append(("start", epoch))
        return self._start(epoch) if self._start else FakeEnvoy(self.world, epoch)

    def cleanup(self, live_epochs) -> None:
        self.calls.append(("cleanup", sorted(live_epochs)))

    def remove_shared_memory(self) -> None:
        self.calls.append(("remove_shared_memory",))


class FakeAdmin:
    """Envoy's admin API. By default the serving Envoy answers ready with its epoch, and no
    connection is open; fields ``readiness() -> EnvoyReadiness`` (raise AdminError for no
    answer) and ``connections() -> int`` change that."""

    def __init__(
        self,
        world: World,
        *,
        readiness: Optional[Callable[[], EnvoyReadiness]] = None,
        connections: Optional[Callable[[], int]] = None,
    ) -> None:
        self.world = world
        self._readiness = readiness
        self._connections = connections
        self.calls: List[Tuple[float, str]] = []

    def readiness(self) -> EnvoyReadiness:
        return self._readiness() if self._readiness else self.envoy_answer()

    def envoy_answer(self) -> EnvoyReadiness:
        """What the serving Envoy says: LIVE, its epoch, its four listeners and first LDS/CDS."""
        envoy = self.world.serving_envoy()
        if envoy is None:
            raise AdminError("envoy admin GET /stats: [Errno 111] Connection refused")
        return EnvoyReadiness(True, envoy.epoch, 4, 0, 1, 1)

    def active_connections(self, stat_prefixes) -> int:
        self.calls.append((self.world.elapsed, "active_connections"))
        return self._connections() if self._connections else 0

    def drain_listeners(self) -> None:
        self.calls.append((self.world.elapsed, "drain_listeners"))

    def prometheus(self) -> bytes:
        return b"envoy_server_live 1\n"


class RecordingNotifier(Notifier):
    """sd_notify without a socket: every message with the fake time it was sent at."""

    def __init__(self, world: World, watchdog_usec: int = 0) -> None:
        super().__init__({"NOTIFY_SOCKET": "@unused", "WATCHDOG_USEC": str(watchdog_usec)} if watchdog_usec else {})
        self.world = world
        self.sent: List[Tuple[float, str]] = []
        self.states: List[Any] = []  # the agent's state at each message, when ``observe`` is set
        self.observe: Optional[Callable[[], Any]] = None

    def send(self, *lines: str) -> bool:
        self.sent.append((self.world.elapsed, "\n".join(lines)))
        if self.observe:
            self.states.append(self.observe())
        return True

    def messages(self) -> List[str]:
        return [m for _t, m in self.sent]

    def times(self, message: str) -> List[float]:
        return [t for t, m in self.sent if m == message]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TEST_SUPERVISE = {
    "backoff_initial_s": 1,
    "max_consecutive_crashes": 3,
    "drain_timeout_s": 5,
    "stop_timeout_s": 2,
    "ready_timeout_s": 10,
    "watch_interval_s": 5,
}


def agent_config(**overrides: Any) -> Config:
    """A standalone config whose status server listens on a free loopback port."""
    doc: Dict[str, Any] = {
        "listen": {"status_address": "127.0.0.1"},
        "ports": {"status": free_port()},
        "supervise": dict(TEST_SUPERVISE),
    }
    for key, value in overrides.items():
        doc[key] = {**doc[key], **value} if isinstance(value, dict) and key in doc else value
    return parse_config(doc)


class Harness:
    """One Agent wired to fakes: ``h.agent.run()`` plays the world's events to the end."""

    def __init__(
        self,
        cfg: Optional[Config] = None,
        *,
        world: Optional[World] = None,
        load_config: Optional[Callable[[], Config]] = None,
        admin: Optional[FakeAdmin] = None,
        watchdog_usec: int = 0,
        extra_metrics: Optional[Callable[[Config], str]] = None,
        **proxy_fields: Any,
    ) -> None:
        """``proxy_fields`` go to every FakeProxy the agent gets (the first and each reload's)."""
        self.world = world or World()
        self.cfg = cfg or agent_config()
        self.calls: List[Tuple] = []  # every FakeProxy call, all generations
        self.proxy_fields = proxy_fields
        self.proxies: List[FakeProxy] = []
        self.admin = admin or FakeAdmin(self.world)
        self.notifier = RecordingNotifier(self.world, watchdog_usec)
        self.agent = Agent(
            self.cfg,
            self._new_proxy(self.cfg),
            new_proxy=self._new_proxy,
            load_config=load_config or (lambda: self.cfg),
            admin=lambda _cfg: self.admin,
            notifier=self.notifier,
            clock=self.world,
            signals=self.world,
            # The real server; a short poll so that its stop() does not wait 0.5 s.
            status_server=functools.partial(StatusServer, poll_s=0.01),
            extra_metrics=extra_metrics,
        )
        self.notifier.observe = lambda: self.agent.state
        self.probes: Dict[str, Any] = {}

    def _new_proxy(self, cfg: Config) -> FakeProxy:
        proxy = FakeProxy(self.world, cfg, self.calls, **self.proxy_fields)
        self.proxies.append(proxy)
        return proxy

    def probe(self, elapsed: float, name: str) -> None:
        """Record, at that moment, the agent's state, readiness and metrics under ``name``."""

        def look() -> None:
            self.probes[name] = (self.agent.state, self.agent.readiness(), self.agent.metrics.ready)

        self.world.at(elapsed, look)

    def starts(self) -> List[int]:
        return [c[1] for c in self.calls if c[0] == "start"]
