"""Reward managers ``outcome`` and ``spa`` through verl's own code paths, with hand-computed values.

An env_agent episode (toy env, fake LLM) is scored by verl's ``AgentLoopWorker._compute_score`` (the streaming
reward path) with our manager behind a stand-in reward-worker handle; the TransferQueue put of
``AgentLoopWorkerTQ._agent_loop_postprocess`` is captured to check the fields the trainer receives.
"""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from envs.actions import format_action
from recipe.spa.agent_loop import EPISODE_KEY
from spa_reward.reward_manager import TURN_REWARDS_KEY
from tests.recipe.conftest import tokenizer, toy_env  # noqa: F401,F811  (fixtures shared with tests/recipe)
from tests.recipe.helpers import row, score_episodes, trainer_config

C = [0.1, -0.2, 0.4, 0.5]  # stand-in contributions for the 4-turn episode below
SCALAR_KEYS = {"acc", "spa/won", "spa/task_score", "spa/num_turns", "spa/truncated", "spa/env_failed",
               "spa/parse_errors",
               "spa/env_reward", "spa/executable_rate", "spa/mean_contribution", "spa/sum_contribution",
               "spa/nonfinite_contributions", "spa/mean_fused_reward", "spa/uses_estimator", "spa/task_type",
               "spa/reward_seconds"}


class StubScorer:
    """ProgressScorer stand-in: fixed contributions; records what it was asked."""

    def __init__(self, values):
        self.values, self.batches = values, []

    def score(self, batch):
        self.batches.append(batch)
        return [list(self.values[: len(item["turn_ends"])]) for item in batch]


def policy(turn, prompt):
    return "no idea" if turn == 1 else format_action("step forward", "forward", "react")


def play_and_score(tokenizer, manager_name: str, monkeypatch, scorer=None, **reward_overrides):
    """One toy episode (task t2, 4 turns, the second unparseable), scored through verl's streaming path and put
    through the v1 TransferQueue postprocess; returns (output, captured TQ fields, tag)."""
    overrides = [f"algorithm.reward={manager_name}"]
    if manager_name == "spa":  # the hand-computed values use the paper's grounding bonus 0.5 (the yaml: penalty 0.1)
        overrides += ["algorithm.spa.grounding=bonus", "algorithm.spa.beta=0.5"]
    overrides += [f"{k}={v}" for k, v in reward_overrides.items()]
    ((out, fields, tag),) = score_episodes(tokenizer, trainer_config(*overrides), [(policy, row("t2", uid="uid-a"))],
                                           monkeypatch, scorer=scorer)
    return out, fields, tag


@pytest.fixture
def toy(toy_env):
    return toy_env


def test_outcome_manager(tokenizer, toy, monkeypatch):
    out, fields, tag = play_and_score(tokenizer, "outcome", monkeypatch, **{"algorithm.invalid_penalty": 0.2})
    ep = out.extra_fields[EPISODE_KEY]
    assert ep["executable"] == [True, False, True, True] and ep["won"] and out.episode_reward == 10.0
    info = out.extra_fields["reward_extra_info"]
    assert info[TURN_REWARDS_KEY] == pytest.approx([0.0, -0.2, 0.0, 10.0])
    assert out.reward_score == pytest.approx(9.8)
    assert set(info) - {TURN_REWARDS_KEY} == SCALAR_KEYS
    assert 0.0 <= info["spa/reward_seconds"] < 60.0  # wall seconds of this reward call (timing split)
    assert info["acc"] == 1.0 and info["spa/sum_contribution"] == 0.0 and info["spa/uses_estimator"] == 0.0
    assert info["spa/executable_rate"] == 0.75 and info["spa/env_reward"] == 10.0 and info["spa/num_turns"] == 4.0
    assert info["spa/parse_errors"] == 1.0 and info["spa/task_type"] == "even" and info["spa/truncated"] == 0.0
    check_tq_fields(fields, tag, out, [0.0, -0.2, 0.0, 10.0])
    assert "sum_contribution" not in fields["episode_info"]


