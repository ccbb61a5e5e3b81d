"""StepAgent expert-prefix episodes (issue 11, inspection) on the toy env: the expert's first k actions are replayed
in the env and sit in the response as mask-0 turns that are not policy turns and get no reward; the budget, the
divergence rule, validation rows and tasks without a demo; the demo reader (envs.expert.load_expert_demos)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envs.actions import format_action
from envs.expert import expert_rows, load_expert_demos, make_thought
from envs.prepare import write_parquet
from recipe.spa.agent_loop import EPISODE_KEY
from tests.recipe.conftest import tokenizer, toy_env  # noqa: F401  (fixtures)
from tests.recipe.helpers import FakeServer, agent_config, make_agent_loop, mask_runs, row

STEPAGENT_KEYS = {"prefix_turns", "expert_turns", "compared", "expert_action", "agent_action", "match", "match_by",
                  "context_length", "expert_reply_ids"}


def toy_cfg(**kw) -> dict:
    env = {"name": "toy", "max_steps": 10, "reward_scale": 10.0, "pool": {"backend": "thread", "num_workers": 2}}
    env.update(kw)
    return env


def write_demos(env_name: str, env, task_ids: list[str], path, **kw) -> list[dict]:
    """The envs.expert rows of ``task_ids`` (won episodes), written as its parquet output."""
    rows, summary = expert_rows(env_name, "train", env=env, task_ids=task_ids, progress=False, **kw)
    assert summary["won"] == len(task_ids), summary
    write_parquet(rows, path)
    return rows


@pytest.fixture
def toy_demos(toy_env, tmp_path):  # noqa: F811
    from tests.recipe.helpers import ToyEnv

    path = tmp_path / "toy_sft.parquet"
    write_demos("toy", ToyEnv(), ["t0", "t2", "t4"], path)
    return path


def stepagent_config(env: dict, expert_path, prefix: str = "reverse", response_length: int = 4096,
                     prompt_length: int = 8192):
    """The agent loop's config with ``algorithm.reward=stepagent`` (mode match) reading ``expert_path``."""
    sa = {"mode": "match", "expert_path": str(expert_path), "prefix": prefix, "reverse_steps": 100, "seed": 0}
    return agent_config(env, response_length=response_length, prompt_length=prompt_length,
                        algorithm={"reward": "stepagent", "stepagent": sa})


def play(config, tokenizer, policy, kwargs):  # noqa: F811
    async def go():
        loop = make_agent_loop(config, FakeServer(tokenizer, policy), tokenizer)
        return await loop.run({"temperature": 1.0, "logprobs": True}, **kwargs)

    return asyncio.run(go())


def step_row(task: str, step: int, split: str = "train", **kw) -> dict:
    r = row(task, split=split, **kw)
    r["global_steps"] = step
    return r


def forward(turn, prompt):
    return format_action("step forward", f"turn {turn}: on.", "react")


def expert_reply(env_name: str, action: str, goal: str, step: int, style: str = "react") -> str:
    return format_action(action, make_thought(env_name, action, goal, step), style)


def check_prefix_episode(out, tokenizer, k: int, L: int, env_name: str, goal: str, actions: list[str]):  # noqa: F811
    """What every packed expert-prefix output satisfies; returns (env_episode, stepagent)."""
    ep, sa = out.extra_fields[EPISODE_KEY], out.stepagent
    assert set(sa) == STEPAGENT_KEYS and ep["stepagent"] == sa
    assert sa["prefix_turns"] == k and sa["expert_turns"] == L
    # policy turns only: the mask-1 runs are exactly the recorded turns, and the response starts with k expert
    # replies + observations, all mask 0
    assert mask_runs(out.response_mask) == list(zip(ep["turn_starts"], ep["turn_ends"]))
    assert len(ep["actions"]) == len(ep["executable"]) == len(out.turn_anchors) == ep["num_turns"]
    first = ep["turn_starts"][0] if ep["num_turns"] else len(out.response_ids)
    assert not any(out.response_mask[:first])
    prefix_text = tokenizer.decode(out.response_ids[:first])
    pos = 0
    for j in range(k):  # the expert replies, in order, as envs.expert writes them
        reply = expert_reply(env_name, actions[j], goal, j)
        at = prefix_text.find(reply, pos)
        assert at >= 0, (j, reply)
        pos = at + len(reply)
    assert prefix_text.count("<|im_start|>assistant\n") == k  # one assistant turn per expert step, then the policy
    if k < L and ep["num_turns"]:
        assert sa["compared"] and sa["expert_action"] == actions[k]
        assert sa["context_length"] == len(out.prompt_ids) + ep["turn_starts"][0]
    info = out.episode_info
    assert info["stepagent_prefix_turns"] == float(k)
    assert info["stepagent_compared"] == float(sa["compared"]) and info["stepagent_match"] == float(sa["match"])
    return ep, sa


