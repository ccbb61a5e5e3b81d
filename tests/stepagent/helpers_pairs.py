"""Synthetic StepAgent pairs for the implicit / irl tests: states of random tokens, the expert's action a fixed
function of the state, the agent's a random action from the same tokens (nothing downloaded)."""

from __future__ import annotations

import random

VOCAB = 24
STATE_TOKENS = range(1, 10)
ACTION_TOKENS = range(10, 20)


def expert_action(state: list[int]) -> list[int]:
    return [10 + state[-1] % 5, 15 + state[-2] % 5]


def synthetic_pairs(n: int, seed: int) -> list[dict]:
    """``n`` pair items (``spa_reward.steprm.service`` pair format); the agent's action never equals the expert's."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        s = [rng.choice(STATE_TOKENS) for _ in range(rng.randint(4, 8))]
        a_exp = expert_action(s)
        a_agent = [rng.choice(ACTION_TOKENS) for _ in range(2)]
        if a_agent != a_exp:
            out.append({"input_ids": s, "expert_ids": a_exp, "agent_ids": a_agent, "prompt_length": 2})
    return out


def scoring_items(pairs: list[dict]) -> tuple[list[dict], list[int]]:
    """One-turn scoring items ``s + a`` for every pair's two actions, and their labels (1 expert, 0 agent)."""
    items, labels = [], []
    for p in pairs:
        for a, y in ((p["expert_ids"], 1), (p["agent_ids"], 0)):
            s = p["input_ids"]
            items.append({"input_ids": s + a, "prompt_length": 2, "turn_spans": [[len(s), len(s) + len(a)]]})
            labels.append(y)
    return items, labels


def auc(scores: list[float], labels: list[int]) -> float:
    """Probability that a random positive scores above a random negative (ties count 1/2)."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))