def test_spa_manager_hand_computed(tokenizer, toy, monkeypatch):
    scorer = StubScorer(C)
    out, fields, tag = play_and_score(
        tokenizer, "spa", monkeypatch, scorer=scorer,
        **{"algorithm.spa.estimator_path": "/not/used/with/a/stub", "algorithm.spa.alpha": 2.0,
           "algorithm.spa.outcome_coef": 0.1, "algorithm.invalid_penalty": 0.2},
    )
    # r_t = 2*c_t + 0.5*g_t - 0.2*(1-g_t), + 0.1*R on the last turn (R = 10)
    expected = [0.2 + 0.5, -0.4 - 0.2, 0.8 + 0.5, 1.0 + 0.5 + 1.0]
    info = out.extra_fields["reward_extra_info"]
    assert info[TURN_REWARDS_KEY] == pytest.approx(expected)
    assert out.reward_score == pytest.approx(sum(expected))
    assert info["spa/sum_contribution"] == pytest.approx(0.8) and info["spa/mean_contribution"] == pytest.approx(0.2)
    assert info["spa/mean_fused_reward"] == pytest.approx(sum(expected) / 4) and info["spa/uses_estimator"] == 1.0
    # the scorer saw input_ids = prompt + response and the turn ends in input_ids coordinates
    (batch,) = scorer.batches
    (item,) = batch
    P = len(out.prompt_ids)
    assert item["input_ids"] == list(out.prompt_ids) + list(out.response_ids) and item["prompt_length"] == P
    ends = out.extra_fields[EPISODE_KEY]["turn_ends"]
    assert item["turn_ends"] == [P + e for e in ends]
    assert all(item["input_ids"][e] == tokenizer.eos_token_id for e in item["turn_ends"])
    check_tq_fields(fields, tag, out, expected)
    assert fields["episode_info"]["sum_contribution"] == pytest.approx(0.8)


def test_istar_manager_env_part(tokenizer, toy, monkeypatch):
    """istar: grounding_beta * g_t - invalid_penalty * (1 - g_t) per turn; R travels only as episode_reward (A_E);
    beta * q_t is added later by the trainer mode (tests/steprm/test_trainer_hooks.py)."""
    out, fields, tag = play_and_score(tokenizer, "istar", monkeypatch,
                                      **{"algorithm.istar.grounding_beta": 0.3, "algorithm.invalid_penalty": 0.1})
    expected = [0.3, -0.1, 0.3, 0.3]
    info = out.extra_fields["reward_extra_info"]
    assert info[TURN_REWARDS_KEY] == pytest.approx(expected)
    assert out.reward_score == pytest.approx(0.8) and info["acc"] == 1.0 and info["spa/uses_estimator"] == 0.0
    assert set(info) - {TURN_REWARDS_KEY} == SCALAR_KEYS
    check_tq_fields(fields, tag, out, expected)


def check_tq_fields(fields, tag, out, turn_rewards):
    """What the v1 trainer reads from TransferQueue for this trajectory."""
    rm = fields["rm_scores"]
    ends = out.extra_fields[EPISODE_KEY]["turn_ends"]
    expected = torch.zeros(len(out.response_ids))
    for r, e in zip(turn_rewards, ends):
        expected[e] = r
    assert torch.allclose(rm, expected)
    assert fields["turn_anchors"] == ["pos0", "pos1", "pos1", "pos2"]
    assert fields["episode_reward"] == 10.0
    info = fields["episode_info"]
    assert {"won", "score", "num_turns", "executable_rate", "truncated", "env_error", "task_type"} <= set(info)
    assert all(isinstance(v, (bool, int, float, str)) for v in info.values())
    reward_info = fields["extra_fields"]["reward_extra_info"]
    assert TURN_REWARDS_KEY not in reward_info and all(not isinstance(v, list) for v in reward_info.values())
    assert int(fields["num_turns"]) == 1 + 4 + 3
    assert tag["min_global_steps"] == 7 and tag["max_global_steps"] == 7


