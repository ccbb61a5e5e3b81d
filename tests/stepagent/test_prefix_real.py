"""Expert-prefix replay on the real environments (ALFWorld json_2.1.1 games, WebShop's 1000 products, VirtualHome's
programs) through the env_agent loop with the fake LLM server: after k replayed expert actions the policy acts at
exactly the expert's state (anchor equality with the demo's anchors, written by envs.expert), and a policy that
goes on with the expert's replies walks the demo's anchors to the win. Packed layout on all three, window layout
on WebShop. Skipped with the reason when an engine or its data is not here."""

from __future__ import annotations

import pytest

from envs.expert import load_expert_demos
from recipe.spa.agent_loop import EPISODE_KEY
from spa_reward.stepagent.settings import prefix_length
from tests.recipe.conftest import tokenizer  # noqa: F401  (fixture)
from tests.recipe.helpers import REAL_ENVS, real_env
from tests.stepagent.test_prefix import (check_prefix_episode, expert_reply, play, stepagent_config, step_row,
                                         write_demos)

STEP = 50  # reverse curriculum, reverse_steps=100: k = floor((L - 1) / 2)


def demo_of(request, env_name: str, tmp_path):
    """(env kwargs, task id, its goal, the demo as read back, the parquet path) of the env's test task."""
    env, kwargs, task = real_env(request, env_name)
    path = tmp_path / f"{env_name}_sft.parquet"
    try:
        write_demos(env_name, env, [task], path)
        goal = str(env.reset(task)[1].get("goal") or "")
    finally:
        env.close()
    demo = load_expert_demos(path)[task]
    assert demo.anchors is not None and len(demo.anchors) == len(demo.actions) >= 2
    return kwargs, task, goal, demo, path


def continue_as_expert(env_name: str, demo, goal: str, k: int):
    return lambda turn, prompt: expert_reply(env_name, demo.actions[k + turn], goal, k + turn)


@pytest.mark.parametrize("env_name", sorted(REAL_ENVS))
def test_prefix_reaches_the_expert_state_packed(tokenizer, request, tmp_path, env_name):  # noqa: F811
    kwargs, task, goal, demo, path = demo_of(request, env_name, tmp_path)
    L = len(demo)
    k = prefix_length("reverse", L, STEP, 100)
    assert 0 < k < L
    cfg = {"name": env_name, "max_steps": L + 2, "reward_scale": 10.0, "env_kwargs": kwargs,
           "max_tokens_per_turn": 4096, "pool": {"backend": "thread", "num_workers": 1}}
    out = play(stepagent_config(cfg, path, response_length=131072, prompt_length=32768), tokenizer,
               continue_as_expert(env_name, demo, goal, k), step_row(task, STEP, env_name=env_name))
    ep, sa = check_prefix_episode(out, tokenizer, k, L, env_name, goal, list(demo.actions))
    assert ep["won"] and not ep["env_error"] and ep["num_turns"] == L - k
    # the state the policy acted on at every turn is the expert's: the demo's anchor after k-1+t actions
    assert out.turn_anchors == list(demo.anchors[k - 1:L - 1])
    assert sa["compared"] and sa["match"] and sa["match_by"] == "action" and sa["expert_action"] == demo.actions[k]
    s, e = ep["turn_starts"][0], ep["turn_ends"][0]
    assert sa["expert_reply_ids"] == list(out.response_ids[s:e + 1])
    assert out.episode_info["stepagent/prefix_diverged"] == 0.0 and out.episode_info["stepagent/prefix_shortened"] == 0


def test_prefix_reaches_the_expert_state_window(tokenizer, request, tmp_path):  # noqa: F811
    env_name = "webshop"
    kwargs, task, goal, demo, path = demo_of(request, env_name, tmp_path)
    L = len(demo)
    k = prefix_length("reverse", L, STEP, 100)
    cfg = {"name": env_name, "max_steps": L + 2, "reward_scale": 10.0, "env_kwargs": kwargs, "history": "window",
           "history_length": 2, "max_tokens_per_turn": 4096, "pool": {"backend": "thread", "num_workers": 1}}
    outs = play(stepagent_config(cfg, path, response_length=8192, prompt_length=32768), tokenizer,
                continue_as_expert(env_name, demo, goal, k), step_row(task, STEP, env_name=env_name))
    assert len(outs) == L - k and all(o.extra_fields[EPISODE_KEY]["won"] for o in outs)
    assert [o.turn_anchors[0] for o in outs] == list(demo.anchors[k - 1:L - 1])
    sa = outs[0].stepagent
    assert sa["prefix_turns"] == k and sa["compared"] and sa["match"]
    assert sa["context_length"] == len(outs[0].prompt_ids)
    assert sa["expert_reply_ids"] == list(outs[0].response_ids)
    prompt = tokenizer.decode(outs[0].prompt_ids)
    assert f"Action: {demo.actions[k - 1]}" in prompt  # the last expert step is history of the first row
