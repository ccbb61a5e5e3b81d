"""The env_agent loop in the window layout (env.history=window): one output per step, each prompt holding exactly
the last k steps; truncation, env failures, and the same episode in both layouts."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envs.actions import format_action
from recipe.spa.agent_loop import EPISODE_KEY, TURN_REWARDS_KEY
from tests.recipe.helpers import row
from tests.window.layouts import play, play_both, toy_env_cfg

WINDOW_KEYS = {"layout", "step_index", "episode_turns", "history_length", "history_shown", "reply_truncated"}
STEP_RE = re.compile(r"^\[Step (\d+)\] Observation: (.*)$", re.M)


def expert(action: str = "step forward"):
    return lambda turn, prompt: format_action(action, f"turn {turn}: I move on.", "react")


def window_cfg(k: int = 2, **kw) -> dict:
    return toy_env_cfg(history="window", history_length=k, **kw)


def check_rows(outs: list, response_length: int, prompt_length: int = 8192) -> list[dict]:
    """Invariants every window-layout session satisfies; returns the rows' env_episode dicts."""
    assert isinstance(outs, list) and outs
    eps = [o.extra_fields[EPISODE_KEY] for o in outs]
    T = eps[0]["episode_turns"]
    assert len(outs) == max(T, 1)
    for t, (o, ep) in enumerate(zip(outs, eps)):
        assert ep["layout"] == "window" and ep["step_index"] == t and ep["episode_turns"] == T
        assert 1 <= len(o.response_ids) <= response_length and len(o.prompt_ids) <= prompt_length
        assert len(o.response_mask) == len(o.response_ids)
        if T:  # the fake server returns logprobs: every row carries them
            assert len(o.response_logprobs) == len(o.response_ids)
        assert o.episode_info["session_row"] == t and o.episode_info["session_rows"] == len(outs)
        if T:
            assert o.response_mask == [1] * len(o.response_ids)
            assert ep["turn_starts"] == [0] and ep["turn_ends"] == [len(o.response_ids) - 1] and ep["num_turns"] == 1
            assert len(ep["executable"]) == len(ep["actions"]) == len(o.turn_anchors) == 1
        # the episode's fields are the same on every row
        for key in ("episode_reward", "won", "score", "truncation_reason", "env_error", "parse_errors"):
            assert ep[key] == eps[-1][key]
        assert o.episode_reward == outs[-1].episode_reward
    return eps


def test_rows_hold_exactly_the_last_k_steps(tokenizer, toy_env):
    outs = play(tokenizer, window_cfg(k=2, max_steps=10), expert("wait"), row("t3"))
    eps = check_rows(outs, 4096)
    assert len(outs) == 10 and eps[-1]["truncation_reason"] == "max_steps" and not eps[-1]["won"]
    for t, o in enumerate(outs):
        prompt = tokenizer.decode(o.prompt_ids)
        steps = [int(n) for n, _ in STEP_RE.findall(prompt)]
        assert steps == list(range(max(1, t - 1), t + 1)), (t, steps)  # 1-based numbers of the last 2 steps
        assert eps[t]["history_shown"] == min(2, t)
        assert prompt.count("Task: reach 4") == 1 and prompt.endswith("<|im_start|>assistant\n")
        assert tokenizer.decode(o.response_ids).startswith(f"Thought: turn {t}:")
    assert [o.turn_anchors[0] for o in outs] == ["pos0"] * 10


def test_same_episode_in_both_layouts(tokenizer, toy_env):
    (pair,) = play_both(tokenizer, [(expert(), row("t2"))], history_length=1)
    packed, window = pair["packed"], pair["window"]
    pe = packed.extra_fields[EPISODE_KEY]
    eps = check_rows(window, 4096)
    assert len(window) == pe["num_turns"] == 3 and eps[-1]["won"] and pe["won"]
    assert set(pe) | WINDOW_KEYS == set(eps[0])  # the packed schema, one turn per row, plus the window keys
    assert [e["executable"][0] for e in eps] == pe["executable"]
    assert [e["actions"][0] for e in eps] == pe["actions"] == ["step forward"] * 3
    assert [o.turn_anchors[0] for o in window] == packed.turn_anchors == ["pos0", "pos1", "pos2"]
    assert all(o.episode_reward == packed.episode_reward == 10.0 for o in window)
    timing = ("env_seconds", "llm_seconds")  # wall seconds: present in both, equal in neither
    assert {k: v for k, v in window[-1].episode_info.items() if not k.startswith("session_") and k not in timing} \
        == {k: v for k, v in packed.episode_info.items() if k not in timing}
    assert all(window[-1].episode_info[k] > 0 and packed.episode_info[k] > 0 for k in timing)
    assert window[0].prompt_ids == packed.prompt_ids  # the first step's prompt is the same in both layouts
    # each reply is the packed response's turn, token for token
    for o, a, b in zip(window, pe["turn_starts"], pe["turn_ends"]):
        assert o.response_ids == packed.response_ids[a:b + 1]
    # window rows stay short: the longest window prompt is below the packed prompt + response
    assert max(len(o.prompt_ids) + len(o.response_ids) for o in window) < len(packed.prompt_ids) + len(
        packed.response_ids)


