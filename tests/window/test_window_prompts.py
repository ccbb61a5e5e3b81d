"""envs.prompts.build_window_messages: exactly the last k steps, the task, the current observation."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.prompts import NO_ACTION, build_messages, build_window_messages, format_window_history

STEP_RE = re.compile(r"^\[Step (\d+)\] (Observation|Action): (.*)$", re.M)


def history_of(n: int) -> list[tuple[str, str]]:
    return [(f"obs-{i} line one\nline two", f"act-{i}" if i % 3 else "") for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 12), k=st.integers(0, 6), env=st.sampled_from(["alfworld", "webshop", "virtualhome"]),
       system=st.booleans())
def test_exactly_the_last_k_steps(n, k, env, system):
    history = history_of(n)
    msgs = build_window_messages(env, "CURRENT-OBS", {"admissible_actions": ["look", "help"]}, history, k,
                                 {"goal": "GOAL-TEXT"}, system_prompt=system)
    assert [m["role"] for m in msgs] == (["system", "user"] if system else ["user"])
    user = msgs[-1]["content"]
    found = STEP_RE.findall(user)
    shown = history[max(0, n - k):] if k else []
    expected = []
    for j, (obs, act) in enumerate(shown):
        number = n - len(shown) + j + 1
        expected += [(str(number), "Observation", " ".join(obs.split())), (str(number), "Action", act or NO_ACTION)]
    assert found == expected
    for i, (obs, act) in enumerate(history):  # older steps are absent entirely
        if (obs, act) not in shown:
            assert f"obs-{i} " not in user
    assert user.startswith("Task: GOAL-TEXT") if system else "\n\nTask: GOAL-TEXT\n\n" in user
    # the current observation and its admissible actions close the prompt (ALFWorld hides "help")
    assert user.rstrip().endswith("- look" if env == "alfworld" else "- help")
    assert user.count("CURRENT-OBS") == 1 and user.index("CURRENT-OBS") > max([user.rfind("[Step")] + [0])
    if shown:
        assert f"Your last {len(shown)} step" in user and f"(of {n} so far)" in user
        assert f"Current observation (step {n + 1}):" in user


def test_first_step_equals_full_history_prompt():
    for env in ("alfworld", "webshop", "virtualhome"):
        for style in ("react", "tag"):
            info = {"goal": "put a mug in the sink", "admissible_actions": ["go to sink 1"]}
            for obs in ("You are in a room.", "You are in a room. Your task is to: put a mug in the sink"):
                assert build_window_messages(env, obs, info, [], 2, style=style) == \
                    build_messages(env, obs, info, style)


def test_goal_already_in_observation_is_not_repeated():
    msgs = build_window_messages("webshop", "Instruction: [SEP] buy a red mug [SEP] Search", {}, history_of(3), 2,
                                 {"goal": "buy a red mug"})
    assert "Task:" not in msgs[-1]["content"]


def test_history_block_and_bad_length():
    assert format_window_history([]) == ""
    block = format_window_history([("a\nb", "x")], first_step=4, total_steps=9)
    assert block == "Your last 1 step (of 9 so far):\n[Step 4] Observation: a b\n[Step 4] Action: x"
    with pytest.raises(ValueError, match="history_length"):
        build_window_messages("alfworld", "o", {}, [], -1)
