"""Crash backoff: grows, caps, resets after a healthy period, gives up past the bound."""

from hostmesh_agent.backoff import Backoff


def make(**kw) -> Backoff:
    args = {"initial_s": 0.5, "max_s": 4.0, "multiplier": 2.0, "healthy_reset_s": 10.0, "max_consecutive": 0}
    args.update(kw)
    return Backoff(**args)


def test_delays_grow_exponentially_up_to_the_cap():
    b = make()
    assert [b.crashed() for _i in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_reset_only_after_a_full_healthy_period():
    b = make()
    b.crashed()
    b.crashed()
    b.healthy(now=100.0)
    b.healthy(now=109.9)
    assert b.consecutive == 2
    b.healthy(now=110.0)
    assert b.consecutive == 0
    assert b.crashed() == 0.5


def test_an_unhealthy_spell_restarts_the_healthy_clock():
    b = make()
    b.crashed()
    b.healthy(now=0.0)
    b.unhealthy()
    b.healthy(now=9.0)
    b.healthy(now=18.0)
    assert b.consecutive == 1
    b.healthy(now=19.0)
    assert b.consecutive == 0


def test_gives_up_only_past_the_bound():
    b = make(max_consecutive=3)
    for _i in range(3):
        b.crashed()
        assert not b.exhausted
    b.crashed()
    assert b.exhausted


def test_zero_bound_never_gives_up():
    b = make()
    for _i in range(1000):
        b.crashed()
    assert not b.exhausted
