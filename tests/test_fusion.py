"""Reward fusion and placement, checked against values computed by hand."""

from __future__ import annotations

import math

import pytest

from spa_reward.fusion import (
    clamp_turn_positions,
    fuse_turn_rewards,
    outcome_turn_rewards,
    place_turn_rewards,
)


def test_fuse_spa_defaults_are_the_penalty_of_the_yaml():
    """Without grounding / beta the fusion is the shipped setting (penalty 0.1, spa_trainer.yaml), not the paper's
    farmable bonus 0.5: r_t = c_t - 0.1*(1 - g_t)."""
    rewards, stats = fuse_turn_rewards([0.2, -0.1, 0.7], [True, False, True])
    assert rewards == pytest.approx([0.2, -0.2, 0.7])
    assert stats.sum_reward == pytest.approx(0.7)


def test_fuse_paper_bonus():
    # the paper's literal form, by name: r_t = 1.0*c_t + 0.5*g_t
    rewards, stats = fuse_turn_rewards([0.2, -0.1, 0.7], [True, False, True], beta=0.5, grounding="bonus")
    assert rewards == pytest.approx([0.7, -0.1, 1.2])
    assert stats.num_turns == 3 and stats.nonfinite == 0 and stats.clipped == 0
    assert stats.sum_contribution == pytest.approx(0.8)
    assert stats.mean_contribution == pytest.approx(0.8 / 3)
    assert stats.executable_rate == pytest.approx(2 / 3)
    assert stats.sum_reward == pytest.approx(1.8)
    assert stats.mean_reward == pytest.approx(0.6)


def test_fuse_all_terms():
    # alpha=2, bonus beta=0.5, penalty 0.1 on the non-executable turn, outcome 10 * 0.5 on the last turn, clip 4
    rewards, stats = fuse_turn_rewards(
        [0.25, 1.0, -3.0], [False, True, True], alpha=2.0, beta=0.5, outcome=10.0, outcome_coef=0.5,
        clip=4.0, invalid_penalty=0.1, grounding="bonus",
    )
    # turn 0: 0.5 - 0.1 = 0.4; turn 1: 2.0 + 0.5 = 2.5; turn 2: -6 + 0.5 + 5 = -0.5
    assert rewards == pytest.approx([0.4, 2.5, -0.5])
    assert stats.clipped == 0
    rewards, stats = fuse_turn_rewards([3.0, -3.0], [True, False], clip=1.0)
    assert rewards == [1.0, -1.0] and stats.clipped == 2


def test_fuse_nonfinite_replaced_and_counted():
    bonus = {"beta": 0.5, "grounding": "bonus"}
    rewards, stats = fuse_turn_rewards([float("nan"), 0.3, float("inf")], [True, True, False], **bonus)
    assert rewards == pytest.approx([0.5, 0.8, 0.0])
    assert stats.nonfinite == 2
    assert stats.sum_contribution == pytest.approx(0.3)
    assert all(math.isfinite(r) for r in rewards)
    # all non-finite: no exception, only the grounding term is left
    rewards, stats = fuse_turn_rewards([float("nan")] * 2, [True, False], **bonus)
    assert rewards == [0.5, 0.0] and stats.nonfinite == 2


def test_fuse_errors_and_empty():
    with pytest.raises(ValueError, match="one flag per assistant turn"):
        fuse_turn_rewards([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="finite"):
        fuse_turn_rewards([0.1], [True], outcome=float("nan"), outcome_coef=1.0)
    with pytest.raises(ValueError, match="clip"):
        fuse_turn_rewards([0.1], [True], clip=0.0)
    rewards, stats = fuse_turn_rewards([], [])
    assert rewards == [] and stats.num_turns == 0


def test_outcome_turn_rewards():
    assert outcome_turn_rewards(3, 10.0) == [0.0, 0.0, 10.0]
    assert outcome_turn_rewards(3, 10.0, [True, False, False], invalid_penalty=0.1) == pytest.approx([0.0, -0.1, 9.9])
    assert outcome_turn_rewards(0, 1.0) == []
    with pytest.raises(ValueError):
        outcome_turn_rewards(2, 1.0, None, invalid_penalty=0.1)


def test_place_turn_rewards():
    dense = place_turn_rewards([1.0, 2.0, 3.0], [2, 6, 9], 12)
    assert dense == [0, 0, 1.0, 0, 0, 0, 2.0, 0, 0, 3.0, 0, 0]
    # response cut at 8 tokens: turn 2 (spans 7..9) survives partly -> its reward lands on token 7
    assert place_turn_rewards([1.0, 2.0, 3.0], [2, 6, 9], 8, turn_start_positions=[0, 5, 7]) == [
        0, 0, 1.0, 0, 0, 0, 2.0, 3.0
    ]
    # cut at 8 but turn 2 starts at 8: dropped
    assert place_turn_rewards([1.0, 2.0, 3.0], [2, 6, 9], 8, turn_start_positions=[0, 5, 8]) == [
        0, 0, 1.0, 0, 0, 0, 2.0, 0
    ]
    # without starts the first crossing turn is kept, later ones dropped
    assert clamp_turn_positions([2, 6, 9, 12], 8) == [2, 6, 7, None]
    with pytest.raises(ValueError):
        place_turn_rewards([1.0, 2.0], [5, 5], 10)
    with pytest.raises(ValueError):
        place_turn_rewards([1.0], [1, 2], 10)


def test_grounding_forms():
    from spa_reward.fusion import grounding_terms

    # bonus (the paper's): +beta on every executed turn; penalty (ours): -beta on every turn the env did not execute
    assert grounding_terms([1.0, 0.0, 1.0], 0.5, "bonus") == [0.5, 0.0, 0.5]
    assert grounding_terms([1.0, 0.0, 1.0], 0.5, "penalty") == [0.0, -0.5, 0.0]
    rewards, _ = fuse_turn_rewards([0.2, -0.1, 0.7], [True, False, True], beta=0.5, grounding="penalty")
    assert rewards == pytest.approx([0.2, -0.6, 0.7])
    with pytest.raises(ValueError, match="grounding form 'always' is not one of"):
        fuse_turn_rewards([0.1], [True], grounding="always")


def test_the_penalty_form_never_pays_for_a_longer_episode():
    """Whatever the executable flags, the penalty form's total is <= 0, so adding steps never raises it; the bonus
    form's total grows with every executed step (the farmable part)."""
    from spa_reward.fusion import grounding_terms

    for flags in ([1.0] * 4, [1.0] * 16, [0.0, 1.0] * 8):
        assert sum(grounding_terms(flags, 0.5, "penalty")) <= 0.0
    assert sum(grounding_terms([1.0] * 16, 0.5, "bonus")) > sum(grounding_terms([1.0] * 4, 0.5, "bonus"))


def test_stepagent_grounding_beta_stays_a_bonus():
    """StepAgent's (and iStar's) grounding_beta * g_t is a bonus by definition: it does not follow the spa default
    (penalty)."""
    from spa_reward.fusion import stepagent_turn_rewards

    rewards, _ = stepagent_turn_rewards(3, [True, False, True], 2.0, matched=True, match_reward=0.5,
                                        grounding_beta=0.2, invalid_penalty=0.1)
    assert rewards == pytest.approx([0.2 + 0.5, -0.1, 0.2 + 2.0])
