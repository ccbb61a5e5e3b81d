"""StepAgent implicit: the step-level DPO loss by hand on two pairs; the PRM (implicit objective, frozen reference)
trained by the service's update ranks the expert's action above the agent's at the training states."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spa_reward.steprm import objectives as obj
from spa_reward.steprm.service import StepRewardModel, StepRMSettings
from tests.stepagent.helpers_pairs import VOCAB, scoring_items, synthetic_pairs
from tests.steprm.helpers import tiny_backbone


def prm(**kw) -> StepRewardModel:
    return StepRewardModel({**dict(objective="implicit", loss="step_dpo", reference="frozen", online=True,
                                   backbone_config=tiny_backbone(VOCAB, 32, 1), beta=0.5, lr=3e-3, device="cpu",
                                   micro_batch_size=64), **kw})


def test_step_dpo_loss_by_hand_on_two_pairs():
    beta = 0.5
    q_expert, q_agent = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0])
    chosen, rejected = beta * q_expert, beta * q_agent  # margins 0.5 and -1.0
    expected = (math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(1.0))) / 2  # -log sigmoid(m) = log(1 + e^-m)
    assert float(obj.step_dpo_loss(chosen, rejected)) == pytest.approx(expected, rel=1e-6)
    leaf = chosen.clone().requires_grad_(True)
    obj.step_dpo_loss(leaf, rejected).backward()
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert leaf.grad.tolist() == pytest.approx([-(1 - sig(0.5)) / 2, -(1 - sig(-1.0)) / 2], rel=1e-5)
    empty = torch.zeros(0, requires_grad=True)
    assert float(obj.step_dpo_loss(empty, empty).detach()) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        obj.step_dpo_loss(torch.zeros(2), torch.zeros(3))


def test_step_dpo_needs_the_frozen_reference():
    with pytest.raises(ValueError, match="step_dpo.*needs reference='frozen'"):
        StepRMSettings(objective="implicit", loss="step_dpo", reference="rollout", backbone_config={})
    with pytest.raises(ValueError, match="loss='bce' does not train the 'implicit' objective"):
        StepRMSettings(objective="implicit", loss="bce", reference="frozen", backbone_config={})
    assert StepRMSettings(objective="implicit", backbone_config={}).loss == "trajectory_dpo"  # iStar unchanged


def test_updates_rank_the_expert_action_above_the_agent_action():
    svc = prm(steps_per_batch=2)
    pairs = synthetic_pairs(32, seed=0)
    items, labels = scoring_items(pairs)
    labels = np.array(labels, dtype=bool)

    def margins():
        q = np.array([r[0] for r in svc.score(items)])
        return q[labels] - q[~labels]  # beta*q(s, a_expert) - beta*q(s, a_agent), per training state

    assert np.allclose(margins(), 0.0)  # the frozen reference is the initial PRM: q = 0
    losses = [svc.update(pairs)["steprm/loss_first"] for _ in range(4)]
    assert losses[0] == pytest.approx(math.log(2), rel=1e-4) and losses[-1] < losses[0]
    m = margins()
    assert (m > 0).mean() >= 0.9 and m.mean() > 0, m
