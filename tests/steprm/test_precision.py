"""Precision of the step-reward models: fp32 master weights with bf16 compute, so a PRM trains at lr 1e-6."""

from __future__ import annotations

import pytest
import torch

from spa_reward.steprm.service import StepRewardModel, StepRMSettings, precision
from spa_reward.steprm.trainer_hooks import service_plan
from tests.steprm.helpers import synthetic_items, tiny_backbone


def settings(**kw) -> StepRMSettings:
    return StepRMSettings(**{**dict(objective="implicit", online=True, backbone_config=tiny_backbone()), **kw})


def test_online_model_on_cuda_keeps_fp32_master_weights_and_computes_in_bf16():
    """The defect: ``dtype=auto`` gave bf16 weights on a GPU, trained by plain AdamW. Now a training model keeps
    fp32 weights and bf16 autocast; a frozen scorer may hold bf16 weights (it never steps)."""
    assert precision(settings(), "cuda") == (torch.float32, True)
    assert precision(settings(), "cpu") == (torch.float32, False)
    assert precision(settings(online=False), "cuda") == (torch.bfloat16, True)
    assert precision(settings(autocast_bf16=False), "cuda") == (torch.float32, False)
    assert precision(settings(autocast_bf16=True), "cpu") == (torch.float32, True)


def test_refuses_an_online_model_with_bf16_weights():
    with pytest.raises(ValueError, match=r"dtype='bfloat16' with online=true cannot train.*fp32 master weights"):
        settings(dtype="bfloat16")
    with pytest.raises(ValueError, match=r"autocast_bf16='yes' must be true, false or 'auto'"):
        settings(autocast_bf16="yes")
    settings(dtype="bfloat16", online=False)  # a frozen scorer in bf16 is fine
    settings(dtype="bfloat16", lora_r=4)  # LoRA: fp32 adapters on a bf16 base


def test_refuses_half_trainable_weights_at_build(monkeypatch):
    """A model whose trainable weights come out in bf16 anyway (e.g. a checkpoint path that ignores the dtype) is
    refused when the service is built, before it could silently not train."""
    import spa_reward.steprm.service as service

    monkeypatch.setattr(service, "precision", lambda s, d: (torch.bfloat16, False))
    with pytest.raises(ValueError, match=r"trainable weights in \['torch.bfloat16'\]"):
        StepRewardModel(dict(objective="implicit", online=True, backbone_config=tiny_backbone(), device="cpu",
                             reference="frozen"))


def test_plain_adamw_on_bf16_weights_loses_small_steps():
    """Why the refusal: at lr 1e-6 AdamW's step (~lr per weight) is below bf16's spacing for most weights."""
    torch.manual_seed(0)
    moved = {}
    for dt in (torch.bfloat16, torch.float32):
        w = torch.nn.Parameter(torch.randn(4096, dtype=dt) * 0.02)
        w0 = w.detach().clone()
        opt = torch.optim.AdamW([w], lr=1e-6)
        for _ in range(5):
            opt.zero_grad()
            (w.float() * torch.randn(4096)).sum().backward()
            opt.step()
        moved[dt] = float((w != w0).float().mean())
    assert moved[torch.bfloat16] < 0.1 and moved[torch.float32] > 0.99, moved


@pytest.mark.parametrize("objective", ["implicit", "progress"])
def test_bf16_autocast_update_moves_the_weights_at_lr_1e_6(objective):
    """bf16 compute on CPU (autocast), fp32 master weights: one update at the recipe's lr 1e-6 moves nearly
    every weight that gets a gradient (bf16 weights with plain AdamW move ~2%)."""
    torch.manual_seed(0)
    kw = dict(reference="frozen", beta=0.5) if objective == "implicit" else {}
    svc = StepRewardModel(dict(objective=objective, online=True, backbone_config=tiny_backbone(), device="cpu",
                               lr=1e-6, autocast_bf16=True, micro_batch_size=32, **kw))
    assert svc.autocast_bf16 and all(p.dtype == torch.float32 for p in svc.model.parameters())
    before = {n: p.detach().clone() for n, p in svc.model.named_parameters() if p.requires_grad}
    items, _ = synthetic_items(16, seed=0)
    m = svc.update(items)
    assert objective == "progress" or m["steprm/pairs"] > 0
    after = dict(svc.model.named_parameters())
    moved = sum(int((after[n] != w).sum()) for n, w in before.items())
    total = sum(w.numel() for w in before.values())
    assert moved / total > 0.9, (moved, total)  # embedding rows of tokens that never occur get no gradient
    served = dict(svc.serving.named_parameters())
    assert all(torch.equal(served[n], after[n]) for n in before)


def test_service_plans_ask_for_bf16_compute_on_cuda(tmp_path):
    """The recipe's istar / stepagent / online spa blocks leave dtype and autocast on auto: fp32 master weights,
    bf16 compute on a GPU."""
    from omegaconf import OmegaConf

    cfg_path = "recipe/spa/config/spa_trainer.yaml"
    raw = OmegaConf.load(cfg_path)
    for block in (raw.algorithm.istar, raw.algorithm.stepagent, raw.algorithm.spa.online):
        assert block.autocast_bf16 == "auto" and block.get("dtype") in (None, "auto")
    cfg = OmegaConf.create({"algorithm": {"reward": "istar", "istar": OmegaConf.to_container(raw.algorithm.istar)},
                            "actor_rollout_ref": {"model": {"path": str(tmp_path)}}})
    plan = service_plan(cfg)
    s = StepRMSettings.from_dict(plan["settings"])
    assert precision(s, "cuda") == (torch.float32, True)
