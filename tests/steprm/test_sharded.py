"""The sharded step-reward model in this process, on a one-rank gloo group (fast; two ranks over Ray:
``test_sharded_ray.py``): FSDP2 sharding, the DCP state read by either model, bf16 mixed precision on CPU, the
data-parallel split of micro-batches, and the config that asks for ranks.

Tolerances: fp32 on CPU, so the sharded and the one-actor model agree to float rounding (1e-6). bf16 mixed
precision (FSDP all-gathers bf16 weights; the one-actor model autocasts fp32 weights to bf16) agrees to bf16
rounding: 2e-2 absolute on values of order 1."""

from __future__ import annotations

import json

import pytest
import torch

from spa_reward.steprm.service import StepRewardModel
from tests.recipe.helpers import trainer_config
from tests.steprm.helpers import synthetic_items, tiny_backbone

dist = pytest.importorskip("torch.distributed")

IMPLICIT = dict(objective="implicit", online=True, backbone_config=tiny_backbone(), lr=1e-2, beta=0.5,
                reference="frozen", device="cpu", micro_batch_size=3)
TIED = dict(IMPLICIT, backbone_config=dict(tiny_backbone(), tie_word_embeddings=True))  # Qwen2.5 0.5B / 1.5B tie
PROGRESS = dict(objective="progress", online=True, backbone_config=tiny_backbone(), lr=1e-2, device="cpu",
                micro_batch_size=3)


