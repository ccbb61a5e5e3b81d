"""Dense per-turn rewards reach the advantage estimators unchanged, through verl's own advantage step.

A group of toy episodes is scored through verl's streaming reward path and the v1 TransferQueue postprocess
(``tests.recipe.helpers.score_episodes``); the captured fields are padded into a batch the way the v1 trainer
does (``to_padded_tensor``) and given to ``verl.trainer.ppo.ray_trainer.compute_advantage`` with ``grpo``,
``gae`` and the project's ``spa`` / ``gigpo`` estimators.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.actions import format_action
from recipe.spa.agent_loop import EPISODE_KEY
from spa_reward import turns
from tests.recipe.helpers import row, score_episodes, trainer_config


def act(actions):
    return lambda turn, prompt: (format_action(actions[turn], "t", "react") if actions[turn] else "garbage")


GROUP = [
    (act(["step forward", "step forward"]), "t1"),  # wins in 2
    (act(["wait", None, "step forward", "step forward"]), "t1"),  # wins in 4, one invalid turn
    (act(["wait"] * 4), "t1"),  # hits max_steps (4): fails
]
C = [0.3, -0.1, 0.2, 0.4]


class StubScorer:
    def score(self, batch):
        return [C[: len(item["turn_ends"])] for item in batch]


def pad(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=0)


@pytest.fixture(params=["outcome", "spa"])
def scored(request, tokenizer, toy_env, monkeypatch):
    overrides = [f"algorithm.reward={request.param}", "algorithm.invalid_penalty=0.1"]
    if request.param == "spa":  # the paper's grounding bonus 0.5 (the hand-computed values below)
        overrides += ["algorithm.spa.estimator_path=stub", "algorithm.spa.grounding=bonus", "algorithm.spa.beta=0.5"]
    env = {"name": "toy", "max_steps": 4, "reward_scale": 10.0, "pool": {"backend": "thread", "num_workers": 2}}
    episodes = [(policy, row(task, uid="g", session_id=i)) for i, (policy, task) in enumerate(GROUP)]
    results = score_episodes(tokenizer, trainer_config(*overrides), episodes, monkeypatch,
                             scorer=StubScorer() if request.param == "spa" else None, env=env)
    return request.param, results


def batch_of(results):
    from verl import DataProto

    rm = pad([f["rm_scores"] for _, f, _ in results])
    mask = pad([f["response_mask"] for _, f, _ in results])
    data = DataProto.from_dict(tensors={"token_level_rewards": rm, "response_mask": mask},
                               non_tensors={"uid": np.array([f["uid"] for _, f, _ in results], dtype=object)})
    return data


def turn_rewards_of(out) -> list[float]:
    return list(out.extra_fields["reward_extra_info"]["spa_turn_rewards"])


def test_rewards_reach_estimators_unchanged(scored):
    from verl.trainer.ppo.ray_trainer import compute_advantage

    reward, results = scored
    data = batch_of(results)
    rm, mask = data.batch["token_level_rewards"], data.batch["response_mask"]
    # the project's turn helpers recover exactly the per-turn rewards the manager computed
    sums = turns.turn_sums(rm, mask)
    for i, (out, fields, _) in enumerate(results):
        expected = turn_rewards_of(out)
        assert sums[i, : len(expected)].tolist() == pytest.approx(expected)
        assert int(turns.num_turns(mask)[i]) == len(expected) == len(fields["turn_anchors"])
        assert float(rm[i].sum()) == pytest.approx(out.reward_score)
    if reward == "outcome":  # hand-computed: R=10 on the last turn, -0.1 per non-executed turn
        assert turn_rewards_of(results[0][0]) == pytest.approx([0.0, 10.0])
        assert turn_rewards_of(results[1][0]) == pytest.approx([0.0, -0.1, 0.0, 10.0])  # wait is executable
        assert turn_rewards_of(results[2][0]) == pytest.approx([0.0, 0.0, 0.0, 0.0])  # R = 0
    else:  # r_t = c_t + 0.5 g_t - 0.1 (1 - g_t)
        assert turn_rewards_of(results[1][0]) == pytest.approx([0.8, -0.2, 0.7, 0.9])

    cfg = trainer_config(f"algorithm.reward={reward}", "algorithm.gamma=1.0", "algorithm.lam=1.0").algorithm

    # grpo: one score per trajectory = sum of its token rewards, normalised in the uid group
    out = compute_advantage(data.select(deepcopy=True), adv_estimator="grpo", num_repeat=3, config=cfg)
    scores = rm.sum(-1)
    norm = (scores - scores.mean()) / (scores.std() + 1e-6)
    for i in range(len(results)):
        tok = mask[i].bool()
        assert torch.allclose(out.batch["advantages"][i][tok], norm[i].expand(int(tok.sum())), atol=1e-5)

    # gae with zero values and gamma = lam = 1: the return at the first token is the sum of all turn rewards
    d = data.select(deepcopy=True)
    d.batch["values"] = torch.zeros_like(rm)
    out = compute_advantage(d, adv_estimator="gae", gamma=1.0, lam=1.0, config=cfg)
    for i, (o, _, _) in enumerate(results):
        assert float(out.batch["returns"][i, 0]) == pytest.approx(sum(turn_rewards_of(o)), abs=1e-5)

    # the project's turn-level estimators, with the extra inputs the spa trainer mode supplies
    from spa_reward.advantage import estimator_inputs

    anchors = np.array([f["turn_anchors"] for _, f, _ in results] + [None], dtype=object)[:-1]
    episode_rewards = np.array([f["episode_reward"] for _, f, _ in results])
    for name in ("spa", "gigpo"):
        with estimator_inputs(turn_anchors=anchors, episode_rewards=episode_rewards):
            out = compute_advantage(data.select(deepcopy=True), adv_estimator=name, num_repeat=3, config=cfg)
        adv = out.batch["advantages"]
        assert torch.isfinite(adv).all() and adv.shape == rm.shape
        assert (adv[mask == 0] == 0).all()  # observation and padding tokens get no advantage
    assert episode_rewards.tolist() == [10.0, 10.0, 0.0]
    assert results[2][0].extra_fields[EPISODE_KEY]["truncation_reason"] == "max_steps"
