"""StepAgent (arXiv 2411.03817) settings: the ``algorithm.stepagent`` block, and the expert-prefix schedule.

StepAgent has no public code; everything here beyond the abstract (inspection = the agent acts at states the expert
visited and its action is compared with the expert's; reflection = a reward from that comparison, implicit or by
inverse RL) is our reading and is documented as such in the README.

Both floors read this one place: the agent loop (``recipe/spa``: expert-prefix episodes, the comparison) and the
reward side (``spa_reward``: the ``stepagent`` reward manager, the step-reward service).

Per episode the agent loop writes a ``stepagent`` dict (:data:`STEPAGENT_KEY`) into ``env_episode`` and as a
top-level output field (TransferQueue field ``stepagent``)::

    prefix_turns     int        k: expert actions replayed before the policy acted (their tokens carry mask 0)
    expert_turns     int        L: length of the task's expert demonstration (0: the task has none; then k = 0)
    compared         bool       this row holds the compared turn: the first policy turn, at the state after k
                                expert actions, where the expert's next action a*_k is known
    expert_action    str        a*_k ("" when not compared)
    agent_action     str        the action the policy took there ("" when none parsed)
    match            bool       the two are the same action (normalised text, or the same resulting state anchor)
    match_by         str        "action" | "anchor" | "" (no match)
    context_length   int        tokens before the compared turn in this row's input_ids (prompt + response prefix)
    expert_reply_ids list[int]  the expert's reply at that state as the tokens of an assistant turn (what the
                                policy would have generated), for the implicit / irl objectives
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Any, Optional

MODES = ("match", "implicit", "irl")
PREFIX_SCHEDULES = ("uniform", "reverse")
PRM_TURNS = ("compared", "all")
STEPAGENT_KEY = "stepagent"


@dataclass
class StepAgentSettings:
    """The ``algorithm.stepagent`` block (defaults in ``recipe/spa/config/spa_trainer.yaml``).

    Args:
        mode: ``match`` (r = +-match_reward on the compared turn), ``implicit`` (step-level DPO PRM, r_t = beta*q_t
            on every policy turn) or ``irl`` (discriminator D(s, a), r_t = clip(log D - log(1 - D))).
        expert_path: the expert demonstrations (``envs.expert`` output, ``$DATA_DIR/<env>_sft.parquet`` from
            ``examples/prepare_data.sh``): task id -> expert actions.
        prefix: how k (expert actions replayed) is drawn per episode: ``uniform`` over 0..L-1 or ``reverse``
            (a curriculum from L-1 at step 0 down to 0 at ``reverse_steps``).
        reverse_steps: training steps over which the reverse curriculum moves k to 0.
        seed: seeds the uniform draw.
        match_reward: the +-reward of the compared turn in ``match`` mode.
        grounding_beta: beta * g_t added on every policy turn (all modes).
        irl_clip: |r_t| bound of the ``irl`` reward.
        prm_turns: which policy turns get the ``implicit`` / ``irl`` model's reward: ``compared`` (the compared
            turn only: the model is trained at compared states, so that is where its reward is in distribution) or
            ``all`` (every policy turn, as r_t for every t; its later turns act on states the model never trained
            on, which makes the discriminator's reward noise in the learning benchmark).
    """

    mode: str = "match"
    expert_path: Optional[str] = None
    prefix: str = "uniform"
    reverse_steps: int = 100
    seed: int = 0
    match_reward: float = 1.0
    grounding_beta: float = 0.0
    irl_clip: float = 5.0
    prm_turns: str = "compared"

    @classmethod
    def from_config(cls, cfg: Any) -> StepAgentSettings:
        """Read ``algorithm.stepagent`` of a trainer config (missing keys keep their defaults; other keys of the
        block, the step-reward model's, are read by the service plan)."""
        from spa_reward.config_check import block_values

        s = cls(**block_values(cfg, "algorithm.stepagent", cls))
        if s.expert_path is not None:
            s.expert_path = os.path.expanduser(str(s.expert_path))
        return s

    def problems(self) -> list[str]:
        """Problems naming the key to set (for ``spa_reward.config_check``)."""
        p = []
        if self.mode not in MODES:
            p.append(f"algorithm.stepagent.mode={self.mode!r} is not one of {MODES}")
        if self.prm_turns not in PRM_TURNS:
            p.append(f"algorithm.stepagent.prm_turns={self.prm_turns!r} is not one of {PRM_TURNS}")
        if self.prefix not in PREFIX_SCHEDULES:
            p.append(f"algorithm.stepagent.prefix={self.prefix!r} is not one of {PREFIX_SCHEDULES}")
        if isinstance(self.reverse_steps, bool) or not isinstance(self.reverse_steps, int) or self.reverse_steps < 1:
            p.append(f"algorithm.stepagent.reverse_steps must be an integer >= 1, got {self.reverse_steps!r}")
        for name in ("match_reward", "grounding_beta", "irl_clip"):
            v = getattr(self, name)
            try:
                v = float(v)
            except (TypeError, ValueError):
                p.append(f"algorithm.stepagent.{name}={v!r} is not a number")
                continue
            if not math.isfinite(v) or v < 0 or (name == "irl_clip" and v == 0):
                p.append(f"algorithm.stepagent.{name}={v} must be finite and " + ("> 0" if name == "irl_clip" else ">= 0"))
        if not self.expert_path:
            p.append("algorithm.stepagent.expert_path is not set: point it at the expert demonstrations "
                     "($DATA_DIR/<env>_sft.parquet, written by examples/prepare_data.sh / python -m envs.expert)")
        return p


def prefix_length(schedule: str, expert_turns: int, global_step: int, reverse_steps: int = 100, seed: int = 0,
                  key: str = "") -> int:
    """k, the number of expert actions replayed before the policy acts, in ``0 .. expert_turns - 1`` (0 when the
    task has no demonstration).

    * ``uniform``: a draw from ``0 .. L-1`` that depends only on ``(seed, key, global_step)``: every rollout of one
      task in one step (a GRPO group, whose ``key`` is the task id) starts from the same expert state, so a group
      compares like with like, and a resumed run draws the same k.
    * ``reverse``: ``floor((L - 1) * (1 - min(1, step / reverse_steps)))``: L-1 at step 0 (act at the expert's last
      state), falling linearly to 0 at ``reverse_steps`` and after (the whole task).
    """
    L = int(expert_turns)
    if L <= 1:
        return 0
    step = max(0, int(global_step))
    if schedule == "reverse":
        frac = 1.0 - min(1.0, step / float(reverse_steps))
        return int(math.floor((L - 1) * frac + 1e-9))
    if schedule == "uniform":
        digest = hashlib.sha256(f"{seed}|{key}|{step}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % L
    raise ValueError(f"unknown expert-prefix schedule {schedule!r} (known: {PREFIX_SCHEDULES})")


__all__ = ["MODES", "PREFIX_SCHEDULES", "PRM_TURNS", "STEPAGENT_KEY", "StepAgentSettings", "prefix_length"]
