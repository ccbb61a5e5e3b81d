"""The ``spa`` trainer mode on a real local TransferQueue: the extra per-turn fields the agent loop stores reach
the estimators, verl's own advantage write-back runs, and episode metrics are logged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.foundation.test_advantage import ANCHORS, INDEX, MASK, cfg, outcome_rewards

ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")



def put_rollout(rewards, keys, partition="train", failed=(), values=None, tags=None):
    """Store rows exactly as verl's AgentLoopWorkerTQ does (one dict per output, list_of_dict_to_tensordict, the
    loss_mask copy of response_mask and the weight-version tags). Rows in ``failed`` ended by env failure."""
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    rows, out_tags = [], []
    for b in range(len(keys)):
        bad = b in failed
        row = {
            "prompts": torch.tensor([5, 6, 7]),
            "responses": torch.arange(MASK.shape[1]),
            "response_mask": MASK[b].clone(),
            "loss_mask": MASK[b].clone(),
            "rm_scores": rewards[b],
            "uid": INDEX[b],
            "num_turns": 3,
            "turn_anchors": list(ANCHORS[b]),
            "episode_reward": float(rewards[b].sum()),
            "episode_info": {"won": bool(rewards[b].sum() >= 1) and not bad, "task_type": f"type{b % 2}",
                             "num_turns": 1, "executable_rate": 1.0, "sum_contribution": float(b),
                             "env_reward": float(b) * 2, "env_failed": 1.0 if bad else 0.0,
                             "env_error": "timeout:step" if bad else "",
                             "env_error_text": "env timeout during step: 60s" if bad else ""},
        }
        if values is not None:
            row["values"] = values[b]
        rows.append(row)
        out_tags.append({"status": "success", "global_steps": 3, "min_global_steps": 3, "max_global_steps": 3,
                         "seq_len": 3 + MASK.shape[1], "prompt_len": 3, "response_len": MASK.shape[1]})
    tags = out_tags if tags is None else tags
    tq.kv_batch_put(keys=keys, fields=list_of_dict_to_tensordict(rows), tags=tags, partition_id=partition)
    from transfer_queue import KVBatchMeta

    return KVBatchMeta(keys=list(keys), tags=tags, partition_id=partition)


def keys_for(prefix: str) -> list[str]:
    return [f"{INDEX[b]}{prefix}{b}_0_0" for b in range(len(INDEX))]


def make_trainer(estimator: str, use_critic: bool = False, **algo):
    from spa_reward.trainer import SpaTrainer

    trainer = SpaTrainer.__new__(SpaTrainer)  # the real class, without building GPU workers
    config = OmegaConf.create({
        "algorithm": OmegaConf.to_container(cfg(adv_estimator=estimator, use_kl_in_reward=False,
                                                norm_adv_by_std_in_grpo=True, rollout_correction=None, **algo)),
        "actor_rollout_ref": {"rollout": {"n": 3}},
    })
    trainer.config = config
    trainer.use_critic = use_critic
    return trainer


def fetch(keys, field, partition="train"):
    got = tq.kv_batch_get(keys=keys, partition_id=partition, select_fields=[field])[field]
    return list(got.unbind()) if getattr(got, "is_nested", False) else list(got)


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
    from spa_reward.advantage import compute_gigpo_advantage

    rewards = outcome_rewards()
    keys = keys_for("g")
    batch = put_rollout(rewards, keys)
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
    assert metrics["episode/env_failures"] == 0.0


def test_missing_fields_give_a_clear_error(transfer_queue):
    from transfer_queue import KVBatchMeta
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    keys = ["plain0_0_0"]
    tq.kv_batch_put(keys=keys, partition_id="train", fields=list_of_dict_to_tensordict(
        [{"response_mask": MASK[0], "rm_scores": outcome_rewards()[0], "uid": "plain"}]))
    batch = KVBatchMeta(keys=keys, tags=[{}], partition_id="train")
    with pytest.raises(RuntimeError, match="env_agent"):
        make_trainer("gigpo")._compute_advantage(batch, {})


# ------------------------------------------------------------------ env failures and padding (issue 8, item 4)


def test_grpo_failed_row_is_out_of_the_group_and_carries_no_loss(transfer_queue):
    """verl's built-in grpo, unchanged, through verl's real _compute_advantage: row 2 ended by env failure."""
    rewards = outcome_rewards()  # scores: a = [1, 0, 1], b = [0.5], c = [0]
    keys = keys_for("grpo")
    batch = put_rollout(rewards, keys, failed={2})
    metrics: dict = {}
    make_trainer("grpo")._compute_advantage(batch, metrics)

    adv = fetch(keys, "advantages")
    # group a without row 2: [1, 0], mean .5, unbiased std sqrt(.5); b: a group of one (verl: mean 0, std 1)
    s = math.sqrt(0.5)
    expected_first = [0.5 / (s + 1e-6), -0.5 / (s + 1e-6), 0.0, 0.5 / (1 + 1e-6), 0.0]
    for b in range(len(keys)):
        m = MASK[b].bool()
        assert torch.allclose(adv[b][m].double(), torch.full((int(m.sum()),), expected_first[b], dtype=torch.float64),
                              atol=1e-5), b
    assert torch.all(adv[2] == 0) and torch.all(fetch(keys, "returns")[2] == 0)
    assert torch.all(fetch(keys, "response_mask")[2] == 0) and torch.all(fetch(keys, "loss_mask")[2] == 0)
    assert torch.equal(fetch(keys, "response_mask")[0], MASK[0])  # the others keep their masks
    assert fetch(keys, "uid") == list(INDEX)  # the failed row's uid is given back after the advantage step
    assert metrics["episode/env_failures"] == 1.0 and metrics["episode/env_failure_share"] == pytest.approx(0.2)
    assert metrics["episode/success_rate"] == pytest.approx(1 / 4)  # row 0 of the 4 real, non-failed episodes


def test_gae_failed_row_is_out_of_the_whitening(transfer_queue):
    from verl.trainer.ppo.core_algos import compute_gae_advantage_return

    rewards = outcome_rewards()
    values = torch.linspace(-0.5, 0.5, MASK.numel()).reshape(MASK.shape)
    keys = keys_for("gae")
    batch = put_rollout(rewards, keys, failed={0}, values=values)
    make_trainer("gae", use_critic=True)._compute_advantage(batch, {})
    adv = fetch(keys, "advantages")
    keep = [1, 2, 3, 4]
    expected, _ = compute_gae_advantage_return(rewards[keep], values[keep], MASK[keep], gamma=0.5, lam=1.0)
    for j, b in enumerate(keep):
        m = MASK[b].bool()
        assert torch.allclose(adv[b][m], expected[j][m], atol=1e-5)
    assert torch.all(adv[0] == 0)


def test_gigpo_failed_row_gets_the_row_mask(transfer_queue):
    from spa_reward.advantage import compute_gigpo_advantage

    rewards = outcome_rewards()
    keys = keys_for("gigpofail")
    batch = put_rollout(rewards, keys, failed={1})
    make_trainer("gigpo")._compute_advantage(batch, {})
    adv = fetch(keys, "advantages")
    keep = [0, 2, 3, 4]
    expected, _ = compute_gigpo_advantage(rewards[keep], MASK[keep], INDEX[keep], cfg(), turn_anchors=ANCHORS[keep],
                                          episode_rewards=rewards[keep].sum(-1).numpy())
    for j, b in enumerate(keep):
        assert torch.allclose(adv[b].float(), expected[j].float(), atol=1e-6)
    assert torch.all(adv[1] == 0)


def test_padding_rows_from_verl_are_left_out_of_episode_metrics(transfer_queue):
    """verl's real upsample_batch_to_divisible_size appends deep copies of row 0 tagged is_padding."""
    from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size

    rewards = outcome_rewards()
    keys = keys_for("pad")
    batch = upsample_batch_to_divisible_size(put_rollout(rewards, keys), 4, eos_token_id=0)
    assert len(batch) == 8 and sum(t.get("is_padding", False) for t in batch.tags) == 3
    metrics: dict = {}
    make_trainer("gigpo")._compute_advantage(batch, metrics)
    assert metrics["episode/success_rate"] == pytest.approx(2 / 5)  # row 0 (won) copied 3x would give 5/8
    adv = fetch(batch.keys, "advantages")
    assert all(torch.all(a == 0) for a in adv[5:])


