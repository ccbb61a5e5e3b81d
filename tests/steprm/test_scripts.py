"""``examples/rl_istar.sh`` and ``SPA_ONLINE=1 examples/rl_spa.sh`` compose (DRY_RUN=1) and pass the start-up checks."""

from __future__ import annotations

import pytest

from spa_reward.config_check import config_problems
from tests.recipe.test_examples import composed


def test_rl_istar_composes():
    cfg = composed("rl_istar.sh", "webshop", "algorithm.istar.lora_r=8", N_GPUS="3", TP="2")
    a = cfg.algorithm
    assert a.reward == "istar" and a.adv_estimator == "spa" and a.spa.mode == "rloo"
    assert cfg.reward.reward_manager.name == "istar" and cfg.trainer.v1.trainer_mode == "spa"
    assert a.istar.beta == 0.05 and a.istar.lr == 1e-6 and a.istar.grad_clip == 10 and a.istar.reference == "rollout"
    assert a.istar.lora_r == 8 and a.istar.num_gpus == 1 and a.invalid_penalty == 0.1
    assert cfg.reward.reward_kwargs.grounding_beta == 0.0
    # one GPU goes to the PRM actor; the shared schedule is unchanged
    assert cfg.trainer.n_gpus_per_node == 2 and cfg.data.train_batch_size == 16 and cfg.actor_rollout_ref.rollout.n == 8
    assert cfg.trainer.experiment_name == "webshop_istar_istar_spa"
    assert cfg.trainer.default_local_dir.endswith("rl/webshop/webshop_istar_istar_spa/checkpoints")
    assert config_problems(cfg, check_files=False) == []


@pytest.mark.slow
def test_rl_spa_online_composes():
    cfg = composed("rl_spa.sh", "alfworld", "algorithm.spa.online.replay_batches=2", SPA_ONLINE="1")
    online = cfg.algorithm.spa.online
    assert online.enable and online.replay_batches == 2 and cfg.algorithm.reward == "spa"
    assert config_problems(cfg, check_files=False) == []
    off = composed("rl_spa.sh", "alfworld")
    assert not off.algorithm.spa.online.enable
    # online and offline SPA never share (and so never resume) one run folder
    assert "_online_" in cfg.trainer.experiment_name and cfg.trainer.experiment_name != off.trainer.experiment_name


def test_prm_gpus_2_composes_a_sharded_prm():
    """PRM_GPUS=2 gives the PRM two GPUs, i.e. two FSDP ranks (spa_reward.steprm.sharded), and the start-up checks
    pass; the GPUs count per node, so NNODES=2 doubles them; SCORER_GPUS=2 shards the SPA scorer the same way."""
    from spa_reward.steprm.trainer_hooks import plan_problems, service_plan
    from tests.recipe.test_examples import overrides

    cfg = composed("rl_istar.sh", "webshop", N_GPUS="4", PRM_GPUS="2", TP="2")
    assert cfg.algorithm.istar.num_gpus == 2 and cfg.trainer.n_gpus_per_node == 2
    assert service_plan(cfg)["ranks"] == 2 and plan_problems(cfg) == []
    assert config_problems(cfg, check_files=False) == []
    assert overrides("rl_istar.sh", "webshop", N_GPUS="8", NNODES="2", PRM_GPUS="2")["algorithm.istar.num_gpus"] == "4"
    spa = overrides("rl_spa.sh", "webshop", N_GPUS="4", SCORER_GPUS="2")
    assert spa["algorithm.spa.scorer_num_gpus"] == "2" and spa["trainer.n_gpus_per_node"] == "2"
    sa = overrides("rl_stepagent.sh", "webshop", N_GPUS="4", PRM_GPUS="2", STEPAGENT_MODE="implicit")
    assert sa["algorithm.stepagent.num_gpus"] == "2"