@pytest.fixture
def one_rank():
    """A one-rank gloo process group in this process (the sharded model needs the default group)."""
    if dist.is_initialized():
        pytest.skip("a process group is already up in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def sharded(settings):
    from spa_reward.steprm.sharded import ShardedStepRewardModel

    return ShardedStepRewardModel(settings)


def close(a, b, tol=1e-6) -> bool:
    return len(a) == len(b) and all(x == pytest.approx(y, abs=tol) for x, y in zip(a, b))


@pytest.mark.parametrize("settings", [IMPLICIT, pytest.param(TIED, marks=pytest.mark.slow), PROGRESS],
                         ids=["implicit", "tied", "progress"])
def test_sharded_model_scores_and_trains_like_the_one_actor_model(one_rank, settings, tmp_path):
    from torch.distributed.tensor import DTensor

    items, _ = synthetic_items(8, seed=0)
    one, shard = StepRewardModel(settings), sharded(settings)
    assert all(isinstance(p, DTensor) for p in shard.model.parameters())  # FSDP2 holds every weight
    assert shard.serving is shard.model  # no serving copy: one call at a time
    assert close(shard.score(items), one.score(items))
    for step in range(2):
        got, want = shard.update(items), one.update(items)
        assert got["steprm/loss"] == pytest.approx(want["steprm/loss"], abs=1e-6) and got["steprm/version"] == step + 1
    assert close(shard.score(items), one.score(items))

    # the sharded state (DCP) restores the one-actor model and the reverse; the next update is the same
    shard.save(tmp_path / "sharded")
    meta = json.loads((tmp_path / "sharded" / "state.json").read_text())
    assert meta["layout"] == "dcp" and meta["ranks"] == 1 and meta["optimizer"]["params"]
    back = StepRewardModel(settings)
    back.load(tmp_path / "sharded")
    assert back.version == 2 and close(back.score(items), one.score(items))
    one.save(tmp_path / "one")
    again = sharded(settings)
    again.load(tmp_path / "one")
    later, _ = synthetic_items(8, seed=1)
    want = one.update(later)["steprm/loss"]
    assert back.update(later)["steprm/loss"] == pytest.approx(want, abs=1e-6)
    assert again.update(later)["steprm/loss"] == pytest.approx(want, abs=1e-6)
    assert close(again.score(items), one.score(items))


def test_a_state_saved_before_any_update_loads_with_a_fresh_optimiser(one_rank, tmp_path):
    """Version 0 has no AdamW state: both models load it and then take the same (first) step."""
    items, _ = synthetic_items(8, seed=0)
    shard = sharded(PROGRESS)
    shard.save(tmp_path / "v0")
    assert json.loads((tmp_path / "v0" / "state.json").read_text())["optimizer"] is None
    one = StepRewardModel(PROGRESS)
    one.load(tmp_path / "v0")
    shard.load(tmp_path / "v0")
    assert not one.optimizer.state and not shard.optimizer.state
    assert shard.update(items)["steprm/loss"] == pytest.approx(one.update(items)["steprm/loss"], abs=1e-6)


def test_bf16_mixed_precision_on_cpu(one_rank):
    """autocast_bf16 (what a GPU gets by default): FSDP all-gathers bf16 weights and reduces fp32 gradients onto
    fp32 master weights, so an update at lr 1e-6 moves the weights and the scores stay within bf16 rounding of
    the one-actor model's autocast."""
    settings = dict(IMPLICIT, autocast_bf16=True, lr=1e-6)
    items, _ = synthetic_items(8, seed=0)
    one, shard = StepRewardModel(settings), sharded(settings)
    assert {p.dtype for p in shard.model.parameters()} == {torch.float32}
    assert shard.reference is not None and {p.dtype for p in shard.reference.parameters()} == {torch.bfloat16}
    assert close(shard.score(items), one.score(items), tol=2e-2)
    before = {k: p.full_tensor().clone() for k, p in shard.model.named_parameters()}
    got, want = shard.update(items), one.update(items)
    assert got["steprm/loss"] == pytest.approx(want["steprm/loss"], abs=2e-2)
    moved = sum(int((p.full_tensor() != before[k]).sum()) for k, p in shard.model.named_parameters())
    assert moved / sum(p.numel() for p in before.values()) > 0.9  # fp32 master weights take the small steps


def test_micro_batches_are_split_round_robin_with_idle_passes():
    """Rank r of N takes micro-batches r, r + N, ...; a rank with fewer runs idle passes to match the busiest."""
    from spa_reward.steprm.sharded import ShardedStepRewardModel

    model = ShardedStepRewardModel.__new__(ShardedStepRewardModel)
    batches = [[0], [1], [2], [3], [4]]
    model.world = 2
    model.rank = 0
    assert model._share(batches) == ([[0], [2], [4]], 0)
    model.rank = 1
    assert model._share(batches) == ([[1], [3]], 1)
    model.world, model.rank = 4, 3
    assert model._share(batches) == ([[3]], 1)


def test_ranks_come_from_the_gpus_and_bad_splits_are_refused():
    import re

    from omegaconf import OmegaConf

    from spa_reward.steprm.trainer_hooks import plan_problems, service_plan

    istar = trainer_config("algorithm.reward=istar", "actor_rollout_ref.model.path=/m")
    spa = trainer_config("algorithm.reward=spa", "algorithm.spa.estimator_path=/x")

    def with_(cfg, **keys):
        out = OmegaConf.create(OmegaConf.to_container(cfg))
        for k, v in keys.items():
            OmegaConf.update(out, k.replace("__", "."), v)
        return out

    assert service_plan(istar)["ranks"] == 1  # one GPU: the one-actor service
    assert service_plan(with_(istar, algorithm__istar__num_gpus=4))["ranks"] == 4
    assert service_plan(with_(istar, algorithm__istar__num_gpus=0, algorithm__istar__ranks=2))["ranks"] == 2
    assert service_plan(with_(spa, algorithm__spa__scorer_num_gpus=2))["ranks"] == 2  # the frozen scorer
    assert service_plan(with_(spa, algorithm__spa__scorer_num_gpus=2, algorithm__spa__online__enable=True))["ranks"] == 2
    for keys, match in (
        (dict(algorithm__istar__num_gpus=4, algorithm__istar__ranks=2), r"num_gpus=4 with algorithm.istar.ranks=2"),
        (dict(algorithm__istar__num_gpus=1.5), r"num_gpus=1.5: one actor uses one GPU"),
        (dict(algorithm__istar__ranks=0), r"algorithm.istar.ranks=0 must be an integer >= 1"),
        (dict(algorithm__istar__num_gpus=2, algorithm__istar__lora_r=8), r"lora_r=8 with 2 ranks"),
    ):
        problems = plan_problems(with_(istar, **keys))
        assert any(re.search(match, p) for p in problems), problems
    assert any("algorithm.spa.scorer_ranks=-1" in p for p in plan_problems(with_(spa, algorithm__spa__scorer_ranks=-1)))
    assert not plan_problems(with_(istar, algorithm__istar__num_gpus=4))


def test_a_frozen_scorer_on_ranks_scores_like_the_one_actor_progress_scorer(one_rank, tmp_path):
    """SCORER_GPUS >= 2 serves the frozen SPA estimator from the sharded model (objective progress, online false)
    instead of ``ProgressScorer``: the same c_t for the reward manager's items, truncation included."""
    from spa_reward.progress.model import ProgressEstimator, ProgressEstimatorConfig
    from spa_reward.progress.serve import ProgressScorer

    torch.manual_seed(0)
    ProgressEstimator(ProgressEstimatorConfig(backbone_config=tiny_backbone(), max_length=24)).save_pretrained(tmp_path)
    batch, _ = synthetic_items(6, seed=2)
    items = [{"input_ids": it["input_ids"], "prompt_length": it["prompt_length"],
              "turn_ends": [b - 1 for _, b in it["turn_spans"]]} for it in batch]
    assert max(len(it["input_ids"]) for it in items) > 24  # some are truncated
    want = ProgressScorer(tmp_path, device="cpu").score(items)
    got = sharded(dict(objective="progress", online=False, model_path=str(tmp_path), device="cpu")).score(items)
    assert all(close(g, w) for g, w in zip(got, want)) and len(got) == len(want)