def test_dense_reward_takes_this_rows_element(tokenizer, toy_env):
    outs = play(tokenizer, window_cfg(), expert(), row("t2"))
    rewards = [0.5, -0.25, 3.0]
    for t, o in enumerate(outs):
        o.extra_fields["reward_extra_info"] = {TURN_REWARDS_KEY: list(rewards), "acc": 1.0}
        o.reward_score = sum(rewards)  # verl copies the final output's score to every row
        d = o.as_dict()
        rm = d["rm_scores"]
        assert rm.shape == d["responses"].shape and float(rm.sum()) == rewards[t] and float(rm[-1]) == rewards[t]
        assert TURN_REWARDS_KEY not in d["extra_fields"]["reward_extra_info"]
    outs[0].extra_fields["reward_extra_info"] = {TURN_REWARDS_KEY: [1.0], "acc": 1.0}
    with pytest.raises(ValueError, match="score every row"):
        outs[0].as_dict()


def test_reply_cut_at_its_cap_does_not_end_the_episode(tokenizer, toy_env):
    outs = play(tokenizer, window_cfg(max_steps=4, max_tokens_per_turn=8), expert(), row("t1"))
    eps = check_rows(outs, 4096)
    assert len(outs) == 4 and all(len(o.response_ids) == 8 for o in outs)
    assert all(e["reply_truncated"] for e in eps) and not any(e["executable"][0] for e in eps)
    assert eps[-1]["truncation_reason"] == "max_steps" and eps[-1]["parse_errors"] == 4


def test_prompt_limit_drops_oldest_steps_then_ends(tokenizer, toy_env):
    full = play(tokenizer, window_cfg(k=3, max_steps=6, env_kwargs={"obs_pad": 20}), expert("wait"), row("t1"))
    sizes = [len(o.prompt_ids) for o in full]
    limit = sizes[2] - 1  # the third prompt (2 pairs) no longer fits: it keeps one pair
    outs = play(tokenizer, window_cfg(k=3, max_steps=6, env_kwargs={"obs_pad": 20}), expert("wait"), row("t1"),
                prompt_length=limit)
    eps = check_rows(outs, 4096, limit)
    assert [e["history_shown"] for e in eps][:3] == [0, 1, 1]
    assert len(outs) == 6 and eps[-1]["truncation_reason"] == "max_steps"
    # a limit below the bare prompt ends the episode before its first step: one placeholder row
    outs = play(tokenizer, window_cfg(k=3, env_kwargs={"obs_pad": 20}), expert(), row("t1"),
                prompt_length=sizes[0] - 1)
    (ep,) = check_rows(outs, 4096, sizes[0] - 1)
    assert ep["truncation_reason"] == "prompt_length" and ep["episode_turns"] == 0 and outs[0].response_mask == [0]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(response_length=st.integers(1, 120), per_turn=st.one_of(st.none(), st.integers(1, 40)),
       prompt_slack=st.integers(-40, 400), k=st.integers(0, 4), obs_pad=st.integers(0, 20), seed=st.integers(0, 999))
def test_truncation_keeps_row_bookkeeping(tokenizer, toy_env, response_length, per_turn, prompt_slack, k, obs_pad,
                                          seed):
    rng = random.Random(seed)
    replies = [rng.choice([format_action("step forward", "go" * rng.randint(0, 20), "react"),
                           format_action("wait", None, "react"), "garbage " * rng.randint(0, 10)])
               for _ in range(8)]
    cfg = window_cfg(k=k, max_steps=8, max_tokens_per_turn=per_turn, env_kwargs={"obs_pad": obs_pad})
    base = play(tokenizer, cfg, lambda t, p: replies[t], row("t4"))[0]
    limit = max(1, len(base.prompt_ids) + prompt_slack)
    outs = play(tokenizer, cfg, lambda t, p: replies[t], row("t4"), response_length=response_length,
                prompt_length=limit)
    eps = check_rows(outs, response_length, limit)
    cap = response_length if per_turn is None else min(response_length, per_turn)
    for o, e in zip(outs, eps):
        if e["episode_turns"]:
            assert len(o.response_ids) <= cap and e["history_shown"] <= min(k, e["step_index"])


def test_env_failure_keeps_played_rows(tokenizer, toy_env):
    cfg = window_cfg(env_kwargs={"hang_on": "wait", "hang_seconds": 3.0},
                     pool={"backend": "thread", "num_workers": 2, "step_timeout": 0.5})
    policy = lambda turn, prompt: format_action("step forward" if turn == 0 else "wait", "x", "react")  # noqa: E731
    outs = play(tokenizer, cfg, policy, row("t3"))
    eps = check_rows(outs, 4096)
    assert len(outs) == 2 and [e["executable"][0] for e in eps] == [True, False]
    assert all(e["env_error"] == "timeout:step" and not e["won"] and e["episode_reward"] == 0.0 for e in eps)
    assert all(o.episode_info["env_error"] == "timeout:step" and o.episode_reward == 0.0 for o in outs)
    assert eps[-1]["truncation_reason"] == "env_error"


