"""Crash backoff: grows, caps, resets after a healthy period, gives up past the bound."""

from hostmesh_agent.backoff import Backoff


def make(**kw) -> Backoff:
    args = {"initial_s": 0.5, "max_s": 4.0, "multiplier": 2.0, "healthy_reset_s": 10.0, "max_consecutive": 0}
    args.update(kw)
    return Backoff(**args)


def test_delays_grow_exponentially_up_to_the_cap():
    b = make()
    assert [b.crashed() for _i in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def assert_resets_once_healthy_for_the_period(b, since, still_counting_at, consecutive):
    """Healthy from ``since``: the count stands at ``still_counting_at`` and resets at ``since`` + 10 s."""
    b.healthy(now=since)
    b.healthy(now=still_counting_at)
    assert b.consecutive == consecutive
    b.healthy(now=since + 10.0)
    assert b.consecutive == 0


def test_reset_only_after_a_full_healthy_period():
    b = make()
    b.crashed()
    b.crashed()
    assert_resets_once_healthy_for_the_period(b, since=100.0, still_counting_at=109.9, consecutive=2)
    assert b.crashed() == 0.5


def test_an_unhealthy_spell_restarts_the_healthy_clock():
    b = make()
    b.crashed()
    b.healthy(now=0.0)
    b.unhealthy()
    assert_resets_once_healthy_for_the_period(b, since=9.0, still_counting_at=18.0, consecutive=1)


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