def test_too_many_failures_stop_the_run_with_the_errors(transfer_queue):
    from spa_reward.trainer import EnvFailureShareExceeded

    keys = keys_for("stop")
    batch = put_rollout(outcome_rewards(), keys, failed={0, 1, 2})
    with pytest.raises(EnvFailureShareExceeded, match=r"3 of 5 episodes.*max_env_failure_share=0.5") as err:
        make_trainer("grpo")._compute_advantage(batch, {})
    assert "3x env timeout during step: 60s" in str(err.value)
    make_trainer("grpo", max_env_failure_share=0.6)._compute_advantage(batch, {})  # 60% is allowed at 0.6


def test_failure_share_key_is_checked():
    from spa_reward.config_check import ConfigError
    from spa_reward.trainer import max_failure_share

    assert max_failure_share(OmegaConf.create({"algorithm": {}})) == 0.5
    assert max_failure_share({"algorithm": {"max_env_failure_share": 1}}) == 1.0
    for bad in (1.5, -0.1, "half"):
        with pytest.raises(ConfigError, match="max_env_failure_share"):
            max_failure_share({"algorithm": {"max_env_failure_share": bad}})


def test_per_step_rows_through_transfer_queue_match_the_packed_episode(transfer_queue):
    """An episode split into per-step rows (keys {uid}_{session}_{index}, arriving shuffled) gets, through the
    trainer mode, the advantages gigpo gives it packed in one row; metrics count each session once (issue 12)."""
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    from spa_reward.advantage import compute_gigpo_advantage
    from tests.foundation.test_advantage import two_layouts

    eps, packed, pkw, firsts, steps, split, skw = two_layouts(7, failed_episode=1)
    keys = [f"{eps[b]['uid']}_{b}_{t}" for b, t in steps]
    rows = []
    for i, (b, t) in enumerate(steps):
        n = eps[b]["lens"][t]
        rows.append({"response_mask": split["mask"][i, :n].long(), "loss_mask": split["mask"][i, :n].long(),
                     "rm_scores": split["r"][i, :n], "uid": eps[b]["uid"], "turn_anchors": [eps[b]["anchors"][t]],
                     "episode_reward": eps[b]["R"],
                     "episode_info": {"won": eps[b]["R"] > 0 and b != 1, "env_failed": float(b == 1),
                                      "env_error": "crash:step" if b == 1 else ""}})
    tags = [{"min_global_steps": 1, "max_global_steps": 1, "global_steps": 1} for _ in keys]
    tq.kv_batch_put(keys=keys, fields=list_of_dict_to_tensordict(rows), tags=tags, partition_id="train")
    from transfer_queue import KVBatchMeta

    metrics: dict = {}
    make_trainer("gigpo", gamma=0.9)._compute_advantage(KVBatchMeta(keys=keys, tags=tags, partition_id="train"),
                                                       metrics)
    got = fetch(keys, "advantages")
    p = dict(pkw)
    expected, _ = compute_gigpo_advantage(packed["r"], packed["mask"], p.pop("index"), cfg(gamma=0.9), **p)
    for i, (b, t) in enumerate(steps):
        assert torch.allclose(got[i].double(), torch.full_like(got[i].double(), float(expected[b, firsts[b][t]])),
                              atol=1e-5), (b, t)
    assert metrics["episode/env_failures"] == 1.0  # one failed session, however many rows it has
    assert metrics["episode/env_failure_share"] == pytest.approx(1 / len(eps))