# ----------------------------------------------------------------------------------------------- toy, packed


def test_reverse_prefix_packed(tokenizer, toy_demos):  # noqa: F811
    """Step 0 of the reverse curriculum: k = L-1 = 4 expert steps on t4 (L=5), then the policy's one turn wins."""
    out = play(stepagent_config(toy_cfg(), toy_demos), tokenizer, forward, step_row("t4", 0))
    ep, sa = check_prefix_episode(out, tokenizer, 4, 5, "toy", "reach 5", ["step forward"] * 5)
    assert ep["num_turns"] == 1 and ep["won"] and out.turn_anchors == ["pos4"]  # the state after 4 expert steps
    assert sa["match"] and sa["match_by"] == "action" and sa["agent_action"] == "step forward"
    # expert_reply_ids: exactly the tokens a server generating the expert's reply gives (here the fake server
    # generates "step forward" with another thought; compare with the generated reply of the same text)
    reply = expert_reply("toy", "step forward", "reach 5", 4)
    assert tokenizer.decode(sa["expert_reply_ids"]) == reply + "<|im_end|>"
    assert out.episode_info["stepagent/prefix_diverged"] == 0.0 and out.episode_info["stepagent/prefix_shortened"] == 0
    assert out.response_logprobs is not None and not any(out.response_logprobs[:ep["turn_starts"][0]])
    assert out.num_turns == 1 + 1 + 2 * 4  # verl counts chat messages: the prefix's replies and observations too


def test_expert_reply_ids_equal_the_generated_turn(tokenizer, toy_demos):  # noqa: F811
    """A fake server that generates exactly the expert's reply at the compared state: its turn's tokens in the
    response are expert_reply_ids, token for token (end-of-turn included)."""
    reply = expert_reply("toy", "step forward", "reach 3", 2)
    config = stepagent_config(toy_cfg(), toy_demos, prefix="reverse")
    out = play(config, tokenizer, lambda t, p: reply, step_row("t2", 0))
    ep, sa = check_prefix_episode(out, tokenizer, 2, 3, "toy", "reach 3", ["step forward"] * 3)
    s, e = ep["turn_starts"][0], ep["turn_ends"][0]
    assert sa["expert_reply_ids"] == list(out.response_ids[s:e + 1])
    assert sa["expert_reply_ids"][-1] == tokenizer.eos_token_id
    # the whole sequence is what the chat template gives for the conversation, prefix turns included (the
    # template ends the last turn with "<|im_end|>\n"; generation stops at <|im_end|>)
    text = tokenizer.decode(list(out.prompt_ids) + list(out.response_ids))
    assert text + "\n" == tokenizer.apply_chat_template(play_messages(out, reply, config), tokenize=False)


def play_messages(out, last_reply, config):
    """Rebuild the chat of a won toy episode on t2 with its prefix (to compare rendered text)."""
    from envs.prompts import build_messages, format_observation
    from recipe.spa.settings import EnvRolloutSettings
    from tests.recipe.helpers import ToyEnv

    s = EnvRolloutSettings.from_config(config)
    env = ToyEnv()
    obs, info = env.reset("t2")
    messages = build_messages("toy", obs, info, s.prompt_style, s.one_shot, s.system_prompt, s.include_admissible)
    for j in range(out.stepagent["prefix_turns"]):
        messages.append({"role": "assistant", "content": expert_reply("toy", "step forward", "reach 3", j)})
        obs, _, _, info = env.step("step forward")
        messages.append({"role": "user", "content": format_observation("toy", obs, info, s.include_admissible)})
    messages.append({"role": "assistant", "content": last_reply})
    return messages


