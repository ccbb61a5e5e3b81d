"""verl's real v1 trainer through ``fit`` with stub worker groups, for what a one-rank CPU run cannot show.

The e2e tests (``tests/e2e``, ``PLATFORM=cpu``) run every launch script through the real ``main_ppo`` with one
logical GPU, so verl never pads a batch there. This test keeps verl's REAL v1 trainer, our ``spa`` mode
(``SpaTrainer``, a ``PPOTrainerSync``), driving ``fit`` for two training steps with a data-parallel size of 4:
real config (the recipe's hydra composition), real TransferQueue, real replay buffer, real ``_balance_batch``
padding (6 rows -> 12), real ``_compute_advantage`` / ``_compute_metrics`` with padding rows and env-failed rows in
one batch, real checkpoint save and resume, real ``_validate`` with its generation dump. The rollout is our real
``env_agent`` loop on a toy env against a scripted server, stored through verl's real
``AgentLoopWorkerTQ._agent_loop_postprocess`` (reward manager included). Only the worker groups (log-probs, actor
update, checkpoint files), the weight sync and the dataloader are stubs.

One task's episodes hang the env, so every step-2 batch holds env failures and verl's padding rows.
"""

from __future__ import annotations

import asyncio
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from envs.actions import format_action
from tests.recipe.helpers import FakeServer, _RewardWorker, make_agent_loop, trainer_config

ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")

pytestmark = pytest.mark.slow

TRAIN_TASKS = ["t0", "t1", "t2", "t3"]  # step 1: t0, t1; step 2: t2, t3 (t3: every episode hangs -> env failure)
VAL_TASKS = ["t1", "t2"]
N = 3  # rollout.n
DP = 4  # data-parallel size the stub actor reports: 6 rows -> verl pads to lcm(4, 2 * 3) = 12


def policy(turn, prompt):
    if "reach 4" in prompt:  # task t3 (ToyEnv: goal "reach <index + 1>"); "wait" hangs the env
        return format_action("wait", "I wait.", "react")
    return format_action("step forward", "I walk.", "react")


# --------------------------------------------------------------------------------------------- stubs


class ListLoader:
    """A stateful dataloader over fixed prompt rows (what verl's StatefulDataLoader gives the trainer)."""

    def __init__(self, tasks, batch_size):
        self.tasks, self.batch_size, self.position = list(tasks), batch_size, 0

    def __len__(self):
        return len(self.tasks) // self.batch_size

    def __iter__(self):
        while self.position + self.batch_size <= len(self.tasks):
            chunk = self.tasks[self.position:self.position + self.batch_size]
            self.position += self.batch_size
            yield {
                "raw_prompt": np.array([[{"role": "user", "content": f"toy {t}"}] for t in chunk] + [None],
                                       dtype=object)[:-1],
                "extra_info": np.array([{"env_name": "toy", "task_id": t, "split": "train", "index": i}
                                        for i, t in enumerate(chunk)], dtype=object),
                "agent_name": np.array(["env_agent"] * len(chunk), dtype=object),
                "index": np.arange(len(chunk)),
                "data_source": np.array(["toy"] * len(chunk), dtype=object),
            }
        self.position = 0

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


class StubActor:
    """Stands in for the actor worker group: log-probs of zeros, an update that records what it trained on, and
    checkpoint files that say which step they hold."""

    def __init__(self):
        self._dispatch_info = {"actor": list(range(DP))}
        self.updates: list[dict] = []
        self.loaded: list[str] = []

    def compute_log_prob(self, batch):
        from verl.utils.tensordict_utils import list_of_dict_to_tensordict

        masks = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                                select_fields=["response_mask"])["response_mask"].unbind()
        rows = [{"log_probs": torch.zeros(len(m)), "entropy": torch.full((len(m),), 0.5)} for m in masks]
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=list_of_dict_to_tensordict(rows))
        return batch

    def update_actor(self, batch):
        got = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                              select_fields=["advantages", "response_mask", "loss_mask", "episode_info"])
        self.updates.append({
            "keys": list(batch.keys), "tags": [dict(t) for t in batch.tags],
            "advantages": [a.clone() for a in got["advantages"].unbind()],
            "response_mask": [m.clone() for m in got["response_mask"].unbind()],
            "loss_mask": [m.clone() for m in got["loss_mask"].unbind()],
            "episode_info": list(got["episode_info"]),
        })
        return {"metrics": {"actor/pg_loss": [0.0], "actor/mfu": [0.0]}}

    def save_checkpoint(self, local_path, remote_path, global_steps, max_ckpt_to_keep=None):
        os.makedirs(local_path, exist_ok=True)
        with open(os.path.join(local_path, "step.txt"), "w") as f:
            f.write(str(global_steps))

    def load_checkpoint(self, local_path, del_local_after_load=False):
        self.loaded.append(local_path)


class StubWeights:
    def update_weights(self, global_steps=None):
        return None

    def sleep_replicas(self):
        return None


