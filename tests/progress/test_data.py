"""Truncation shared by training and serving: whole leading turns are dropped, the bookkeeping stays right."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spa_reward.progress.data import check_turn_ends, collate_sequences, epoch_order, truncate_for_estimator


def _traj(prompt: int, turns: list[tuple[int, int]]):
    """ids = arange; turns = [(obs_len_before, turn_len)]; returns ids, ends."""
    ids, ends = list(range(prompt)), []
    for obs, length in turns:
        ids += list(range(len(ids), len(ids) + obs + length))
        ends.append(len(ids) - 1)
    return ids, ends


def test_no_truncation_only_drops_the_tail_after_the_last_turn():
    ids, ends = _traj(4, [(2, 3), (2, 3)])
    t = truncate_for_estimator(ids + [99, 99], ends, max_length=100, keep_prefix=4)
    assert t.input_ids == ids and t.turn_ends == ends and t.kept == [0, 1] and t.dropped_tokens == 2
    assert not t.truncated  # dropping the tail alone is not a truncation


def test_keeps_prompt_and_drops_whole_leading_turns():
    ids, ends = _traj(5, [(3, 4), (3, 4), (3, 4)])  # len 26, ends 11, 18, 25
    t = truncate_for_estimator(ids, ends, max_length=20, keep_prefix=5)
    # drop turn 0 (tokens 5..11): prompt (5) + tokens 12..25 (14) = 19 <= 20
    assert t.kept == [1, 2] and t.truncated and t.dropped_tokens == 7
    assert t.input_ids == ids[:5] + ids[12:]
    assert [t.input_ids[e] for e in t.turn_ends] == [ids[18], ids[25]]
    t = truncate_for_estimator(ids, ends, max_length=12, keep_prefix=5)
    assert t.kept == [2] and t.input_ids == ids[:5] + ids[19:]


def test_without_prompt_and_fallbacks():
    ids, ends = _traj(5, [(3, 4), (3, 4), (3, 4)])
    t = truncate_for_estimator(ids, ends, max_length=14, keep_prefix=0)
    assert t.kept == [1, 2] and t.input_ids == ids[12:]
    # prompt + last turn does not fit (5 + 7 > 8) but the last turn alone does: the prompt goes
    t = truncate_for_estimator(ids, ends, max_length=8, keep_prefix=5)
    assert t.kept == [2] and t.input_ids == ids[19:]
    # even the last turn with its observation is too long: last max_length tokens, last turn only
    t = truncate_for_estimator(ids, ends, max_length=4, keep_prefix=5)
    assert t.kept == [2] and t.input_ids == ids[22:] and t.turn_ends == [3]


@settings(max_examples=200, deadline=None)
@given(
    prompt=st.integers(0, 8),
    turns=st.lists(st.tuples(st.integers(0, 6), st.integers(1, 6)), min_size=1, max_size=6),
    tail=st.integers(0, 4),
    max_length=st.integers(2, 60),
    keep=st.booleans(),
)
def test_truncation_invariants(prompt, turns, tail, max_length, keep):
    ids, ends = _traj(prompt, turns)
    full = ids + [10_000 + i for i in range(tail)]
    t = truncate_for_estimator(full, ends, max_length, prompt if keep else 0)
    assert 1 <= len(t.input_ids) <= max_length
    assert len(t.turn_ends) == len(t.kept) >= 1
    assert t.kept == list(range(t.kept[0], len(ends)))  # a suffix of the turns: only leading turns are dropped
    assert t.turn_ends[-1] == len(t.input_ids) - 1
    # every kept turn end points at the same token as before
    assert [t.input_ids[e] for e in t.turn_ends] == [ids[ends[k]] for k in t.kept]
    n = ends[-1] + 1

    def segment(k):  # turn k with the observation before it
        return ids[ends[k - 1] + 1 : ends[k] + 1] if k > 0 else ids[: ends[0] + 1]

    if len(segment(len(ends) - 1)) <= max_length:
        # whole segments are kept: the tokens after the (optional) prompt are exactly ids[start:n]
        start = ends[t.kept[0] - 1] + 1 if t.kept[0] > 0 else 0
        assert t.input_ids[len(t.input_ids) - (n - start) :] == ids[start:n]
        if keep and prompt + len(segment(len(ends) - 1)) <= max_length:
            assert t.input_ids[:prompt] == ids[:prompt]  # the prompt survives
    assert t.truncated == (ends[-1] + 1 > max_length)
    if ends[-1] + 1 <= max_length:
        assert t.kept == list(range(len(ends))) and t.input_ids == ids


def test_check_turn_ends():
    check_turn_ends([0, 3, 5], 6)
    for bad, match in [([0, 0], "strictly increasing"), ([6], "outside"), ([-1], "outside"), ([1.0], "int")]:
        with pytest.raises(ValueError, match=match):
            check_turn_ends(bad, 6)


def test_collate_and_epoch_order():
    b = collate_sequences([[1, 2, 3], [4]], [[0, 2], [0]], pad_token_id=9)
    assert b["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["turn_end_positions"].tolist() == [[0, 2], [0, -1]]
    assert epoch_order(10, 1, 0) == epoch_order(10, 1, 0) != epoch_order(10, 1, 1)
    assert sorted(epoch_order(10, 1, 0)) == list(range(10))
