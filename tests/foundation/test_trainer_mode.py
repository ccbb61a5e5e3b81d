"""The ``spa`` trainer mode on a real local TransferQueue: the extra per-turn fields the agent loop stores reach
the estimators, verl's own advantage write-back runs, and episode metrics are logged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.foundation.test_advantage import ANCHORS, INDEX, MASK, cfg, outcome_rewards

ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")


@pytest.fixture(scope="module")
def transfer_queue():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    yield tq
    tq.close()
    ray.shutdown()


def put_rollout(rewards, keys, partition="train"):
    """Store rows exactly as verl's AgentLoopWorkerTQ does (one dict per output, list_of_dict_to_tensordict)."""
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    rows = []
    for b in range(len(keys)):
        rows.append({
            "response_mask": MASK[b],
            "rm_scores": rewards[b],
            "uid": INDEX[b],
            "turn_anchors": list(ANCHORS[b]),
            "episode_reward": float(rewards[b].sum()),
            "episode_info": {"won": bool(rewards[b].sum() >= 1), "task_type": f"type{b % 2}", "num_turns": 1,
                             "executable_rate": 1.0, "sum_contribution": float(b), "env_reward": float(b) * 2},
        })
    tq.kv_batch_put(keys=keys, fields=list_of_dict_to_tensordict(rows), partition_id=partition)


def make_trainer(estimator: str):
    from spa_reward.trainer import SpaTrainer

    trainer = SpaTrainer.__new__(SpaTrainer)  # the real class, without building GPU workers
    config = OmegaConf.create({
        "algorithm": OmegaConf.to_container(cfg(adv_estimator=estimator, use_kl_in_reward=False,
                                                norm_adv_by_std_in_grpo=True, rollout_correction=None)),
        "actor_rollout_ref": {"rollout": {"n": 3}},
    })
    trainer.config = config
    trainer.use_critic = False
    return trainer


def test_registered_and_runs_as_sync():
    from verl.trainer.ppo.v1 import get_trainer_cls

    import spa_reward.trainer  # noqa: F401

    cls = get_trainer_cls("spa")
    trainer = cls.__new__(cls)
    trainer.trainer_mode = "spa"
    assert trainer.trainer_mode == "sync"  # verl's sync-only branches (replay buffer, refill) stay on
    with pytest.raises(ValueError, match="trainer_mode"):
        trainer.trainer_mode = "colocate_async"


def test_gigpo_through_transfer_queue_matches_direct(transfer_queue):
    from transfer_queue import KVBatchMeta

    from spa_reward.advantage import compute_gigpo_advantage

    rewards = outcome_rewards()
    keys = [f"{INDEX[b]}{b}_0_0" for b in range(len(INDEX))]
    put_rollout(rewards, keys)
    batch = KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train")
    metrics: dict = {}
    make_trainer("gigpo")._compute_advantage(batch, metrics)

    got = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["advantages"])["advantages"]
    expected, _ = compute_gigpo_advantage(rewards, MASK, INDEX, cfg(), turn_anchors=ANCHORS,
                                          episode_rewards=rewards.sum(-1).numpy())
    for b in range(len(keys)):
        n = int(MASK[b].shape[0])
        assert torch.allclose(got[b][:n].float(), expected[b].float(), atol=1e-6)
    assert metrics["episode/success_rate"] == pytest.approx(2 / 5)  # rows 0 and 2 reach R >= 1
    assert metrics["episode/success_rate/type0"] == pytest.approx(2 / 3)  # rows 0, 2, 4 -> won, won, lost
    assert metrics["spa/corr_sum_contribution_reward"] == pytest.approx(1.0)


def test_missing_fields_give_a_clear_error(transfer_queue):
    from transfer_queue import KVBatchMeta
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    keys = ["plain0_0_0"]
    tq.kv_batch_put(keys=keys, partition_id="train", fields=list_of_dict_to_tensordict(
        [{"response_mask": MASK[0], "rm_scores": outcome_rewards()[0], "uid": "plain"}]))
    batch = KVBatchMeta(keys=keys, tags=[{}], partition_id="train")
    with pytest.raises(RuntimeError, match="env_agent"):
        make_trainer("gigpo")._compute_advantage(batch, {})