def test_prefix_tokens_get_no_reward(tokenizer, toy_demos, monkeypatch):  # noqa: F811
    """The outcome reward through verl's streaming reward path and the v1 TransferQueue postprocess: rm_scores
    are 0 on every prefix token; the stepagent dict is a TransferQueue field."""
    from verl.trainer.ppo.reward import load_reward_manager
    from verl.trainer.ppo.v1 import agent_loop_tq

    from tests.recipe.helpers import postprocess_worker, trainer_config

    puts = []

    async def fake_put(keys, fields, tags, partition_id):
        puts.append(fields)

    monkeypatch.setattr(agent_loop_tq.tq, "async_kv_batch_put", fake_put)
    wait_then_forward = lambda t, p: format_action("wait" if t == 0 else "step forward", "go", "react")  # noqa: E731

    async def go():
        manager = load_reward_manager(trainer_config("algorithm.reward=outcome", "algorithm.invalid_penalty=0.1"),
                                      tokenizer)
        worker = postprocess_worker(manager)
        loop = make_agent_loop(stepagent_config(toy_cfg(), toy_demos), FakeServer(tokenizer, wait_then_forward),
                               tokenizer)
        kwargs = step_row("t4", 50)  # reverse: k = floor(4 * 0.5) = 2
        out = await loop.run({"temperature": 1.0, "logprobs": True}, **kwargs)
        await worker._agent_loop_postprocess(out, False, **kwargs)
        return out

    out = asyncio.run(go())
    fields = puts[-1]
    ep, sa = check_prefix_episode(out, tokenizer, 2, 5, "toy", "reach 5", ["step forward"] * 5)
    assert ep["actions"] == ["wait", "step forward", "step forward", "step forward"] and ep["won"]
    assert not sa["match"] and sa["compared"] and sa["agent_action"] == "wait"
    rm = fields["rm_scores"][0]
    first = ep["turn_starts"][0]
    assert rm[:first].abs().sum() == 0 and rm.sum() == pytest.approx(10.0)
    assert float(rm[ep["turn_ends"][-1]]) == pytest.approx(10.0)
    assert out.extra_fields["reward_extra_info"]["spa_turn_rewards"] == pytest.approx([0.0, 0.0, 0.0, 10.0])
    assert fields["stepagent"][0] == sa and fields["episode_info"][0]["stepagent_compared"] == 1.0


def test_uniform_same_k_for_a_group(tokenizer, toy_demos):  # noqa: F811
    """uniform: one k per (task, step): both rollouts of a group start from the same expert state."""
    from spa_reward.stepagent.settings import prefix_length

    cfg = stepagent_config(toy_cfg(), toy_demos, prefix="uniform")
    for step in (1, 2, 3):
        k = prefix_length("uniform", 5, step, 100, 0, key="t4")
        outs = [play(cfg, tokenizer, forward, step_row("t4", step, session_id=i)) for i in range(2)]
        for out in outs:
            check_prefix_episode(out, tokenizer, k, 5, "toy", "reach 5", ["step forward"] * 5)
        assert outs[0].turn_anchors[0] == outs[1].turn_anchors[0] == f"pos{k}"


def test_prefix_that_does_not_fit_is_shortened(tokenizer, toy_demos):  # noqa: F811
    """A response budget too small for k = 4 expert steps: the replay restarts with the k that leaves room for the
    next expert reply, and counts the dropped steps."""
    full = play(stepagent_config(toy_cfg(), toy_demos), tokenizer, forward, step_row("t4", 0))
    first = full.extra_fields[EPISODE_KEY]["turn_starts"][0]
    budget = first - 5  # the 4-step prefix plus its next reply cannot fit; fewer steps can
    out = play(stepagent_config(toy_cfg(), toy_demos, response_length=budget), tokenizer, forward, step_row("t4", 0))
    k = out.stepagent["prefix_turns"]
    assert 0 < k < 4 and out.episode_info["stepagent/prefix_shortened"] == 4 - k
    ep, sa = check_prefix_episode(out, tokenizer, k, 5, "toy", "reach 5", ["step forward"] * 5)
    assert out.turn_anchors[0] == f"pos{k}" and len(out.response_ids) <= budget and sa["compared"]


def test_divergent_replay_stops_and_compares_nothing(tokenizer, toy_demos, tmp_path):  # noqa: F811
    """A demo whose anchor after step 1 is not the env's: the prefix stops after that step, is counted, and the
    first policy turn is not compared."""
    import pyarrow.parquet as pq

    table = pq.read_table(toy_demos).to_pylist()
    for r in table:
        if r["task_id"] == "t4":
            r["anchors"] = ["pos1", "elsewhere", "pos3", "pos4", "pos5"]
    bad = tmp_path / "bad_sft.parquet"
    write_parquet(table, bad)
    out = play(stepagent_config(toy_cfg(), bad), tokenizer, forward, step_row("t4", 0))
    sa = out.stepagent
    assert sa["prefix_turns"] == 2 and not sa["compared"] and sa["expert_action"] == "" and sa["expert_reply_ids"] == []
    assert out.episode_info["stepagent/prefix_diverged"] == 1.0 and out.episode_info["stepagent_compared"] == 0.0
    assert out.turn_anchors[0] == "pos2"  # the env took the diverged step: the policy acts after it