def test_spa_requires_estimator_and_bookkeeping(tokenizer, toy, tmp_path):
    from verl.trainer.ppo.reward import load_reward_manager

    async def build(cfg, **kw):
        return load_reward_manager(cfg, tokenizer, **kw)

    with pytest.raises(ValueError, match=r"algorithm.spa.estimator_path=.*spa_reward.progress.train"):
        asyncio.run(build(trainer_config("algorithm.reward=spa")))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        asyncio.run(build(trainer_config("algorithm.reward=spa", f"algorithm.spa.estimator_path={tmp_path}/nope")))

    # a sample from another agent loop has no env_episode bookkeeping
    from verl import DataProto
    import numpy as np

    manager = asyncio.run(build(trainer_config("algorithm.reward=outcome")))
    data = DataProto.from_dict(
        tensors={"responses": torch.ones(1, 4, dtype=torch.long), "prompts": torch.ones(1, 2, dtype=torch.long),
                 "input_ids": torch.ones(1, 6, dtype=torch.long)},
        non_tensors={"tool_extra_fields": np.array([{"turn_scores": []}], dtype=object),
                     "agent_name": np.array(["tool_agent"], dtype=object)},
    )
    with pytest.raises(ValueError, match="env_agent"):
        asyncio.run(manager.run_single(data))


def test_spa_nonfinite_contributions(tokenizer, toy, monkeypatch):
    scorer = StubScorer([float("nan"), 0.3, float("inf"), -0.1])
    out, _, _ = play_and_score(tokenizer, "spa", monkeypatch, scorer=scorer,
                               **{"algorithm.spa.estimator_path": "stub"})
    info = out.extra_fields["reward_extra_info"]
    assert info[TURN_REWARDS_KEY] == pytest.approx([0.5, 0.3, 0.5, 0.4])
    assert info["spa/nonfinite_contributions"] == 2.0 and all(math.isfinite(r) for r in info[TURN_REWARDS_KEY])


def test_real_tiny_estimator(tokenizer, toy, monkeypatch, tmp_path):
    """With helper 4's ProgressScorer on a real (tiny, random) estimator checkpoint: the manager's c_t equal the
    estimator's own per-turn predictions on the same tokens."""
    serve = pytest.importorskip("spa_reward.progress.serve")
    from spa_reward.progress.model import ProgressEstimator, ProgressEstimatorConfig, build_tiny_backbone_config

    torch.manual_seed(0)
    cfg = ProgressEstimatorConfig(backbone_config=build_tiny_backbone_config(vocab_size=len(tokenizer), max_position_embeddings=16384),
                                  tokenizer=tokenizer.name_or_path)
    est = ProgressEstimator(cfg)
    est.save_pretrained(tmp_path / "est", tokenizer=tokenizer)
    scorer = serve.ProgressScorer(str(tmp_path / "est"))
    out, _, _ = play_and_score(tokenizer, "spa", monkeypatch, scorer=scorer,
                               **{"algorithm.spa.estimator_path": str(tmp_path / "est")})
    P = len(out.prompt_ids)
    ends = [P + e for e in out.extra_fields[EPISODE_KEY]["turn_ends"]]
    (c,) = scorer.score([{"input_ids": list(out.prompt_ids) + list(out.response_ids), "turn_ends": ends,
                          "prompt_length": P}])
    g = out.extra_fields[EPISODE_KEY]["executable"]
    expected = [ct + 0.5 * float(gt) for ct, gt in zip(c, g)]
    assert out.extra_fields["reward_extra_info"][TURN_REWARDS_KEY] == pytest.approx(expected, abs=1e-5)


def test_tokenizer_mismatch_is_refused(tokenizer, tmp_path):
    """The manager checks the estimator's saved tokenizer against the policy's at construction."""
    pytest.importorskip("spa_reward.progress.serve")
    from spa_reward.progress.model import ProgressEstimator, ProgressEstimatorConfig, build_tiny_backbone_config
    from verl.trainer.ppo.reward import load_reward_manager

    from tests.recipe.helpers import byte_tokenizer

    other = byte_tokenizer()
    other.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<tool>"]})
    for name, tok in (("same", tokenizer), ("other", other)):
        cfg = ProgressEstimatorConfig(backbone_config=build_tiny_backbone_config(vocab_size=len(tok)))
        ProgressEstimator(cfg).save_pretrained(tmp_path / name, tokenizer=tok)

    async def build(path):
        return load_reward_manager(trainer_config("algorithm.reward=spa", f"algorithm.spa.estimator_path={path}"),
                                   tokenizer)

    assert asyncio.run(build(tmp_path / "same")).settings.estimator_path == str(tmp_path / "same")
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        asyncio.run(build(tmp_path / "other"))


