"""The Agent's lifecycle as data: its states, the moves between them, and its timers.

Pure: no I/O and no clock of its own. The Agent (agent.py) decides when to
move; every move it makes is checked against ``TRANSITIONS`` here, which is
also the table docs/agent.md shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Dict, Optional, Tuple


class State(Enum):
    """What the agent is doing with Envoy right now."""

    STOPPED = "stopped"  # no Envoy of ours runs: before run(), and once it has ended
    STARTING = "starting"  # epoch 0 started, not ready yet
    READY = "ready"  # the current epoch is ready (a hot restart's parent may still be draining)
    NOT_READY = "not ready"  # was ready, then failed two polls in a row
    HOT_RESTARTING = "hot restarting"  # epoch N+1 started beside the ready epoch N, not ready yet
    BACKING_OFF = "backing off"  # Envoy exited (or could not start): waiting before a fresh start
    DRAINING = "draining"  # asked to stop: failing health checks, draining, then stopping Envoy


# States in which /healthz/ready answers 200: during a hot restart the parent still serves.
SERVING = frozenset({State.READY, State.HOT_RESTARTING})

# The moves out of each state while Envoy runs or is being started, and what makes each.
_MOVES: Dict[State, Dict[State, str]] = {
    State.STOPPED: {
        State.STARTING: "run() started epoch 0",
        State.BACKING_OFF: "run() could not start epoch 0",
    },
    State.STARTING: {
        State.READY: "a readiness poll passed",
        State.BACKING_OFF: "Envoy exited, or was killed: not ready within ready_timeout_s",
    },
    State.READY: {
        State.NOT_READY: "two readiness polls in a row failed",
        State.HOT_RESTARTING: "a hot restart was wanted and no parent is still draining",
        State.BACKING_OFF: "Envoy exited",
    },
    State.NOT_READY: {
        State.READY: "a readiness poll passed",
        State.BACKING_OFF: "Envoy exited, or was killed: not ready again within ready_timeout_s",
    },
    State.HOT_RESTARTING: {
        State.READY: "the new epoch passed a readiness poll, or died and the parent serves on",
        State.BACKING_OFF: "the new epoch died and no parent was left",
    },
    State.BACKING_OFF: {
        State.STARTING: "the backoff delay passed and epoch 0 started",
        State.BACKING_OFF: "epoch 0 could not be started: a longer delay",
    },
}

# Every move the Agent may make, and what makes it: the moves above, then draining on a
# signal, and STOPPED from any state: run() stops every Envoy when it returns, whatever happened.
TRANSITIONS: Dict[Tuple[State, State], str] = {
    **{(old, new): why for old, moves in _MOVES.items() for new, why in moves.items()},
    **{
        (s, State.DRAINING): "SIGTERM or SIGINT"
        for s in (State.STARTING, State.READY, State.NOT_READY, State.HOT_RESTARTING, State.BACKING_OFF)
    },
    **{(s, State.STOPPED): "run() ended: a crash loop past its bound, or drained" for s in State},
}


class IllegalTransition(RuntimeError):
    """The Agent tried a move its lifecycle does not have: a bug, never a runtime condition."""


def check_transition(old: State, new: State) -> None:
    if (old, new) not in TRANSITIONS:
        raise IllegalTransition(f"agent state {old.name} cannot become {new.name}")


def readiness(state: State, current_epoch: Optional[int], serving_epoch: int) -> Tuple[bool, str]:
    """What /healthz/ready answers: ready or not, and why (the body of the answer)."""
    if state is State.DRAINING:
        return False, "stopping: draining connections"
    if state in SERVING:
        return True, f"ready: envoy epoch {serving_epoch} live"
    if current_epoch is None:
        return False, "not ready: envoy is not running"
    return False, f"not ready: envoy epoch {current_epoch} is starting"


# Readiness polls: fast while waiting for an epoch to be ready, then once a second.
READY_POLL_S = 0.02
HEALTHY_POLL_S = 1.0
# One missed poll (a slow admin answer under load) is not yet a verdict.
CHECKS_TO_UNREADY = 2
# While a parent drains or a hot restart waits for its turn, look again this often.
BUSY_POLL_S = 0.2


@dataclass
class Timers:
    """Clock readings at which the main loop has something to do."""

    watch: float = 0.0  # next look at the certificate files and the Envoy binary
    health: float = 0.0  # next readiness poll of the current epoch
    ready_by: float = 0.0  # an epoch not ready by then is killed
    restart: float = 0.0  # BACKING_OFF: when to start Envoy again

    def expect_ready(self, now: float, timeout_s: float) -> None:
        """A new epoch, or one no longer ready: poll it at once, and give it ``timeout_s``."""
        self.health = now
        self.ready_by = now + timeout_s

    def next_wakeup(self, now: float, state: State, watchdog: Optional[float], busy: bool) -> float:
        """Seconds the loop may sleep before its next duty."""
        deadlines = [self.watch, self.health if state not in (State.STOPPED, State.BACKING_OFF) else now + 1.0]
        if state is State.BACKING_OFF:
            deadlines.append(self.restart)
        if watchdog is not None:
            deadlines.append(watchdog)
        if busy:
            deadlines.append(now + BUSY_POLL_S)
        return max(0.0, min(deadlines) - now)
