"""The Proxy: knows how to run one Envoy process for one restart epoch.

``Proxy`` is what the Agent asks of it (a Protocol, so that tests can hand the
Agent a fake); ``EnvoyProxy`` is the real one. It writes ``envoy-rev<N>.json``,
builds the command line, starts the process and cleans up epoch files. It
knows nothing of when or why; that is the Agent.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import shutil
import signal
import subprocess
import time
import zlib
from dataclasses import dataclass
from typing import IO, Callable, Dict, Iterable, Optional, Protocol, Tuple

from hostmesh_agent.atomic_files import dump_json, write_atomic
from hostmesh_agent.bootstrap import envoy_args, render_bootstrap
from hostmesh_agent.config import Config, restart_relevant
from hostmesh_agent.resources import render_dynamic
from hostmesh_agent.rundir import RunDir, bootstrap_epoch

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class ProxyError(RuntimeError):
    """Envoy cannot be started: binary missing, run dir unwritable."""


@dataclass(frozen=True)
class Fingerprint:
    """What, when it changes, needs a new Envoy process rather than a file update."""

    config: Tuple
    binary: Tuple
    xds_files: str


class EpochProcess(Protocol):
    """One started Envoy, as the Agent handles it."""

    epoch: int

    @property
    def pid(self) -> int:
        """The process id of the running Envoy."""

    def exited(self) -> Optional[int]:
        """The exit status once the process has ended (negative: killed by that signal), else None."""

    def signal(self, sig: int) -> None:
        """Send ``sig``; a process already gone is not an error."""

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """Wait until it ends or ``timeout`` passes; its exit status, or None if still running."""


class Proxy(Protocol):
    """What runs Envoy for one config generation: all the Agent needs to supervise it."""

    def prepare(self) -> None:
        """Check the run directory can be made and the binary found; ProxyError if not."""

    def write_dynamic(self) -> bool:
        """Write the watched listener/cluster/secret files; True if any changed."""

    def fingerprint(self) -> Fingerprint:
        """The inputs of the bootstrap and command line: a change needs a hot restart."""

    def tls_fingerprint(self) -> str:
        """A digest of the workload certificate files (changes apply without a restart)."""

    def start(self, epoch: int) -> EpochProcess:
        """Write that epoch's bootstrap and start Envoy with it; ProxyError if it cannot start."""

    def cleanup(self, live_epochs: Iterable[int]) -> None:
        """Remove the bootstrap files of every epoch not listed."""

    def remove_shared_memory(self) -> None:
        """Drop Envoy's hot-restart region once none of our Envoys runs."""


@dataclass
class EnvoyProcess:
    """A real Envoy child process (an ``EpochProcess``)."""

    epoch: int
    popen: subprocess.Popen
    started_at: float

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> Optional[int]:
        return self.popen.poll()

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(sig)

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


