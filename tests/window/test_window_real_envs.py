"""Both layouts through the env_agent loop on the real environments (fake LLM server replaying the expert), and
the windowed SFT rows of ``envs.expert`` equal to the prompts the RL loop builds in the window layout."""

from __future__ import annotations

import pytest

from recipe.spa.agent_loop import EPISODE_KEY
from tests.recipe.helpers import real_env, row
from tests.window.layouts import play

WINDOW_ENVS = ["virtualhome", "webshop"]  # fast experts (ALFWorld plans for seconds per game)


@pytest.mark.parametrize("env_name", WINDOW_ENVS)
def test_expert_in_both_layouts_and_windowed_sft_rows(tokenizer, request, env_name, tmp_path):
    from envs.expert import expert_rows

    from envs.expert import expert_episode

    env, kwargs, task = real_env(request, env_name)
    try:
        sft, summary = expert_rows(env_name, "train", env=env, task_ids=[task], history_length=2, progress=False)
        sft_episode = expert_episode(env, env_name, task)
    finally:
        env.close()
    assert summary["won"] == 1 and summary["history"] == "window:2" and len(sft) == summary["mean_turns"]
    replies = [r["messages"][-1]["content"] for r in sft]
    cfg = {"name": env_name, "max_steps": len(replies) + 2, "reward_scale": 10.0, "env_kwargs": kwargs,
           "max_tokens_per_turn": 4096,  # byte tokenizer: a long WebShop search is more than 512 tokens
           "pool": {"backend": "thread", "num_workers": 1}}
    policy = lambda turn, prompt: replies[turn]  # noqa: E731  (the expert's replies, turn by turn)
    packed = play(tokenizer, {**cfg, "collect_dir": str(tmp_path / "full")}, policy, row(task, env_name),
                  response_length=32768, prompt_length=32768)
    window = play(tokenizer, {**cfg, "history": "window", "history_length": 2, "collect_dir": str(tmp_path / "win")},
                  policy, row(task, env_name), response_length=32768, prompt_length=32768)
    pe = packed.extra_fields[EPISODE_KEY]
    assert pe["won"] and len(window) == pe["num_turns"] == len(sft)
    assert all(o.extra_fields[EPISODE_KEY]["won"] for o in window)
    assert [o.extra_fields[EPISODE_KEY]["actions"][0] for o in window] == pe["actions"] == [r["actions"][0] for r
                                                                                            in sft]
    assert [o.turn_anchors[0] for o in window] == packed.turn_anchors
    assert window[0].prompt_ids == packed.prompt_ids
    for o, r in zip(window, sft):  # SFT and RL see the same window prompt, token for token
        expected = tokenizer.apply_chat_template(r["messages"][:-1], add_generation_prompt=True, tokenize=False)
        assert tokenizer.decode(o.prompt_ids) == expected
        assert tokenizer.decode(o.response_ids, skip_special_tokens=True) == r["messages"][-1]["content"]
    # the records of both plays rebuild both layouts exactly (admissible actions and goal included)
    from spa_reward.progress.layouts import make_token_builder, window_sequences
    from spa_reward.records import read_records

    (full_rec,), (win_rec,) = read_records(tmp_path / "full"), read_records(tmp_path / "win")
    builder = make_token_builder(tokenizer, "qwen2")
    emitted = [(list(o.prompt_ids) + list(o.response_ids), len(o.prompt_ids)) for o in window]
    for rec, k in ((win_rec, None), (full_rec, 2)):
        assert [(r.input_ids, r.prompt_length) for r in window_sequences(rec, builder, k)] == emitted
    assert win_rec.input_ids == full_rec.input_ids == list(packed.prompt_ids) + list(packed.response_ids)
    assert win_rec.turn_spans == full_rec.turn_spans and win_rec.messages == full_rec.messages
    longest_window = max(len(o.prompt_ids) + len(o.response_ids) for o in window)
    assert len(window) < 3 or longest_window < len(packed.prompt_ids) + len(packed.response_ids)
    # benchmarks/bench_context.py counts exactly what the agent loop produces, in both layouts
    from benchmarks.bench_context import measure

    steps = [{"obs": obs, "info": info, "reply": reply, "action": a, "reset_info": sft_episode["reset_info"]}
             for (obs, info, reply), a in zip(sft_episode["steps"], sft_episode["actions"])]
    full, win = measure(tokenizer, env_name, steps, None), measure(tokenizer, env_name, steps, 2)
    assert full["trained"] == full["longest_row"] == len(packed.prompt_ids) + len(packed.response_ids)
    assert full["generated"] == win["generated"] == sum(packed.response_mask)
    assert win["trained"] == sum(len(o.prompt_ids) + len(o.response_ids) for o in window)
    assert win["longest_row"] == longest_window and win["rows"] == len(window)


def test_expert_history_option_is_checked(capsys):
    from envs.expert import main

    with pytest.raises(SystemExit):
        main(["virtualhome", "--output", "/tmp/never.parquet", "--history", "two"])
    assert "--history must be 'full' or an integer" in capsys.readouterr().err