# ------------------------------------------------------------------ lone survivors (issue 20, item 5)


@pytest.mark.parametrize("estimator", ["grpo", "gigpo", "spa", "rloo"])
def test_a_groups_lone_survivor_gets_zero_advantage(transfer_queue, estimator):
    """Rows 0 and 1 of group a ended by env failure: row 2 is its group's only real episode. verl's grpo would
    give it A = R (a group of one: mean 0, std 1) next to normalised groups; every group-relative estimator now
    gives it 0. Group b is a group of one by design (rollout.n=1 for it) and keeps the convention."""
    rewards = outcome_rewards()  # scores: a = [1, 0, 1], b = [0.5], c = [0]
    keys = keys_for(f"lone{estimator}")
    batch = put_rollout(rewards, keys, failed={0, 1})
    metrics: dict = {}
    make_trainer(estimator)._compute_advantage(batch, metrics)
    adv = fetch(keys, "advantages")
    assert torch.all(adv[2] == 0) and torch.all(fetch(keys, "returns")[2] == 0)
    assert torch.equal(fetch(keys, "response_mask")[2], MASK[2])  # still data: only its advantage is 0
    assert metrics["episode/lone_survivors"] == 1.0
    if estimator == "grpo":
        assert adv[3][MASK[3].bool()].tolist() == pytest.approx([0.5 / (1 + 1e-6)] * 2, abs=1e-6)


