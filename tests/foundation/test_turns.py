"""Turn bookkeeping: hand examples and property tests against a plain-Python reference."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spa_reward import turns


def reference_runs(row: list[int]) -> list[tuple[int, int]]:
    """[(first, last)] of each run of 1s -- the obvious loop, used as the oracle."""
    runs, start = [], None
    for i, m in enumerate(row + [0]):
        if m and start is None:
            start = i
        if not m and start is not None:
            runs.append((start, i - 1))
            start = None
    return runs


masks = st.lists(st.lists(st.integers(0, 1), min_size=1, max_size=24), min_size=1, max_size=6).map(
    lambda rows: [r + [0] * (max(map(len, rows)) - len(r)) for r in rows]
)


def test_hand_example_with_truncated_last_turn():
    mask = torch.tensor([[1, 1, 0, 0, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0, 0, 0, 0]])
    assert turns.turn_index(mask).tolist()[0] == [0, 0, -1, -1, 1, 1, 1, -1, 2]
    assert turns.num_turns(mask).tolist() == [3, 0]
    assert turns.turn_positions(mask, "last").tolist() == [[1, 6, 8], [-1, -1, -1]]
    assert turns.turn_positions(mask, "first").tolist() == [[0, 4, 8], [-1, -1, -1]]
    rewards = torch.tensor([[0.0, 1.0, 5.0, 0.0, 0.0, 0.0, 2.0, 0.0, 3.0], [0.0] * 9])
    # the 5.0 sits on an observation token and must not leak into a turn
    assert turns.turn_sums(rewards, mask).tolist() == [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]
    placed = turns.place_at_turn_ends(torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]), mask)
    assert placed.tolist()[0] == [0, 1, 0, 0, 0, 0, 2, 0, 3]


def test_bad_which_is_rejected():
    import pytest

    with pytest.raises(ValueError, match="which"):
        turns.turn_positions(torch.ones(1, 3), "middle")


@settings(max_examples=100, deadline=None)
@given(masks)
def test_spans_match_reference(rows):
    mask = torch.tensor(rows)
    k = max(len(reference_runs(r)) for r in rows)
    first = turns.turn_positions(mask, "first", max_turns=k).tolist()
    last = turns.turn_positions(mask, "last", max_turns=k).tolist()
    counts = turns.num_turns(mask).tolist()
    valid = turns.turn_valid(mask, max_turns=k).tolist()
    for b, row in enumerate(rows):
        runs = reference_runs(row)
        assert counts[b] == len(runs)
        assert first[b] == [s for s, _ in runs] + [-1] * (k - len(runs))
        assert last[b] == [e for _, e in runs] + [-1] * (k - len(runs))
        assert valid[b] == [True] * len(runs) + [False] * (k - len(runs))


@settings(max_examples=100, deadline=None)
@given(masks, st.integers(0, 2**31 - 1))
def test_sum_broadcast_and_placement_are_consistent(rows, seed):
    mask = torch.tensor(rows)
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(mask.shape, generator=gen, dtype=torch.float64)
    sums = turns.turn_sums(values, mask)
    for b, row in enumerate(rows):
        for k, (s, e) in enumerate(reference_runs(row)):
            assert abs(sums[b, k].item() - values[b, s : e + 1].sum().item()) < 1e-9
    # broadcasting a per-turn value puts it on exactly that turn's tokens
    per_turn = torch.randn(sums.shape, generator=gen, dtype=torch.float64)
    spread = turns.broadcast_turns(per_turn, mask)
    assert torch.equal(spread == 0, (mask == 0) | (spread == 0))
    idx = turns.turn_index(mask)
    on = idx >= 0
    assert torch.allclose(spread[on], per_turn[on.nonzero()[:, 0], idx[on]])
    # placing at turn ends and summing back per turn is the identity; nothing lands on observation tokens
    placed = turns.place_at_turn_ends(per_turn, mask)
    assert torch.all(placed[mask == 0] == 0)
    valid = turns.turn_valid(mask, max_turns=per_turn.shape[1])
    assert torch.allclose(turns.turn_sums(placed, mask, max_turns=per_turn.shape[1]), per_turn * valid)
