"""The step-reward model service in process: online learning, checkpoint/resume, serving during an update."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from spa_reward.progress.synthetic import attribution_metrics
from spa_reward.steprm.service import StepRewardModel, StepRMSettings
from tests.steprm.helpers import synthetic_items, tiny_backbone


def progress(**kw) -> StepRewardModel:
    torch.manual_seed(0)
    return StepRewardModel({**dict(objective="progress", online=True, backbone_config=tiny_backbone(), lr=1e-3,
                                   device="cpu", micro_batch_size=16), **kw})


def implicit(**kw) -> StepRewardModel:
    torch.manual_seed(0)
    return StepRewardModel({**dict(objective="implicit", online=True, backbone_config=tiny_backbone(), lr=2e-3,
                                   beta=0.5, reference="frozen", device="cpu", micro_batch_size=32), **kw})


def mse(svc, items) -> float:
    pred = svc.score(items)
    return float(np.mean([(sum(p) - it["reward"]) ** 2 for p, it in zip(pred, items)]))


def test_settings_are_checked():
    with pytest.raises(ValueError, match="objective='prm' is not one of"):
        StepRMSettings(objective="prm", backbone_config={})
    with pytest.raises(ValueError, match=r"lr=nan must be a finite number > 0"):
        StepRMSettings(lr=float("nan"), backbone_config={})
    with pytest.raises(ValueError, match="unknown step-reward model settings"):
        StepRMSettings.from_dict({"objective": "progress", "backbone_config": {}, "lrr": 1})
    frozen = StepRewardModel(dict(objective="progress", backbone_config=tiny_backbone(), device="cpu"))
    with pytest.raises(RuntimeError, match="not online"):
        frozen.update([])


def test_implicit_needs_rollout_logprobs():
    svc = StepRewardModel(dict(objective="implicit", backbone_config=tiny_backbone(), device="cpu"))
    with pytest.raises(ValueError, match="item 0 has no 'ref_logprobs'"):
        svc.score([{"input_ids": [1, 2, 3], "turn_spans": [[1, 3]]}])
    with pytest.raises(ValueError, match=r"item 0: turn_spans\[0\]=\[1, 9\]"):
        svc.score([{"input_ids": [1, 2, 3], "turn_spans": [[1, 9]], "ref_logprobs": [0, 0, 0]}])


def test_online_progress_lowers_mse_on_later_batches():
    svc = progress(steps_per_batch=2, replay_batches=2)
    held_out, _ = synthetic_items(64, seed=100)
    before = mse(svc, held_out)
    for b in range(4):
        items, _ = synthetic_items(32, seed=b)
        m = svc.update(items)
        assert m["steprm/version"] == b + 1 and m["steprm/episodes"] == 32 * min(b + 1, 2)  # replay window K=2
    after = mse(svc, held_out)
    assert after < 0.5 * before, (before, after)


def test_dpo_update_widens_success_margin():
    svc = implicit()
    items, _ = synthetic_items(32, seed=0)

    def margin():
        q = [float(np.mean(r)) for r in svc.score(items)]
        win = [x for x, it in zip(q, items) if it["success"]]
        lose = [x for x, it in zip(q, items) if not it["success"]]
        return np.mean(win) - np.mean(lose)

    assert margin() == 0.0  # frozen reference = initial model
    first = svc.update(items)
    for _ in range(3):
        svc.update(items)
    assert first["steprm/pairs"] > 0 and margin() > 0.0


@pytest.mark.slow
def test_implicit_prm_ranks_decisive_turns():
    """iStar's PRM trained by trajectory DPO on synthetic success/failure groups only (never the step values)
    gives its step rewards r_t = beta * q_t a per-step Pearson >= 0.8 with the true contributions."""
    svc = implicit()
    test_items, test_recs = synthetic_items(64, seed=999)
    for b in range(16):
        svc.update(synthetic_items(64, seed=b)[0])
    metrics = attribution_metrics(svc.score(test_items), test_recs)
    assert metrics["step_pearson"] >= 0.8, metrics


@pytest.mark.parametrize("make", [progress, implicit], ids=["progress", "implicit"])
def test_checkpoint_resume_gives_the_same_rewards(make, tmp_path):
    kw = {"replay_batches": 2, "steps_per_batch": 2}
    batches = [synthetic_items(24, seed=b)[0] for b in range(3)]
    probe, _ = synthetic_items(8, seed=50)
    a = make(**kw)
    a.update(batches[0])
    a.update(batches[1])
    a.save(tmp_path / "ckpt")
    a.update(batches[2])
    b = make(**kw)
    b.load(tmp_path / "ckpt")
    assert b.version == 2 and [len(x) for x in b.window] == [24, 24]
    b.update(batches[2])
    assert b.score(probe) == a.score(probe)
    with pytest.raises(FileNotFoundError, match="state.json.* is missing"):
        make(**kw).load(tmp_path / "nothing")


def test_score_during_update_uses_pre_update_weights():
    svc = progress(steps_per_batch=1)
    items, _ = synthetic_items(16, seed=0)
    before = svc.score(items[:4])
    stepped, release = threading.Event(), threading.Event()
    real_step = svc._clip_and_step

    def slow_step():
        real_step()  # the training copy has changed ...
        stepped.set()
        release.wait(30)  # ... and the update has not finished yet

    svc._clip_and_step = slow_step
    worker = threading.Thread(target=svc.update, args=(items,))
    worker.start()
    assert stepped.wait(60)
    during = svc.score(items[:4])
    release.set()
    worker.join(60)
    after = svc.score(items[:4])
    assert during == before and after != before


def test_lora_checkpointing_bf16_autocast(tmp_path):
    """The memory options for large PRMs: LoRA (peft) trains only the adapters, gradient checkpointing and bf16
    autocast run the same update path, and the saved state holds only the trained tensors."""
    pytest.importorskip("peft")
    kw = dict(lora_r=4, gradient_checkpointing=True, autocast_bf16=True, lr=1e-2)
    svc = implicit(**kw)
    trainable = [n for n, p in svc.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    items, _ = synthetic_items(16, seed=0)
    before = svc.score(items[:4])
    m = svc.update(items)
    assert m["steprm/pairs"] > 0 and svc.score(items[:4]) != before
    svc.save(tmp_path / "s")
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "s" / "weights.safetensors"))) == set(trainable)
    other = implicit(**kw)
    other.load(tmp_path / "s")
    assert other.score(items[:4]) == svc.score(items[:4])
    prog = progress(gradient_checkpointing=True)
    assert prog.update(items)["steprm/loss"] > 0