def test_a_lone_survivor_keeps_its_critic_advantage(transfer_queue):
    from verl.trainer.ppo.core_algos import compute_gae_advantage_return

    rewards = outcome_rewards()
    values = torch.linspace(-0.5, 0.5, MASK.numel()).reshape(MASK.shape)
    keys = keys_for("lonegae")
    batch = put_rollout(rewards, keys, failed={0, 1}, values=values)
    metrics: dict = {}
    make_trainer("gae", use_critic=True)._compute_advantage(batch, metrics)
    keep = [2, 3, 4]
    expected, _ = compute_gae_advantage_return(rewards[keep], values[keep], MASK[keep], gamma=0.5, lam=1.0)
    adv = fetch(keys, "advantages")
    assert torch.allclose(adv[2][MASK[2].bool()], expected[0][MASK[2].bool()], atol=1e-5)
    assert adv[2].abs().sum() > 0 and metrics["episode/lone_survivors"] == 1.0


def test_lone_survivors_by_hand():
    from spa_reward.trainer import lone_survivors

    # group a: sessions a_0 (2 rows, ok), a_1 (failed); group b: b_0 ok, b_1 ok; group c: one session by design;
    # group d: both failed; the last row is verl's padding (a copy of row 0)
    uids = ["a", "a", "a", "b", "b", "c", "d", "d", "a"]
    sessions = ["a_0", "a_0", "a_1", "b_0", "b_1", "c_0", "d_0", "d_1", "a_0"]
    failed = np.array([0, 0, 1, 0, 0, 0, 1, 1, 0], dtype=bool)
    padding = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    assert lone_survivors(uids, sessions, padding, failed).tolist() == [True, True, False, False, False, False,
                                                                        False, False, False]


def test_bf16_critic_values_give_fp32_advantages_and_returns_in_transfer_queue(transfer_queue):
    """A mixed-precision critic stores bf16 values; SPA's turn GAE writes fp32 advantages and returns for every
    row, the failed row's zeros included (one dtype per column)."""
    rewards = outcome_rewards() * 9.3
    values = (8.0 + torch.linspace(0, 1, MASK.numel()).reshape(MASK.shape)).to(torch.bfloat16)
    keys = keys_for("bf16")
    batch = put_rollout(rewards, keys, failed={1}, values=values)
    make_trainer("spa", use_critic=True)._compute_advantage(batch, {})
    for field in ("advantages", "returns"):
        got = fetch(keys, field)
        assert all(t.dtype == torch.float32 for t in got), (field, [t.dtype for t in got])
    ret = fetch(keys, "returns")
    assert torch.all(ret[1] == 0)
    # row 3's single turn: return = r + 0 - V + V = 0.5 * 9.3 exactly in fp32 (bf16 would give 4.65625)
    assert float(ret[3][0]) == pytest.approx(4.65, abs=1e-5)