def _prepare_child(parent_pid: int) -> None:
    """In the child before exec: if the agent dies, the kernel kills Envoy too."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the agent died before prctl took effect
        os._exit(1)


def file_digest(paths: Iterable[str]) -> str:
    """A checksum of files' contents (missing files count as absent), to spot rotations.

    CRC-32 rather than hashlib: it only has to notice a change, and hashlib loads
    OpenSSL (~3.5 MiB of RSS) into an agent that otherwise never needs it.
    """
    crc = 0
    for path in paths:
        crc = zlib.crc32(path.encode() + b"\0", crc)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            crc = zlib.crc32(len(data).to_bytes(8, "big") + data, crc)
        except OSError:
            crc = zlib.crc32(b"-", crc)
    return f"{crc:08x}"


def read_token(path: str) -> Optional[str]:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError as exc:
        raise ProxyError(f"cannot read {path} (config key 'xds.token_file'): {exc.strerror}") from None


# Called with a started Envoy's epoch and the read end of its standard output.
StdoutReader = Callable[[int, IO[bytes]], None]


class EnvoyProxy:
    """Runs the real Envoy for a given config (a ``Proxy``); one instance per config generation."""

    def __init__(self, cfg: Config, ip: str, on_stdout: Optional[StdoutReader] = None) -> None:
        """``on_stdout``: who reads Envoy's standard output (its access-log lines); without
        it, Envoy writes to the agent's own."""
        self.cfg = cfg
        self.ip = ip
        self.run_dir = RunDir(cfg.run_dir)
        self.on_stdout = on_stdout

    def binary(self) -> str:
        found = shutil.which(self.cfg.envoy.binary)
        if not found:
            raise ProxyError(f"envoy binary {self.cfg.envoy.binary!r} not found (config key 'envoy.binary')")
        return os.path.realpath(found)

    def prepare(self) -> None:
        self.prepare_run_dir()
        self.binary()

    def binary_identity(self) -> Tuple[str, int, int, int]:
        """Changes when the binary is replaced, which calls for a hot restart."""
        path = self.binary()
        st = os.stat(path)
        return (path, st.st_ino, st.st_size, st.st_mtime_ns)

    def tls_fingerprint(self) -> str:
        t = self.cfg.tls
        return file_digest([t.cert_file, t.key_file, t.ca_file]) if t.configured else ""

    def xds_fingerprint(self) -> str:
        """In xDS mode certificates and token sit in the bootstrap: they need a new epoch."""
        x = self.cfg.xds
        if self.cfg.mode != "xds":
            return ""
        return file_digest([p for p in (x.ca_file, x.cert_file, x.key_file, x.token_file) if p])

    def fingerprint(self) -> Fingerprint:
        try:
            binary: Tuple = self.binary_identity()
        except (ProxyError, OSError):
            binary = ()  # a binary gone missing is reported when an epoch is started
        return Fingerprint(tuple(repr(x) for x in restart_relevant(self.cfg)), binary, self.xds_fingerprint())

    def bootstrap(self) -> Dict:
        token = read_token(self.cfg.xds.token_file) if self.cfg.mode == "xds" else None
        return render_bootstrap(self.cfg, self.run_dir, self.ip, token)

    def prepare_run_dir(self) -> None:
        try:
            os.makedirs(self.run_dir.dynamic_dir, mode=0o750, exist_ok=True)
        except OSError as exc:
            raise ProxyError(f"cannot create run dir {self.run_dir.path}: {exc.strerror}") from None

    def write_dynamic(self) -> bool:
        """Write the watched LDS/CDS/SDS files; True if any changed (Envoy reloads them)."""
        self.prepare_run_dir()
        if self.cfg.mode != "standalone":
            return False
        changed = False
        for path, doc in render_dynamic(self.cfg, self.run_dir, self.tls_fingerprint()).items():
            changed |= write_atomic(path, dump_json(doc))
        return changed

    def write_bootstrap(self, epoch: int) -> str:
        path = self.run_dir.bootstrap(epoch)
        write_atomic(path, dump_json(self.bootstrap()), mode=0o600)
        return path

    def start(self, epoch: int) -> EnvoyProcess:
        binary = self.binary()
        path = self.write_bootstrap(epoch)
        args = [binary, *envoy_args(self.cfg, path, epoch, self.ip)]
        log.info("starting envoy epoch %d: %s", epoch, " ".join(args))
        try:
            popen = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.on_stdout else None,
                close_fds=True,
                # Its own session, so a terminal's signals go to the agent alone.
                start_new_session=True,
                preexec_fn=functools.partial(_prepare_child, os.getpid()),
            )
        except OSError as exc:
            raise ProxyError(f"cannot start {binary}: {exc.strerror}") from None
        if self.on_stdout and popen.stdout is not None:
            self.on_stdout(epoch, popen.stdout)
        return EnvoyProcess(epoch=epoch, popen=popen, started_at=time.monotonic())

    def remove_shared_memory(self) -> None:
        """Once no Envoy of ours runs, drop the hot-restart region Envoy leaves in /dev/shm."""
        # Envoy names the region after base_id * 10 (room for its per-epoch sockets).
        path = f"/dev/shm/envoy_shared_memory_{self.cfg.envoy.base_id * 10}"
        with contextlib.suppress(OSError):
            os.unlink(path)

    def cleanup(self, live_epochs: Iterable[int]) -> None:
        """Remove bootstrap files of epochs no process runs any more."""
        keep = set(live_epochs)
        try:
            names = os.listdir(self.run_dir.path)
        except OSError:
            return
        for name in names:
            epoch = bootstrap_epoch(name)
            if epoch >= 0 and epoch not in keep:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.run_dir.path, name))
