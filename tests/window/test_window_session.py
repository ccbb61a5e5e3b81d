"""Window-layout sessions through verl's real multi-output path: the env_agent loop's rows, verl's streaming
reward call (our managers score every row), ``AgentLoopWorkerTQ._agent_loop_postprocess`` into a real local
TransferQueue (keys ``{uid}_{session_id}_{index}``), and verl's GRPO multi-trajectory advantage."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from envs.actions import format_action
from recipe.spa.agent_loop import EPISODE_KEY
from tests.recipe.helpers import FakeServer, agent_config, make_agent_loop, postprocess_worker, row, trainer_config
from tests.window.layouts import toy_env_cfg

ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")

FIELDS = ["rm_scores", "response_mask", "responses", "prompts", "turn_anchors", "episode_reward", "episode_info",
          "uid", "session_id", "extra_fields"]



class RowScorer:
    """ProgressScorer stand-in: c = (reply tokens) / 100 for a one-turn item; records what it was asked."""

    def __init__(self):
        self.items, self.calls = [], 0

    def score(self, batch):
        self.items += batch
        self.calls += 1
        return [[(e + 1 - item["prompt_length"]) / 100 for e in item["turn_ends"]] for item in batch]


def policy(turn, prompt):
    return "no idea" if turn == 1 else format_action("step forward", "forward" * (turn + 1), "react")


def run_sessions(tokenizer, cfg, sessions, env: dict, scorer=None) -> list[list]:
    """Play each ``(policy, run kwargs)`` with the env_agent loop, then verl's v1 postprocess (streaming reward
    call + TransferQueue put, both real); returns the outputs per session."""
    from verl.trainer.ppo.reward import load_reward_manager

    async def go():
        manager = load_reward_manager(cfg, tokenizer, **({"scorer": scorer} if scorer is not None else {}))
        worker = postprocess_worker(manager)
        results = []
        for pol, kwargs in sessions:
            loop = make_agent_loop(agent_config(env), FakeServer(tokenizer, pol), tokenizer)
            outs = await loop.run({"temperature": 1.0, "logprobs": True}, **kwargs)
            await worker._agent_loop_postprocess(outs, False, **kwargs)
            results.append(outs)
        return results

    return asyncio.run(go())


def fetch(keys: list[str], fields=FIELDS) -> dict:
    data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=fields)
    from spa_reward.trainer import column

    return {f: column(data, f) for f in fields}


def test_outcome_rows_in_transfer_queue(tokenizer, toy_env, transfer_queue):
    env = toy_env_cfg(history="window", history_length=2)
    cfg = trainer_config("algorithm.reward=outcome", "algorithm.invalid_penalty=0.2")
    (outs,) = run_sessions(tokenizer, cfg, [(policy, row("t2", uid="wo", session_id=1))], env)
    assert len(outs) == 4  # step forward, no idea, step forward, step forward
    keys = [f"wo_1_{t}" for t in range(4)]
    got = fetch(keys)
    expected = [0.0, -0.2, 0.0, 10.0]  # R on the last step, the penalty on the unparseable one
    for t in range(4):
        rm, mask = torch.tensor(got["rm_scores"][t]), got["response_mask"][t]
        assert mask == [1] * len(outs[t].response_ids) and got["responses"][t] == outs[t].response_ids
        assert got["prompts"][t] == outs[t].prompt_ids
        assert float(rm.sum()) == pytest.approx(expected[t]) and float(rm[-1]) == pytest.approx(expected[t])
        assert got["turn_anchors"][t] == [f"pos{min(t, 1) if t < 2 else t - 1}"]
        assert got["episode_reward"][t] == 10.0 and got["uid"][t] == "wo" and got["session_id"][t] == 1
        info = got["episode_info"][t]
        assert info["won"] and info["num_turns"] == 4 and info["session_row"] == t and info["session_rows"] == 4
        ep = got["extra_fields"][t][EPISODE_KEY]
        assert ep["step_index"] == t and ep["turn_ends"] == [len(outs[t].response_ids) - 1]
        # verl copies the final output's reward_extra_info to every row: the episode's scalars
        extra = got["extra_fields"][t]["reward_extra_info"]
        assert extra["acc"] == 1.0 and extra["spa/num_turns"] == 4.0 and extra["spa/executable_rate"] == 0.75
        assert "spa_turn_rewards" not in extra
    # the outputs themselves still hold the session-long list (as_dict does not mutate them)
    assert outs[0].extra_fields["reward_extra_info"]["spa_turn_rewards"] == pytest.approx(expected)


def test_spa_rows_scored_on_window_prompt_and_reply(tokenizer, toy_env, transfer_queue):
    env = toy_env_cfg(history="window", history_length=1)
    scorer = RowScorer()
    cfg = trainer_config("algorithm.reward=spa", "algorithm.spa.estimator_path=/stub", "algorithm.spa.alpha=2.0",
                         "algorithm.spa.outcome_coef=0.1", "algorithm.invalid_penalty=0.2",
                         "algorithm.spa.grounding=bonus", "algorithm.spa.beta=0.5")
    (outs,) = run_sessions(tokenizer, cfg, [(policy, row("t2", uid="ws", session_id=0))], env, scorer=scorer)
    assert len(scorer.items) == 4 and scorer.calls == 1  # the session's rows in one call
    keys = {item["episode"] for item in scorer.items}
    assert len(keys) == 1 and all(item["reward"] == 10.0 for item in scorer.items)  # the session's key and R
    for o, item in zip(outs, scorer.items):  # each row: its window prompt + its reply, nothing else, in step order
        assert item["input_ids"] == list(o.prompt_ids) + list(o.response_ids)
        assert item["prompt_length"] == len(o.prompt_ids)
        assert item["turn_ends"] == [len(o.prompt_ids) + len(o.response_ids) - 1]
        assert item["turn_starts"] == [len(o.prompt_ids)]  # the reply starts right after the window prompt
    g = [True, False, True, True]
    c = [len(o.response_ids) / 100 for o in outs]
    # r_t = 2 c_t + 0.5 g_t - 0.2 (1 - g_t), + 0.1 R on the last step (R = 10)
    expected = [2 * c[t] + (0.5 if g[t] else -0.2) + (1.0 if t == 3 else 0.0) for t in range(4)]
    got = fetch([f"ws_0_{t}" for t in range(4)], ["rm_scores", "episode_info"])
    for t in range(4):
        assert float(torch.tensor(got["rm_scores"][t]).sum()) == pytest.approx(expected[t], abs=1e-6)
        assert got["episode_info"][t]["sum_contribution"] == pytest.approx(sum(c))
    info = outs[-1].extra_fields["reward_extra_info"]
    assert info["spa/sum_contribution"] == pytest.approx(sum(c)) and info["spa/mean_contribution"] == pytest.approx(
        sum(c) / 4)
    assert outs[-1].reward_score == pytest.approx(sum(expected))


def make_trainer(estimator: str):
    from spa_reward.trainer import SpaTrainer
    from tests.foundation.test_advantage import cfg

    trainer = SpaTrainer.__new__(SpaTrainer)  # the real class, without building GPU workers
    trainer.config = OmegaConf.create({
        "algorithm": OmegaConf.to_container(cfg(adv_estimator=estimator, use_kl_in_reward=False,
                                                norm_adv_by_std_in_grpo=True, rollout_correction=None)),
        "actor_rollout_ref": {"rollout": {"n": 2}},
    })
    trainer.use_critic = False
    return trainer


def _actions(*acts):
    return lambda t, p: format_action(acts[t], "x", "react") if acts[t] != "junk" else "junk"


@pytest.mark.parametrize("penalty", [0.0, 0.2])
def test_verl_grpo_broadcasts_the_final_rows_advantage(tokenizer, toy_env, transfer_queue, penalty):
    """verl's compute_advantage_for_multi_trajectories (GRPO) on our rows: every row of a session gets the
    advantage of the session's final row, i.e. GRPO on the final row's summed reward. With invalid_penalty=0 that
    is R, so window == packed; with a penalty the earlier rows' penalties are NOT in it (window != packed)."""
    from transfer_queue import KVBatchMeta

    uid = f"gr{penalty}"
    sessions = [(_actions("junk", "step forward", "step forward"), row("t1", uid=uid, session_id=0)),
                (_actions("wait", "wait", "wait", "wait"), row("t1", uid=uid, session_id=1)),
                (_actions("junk", "junk", "step forward", "step forward"), row("t1", uid=uid, session_id=2))]
    cfg = trainer_config("algorithm.reward=outcome", f"algorithm.invalid_penalty={penalty}")
    window = run_sessions(tokenizer, cfg, sessions, toy_env_cfg(history="window", max_steps=4))
    assert [len(o) for o in window] == [3, 4, 4]
    keys = [f"{uid}_{s}_{t}" for s, outs in enumerate(window) for t in range(len(outs))]
    batch = KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train")
    trainer = make_trainer("grpo")
    trainer.config.actor_rollout_ref.rollout.n = 3
    trainer._compute_advantage(batch, {})
    adv = fetch(keys, ["advantages"])["advantages"]
    assert all(len(set(np.round(a, 6))) == 1 for a in adv)  # constant over each row's reply tokens
    per_session = [[a[0] for a, k in zip(adv, keys) if k.startswith(f"{uid}_{s}_")] for s in range(3)]

    def grpo(scores):
        scores = np.asarray(scores)
        return (scores - scores.mean()) / (scores.std(ddof=1) + 1e-6)

    final = grpo([10.0, 0.0, 10.0])  # the final rows' rewards: R (their last step executed) or 0
    for s in range(3):
        assert per_session[s] == pytest.approx([final[s]] * len(window[s]), abs=1e-4)
    packed = grpo([10.0 - penalty, 0.0, 10.0 - 2 * penalty])  # the packed row sums every turn's reward
    assert np.allclose(final, packed, atol=1e-4) == (penalty == 0.0)