def test_validation_and_undemonstrated_tasks_get_no_prefix(tokenizer, toy_demos):  # noqa: F811
    cfg = stepagent_config(toy_cfg(), toy_demos)
    val = play(cfg, tokenizer, forward, step_row("t4", 0, split="val"))
    assert val.stepagent["prefix_turns"] == 0 and not val.stepagent["compared"] and val.turn_anchors[0] == "pos0"
    assert val.extra_fields[EPISODE_KEY]["num_turns"] == 5 and val.response_mask[0] == 1
    none = play(cfg, tokenizer, forward, step_row("t3", 0))  # no demo for t3
    assert none.stepagent == {**none.stepagent, "prefix_turns": 0, "expert_turns": 0, "compared": False}
    assert none.episode_info["stepagent_compared"] == 0.0 and none.response_mask[0] == 1
    # a one-action demo (t0): k = 0, the comparison is at the task's first state
    one = play(cfg, tokenizer, forward, step_row("t0", 0))
    assert one.stepagent["prefix_turns"] == 0 and one.stepagent["compared"] and one.stepagent["match"]
    assert one.stepagent["context_length"] == len(one.prompt_ids)


def test_other_rewards_are_untouched(tokenizer, toy_env):  # noqa: F811
    """Without algorithm.reward=stepagent no demo is read, the dict is the empty one, episode_info unchanged."""
    out = play(agent_config(toy_cfg(), algorithm={"reward": "outcome"}), tokenizer, forward, step_row("t2", 0))
    assert out.stepagent == {"prefix_turns": 0, "expert_turns": 0, "compared": False, "expert_action": "",
                             "agent_action": "", "match": False, "match_by": "", "context_length": 0,
                             "expert_reply_ids": []}
    assert not any(k.startswith("stepagent") for k in out.episode_info)
    assert out.extra_fields[EPISODE_KEY]["stepagent"] == out.stepagent and out.as_dict()["stepagent"] == out.stepagent


def test_bad_expert_path_fails_when_the_loop_is_built(tokenizer, toy_env, tmp_path):  # noqa: F811
    with pytest.raises(Exception, match="expert demonstrations not found: .*nope.parquet"):  # hydra may wrap it
        play(stepagent_config(toy_cfg(), tmp_path / "nope.parquet"), tokenizer, forward, step_row("t2", 0))


# ----------------------------------------------------------------------------------------------- toy, window


def test_window_prefix_is_history(tokenizer, toy_demos):  # noqa: F811
    """Window layout: the k expert steps are history pairs of the first row (no rows for them); row 0 holds the
    comparison; expert_reply_ids equal a generated reply's tokens."""
    reply = expert_reply("toy", "step forward", "reach 5", 3)
    cfg = stepagent_config(toy_cfg(history="window", history_length=2), toy_demos)
    outs = play(cfg, tokenizer, lambda t, p: reply, step_row("t4", 25))  # reverse: k = floor(4 * 0.75) = 3
    assert isinstance(outs, list) and len(outs) == 2  # steps 3 and 4 are the policy's
    first = outs[0]
    sa = first.stepagent
    assert sa["prefix_turns"] == 3 and sa["compared"] and sa["match"] and sa["expert_action"] == "step forward"
    assert first.turn_anchors == ["pos3"] and outs[1].turn_anchors == ["pos4"]
    assert sa["expert_reply_ids"] == list(first.response_ids) and sa["context_length"] == len(first.prompt_ids)
    prompt = tokenizer.decode(first.prompt_ids)
    assert "You are at 1." in prompt and "You are at 2." in prompt  # the last two expert steps as history
    assert outs[1].stepagent["compared"] is False and outs[1].stepagent["prefix_turns"] == 3
    assert [o.extra_fields[EPISODE_KEY]["stepagent"] for o in outs] == [o.stepagent for o in outs]
    # episode_info holds the episode's scalars on every row (the metrics count the final row of a session)
    assert outs[1].episode_info["stepagent_compared"] == 1.0 == first.episode_info["stepagent_compared"]


# ----------------------------------------------------------------------------------------------- the reader