class EnvAgentLoopManager:
    """Stands in for verl's AgentLoopManagerTQ: each prompt's n sessions are played by our real env_agent loop
    and stored by verl's real AgentLoopWorkerTQ._agent_loop_postprocess, with the prompt status tags that
    AgentLoopWorkerTQ._run_prompt publishes (what the replay buffer waits on)."""

    def __init__(self, config, tokenizer):
        from verl.trainer.ppo.reward import load_reward_manager
        from verl.trainer.ppo.v1 import agent_loop_tq

        self.config, self.tokenizer = config, tokenizer
        self.reward_manager = load_reward_manager(config, tokenizer)
        cls = agent_loop_tq.AgentLoopWorkerTQ.__ray_metadata__.modified_class
        self.worker = cls.__new__(cls)
        self.worker.config = config
        self.worker.reward_loop_worker_handles = [_RewardWorker(self.reward_manager)]
        self.worker.processor, self.worker.mm_processor_kwargs, self.worker.distillation_enabled = None, {}, False

    def generate_sequences(self, batch):
        from tensordict import NonTensorData, NonTensorStack

        validate = bool(batch["validate"]) if "validate" in batch.keys() else False
        prompts = []
        for i in range(len(batch)):
            prompt = {}
            for k, v in batch.items():
                if k == "validate":
                    continue
                if isinstance(v, torch.Tensor):
                    prompt[k] = v[i]
                elif isinstance(v, NonTensorStack):
                    prompt[k] = v[i].data
                elif isinstance(v, NonTensorData):
                    prompt[k] = v.data
            prompts.append(prompt)
        asyncio.run(self._play(prompts, validate))

    async def _play(self, prompts, validate):
        partition = "val" if validate else "train"
        n = self.config.actor_rollout_ref.rollout.val_kwargs.n if validate else self.config.actor_rollout_ref.rollout.n
        for prompt in prompts:
            uid = prompt["uid"]
            await tq.async_kv_put(key=uid, partition_id=partition, tag={"status": "running"})
            for session in range(n):
                kwargs = dict(prompt, session_id=session)
                loop = make_agent_loop(self.config, FakeServer(self.tokenizer, policy), self.tokenizer)
                out = await loop.run({"temperature": 1.0, "logprobs": True}, **kwargs)
                await self.worker._agent_loop_postprocess(out, validate, **kwargs)
            await tq.async_kv_put(key=uid, partition_id=partition, tag={"status": "finished"})


# --------------------------------------------------------------------------------------------- setup



def rehearsal_config(tmp_path, tokenizer_dir, estimator: str, resume: str = "auto"):
    for name in ("train.parquet", "val.parquet"):
        (tmp_path / name).touch()  # config_check wants the files; the stub dataloader serves the rows
    cfg = trainer_config("env=webshop", "algorithm.reward=outcome", f"algorithm.adv_estimator={estimator}")
    with open_dict(cfg):
        cfg.env.name = "toy"
        cfg.env.max_steps = 6
        cfg.env.reward_scale = 10.0
        cfg.env.env_kwargs = {"hang_on": "wait", "hang_seconds": 1.0}
        cfg.env.pool = {"backend": "thread", "num_workers": 8, "step_timeout": 0.2, "reset_timeout": 10}
        cfg.data.train_files = [str(tmp_path / "train.parquet")]
        cfg.data.val_files = [str(tmp_path / "val.parquet")]
        cfg.data.train_batch_size = 2
        cfg.data.max_prompt_length = 2048
        cfg.data.max_response_length = 2048
        cfg.actor_rollout_ref.model.path = str(tokenizer_dir)
        cfg.actor_rollout_ref.rollout.n = N
        cfg.actor_rollout_ref.rollout.prompt_length = 2048
        cfg.actor_rollout_ref.rollout.response_length = 2048
        cfg.actor_rollout_ref.rollout.val_kwargs.n = 1
        cfg.actor_rollout_ref.actor.ppo_mini_batch_size = 2
        cfg.trainer.n_gpus_per_node = 2  # a split verl can run (config_check: 2 x n=3 trajectories over dp 2)
        cfg.actor_rollout_ref.rollout.tensor_model_parallel_size = 1
        cfg.actor_rollout_ref.actor.use_kl_loss = False
        cfg.algorithm.use_kl_in_reward = False
        cfg.trainer.default_local_dir = str(tmp_path / "ckpt")
        cfg.trainer.validation_data_dir = str(tmp_path / "val_dump")
        cfg.trainer.logger = ["console"]
        cfg.trainer.save_freq = 1
        cfg.trainer.test_freq = 2
        cfg.trainer.total_epochs = 1
        cfg.trainer.val_before_train = True
        cfg.trainer.resume_mode = resume
        cfg.trainer.log_val_generations = 0
    return cfg