def _session(episodes, prompt_len=2, response_len=6):
    """A DataProto of one session: one row per env_episode dict."""
    import numpy as np
    from verl import DataProto

    n = len(episodes)
    return DataProto.from_dict(
        tensors={"responses": torch.ones(n, response_len, dtype=torch.long),
                 "prompts": torch.ones(n, prompt_len, dtype=torch.long),
                 "input_ids": torch.ones(n, prompt_len + response_len, dtype=torch.long)},
        non_tensors={"tool_extra_fields": np.array([{EPISODE_KEY: e} for e in episodes], dtype=object),
                     "prompt_len": np.array([prompt_len] * n, dtype=object),
                     "response_len": np.array([response_len] * n, dtype=object)},
    )


class AsyncStubScorer(StubScorer):
    """StubScorer with an async ``score`` (awaited in the caller's loop: these managers outlive the loop they were
    built in)."""

    async def score(self, batch):
        return StubScorer.score(self, batch)


def _manager(tokenizer, *overrides, **kw):
    from verl.trainer.ppo.reward import load_reward_manager

    async def build():
        return load_reward_manager(trainer_config(*overrides), tokenizer, **kw)

    return asyncio.run(build())


MANAGERS = {
    "outcome": ("algorithm.reward=outcome",),
    "spa": ("algorithm.reward=spa", "algorithm.spa.estimator_path=stub"),
    "istar": ("algorithm.reward=istar",),
    "stepagent": ("algorithm.reward=stepagent", "algorithm.stepagent.expert_path=/x/e.parquet"),
}


@pytest.mark.parametrize("name", sorted(MANAGERS))
def test_a_row_without_episode_reward_is_an_error_not_zero(tokenizer, name):
    """R missing from env_episode raised nowhere before and was scored as R = 0 (for the prefix objective a win
    became V_T = 0); now every manager names the row and the key, packed and window rows alike."""
    manager = _manager(tokenizer, *MANAGERS[name], **({"scorer": AsyncStubScorer(C)} if name == "spa" else {}))
    packed = {"turn_ends": [1, 3], "executable": [True, True], "won": True, "task_id": "t2"}
    with pytest.raises(ValueError, match=r"row 0 of this session.*task_id='t2'.*has no 'episode_reward'"):
        asyncio.run(manager.run_single(_session([packed])))

    def step(t, **extra):
        return {"layout": "window", "step_index": t, "episode_turns": 2, "turn_ends": [1], "executable": [True],
                "won": True, **extra}

    with pytest.raises(ValueError, match=r"row 1 of this session.*step_index=1.*episode_reward"):
        asyncio.run(manager.run_single(_session([step(0, episode_reward=1.0), step(1)])))


@pytest.mark.parametrize("name", sorted(MANAGERS))
def test_env_failed_rows_still_score(tokenizer, name):
    """An episode the env failed carries R = 0.0 explicitly (recipe.spa.agent_loop.episode_summary) and is scored;
    the trainer masks it out (episode_info.env_failed), not the reward manager."""
    manager = _manager(tokenizer, *MANAGERS[name], **({"scorer": AsyncStubScorer([0.0, 0.0])} if name == "spa" else {}))
    failed = {"turn_ends": [1], "executable": [False], "won": False, "episode_reward": 0.0,
              "env_error": "EnvFailure: step timed out"}
    out = asyncio.run(manager.run_single(_session([failed])))
    assert out["reward_extra_info"]["spa/env_reward"] == 0.0 and len(out["reward_extra_info"][TURN_REWARDS_KEY]) == 1
    # an env failure before the first turn: no turns, R = 0
    empty = dict(failed, turn_ends=[], executable=[])
    assert asyncio.run(manager.run_single(_session([empty])))["reward_score"] == 0.0


def test_spa_manager_defaults_to_the_yaml_penalty(tokenizer):
    """A config without algorithm.spa.{beta, grounding} scores what the yaml scores: r_t = c_t - 0.1 (1 - g_t)
    (before: the paper's c_t + 0.5 g_t, silently)."""
    manager = _manager(tokenizer, *MANAGERS["spa"], "~algorithm.spa.beta", "~algorithm.spa.grounding",
                       scorer=AsyncStubScorer([0.3, 0.4]))
    episode = {"turn_ends": [1, 3], "executable": [True, False], "won": False, "episode_reward": 0.0}
    out = asyncio.run(manager.run_single(_session([episode])))
    assert out["reward_extra_info"][TURN_REWARDS_KEY] == pytest.approx([0.3, 0.4 - 0.1])
