"""The expert-prefix schedule ``spa_reward.stepagent.settings.prefix_length``: the reverse curriculum by
hand-computed values, the uniform draw's invariants (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spa_reward.stepagent.settings import prefix_length


@pytest.mark.parametrize("L,reverse_steps,step,k", [
    (10, 100, 0, 9),  # floor(9 * 1.00): act at the expert's last state
    (10, 100, 50, 4),  # floor(9 * 0.50) = floor(4.5)
    (10, 100, 99, 0),  # floor(9 * 0.01) = floor(0.09)
    (10, 100, 100, 0),  # the whole task from here on
    (10, 100, 150, 0),
    (10, 100, 10, 8),  # floor(9 * 0.90) = floor(8.1)
    (10, 100, 89, 0),  # floor(9 * 0.11) = floor(0.99)
    (10, 100, 88, 1),  # floor(9 * 0.12) = floor(1.08)
    (5, 4, 1, 3),  # floor(4 * 0.75)
    (5, 4, 2, 2),
    (5, 4, 3, 1),
    (3, 1, 0, 2),
    (3, 1, 1, 0),
    (10, 100, -5, 9),  # a negative step counts as step 0
])
def test_reverse_by_hand(L, reverse_steps, step, k):
    assert prefix_length("reverse", L, step, reverse_steps, seed=7, key="any") == k


@given(L=st.integers(-3, 60), step=st.integers(0, 10_000), seed=st.integers(0, 2**31), key=st.text(max_size=30))
def test_uniform_invariants(L, step, seed, key):
    k = prefix_length("uniform", L, step, 100, seed, key)
    if L <= 1:
        assert k == 0
    else:
        assert 0 <= k < L
    assert prefix_length("uniform", L, step, 100, seed, key) == k  # a function of (seed, key, step) only
    assert prefix_length("uniform", L, step, 5, seed, key) == k  # reverse_steps does not enter the draw


@given(L=st.integers(-3, 60), step=st.integers(0, 10_000), reverse_steps=st.integers(1, 500))
def test_reverse_invariants(L, step, reverse_steps):
    k = prefix_length("reverse", L, step, reverse_steps)
    assert (k == 0) if L <= 1 else (0 <= k < L)
    assert prefix_length("reverse", L, step + 1, reverse_steps) <= k  # never moves back toward the end


def test_uniform_covers_every_k_and_depends_on_the_key():
    ks = [prefix_length("uniform", 4, step, seed=0, key="task-a") for step in range(200)]
    assert set(ks) == {0, 1, 2, 3}
    other = [prefix_length("uniform", 4, step, seed=0, key="task-b") for step in range(200)]
    assert other != ks and [prefix_length("uniform", 4, s, seed=1, key="task-a") for s in range(200)] != ks


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown expert-prefix schedule 'sideways'"):
        prefix_length("sideways", 5, 0)
