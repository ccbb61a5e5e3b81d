"""StepAgent irl: the discriminator D(s, a) (tiny backbone + scalar head) trained by the service's update separates
synthetic expert and random steps on held-out states; its reward clip(log D - log(1 - D)) is finite under any
logit; the loss by hand."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from spa_reward.steprm import objectives as obj
from spa_reward.steprm.service import StepRewardModel
from tests.stepagent.helpers_pairs import VOCAB, auc, scoring_items, synthetic_pairs
from tests.steprm.helpers import tiny_backbone


def discriminator(**kw) -> StepRewardModel:
    return StepRewardModel({**dict(objective="discriminator", online=True, backbone_config=tiny_backbone(VOCAB, 32, 1),
                                   head="linear", lr=3e-3, grad_clip=1.0, device="cpu", micro_batch_size=64,
                                   reward_clip=5.0), **kw})


def test_irl_reward_is_the_clipped_logit_and_always_finite():
    logits = torch.tensor([-1e4, -7.0, -0.3, 0.0, 2.0, 1e4, math.inf, -math.inf, math.nan])
    r = obj.irl_reward(logits, clip=5.0)
    assert torch.isfinite(r).all()
    assert r.tolist() == pytest.approx([-5.0, -5.0, -0.3, 0.0, 2.0, 5.0, 5.0, -5.0, 0.0])
    d = torch.sigmoid(torch.tensor([-0.3, 2.0], dtype=torch.float64))  # log D - log(1 - D) = the logit
    assert (torch.log(d) - torch.log1p(-d)).tolist() == pytest.approx([-0.3, 2.0])
    with pytest.raises(ValueError, match="irl clip"):
        obj.irl_reward(logits, clip=0.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=16),
       st.floats(min_value=1e-3, max_value=1e3))
def test_irl_reward_is_bounded_and_monotone(values, clip):
    logits = torch.tensor(values, dtype=torch.float32)
    r = obj.irl_reward(logits, clip)
    assert torch.isfinite(r).all() and bool((r.abs() <= clip * (1 + 1e-6)).all())
    finite = torch.isfinite(logits)
    order = torch.argsort(logits[finite])
    assert bool((r[finite][order].diff() >= 0).all())  # a more expert-like step never gets less


def test_discriminator_loss_by_hand():
    logits, labels = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1, 0, 0])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = -(math.log(sig(2.0)) + math.log(1 - sig(-1.0)) + math.log(1 - sig(0.5))) / 3
    assert float(obj.discriminator_loss(logits, labels)) == pytest.approx(expected, rel=1e-6)
    assert float(obj.discriminator_loss(torch.tensor([1e4, -1e4]), torch.tensor([1, 0]))) == 0.0  # stable


def test_discriminator_separates_expert_from_random_steps():
    torch.manual_seed(0)
    svc = discriminator(steps_per_batch=4, replay_batches=4)
    test_items, labels = scoring_items(synthetic_pairs(64, seed=999))
    before = auc([r[0] for r in svc.score(test_items)], labels)
    for b in range(12):
        m = svc.update(synthetic_pairs(64, seed=b))
        assert m["steprm/pairs"] > 0
    after = auc([r[0] for r in svc.score(test_items)], labels)
    assert after >= 0.9 and before < 0.75, (before, after, m)


def test_scored_rewards_are_clipped_under_extreme_logits():
    svc = discriminator(reward_clip=3.0)
    items, _ = scoring_items(synthetic_pairs(4, seed=1))
    with torch.no_grad():
        for model in (svc.model, svc.serving):
            model.head[-1].weight.zero_()
            model.head[-1].bias.fill_(1e4)
    assert all(r == [3.0] for r in svc.score(items))
    with torch.no_grad():
        svc.serving.head[-1].bias.fill_(-math.inf)
    assert all(r == [-3.0] for r in svc.score(items))


def test_identical_pairs_are_skipped():
    svc = discriminator()
    pair = synthetic_pairs(1, seed=3)[0]
    m = svc.update([pair, dict(pair, agent_ids=pair["expert_ids"])])
    assert m["steprm/pairs"] == 1.0 and svc.stats["identical_pairs"] == 1 and m["steprm/episodes"] == 2.0
    with pytest.raises(ValueError, match="pair item 0 must be a dict"):
        svc.update([{"input_ids": [1, 2]}])


def test_discriminator_starts_from_a_causal_lm_checkpoint_with_a_fresh_head(tmp_path):
    """The irl plan's model_path is the policy checkpoint (a causal LM): its backbone weights, a new scalar head."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(1)
    policy = AutoModelForCausalLM.from_config(AutoConfig.for_model(**tiny_backbone(VOCAB, 32, 1)))
    policy.save_pretrained(tmp_path / "policy")
    svc = discriminator(model_path=str(tmp_path / "policy"), backbone_config=None)
    got = dict(svc.model.backbone.named_parameters())
    for name, p in policy.named_parameters():
        assert torch.equal(got[name], p), name
    assert float(svc.model.head[-1].bias.detach()) == 0.0  # fresh head: every step starts at logit ~ 0
    items, _ = scoring_items(synthetic_pairs(2, seed=5))
    assert all(abs(r[0]) < 1.0 for r in svc.score(items))
