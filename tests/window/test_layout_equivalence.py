"""The same episodes in both layouts (tests/window/layouts.py): the fixture itself, and the estimator
equivalence the issue asks for (gigpo/spa: equal per-turn advantages whether an episode arrives packed or as
window rows), with the session layout the ``spa`` trainer mode reads from TransferQueue keys."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from envs.actions import format_action
from spa_reward.advantage import compute_gigpo_advantage, compute_spa_advantage, estimator_inputs
from spa_reward.trainer import session_layout
from tests.foundation.test_advantage import cfg
from tests.window.layouts import episodes_for, estimator_rows, play_both


def scripted(*acts):
    return lambda t, p: "junk" if acts[t] == "junk" else format_action(acts[t], "x", "react")


GROUPS = {
    "t1": [scripted("step forward", "step forward"), scripted("wait", "step forward", "step forward"),
           scripted("junk", "wait", "step forward", "step forward")],
    "t2": [scripted("step forward", "wait", "step forward", "step forward"),
           scripted("wait", "wait", "wait", "wait", "wait"), scripted("step forward", "step forward", "step forward")],
}


@pytest.fixture
def pairs(tokenizer, toy_env):
    return play_both(tokenizer, episodes_for(GROUPS), history_length=2, max_steps=5)


def turn_rewards_of(pairs, seed=0):
    rng = random.Random(seed)
    table = [[round(rng.uniform(-1, 1), 3) for _ in range(len(p["window"]))] for p in pairs]
    return lambda e: table[e]


def per_turn(adv: torch.Tensor, turn_rows) -> list[list[float]]:
    return [[float(adv[b, pos]) for b, pos in turns] for turns in turn_rows]


def test_fixture_layouts_agree(pairs):
    rewards = turn_rewards_of(pairs)
    full, window = estimator_rows(pairs, rewards, "full"), estimator_rows(pairs, rewards, "window")
    assert len(full["keys"]) == len(pairs) and len(window["keys"]) == sum(len(p["window"]) for p in pairs)
    assert full["keys"][0] == "uid0_0_0" and window["keys"][:2] == ["uid0_0_0", "uid0_0_1"]
    for e, pair in enumerate(pairs):
        n = len(pair["window"])
        assert len(full["turn_rows"][e]) == len(window["turn_rows"][e]) == n == pair["packed"].episode_info[
            "num_turns"]
        assert per_turn(full["token_level_rewards"], full["turn_rows"])[e] == pytest.approx(rewards(e))
        assert per_turn(window["token_level_rewards"], window["turn_rows"])[e] == pytest.approx(rewards(e))
        anchors = [a for b, _ in window["turn_rows"][e] for a in window["turn_anchors"][b]]
        assert anchors == full["turn_anchors"][full["turn_rows"][e][0][0]]
    assert float(full["token_level_rewards"].sum()) == pytest.approx(float(window["token_level_rewards"].sum()))
    # window rows are replies only (mask 1 on every token); the packed rows also hold the observations (mask 0)
    assert int(window["response_mask"].sum()) == sum(len(o.response_ids) for p in pairs for o in p["window"])
    assert int(full["response_mask"].sum()) == int(window["response_mask"].sum())


def _advantages(layout: dict, estimator: str) -> torch.Tensor:
    sessions, step_index, _ = session_layout(layout["keys"])  # what the spa trainer mode reads from TransferQueue
    inputs = {"turn_anchors": np.array(layout["turn_anchors"] + [None], dtype=object)[:-1],
              "episode_rewards": layout["episode_rewards"], "sessions": sessions, "step_index": step_index}
    fn = compute_gigpo_advantage if estimator == "gigpo" else compute_spa_advantage
    with estimator_inputs(**inputs):
        adv, _ = fn(layout["token_level_rewards"], layout["response_mask"], layout["index"], cfg(gamma=0.9))
    return adv


@pytest.mark.parametrize("estimator", ["gigpo", "spa"])
def test_same_per_turn_advantages_in_both_layouts(pairs, estimator):
    rewards = turn_rewards_of(pairs, seed=1)
    full, window = estimator_rows(pairs, rewards, "full"), estimator_rows(pairs, rewards, "window")
    a_full = per_turn(_advantages(full, estimator), full["turn_rows"])
    a_window = per_turn(_advantages(window, estimator), window["turn_rows"])
    for x, y in zip(a_full, a_window):
        assert x == pytest.approx(y, abs=1e-5)