def test_reader_errors_layouts_and_cache(toy_env, tmp_path, caplog):  # noqa: F811
    from tests.recipe.helpers import ToyEnv

    with pytest.raises(FileNotFoundError, match="missing.parquet.*python -m envs.expert"):
        load_expert_demos(tmp_path / "missing.parquet")
    write_parquet([{"task_id": "t1", "messages": []}], tmp_path / "noactions.parquet")
    with pytest.raises(ValueError, match=r"noactions.parquet lack the column\(s\) \['actions'\]"):
        load_expert_demos(tmp_path / "noactions.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="junk.parquet are not a readable parquet"):
        load_expert_demos(tmp_path / "junk.parquet")
    write_parquet([{"task_id": "t1", "actions": ["a"]}, {"task_id": "t1", "actions": ["b"]}], tmp_path / "d.parquet")
    with pytest.raises(ValueError, match="hold task 't1' twice"):
        load_expert_demos(tmp_path / "d.parquet")
    # full layout, with anchors (the anchors column is what the agent loop records after each action)
    full = tmp_path / "full.parquet"
    rows = write_demos("toy", ToyEnv(), ["t1", "t2"], full)
    assert [r["anchors"] for r in rows] == [["pos1", "pos2"], ["pos1", "pos2", "pos3"]]
    demos = load_expert_demos(full)
    assert demos["t2"].actions == ("step forward",) * 3 and demos["t2"].anchors == ("pos1", "pos2", "pos3")
    assert demos["t2"].env_name == "toy" and demos["t2"].task_type == "even" and len(demos["t1"]) == 2
    assert load_expert_demos(full) is demos  # loaded once (cache by path + mtime)
    # window layout (--history k): one row per step, assembled in step order
    win = tmp_path / "win.parquet"
    wrows, _ = expert_rows("toy", "train", env=ToyEnv(), task_ids=["t2"], progress=False, history_length=1)
    write_parquet(list(reversed(wrows)), win)
    assert load_expert_demos(win)["t2"] == demos["t2"]
    # an older file without anchors: action equality only, said once
    old = tmp_path / "old.parquet"
    write_parquet([{k: v for k, v in r.items() if k != "anchors"} for r in rows], old)
    with caplog.at_level(logging.WARNING, logger="envs.expert"):
        assert load_expert_demos(old)["t2"].anchors is None
    assert sum("no anchors column" in r.message for r in caplog.records) == 1


def test_env_failure_during_the_prefix_fails_the_episode(tokenizer, toy_demos):  # noqa: F811
    """An env timeout on an expert action is an env failure like any other: the episode is failed and counted,
    nothing is compared, and the bookkeeping stays consistent (no policy turns, all mask 0)."""
    env = toy_cfg(env_kwargs={"hang_on": "step forward", "hang_seconds": 1.0},
                  pool={"backend": "thread", "num_workers": 2, "step_timeout": 0.3})
    out = play(stepagent_config(env, toy_demos), tokenizer, forward, step_row("t4", 0))
    ep = out.extra_fields[EPISODE_KEY]
    assert ep["env_error"] == "timeout:step" and ep["num_turns"] == 0 and not ep["won"]
    assert out.episode_info["env_failed"] == 1.0 and out.episode_reward == 0.0
    assert not any(out.response_mask) and len(out.response_mask) == len(out.response_ids)
    assert not out.stepagent["compared"] and out.episode_info["stepagent_compared"] == 0.0


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(budget=st.integers(60, 900), step=st.integers(0, 100), obs_pad=st.integers(0, 30))
def test_any_budget_keeps_the_bookkeeping(tokenizer, toy_demos, budget, step, obs_pad):  # noqa: F811
    """Whatever the response budget and the curriculum step: the response fits, the mask-1 runs are the policy
    turns, the policy acts at the state after the replayed prefix, and planned k = replayed + shortened."""
    from spa_reward.stepagent.settings import prefix_length

    out = play(stepagent_config(toy_cfg(env_kwargs={"obs_pad": obs_pad}), toy_demos, response_length=budget),
               tokenizer, forward, step_row("t4", step))
    ep, sa, info = out.extra_fields[EPISODE_KEY], out.stepagent, out.episode_info
    assert len(out.response_ids) == len(out.response_mask) <= budget
    assert mask_runs(out.response_mask) == list(zip(ep["turn_starts"], ep["turn_ends"]))
    assert sa["prefix_turns"] + info["stepagent/prefix_shortened"] == prefix_length("reverse", 5, step, 100)
    assert info["stepagent/prefix_diverged"] == 0.0
    if ep["num_turns"]:
        assert out.turn_anchors[0] == f"pos{sa['prefix_turns']}" and sa["compared"] and sa["match"]
        assert sa["context_length"] == len(out.prompt_ids) + ep["turn_starts"][0]
        assert not any(out.response_mask[:ep["turn_starts"][0]])
