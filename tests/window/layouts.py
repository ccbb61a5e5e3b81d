"""The same episodes in both layouts, for layout-equivalence checks (estimators, reward managers, records).

``play_both(tokenizer, episodes, history_length=2)`` plays every ``(policy, run kwargs)`` twice with the real
``env_agent`` loop on the toy env (thread pool, fake LLM server): once with ``env.history=full`` (one packed
output) and once with ``env.history=window`` (one output per step). The toy env is deterministic and the fake
server's policy sees the step index, so both plays take the same actions and reach the same states.

``estimator_rows(pairs, rewards_of)`` turns them into what an advantage estimator receives in each layout, as
verl's v1 trainer would hand it over (rows in TransferQueue key order ``{uid}_{session_id}_{index}``):
``token_level_rewards`` (B, L), ``response_mask`` (B, L), ``index`` (uid per row), ``turn_anchors`` (list per
row), ``episode_rewards`` (B,), ``keys`` (the TransferQueue keys), plus ``turn_rows``: for every turn of every
episode, (row, position of its last token) in this layout, so per-turn advantages can be compared across layouts.
"""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from recipe.spa.agent_loop import EPISODE_KEY
from tests.recipe.helpers import FakeServer, agent_config, make_agent_loop


def toy_env_cfg(**kw) -> dict:
    env = {"name": "toy", "max_steps": 10, "reward_scale": 10.0, "pool": {"backend": "thread", "num_workers": 2}}
    env.update(kw)
    return env


def play(tokenizer, env: dict, policy, kwargs: dict, response_length: int = 4096, prompt_length: int = 8192):
    async def go():
        loop = make_agent_loop(agent_config(env, response_length=response_length, prompt_length=prompt_length),
                               FakeServer(tokenizer, policy), tokenizer)
        return await loop.run({"temperature": 1.0, "logprobs": True}, **kwargs)

    return asyncio.run(go())


def play_both(tokenizer, episodes, history_length: int = 2, **env_kw) -> list[dict]:
    """[{"packed": output, "window": [outputs], "uid", "session_id"}, ...] for ``episodes`` = [(policy, run
    kwargs), ...]."""
    out = []
    for policy, kwargs in episodes:
        packed = play(tokenizer, toy_env_cfg(**env_kw), policy, kwargs)
        window = play(tokenizer, toy_env_cfg(history="window", history_length=history_length, **env_kw), policy,
                      kwargs)
        out.append({"packed": packed, "window": window, "uid": kwargs["uid"], "session_id": kwargs["session_id"]})
    return out


def episodes_for(groups: dict[str, list]) -> list:
    """[(policy, run kwargs)] for ``{task_id: [policy per session]}``: one uid per task, sessions 0..n-1."""
    from tests.recipe.helpers import row

    return [(policy, row(task, uid=f"uid{g}", session_id=s))
            for g, (task, policies) in enumerate(groups.items()) for s, policy in enumerate(policies)]


def estimator_rows(pairs: list[dict], rewards_of, layout: str) -> dict:
    """Estimator inputs of ``layout`` ("full" | "window"); ``rewards_of(episode_index) -> list of turn rewards``
    puts each turn's reward on its last token in both layouts."""
    rows, keys, index, anchors, ep_rewards, turn_rows = [], [], [], [], [], []
    for e, pair in enumerate(pairs):
        uid, session, packed = pair["uid"], pair["session_id"], pair["packed"]
        rewards = rewards_of(e)
        outputs = [packed] if layout == "full" else pair["window"]
        turns = []
        for t, out in enumerate(outputs):
            ends = out.extra_fields[EPISODE_KEY]["turn_ends"]
            values = rewards if layout == "full" else rewards[t:t + 1]
            r = torch.zeros(len(out.response_ids))
            for value, end in zip(values, ends):
                r[end] = value
            rows.append((r, torch.tensor(out.response_mask)))
            keys.append(f"{uid}_{session}_{t}")
            index.append(uid)
            anchors.append(list(out.turn_anchors))
            ep_rewards.append(out.episode_reward)
            turns += [(len(rows) - 1, end) for end in ends]
        turn_rows.append(turns)
    L = max(len(r) for r, _ in rows)
    rewards_t = torch.zeros(len(rows), L)
    mask_t = torch.zeros(len(rows), L, dtype=torch.long)
    for b, (r, m) in enumerate(rows):
        rewards_t[b, : len(r)] = r
        mask_t[b, : len(m)] = m
    return {"token_level_rewards": rewards_t, "response_mask": mask_t, "index": np.array(index, dtype=object),
            "turn_anchors": anchors, "episode_rewards": np.asarray(ep_rewards, dtype=np.float64), "keys": keys,
            "turn_rows": turn_rows}