def test_reset_failure_gives_one_placeholder_row(tokenizer, toy_env):
    outs = play(tokenizer, window_cfg(env_kwargs={"no_such_kwarg": 1}), expert(), row("t0"))
    (ep,) = check_rows(outs, 4096)
    assert ep["env_error"] == "error:open" and ep["episode_turns"] == 0 and ep["num_turns"] == 0
    assert outs[0].response_mask == [0] and outs[0].turn_anchors == [] and len(outs[0].prompt_ids) > 0


def test_reset_failure_placeholder_carries_rollout_logprobs_when_verl_keeps_them(tokenizer, toy_env):
    import asyncio

    from tests.recipe.helpers import FakeServer, agent_config, make_agent_loop

    config = agent_config(window_cfg(env_kwargs={"no_such_kwarg": 1}),
                          actor_rollout_ref={"rollout": {"calculate_log_probs": True}})

    async def go():
        loop = make_agent_loop(config, FakeServer(tokenizer, expert()), tokenizer)
        return await loop.run({"temperature": 1.0, "logprobs": True}, **row("t0"))

    (out,) = asyncio.run(go())
    assert out.response_mask == [0] and out.response_logprobs == [0.0]


def test_config_checks(tokenizer, toy_env):
    from recipe.spa.settings import EnvRolloutSettings, env_settings_problems

    problems = env_settings_problems(EnvRolloutSettings(name="alfworld", history="windowed", history_length=-1))
    assert any("env.history='windowed'" in p for p in problems)
    assert any("env.history_length must be an integer >= 0, got -1" in p for p in problems)
    # collection works in both layouts (one record per episode: tests/window/test_window_records.py)
    assert env_settings_problems(EnvRolloutSettings(name="alfworld", history="window", collect_dir="/tmp/x")) == []
    assert env_settings_problems(EnvRolloutSettings(name="alfworld", history="window", history_length=0)) == []


def test_composed_config_refuses_estimators_without_session_support():
    from recipe.spa.settings import env_block_problems
    from tests.recipe.helpers import trainer_config

    ok = trainer_config("env.history=window", "algorithm.adv_estimator=grpo", "algorithm.invalid_penalty=0")
    assert env_block_problems(ok) == []
    assert env_block_problems(trainer_config("algorithm.adv_estimator=gigpo")) == []  # full layout: anything goes
    bad = env_block_problems(trainer_config("env.history=window", "algorithm.adv_estimator=gae"))
    assert len(bad) == 1 and "adv_estimator=gae" in bad[0] and "supported in the window layout: grpo, gigpo, spa" in bad[0]
    # gigpo and critic-free spa group a session's rows into one trajectory (tests/window/test_layout_equivalence.py)
    assert env_block_problems(trainer_config("env.history=window", "algorithm.adv_estimator=gigpo")) == []
    assert env_block_problems(trainer_config("env.history=window", "algorithm.adv_estimator=spa")) == []
    bad = env_block_problems(trainer_config("env.history=window", "algorithm.adv_estimator=spa", "critic.enable=true"))
    assert len(bad) == 1 and "critic.enable=true" in bad[0]
    # an estimator trained with --layout window scores window rows, frozen or online; iStar's PRM trains on a
    # session's rows as one episode (tests/window/test_window_steprm.py)
    assert env_block_problems(trainer_config("env.history=window", "algorithm.adv_estimator=gigpo",
                                             "algorithm.reward=spa")) == []
    assert env_block_problems(trainer_config("env.history=window", "algorithm.adv_estimator=gigpo",
                                             "algorithm.reward=spa", "algorithm.spa.online.enable=true")) == []
    assert env_block_problems(trainer_config("env.history=window", "algorithm.adv_estimator=gigpo",
                                             "algorithm.reward=istar")) == []
    bad = env_block_problems(trainer_config("env.history=window", "algorithm.adv_estimator=grpo",
                                            "algorithm.invalid_penalty=0.1"))
    assert len(bad) == 1 and "invalid_penalty=0.1" in bad[0] and "final row only" in bad[0]


def test_episode_metrics_count_each_window_episode_once(tokenizer, toy_env):
    from spa_reward.metrics import episode_metrics

    won = play(tokenizer, window_cfg(), expert(), row("t3"))  # 4 rows, won
    lost = play(tokenizer, window_cfg(max_steps=2), expert("wait"), row("t0"))  # 2 rows, lost
    infos = [o.episode_info for o in won + lost]
    m = episode_metrics(infos)
    assert m["episode/success_rate"] == 0.5 and m["episode/num_turns"] == 3.0  # (4 + 2) / 2 episodes
    assert episode_metrics([won[0].episode_info]) == {}  # a non-final row alone is no finished episode
