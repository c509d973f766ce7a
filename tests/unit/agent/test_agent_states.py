"""The lifecycle as data (lifecycle.py): the moves the Agent may make, the readiness each
state answers, the loop's wake-ups, and that docs/agent.md shows the same tables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hostmesh_agent.lifecycle import (
    BUSY_POLL_S,
    SERVING,
    TRANSITIONS,
    IllegalTransition,
    State,
    Timers,
    check_transition,
    readiness,
)

DOCS = Path(__file__).resolve().parents[3] / "docs" / "agent.md"


def _doc_rows(header: str):
    text = DOCS.read_text()
    table = text[text.index(header) :].split("\n\n", 1)[0]
    return [[c.strip() for c in row.strip("|").split("|")] for row in table.splitlines()[2:]]


def test_docs_list_every_transition_and_no_other():
    documented = set()
    for first, to, _when in _doc_rows("| from | to | when |"):
        sources = list(State) if first == "any" else [State[n] for n in re.findall(r"`(\w+)`", first)]
        documented |= {(s, State[to.strip("`")]) for s in sources}
    assert documented == set(TRANSITIONS)


def test_docs_give_each_state_its_readiness_answer():
    rows = {r[0].strip("`"): r for r in _doc_rows("| state | `/healthz/ready` |")}
    assert set(rows) == {s.name for s in State}
    for state in State:
        no_envoy = state in (State.STOPPED, State.BACKING_OFF)
        ok, reason = readiness(state, None if no_envoy else 7, 7)
        if state is not State.STARTING:  # STARTING is always epoch 0; elsewhere the docs say N
            reason = reason.replace("epoch 7", "epoch N")
        else:
            reason = reason.replace("epoch 7", "epoch 0")
        assert rows[state.name][1].startswith(f"{200 if ok else 503} `{reason}`"), state
        assert rows[state.name][2] == ("yes" if state in SERVING else "no"), state


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (State.STOPPED, State.READY),
        (State.STARTING, State.HOT_RESTARTING),
        (State.BACKING_OFF, State.READY),
        (State.DRAINING, State.READY),
        (State.STOPPED, State.DRAINING),
    ],
)
def test_a_move_the_lifecycle_does_not_have_is_refused(old, new):
    with pytest.raises(IllegalTransition, match=f"agent state {old.name} cannot become {new.name}"):
        check_transition(old, new)


def test_every_state_can_end_in_stopped():
    for state in State:
        check_transition(state, State.STOPPED)


def test_readiness_by_state():
    assert readiness(State.STOPPED, None, 0) == (False, "not ready: envoy is not running")
    assert readiness(State.BACKING_OFF, None, 3) == (False, "not ready: envoy is not running")
    assert readiness(State.STARTING, 0, 0) == (False, "not ready: envoy epoch 0 is starting")
    assert readiness(State.NOT_READY, 2, 2) == (False, "not ready: envoy epoch 2 is starting")
    assert readiness(State.READY, 2, 2) == (True, "ready: envoy epoch 2 live")
    assert readiness(State.HOT_RESTARTING, 3, 2) == (True, "ready: envoy epoch 2 live")  # the parent serves
    assert readiness(State.DRAINING, 2, 2) == (False, "stopping: draining connections")


def test_the_loop_wakes_for_its_next_duty():
    t = Timers(watch=105.0, health=100.5, ready_by=160.0, restart=102.0)
    assert t.next_wakeup(100.0, State.READY, None, busy=False) == pytest.approx(0.5)
    assert t.next_wakeup(100.0, State.READY, 100.2, busy=False) == pytest.approx(0.2)
    assert t.next_wakeup(100.0, State.READY, None, busy=True) == pytest.approx(BUSY_POLL_S)
    # No Envoy: the health timer does not count; the restart does.
    assert t.next_wakeup(100.0, State.BACKING_OFF, None, busy=False) == pytest.approx(1.0)
    assert Timers(watch=200.0, restart=150.0).next_wakeup(100.0, State.BACKING_OFF, None, False) == 1.0
    assert Timers(watch=200.0, restart=100.3).next_wakeup(100.0, State.BACKING_OFF, None, False) == pytest.approx(0.3)
    assert t.next_wakeup(200.0, State.READY, None, busy=False) == 0.0  # overdue: at once
    t.expect_ready(300.0, 60.0)
    assert (t.health, t.ready_by) == (300.0, 360.0)
