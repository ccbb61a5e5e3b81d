"""The ``stepagent`` reward manager (verl's reward-manager registry): match-mode rewards by hand, packed and window
rows, implicit / irl modes without the match term (their step reward comes from the trainer hooks)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from envs.actions import format_action
from spa_reward.reward_manager import TURN_REWARDS_KEY
from tests.recipe.conftest import tokenizer, toy_env  # noqa: F401  (fixtures shared with tests/recipe)
from tests.recipe.helpers import byte_tokenizer, row, score_episodes, trainer_config


def manager(*overrides: str):
    from verl.trainer.ppo.reward import load_reward_manager

    cfg = trainer_config("algorithm.reward=stepagent", "algorithm.stepagent.expert_path=/x/e.parquet", *overrides)

    async def build():
        return load_reward_manager(cfg, byte_tokenizer())

    return asyncio.run(build())


def rows(episodes: list[dict], prompt_len: int = 2, response_len: int = 6):
    """A DataProto of one session: one row per env_episode dict (rows of one window session, or one packed row)."""
    from verl import DataProto

    n = len(episodes)
    return DataProto.from_dict(
        tensors={"responses": torch.ones(n, response_len, dtype=torch.long),
                 "prompts": torch.ones(n, prompt_len, dtype=torch.long),
                 "input_ids": torch.ones(n, prompt_len + response_len, dtype=torch.long)},
        non_tensors={"tool_extra_fields": np.array([{"env_episode": e} for e in episodes], dtype=object),
                     "prompt_len": np.array([prompt_len] * n, dtype=object),
                     "response_len": np.array([response_len] * n, dtype=object)},
    )


def packed(executable, R, stepagent):
    n = len(executable)
    return {"turn_ends": [2 * t + 1 for t in range(n)], "executable": list(executable), "episode_reward": R,
            "won": R > 0, "stepagent": stepagent}


def sa(compared=True, match=False, k=2):
    return {"prefix_turns": k, "expert_turns": 5, "compared": compared, "expert_action": "go to desk 1" if compared else "",
            "agent_action": "go to bed 1", "match": match, "match_by": "action" if match else "",
            "context_length": 9, "expert_reply_ids": [1, 2]}


def score(m, data) -> dict:
    return asyncio.run(m.run_single(data))


SETTINGS = ("algorithm.stepagent.match_reward=0.5", "algorithm.stepagent.grounding_beta=0.2",
            "algorithm.invalid_penalty=0.1")


def test_registered_and_match_rewards_by_hand():
    from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER

    assert "stepagent" in REWARD_MANAGER
    m = manager(*SETTINGS)
    # r_t = 0.2 g_t - 0.1 (1 - g_t); +-0.5 on turn 0 (the compared turn); + R = 10 on the last turn
    out = score(m, rows([packed([True, False, True], 10.0, sa(match=True))]))
    info = out["reward_extra_info"]
    assert info[TURN_REWARDS_KEY] == pytest.approx([0.2 + 0.5, -0.1, 0.2 + 10.0])
    assert out["reward_score"] == pytest.approx(10.8)
    assert info["stepagent/compared"] == 1.0 and info["stepagent/match"] == 1.0 and info["stepagent/prefix_turns"] == 2.0
    # compared, the agent's action differs from the expert's: -0.5
    out = score(m, rows([packed([True, True], 0.0, sa(match=False))]))
    assert out["reward_extra_info"][TURN_REWARDS_KEY] == pytest.approx([0.2 - 0.5, 0.2])
    assert out["reward_extra_info"]["stepagent/match"] == 0.0
    # not compared (a task without a demonstration) or no stepagent dict at all: no match term
    for dict_ in (sa(compared=False, k=0), None):
        out = score(m, rows([packed([False, True], 1.0, dict_)]))
        assert out["reward_extra_info"][TURN_REWARDS_KEY] == pytest.approx([-0.1, 0.2 + 1.0])
        assert out["reward_extra_info"]["stepagent/compared"] == 0.0
    # a one-turn episode: the compared turn is also the last one
    out = score(m, rows([packed([True], 2.0, sa(match=True))]))
    assert out["reward_extra_info"][TURN_REWARDS_KEY] == pytest.approx([0.2 + 0.5 + 2.0])


def test_window_session_compares_on_step_zero_only():
    """env.history=window: one row per step; only step 0 holds the compared turn, R lands on the final step."""
    m = manager(*SETTINGS)

    def step(t, g, total=3, R=4.0):
        return {"layout": "window", "step_index": t, "episode_turns": total, "turn_ends": [1], "executable": [g],
                "episode_reward": R, "won": True, "stepagent": sa(match=False)}  # the dict rides on every row

    data = rows([step(2, True), step(0, True), step(1, False)])  # rows in any order
    out = score(m, data)
    info = out["reward_extra_info"]
    assert info[TURN_REWARDS_KEY] == pytest.approx([0.2 - 0.5, -0.1, 0.2 + 4.0])
    assert info["stepagent/compared"] == 1.0 and info["stepagent/match"] == 0.0 and info["spa/num_turns"] == 3.0


@pytest.mark.parametrize("mode", ["implicit", "irl"])
def test_prm_modes_have_no_match_term(mode):
    m = manager(*SETTINGS, f"algorithm.stepagent.mode={mode}")
    out = score(m, rows([packed([True, False], 3.0, sa(match=True))]))
    assert out["reward_extra_info"][TURN_REWARDS_KEY] == pytest.approx([0.2, -0.1 + 3.0])
    assert out["reward_extra_info"]["stepagent/compared"] == 1.0  # still reported


def test_bad_block_fails_at_construction():
    with pytest.raises(ValueError, match="algorithm.stepagent.mode='imitate'"):
        manager("algorithm.stepagent.mode=imitate")


def test_through_verls_streaming_reward_path(tokenizer, toy_env, monkeypatch):  # noqa: F811
    """A toy env_agent episode (4 turns, the second unparseable, won: R = 10) scored by verl's streaming path with
    the ``stepagent`` manager: the turn rewards land on each turn's last token of ``rm_scores``. The toy loop writes
    no ``stepagent`` dict (no expert prefix), so there is no match term."""
    def policy(turn, prompt):
        return "no idea" if turn == 1 else format_action("step forward", "forward", "react")

    cfg = trainer_config(*SETTINGS, "algorithm.reward=stepagent", "algorithm.stepagent.expert_path=/x/e.parquet")
    ((out, fields, _),) = score_episodes(tokenizer, cfg, [(policy, row("t2", uid="uid-a"))], monkeypatch)
    expected = [0.2, -0.1, 0.2, 0.2 + 10.0]
    ends = out.extra_fields["env_episode"]["turn_ends"]
    dense = torch.zeros(len(out.response_ids))
    for r, e in zip(expected, ends):
        dense[e] = r
    assert torch.allclose(fields["rm_scores"], dense) and fields["episode_reward"] == 10.0
    assert out.extra_fields["reward_extra_info"]["stepagent/compared"] == 0.0
