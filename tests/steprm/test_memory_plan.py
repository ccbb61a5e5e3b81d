"""The per-GPU memory plan of the step-reward models (``spa_reward.steprm.memory_plan``): parameter counts against
the published Qwen2.5 sizes and against real models built from tiny configs, the byte arithmetic by hand, and the
held tensors of a built model."""

from __future__ import annotations

import pytest

from spa_reward.steprm.memory_plan import GIB, QWEN25, count_params, held_bytes, plan, smallest_fit, table

TINY_QWEN = dict(model_type="qwen2", vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def test_qwen25_parameter_counts_by_hand():
    # 0.5B: per layer q 896*896+896, k and v 896*128+128, o 896*896, MLP 3*896*4864, 2 norms; 24 layers;
    # the embedding (tied) 151936*896 and the final norm
    layer = (896 * 896 + 896) + 2 * (896 * 128 + 128) + 896 * 896 + 3 * 896 * 4864 + 2 * 896
    assert count_params(QWEN25["0.5B"], "implicit").total == 24 * layer + 151936 * 896 + 896 == 494_032_768
    assert count_params(QWEN25["1.5B"], "implicit").total == 1_543_714_304
    assert count_params(QWEN25["7B"], "implicit").total == 7_615_616_512  # untied: embedding and output layer
    p = count_params(QWEN25["7B"], "progress")  # the untied LM head is frozen, not trained
    assert p.frozen == 152064 * 3584 and p.total == 7_615_616_512 - p.frozen + (3584 * 3584 + 3584 + 3584 + 1)


@pytest.mark.parametrize("tied", [True, False])
def test_counts_match_real_models(tied):
    from transformers import AutoConfig, AutoModelForCausalLM

    from spa_reward.progress.model import ProgressEstimator, ProgressEstimatorConfig

    cfg = dict(TINY_QWEN, tie_word_embeddings=tied)
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    assert count_params(cfg, "implicit").total == sum(p.numel() for p in lm.parameters())
    est = ProgressEstimator(ProgressEstimatorConfig(backbone_config=dict(cfg)))
    trained = sum(p.numel() for p in est.parameters() if p.requires_grad)
    assert count_params(cfg, "progress").total == trained


def test_plan_bytes_by_hand():
    p = count_params(QWEN25["7B"], "implicit").total
    one, four = plan(QWEN25["7B"], "implicit", 1), plan(QWEN25["7B"], "implicit", 4)
    assert one["weights"] + one["grads"] + one["adam"] == pytest.approx(16 * p / GIB)
    assert one["serving"] == pytest.approx(4 * p / GIB)  # the one actor's fp32 serving copy
    assert four["weights"] + four["grads"] + four["adam"] == pytest.approx(16 * p / 4 / GIB)  # 28.4 GiB
    assert four["serving"] == 0 and four["activations"] == one["activations"]
    assert plan(QWEN25["7B"], "implicit", 4, reference=True)["reference"] == pytest.approx(2 * p / 4 / GIB)
    assert one["total"] > 78 and four["total"] < 0.9 * 78  # 7B: no single GPU; four ranks with room to spare
    assert smallest_fit(QWEN25["7B"], "implicit", 78) == 4 and smallest_fit(QWEN25["0.5B"], "implicit", 78) == 1
    assert "| implicit | 7B | 7.62B | 4 |" in table()
    with pytest.raises(ValueError, match="ranks=0"):
        plan(QWEN25["7B"], "implicit", 0)


def test_held_bytes_of_a_built_model():
    import torch

    from spa_reward.steprm.service import StepRewardModel
    from tests.steprm.helpers import synthetic_items, tiny_backbone

    model = StepRewardModel(dict(objective="implicit", online=True, backbone_config=tiny_backbone(), device="cpu",
                                 reference="frozen"))
    n = sum(p.numel() for p in model.model.parameters())
    before = held_bytes(model)
    assert before == {"weights": 4 * n, "adam": 0, "serving": 4 * n, "reference": 4 * n}
    model.update(synthetic_items(8, seed=0)[0])
    assert held_bytes(model)["adam"] == 8 * n and all(p.grad is None for p in model.model.parameters())
    assert torch.float32 == next(model.model.parameters()).dtype