def build_trainer(cfg, tokenizer):
    """The real SpaTrainer(config) and the parts verl's init() would build on GPUs, stubbed."""
    from spa_reward.trainer import SpaTrainer

    trainer = SpaTrainer(cfg)  # real __init__: validate_config, replay buffer, checkpoint callback
    trainer.tokenizer = tokenizer
    trainer.train_dataloader = ListLoader(TRAIN_TASKS, cfg.data.train_batch_size)
    trainer.val_dataloader = ListLoader(VAL_TASKS, len(VAL_TASKS))
    trainer.train_dataloader_it = None
    trainer.total_training_steps = len(trainer.train_dataloader)
    trainer.steps_per_epoch = len(trainer.train_dataloader)
    trainer.actor_rollout_wg = StubActor()
    trainer.checkpoint_manager = StubWeights()
    trainer.reward_loop_manager = SimpleNamespace(reward_loop_worker_handles=["streaming"])
    trainer.resource_pool_manager = SimpleNamespace(get_n_gpus=lambda: 1)
    trainer._init_dump_executor()
    trainer._load_checkpoint()
    return trainer


@pytest.mark.parametrize("estimator", ["grpo", "gigpo", "spa"])
def test_two_steps_through_verls_trainer(transfer_queue, toy_env, tokenizer, tmp_path, monkeypatch, estimator):
    from verl.utils.tracking import Tracking

    logged: list[tuple[int, dict]] = []
    monkeypatch.setattr(Tracking, "log", lambda self, data, step, **kw: logged.append((step, dict(data))))
    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(str(tok_dir))
    cfg = rehearsal_config(tmp_path, tok_dir, estimator)
    trainer = build_trainer(cfg, tokenizer)
    assert trainer.global_steps == 0  # empty run folder: training from scratch
    trainer.fit(EnvAgentLoopManager(cfg, tokenizer))

    # --- what the actor trained on
    actor = trainer.actor_rollout_wg
    assert len(actor.updates) == 2
    for step, update in enumerate(actor.updates, start=1):
        assert len(update["keys"]) == 12  # 6 episodes + 6 verl padding rows (dp 4, mini-batch 2 x n 3)
        for tag, adv, mask, lmask, info in zip(update["tags"], update["advantages"], update["response_mask"],
                                               update["loss_mask"], update["episode_info"]):
            if tag.get("is_padding") or info["env_failed"]:
                assert not mask.any() and not lmask.any() and not adv.any(), (step, tag, info)
            else:
                assert mask.any() and torch.all(adv[mask == 0] == 0)
        failed = [i for t, i in zip(update["tags"], update["episode_info"]) if not t.get("is_padding")
                  and i["env_failed"]]
        assert len(failed) == (0 if step == 1 else N)  # t3's three sessions
        assert all(i["env_error"] == "timeout:step" for i in failed)
    # every session wins t0, t1 and t2, so every episode group is constant (A_E = 0), and so are GiGPO's step
    # groups; SPA's step term compares the turns of a group: t1's turns carry 0 then 10 (outcome on the last turn)
    first = actor.updates[0]
    if estimator in ("grpo", "gigpo"):
        assert all(not a.any() for u in actor.updates for a in u["advantages"])
    else:
        t1 = [(a, m) for a, m, i in zip(first["advantages"], first["response_mask"], first["episode_info"])
              if i.get("num_turns") == 2 and not i["env_failed"]]
        assert len(t1) == N
        for adv, mask in t1:
            vals = adv[mask.bool()]
            assert vals[0] == pytest.approx(-5.0) and vals[-1] == pytest.approx(5.0)

    # --- metrics: one record per step, episode metrics without failures and padding, verl's own metrics ran
    steps = {s: m for s, m in logged if "episode/success_rate" in m}
    assert sorted(steps) == [1, 2]
    assert steps[1]["episode/success_rate"] == 1.0 and steps[1]["episode/env_failures"] == 0.0
    assert steps[2]["episode/success_rate"] == 1.0  # t3's failures are not counted as lost episodes
    assert steps[2]["episode/env_failures"] == float(N) and steps[2]["episode/env_failure_share"] == 0.5
    assert "training/off_policy/trajectory_staleness/mean" in steps[2]  # weight versions of failed rows are ints
    assert steps[2]["critic/score/mean"] == pytest.approx(10.0)  # verl's data metrics: the 3 t2 episodes only
    val = [m for s, m in logged if any(k.startswith("val-core/") for k in m)]
    assert len(val) == 2  # before training and at the last step (test_freq 2)

    # --- checkpoints and the resume bookkeeping
    ckpt = tmp_path / "ckpt"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text() == "2"
    for step in (1, 2):
        assert (ckpt / f"global_step_{step}" / "actor" / "step.txt").read_text() == str(step)
        assert (ckpt / f"global_step_{step}" / "data.pt").exists()
    resumed = build_trainer(cfg, tokenizer)
    assert resumed.global_steps == 2 and resumed.actor_rollout_wg.loaded == [str(ckpt / "global_step_2" / "actor")]
    fresh = build_trainer(rehearsal_config(tmp_path, tok_dir, estimator, resume="disable"), tokenizer)
    assert fresh.global_steps == 0 and fresh.actor_rollout_wg.loaded == []

    # --- validation dump
    dumps = sorted(os.listdir(tmp_path / "val_dump"))
    assert dumps == ["0.jsonl", "2.jsonl"]
    lines = [json.loads(x) for x in (tmp_path / "val_dump" / "2.jsonl").read_text().splitlines()]
    assert len(lines) == len(VAL_TASKS) and all(x["score"] == pytest.approx(10.0) for x in lines)
