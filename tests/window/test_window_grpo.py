"""grpo in the window layout: verl's multi-trajectory GRPO reads only a session's final row, so every reward that
puts something on an earlier row is refused by the config check, naming the combinations that work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recipe.spa.settings import env_block_problems
from tests.recipe.helpers import trainer_config


def _multi_trajectory_grpo(rewards: list[list[float]]) -> np.ndarray:
    """verl's real ``compute_advantage_for_multi_trajectories`` on 2 sessions x 2 step rows of one uid group; each
    row's reward sits on its last reply token. Returns each row's advantage."""
    from verl import DataProto
    from verl.trainer.ppo.core_algos import AdvantageEstimator
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    keys = ["g_0_0", "g_0_1", "g_1_0", "g_1_1"]  # {uid}_{session_id}_{step}
    mask = torch.tensor([[1, 1, 0]] * 4, dtype=torch.float32)
    scores = torch.zeros(4, 3)
    scores[:, 1] = torch.tensor([x for session in rewards for x in session])
    data = DataProto.from_dict(tensors={"token_level_rewards": scores, "response_mask": mask},
                               non_tensors={"uid": np.array(["g"] * 4, dtype=object)})
    out = compute_advantage_for_multi_trajectories(data, batch_keys=keys, adv_estimator=AdvantageEstimator.GRPO,
                                                   num_repeat=2)
    return out.batch["advantages"][:, 0].numpy()


def test_verl_multi_trajectory_grpo_never_reads_a_non_final_row():
    """The seam: a step reward on a session's first row (StepAgent's match reward, SPA's c_0, iStar's q_0) leaves
    every advantage unchanged; the same reward on the final row changes them."""
    base = _multi_trajectory_grpo([[0.0, 1.0], [0.0, 0.0]])
    assert base[0] == base[1] > 0 > base[2] == base[3]
    on_first_row = _multi_trajectory_grpo([[0.0, 1.0], [5.0, 0.0]])  # +5 on session 1's step-0 row
    np.testing.assert_allclose(on_first_row, base)
    on_final_row = _multi_trajectory_grpo([[0.0, 1.0], [0.0, 5.0]])
    assert on_final_row[2] > 0


WINDOW_GRPO = ("env.history=window", "algorithm.adv_estimator=grpo")


@pytest.mark.parametrize("extra, named", [
    (("algorithm.reward=spa", "algorithm.spa.estimator_path=/est"), "algorithm.reward=spa (c_t / g_t of every step)"),
    (("algorithm.reward=istar",), "algorithm.reward=istar (beta q_t of every step)"),
    (("algorithm.reward=stepagent",), "algorithm.reward=stepagent (the comparison reward of the step-0 row)"),
    (("algorithm.reward=outcome", "algorithm.invalid_penalty=0.1"), "algorithm.invalid_penalty=0.1"),
    (("algorithm.reward=outcome", "algorithm.use_kl_in_reward=true"), "algorithm.use_kl_in_reward=true"),
])
def test_window_grpo_refuses_rewards_on_non_final_rows(extra, named):
    problems = env_block_problems(trainer_config(*WINDOW_GRPO, *extra))
    assert len(problems) == 1, problems
    assert named in problems[0] and "final row only" in problems[0]
    assert "algorithm.adv_estimator=spa (critic-free) or gigpo" in problems[0]  # what works instead
    assert "env.history=full with grpo" in problems[0]


def test_window_grpo_accepts_the_outcome_reward_and_the_other_estimators_take_step_rewards():
    assert env_block_problems(trainer_config(*WINDOW_GRPO, "algorithm.reward=outcome")) == []
    for estimator in ("spa", "gigpo"):
        for reward in ("istar", "stepagent"):
            cfg = trainer_config("env.history=window", f"algorithm.adv_estimator={estimator}",
                                 f"algorithm.reward={reward}")
            assert env_block_problems(cfg) == [], (estimator, reward)
    assert env_block_problems(trainer_config("algorithm.adv_estimator=grpo", "algorithm.reward=istar")) == []
