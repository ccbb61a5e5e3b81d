"""The step-reward objectives (q_t, trajectory DPO, progress MSE) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from spa_reward.steprm import objectives as obj
from spa_reward.steprm.service import StepRewardModel
from tests.steprm.helpers import tiny_backbone


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_span_turn_index_and_turn_sums():
    idx = obj.span_turn_index([[[1, 3], [4, 5]], [[0, 2]]], 6)
    assert idx.tolist() == [[-1, 0, 0, -1, 1, -1], [0, 0, -1, -1, -1, -1]]
    values = torch.tensor([[10.0, 1, 2, 100, 3, 1000], [4.0, 5, 6, 7, 8, 9]])
    assert obj.turn_sums(values, idx, 2).tolist() == [[3.0, 3.0], [9.0, 0.0]]
    with pytest.raises(ValueError, match=r"item 0: turn span 1 = \[2, 4\)"):
        obj.span_turn_index([[[1, 3], [2, 4]]], 6)


def test_turn_log_ratio_hand_computed():
    # q_t = sum over the turn's tokens of (log pi_phi - log pi_ref); tokens outside turns never count
    logp = torch.tensor([[-9.0, -1.0, -2.0, -9.0, -0.5]])
    ref = torch.tensor([[0.0, -1.5, -1.0, 0.0, -0.25]])
    idx = torch.tensor([[-1, 0, 0, -1, 1]])
    q = obj.turn_log_ratio(logp, ref, idx, 3)
    assert q.tolist() == [[pytest.approx(0.5 - 1.0), pytest.approx(-0.25), 0.0]]


def test_trajectory_dpo_loss_hand_computed():
    # Q = mean over turns of beta * q_t
    r = torch.tensor([[0.2, 0.4], [0.1, 0.0], [-0.3, 0.0], [0.5, 0.0], [0.0, 0.0]])
    valid = torch.tensor([[True, True], [True, False], [True, False], [True, False], [False, False]])
    q = obj.trajectory_scores(r, valid)
    assert q.tolist() == pytest.approx([0.3, 0.1, -0.3, 0.5, 0.0])
    success = torch.tensor([True, False, False, True, True])
    group = torch.tensor([0, 0, 0, 1, 1])  # group 1 has successes only: no pair
    loss, pairs = obj.trajectory_dpo_loss(q, success, group)
    assert pairs == 2
    assert float(loss) == pytest.approx(-(logsig(0.3 - 0.1) + logsig(0.3 + 0.3)) / 2)
    # rows of another group never pair; no pair gives a zero that still backpropagates
    zero, n = obj.trajectory_dpo_loss(q.clone().requires_grad_(True), success, torch.tensor([0, 1, 2, 3, 4]))
    assert n == 0 and float(zero) == 0.0 and zero.requires_grad


def test_progress_loss_hand_computed():
    c = torch.tensor([[0.5, 0.25, 9.0], [1.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, False], [True, False, False]])
    assert float(obj.progress_loss(c, valid, torch.tensor([1.0, 0.0]))) == pytest.approx((0.25**2 + 1.0) / 2)


def test_token_logprobs_and_q_on_a_tiny_model():
    """r_t = beta * q_t of the service equals beta * sum over the turn's tokens of (log pi_phi(x_i|x_<i) - ref_i),
    with log pi_phi computed here token by token from the model's own logits."""
    torch.manual_seed(0)
    svc = StepRewardModel(dict(objective="implicit", backbone_config=tiny_backbone(vocab_size=40), beta=0.5,
                               device="cpu"))
    ids = [1, 7, 9, 3, 12, 30, 5, 3, 22, 8]
    spans = [[4, 7], [8, 10]]
    ref = [0.0] * 4 + [-1.0, -2.0, -0.5, 0.0, -3.0, -1.5]
    (r,) = svc.score([{"input_ids": ids, "prompt_length": 4, "turn_spans": spans, "ref_logprobs": ref}])
    with torch.no_grad():
        logits = svc.serving(input_ids=torch.tensor([ids])).logits[0]
    lp = [0.0] + [float(torch.log_softmax(logits[i - 1], -1)[ids[i]]) for i in range(1, len(ids))]
    expected = [0.5 * sum(lp[i] - ref[i] for i in range(a, b)) for a, b in spans]
    assert r == pytest.approx(expected, abs=1e-5)
    # token_logprobs agrees with the per-token loop
    got = obj.token_logprobs(logits.unsqueeze(0), torch.tensor([ids]))[0].tolist()
    assert got == pytest.approx(lp, abs=1e-5)


def test_frozen_reference_starts_at_zero():
    svc = StepRewardModel(dict(objective="implicit", backbone_config=tiny_backbone(vocab_size=40), reference="frozen",
                               device="cpu"))
    (r,) = svc.score([{"input_ids": [1, 2, 3, 4, 5, 6], "prompt_length": 2, "turn_spans": [[2, 4], [5, 6]]}])
    assert r == [0.0, 0.0]  # pi_phi = pi_ref before any update
