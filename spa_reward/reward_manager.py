"""Reward-loop managers ``outcome``, ``spa``, ``istar`` and ``stepagent`` (verl 0.9 ``verl.experimental.reward_loop`` registry).

Selected by ``reward.reward_manager.name`` (the recipe sets it to ``${algorithm.reward}``). Both read the
per-turn bookkeeping that the ``env_agent`` agent loop stores in ``extra_fields["env_episode"]`` (arriving here
as ``non_tensor_batch["tool_extra_fields"]``; positions in response coordinates) and return

    {"reward_score": sum_t r_t, "reward_extra_info": {"spa_turn_rewards": [r_0, ..., r_{T-1}], <scalars>}}

The agent loop's output pops ``spa_turn_rewards`` and writes each r_t on its turn's last token (dense
``rm_scores``; v1 trainer only). Everything else in ``reward_extra_info`` is a scalar and every sample has the
same keys (both managers emit the same set):

    acc                            1.0 if the episode was won (verl's core validation metric -> success rate)
    spa/won, spa/task_score, spa/num_turns, spa/truncated, spa/parse_errors
    spa/env_reward                 R, the scaled env reward of the episode
    spa/executable_rate            grounding: executed actions / turns
    spa/mean_contribution          mean_t c_t   (0 for ``outcome``)
    spa/sum_contribution           sum_t c_t    (0 for ``outcome``)
    spa/nonfinite_contributions    c_t that were NaN/inf and replaced by 0 (0 for ``outcome``)
    spa/mean_fused_reward          mean_t r_t
    spa/uses_estimator             1.0 for ``spa``, 0.0 for ``outcome``
    spa/task_type                  str (validation metrics skip strings; kept for the eval table)

corr(sum_t c_t, R) is a batch statistic and cannot be computed per sample: ``spa/sum_contribution`` and
``spa/env_reward`` are emitted per sample (and copied into ``episode_info``) so the ``spa`` trainer mode
computes the correlation on the batch.

Per-turn rewards:

* ``outcome``: R on the last turn, minus ``invalid_penalty`` on every turn whose action was not executed.
* ``spa``: r_t = alpha*c_t + G_t - invalid_penalty*(1-g_t), + outcome_coef*R on the last turn, optionally
  clipped (``spa_reward.fusion.fuse_turn_rewards``); G_t = beta*g_t (``grounding=bonus``, the paper's) or
  -beta*(1-g_t) (``grounding=penalty``). c_t comes from the progress-estimator Ray actor
  (``spa_reward.progress.serve.get_progress_scorer``, one named actor shared by every reward worker), scored on
  input_ids = prompt + response with turn ends converted to input_ids coordinates.
* ``istar``: r_t = grounding_beta*g_t - invalid_penalty*(1-g_t) here; the implicit step reward beta*q_t is added at
  each turn's last token by the ``spa`` trainer mode (it needs the rollout's old log-probs), see
  ``spa_reward.steprm.trainer_hooks``.
* ``stepagent`` (StepAgent, arXiv 2411.03817, our reading; ``algorithm.stepagent``): r_t = grounding_beta*g_t -
  invalid_penalty*(1-g_t) on every policy turn, + R on the last turn; in mode ``match`` also +match_reward on the
  compared turn (the first policy turn, after the replayed expert prefix) when the agent's action matched the
  expert's, -match_reward when not. Modes ``implicit`` / ``irl`` get their step reward (beta*q_t / clip(logit_t))
  from the trainer hooks, like ``istar``. Extra scalars ``stepagent/{compared,match,prefix_turns}``.

Settings: ``reward.reward_kwargs`` (the recipe yaml fills it from ``algorithm.spa`` and ``algorithm.invalid_penalty``
by interpolation, so set those): alpha, beta, grounding, outcome_coef, clip, invalid_penalty, estimator_path,
scorer_name, scorer_num_gpus. A missing key takes the yaml's value (``spa_reward.fusion.SPA_DEFAULTS``: grounding
penalty, beta 0.1).

The episode reward R is read from ``env_episode["episode_reward"]``, which the env_agent loop writes on every row
(0.0 for an episode the env failed, marked ``env_error`` / ``episode_info["env_failed"]`` and masked out by the
trainer); a row without it raises ``ValueError`` (:func:`episode_reward`) instead of scoring R as 0.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

from verl import DataProto
from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from spa_reward.fusion import (DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_GROUNDING, FusionStats, fuse_turn_rewards,
                               outcome_turn_rewards, stepagent_turn_rewards)
from spa_reward.layout import is_window_session, score_window_session
from spa_reward.metrics import is_env_failure

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))

TURN_REWARDS_KEY = "spa_turn_rewards"  # reward_extra_info key: per-turn rewards, popped by the agent loop output
REWARD_SECONDS_KEY = "spa/reward_seconds"  # reward_extra_info key: this episode's reward computation, wall seconds
EPISODE_KEY = "env_episode"  # extra_fields key of the env_agent loop's per-turn bookkeeping
ESTIMATOR_HELP = (
    "set algorithm.spa.estimator_path=<dir of a trained progress estimator>; train one with "
    "examples/train_estimator.sh (python -m spa_reward.progress.train ...) on rollouts collected by "
    "examples/collect.sh"
)


@dataclass
class RewardSettings:
    """``reward.reward_kwargs`` as the managers use them; a missing key takes the yaml's default
    (``spa_reward.fusion.SPA_DEFAULTS``)."""

    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA
    outcome_coef: float = 0.0
    clip: Optional[float] = None
    invalid_penalty: float = 0.0
    estimator_path: Optional[str] = None
    scorer_name: str = "spa_progress_scorer"
    scorer_num_gpus: float = 1.0
    grounding_beta: float = 0.0  # istar: beta_g * g_t beside the implicit step reward
    grounding: str = DEFAULT_GROUNDING  # spa: how beta and g_t enter (spa_reward.fusion.GROUNDING_FORMS)

    @classmethod
    def from_config(cls, config: Any) -> RewardSettings:
        from spa_reward.config_check import block_values

        s = cls(**block_values(config, "reward.reward_kwargs", cls))
        for name in ("alpha", "beta", "outcome_coef", "invalid_penalty", "scorer_num_gpus", "grounding_beta"):
            setattr(s, name, float(getattr(s, name)))
        if s.clip is not None:
            s.clip = float(s.clip)
        if s.estimator_path is not None:
            s.estimator_path = os.path.expanduser(str(s.estimator_path))
        return s


def episode_fields(data: DataProto) -> tuple[Any, dict]:
    """(last row of ``data``, its ``env_episode`` bookkeeping); a clear error when the agent loop was not
    ``env_agent``."""
    item = data[len(data) - 1]
    extra = item.non_tensor_batch.get("tool_extra_fields", None)
    episode = extra.get(EPISODE_KEY) if isinstance(extra, dict) else None
    if not isinstance(episode, dict) or "turn_ends" not in episode:
        agent = item.non_tensor_batch.get("agent_name", "<default agent loop>")
        raise ValueError(
            f"reward managers 'outcome'/'spa' need the per-turn bookkeeping of the env_agent agent loop "
            f"(tool_extra_fields['{EPISODE_KEY}']), but this sample came from agent loop {agent!r}. Build the "
            "dataset with `python -m envs.prepare` (column agent_name=env_agent) or set "
            "actor_rollout_ref.rollout.agent.default_agent_loop=env_agent."
        )
    n = len(episode["turn_ends"])
    if len(episode.get("executable", [])) != n:
        raise ValueError(f"env_episode has {n} turn ends but {len(episode.get('executable', []))} executable flags")
    response_len = int(item.batch["responses"].shape[-1])
    if n and not 0 <= int(episode["turn_ends"][-1]) < response_len:
        raise ValueError(f"turn end {episode['turn_ends'][-1]} outside the response ({response_len} tokens)")
    return item, episode


R_KEY = "episode_reward"  # env_episode key of the episode reward R


def episode_reward(episode: dict, row: Any = None) -> float:
    """R of a row's ``env_episode``. The env_agent loop writes it on every row (packed and window), 0.0 for an
    episode the env failed (those rows carry ``env_error`` and the trainer masks them out), so a missing R is a
    bug upstream: ``ValueError`` naming the row, never a silent R = 0 (for the prefix objective that would turn a
    win into V_T = 0)."""
    value = episode.get(R_KEY) if isinstance(episode, dict) else None
    if value is None:
        where = f"row {row}" if row is not None else "a row"
        task = ", ".join(f"{k}={episode[k]!r}" for k in ("env_name", "task_id", "step_index")
                         if isinstance(episode, dict) and episode.get(k) is not None)
        raise ValueError(
            f"{where}{f' ({task})' if task else ''}: tool_extra_fields['{EPISODE_KEY}'] has no '{R_KEY}' (the "
            f"episode reward R; keys: {sorted(episode) if isinstance(episode, dict) else type(episode).__name__}). "
            f"The env_agent agent loop (recipe.spa.agent_loop / recipe.spa.window) writes it on every row, 0.0 for "
            "an episode the env failed (marked env_error, masked out by the trainer); a custom agent loop must write "
            f"env_episode['{R_KEY}'] = R (env.reward_scale * the env's final reward) too. Not scored as R = 0, "
            "which would be a silent wrong reward."
        )
    return float(value)


def check_episode_rewards(data: DataProto) -> None:
    """Every row of ``data`` (one session) that carries an ``env_episode`` has its R (:func:`episode_reward`)."""
    for i in range(len(data)):
        episode = _row_extra(data, i)
        if episode is not None and episode.get(R_KEY) is None:
            uid = data[i].non_tensor_batch.get("uid", None)
            episode_reward(episode, row=f"{i} of this session" + (f" (uid {uid})" if uid is not None else ""))


def _extra_info(episode: dict, turn_rewards: list[float], stats: FusionStats, uses_estimator: bool) -> dict:
    n = len(turn_rewards)
    return {
        TURN_REWARDS_KEY: [float(r) for r in turn_rewards],
        "acc": float(bool(episode.get("won", False))),
        "spa/won": float(bool(episode.get("won", False))),
        "spa/task_score": float(episode.get("score", 0.0)),
        "spa/num_turns": float(n),
        "spa/truncated": float(bool(episode.get("truncated", False))),
        "spa/env_failed": float(is_env_failure(episode)),  # left out of eval tables and comparisons, counted
        "spa/parse_errors": float(episode.get("parse_errors", 0) or 0),
        "spa/env_reward": episode_reward(episode),
        "spa/executable_rate": (sum(bool(e) for e in episode["executable"]) / n) if n else 0.0,
        "spa/mean_contribution": float(stats.mean_contribution),
        "spa/sum_contribution": float(stats.sum_contribution),
        "spa/nonfinite_contributions": float(stats.nonfinite),
        "spa/mean_fused_reward": (sum(turn_rewards) / n) if n else 0.0,
        "spa/uses_estimator": 1.0 if uses_estimator else 0.0,
        "spa/task_type": str(episode.get("task_type", "")),
    }


class _EnvRewardManager(RewardManagerBase):
    uses_estimator = False

    def __init__(self, config, tokenizer, compute_score=None, reward_router_address=None,
                 reward_model_tokenizer=None, **kwargs):
        super().__init__(config, tokenizer, compute_score)
        self.settings = RewardSettings.from_config(config)

    async def turn_rewards(self, item: Any, episode: dict) -> tuple[list[float], FusionStats]:
        raise NotImplementedError

    async def run_single(self, data: DataProto) -> dict:
        start = time.perf_counter()
        check_episode_rewards(data)
        if is_window_session(data):  # env.history=window: one row per step, scored row by row (spa_reward/layout.py)
            result = await score_window_session(self, data)
        else:
            item, episode = episode_fields(data)
            rewards, stats = await self.turn_rewards(item, episode)
            result = {
                "reward_score": float(sum(rewards)),
                "reward_extra_info": _extra_info(episode, rewards, stats, self.uses_estimator),
            }
        result["reward_extra_info"][REWARD_SECONDS_KEY] = time.perf_counter() - start  # scorer calls included
        return result


@register("outcome")
class OutcomeRewardManager(_EnvRewardManager):
    """R on the last turn (the GRPO/GiGPO/PPO baselines)."""

    async def turn_rewards(self, item: Any, episode: dict) -> tuple[list[float], FusionStats]:
        n = len(episode["turn_ends"])
        rewards = outcome_turn_rewards(n, episode_reward(episode), episode["executable"],
                                       self.settings.invalid_penalty)
        stats = FusionStats(num_turns=n, executable_rate=(sum(map(bool, episode["executable"])) / n) if n else 0.0,
                            sum_reward=float(sum(rewards)), mean_reward=(sum(rewards) / n) if n else 0.0)
        return rewards, stats


@register("spa")
class SpaRewardManager(_EnvRewardManager):
    """Fused progress + grounding reward per turn (SPA-RL)."""

    uses_estimator = True
    _checked_tokenizers: set = set()

    def __init__(self, config, tokenizer, compute_score=None, reward_router_address=None,
                 reward_model_tokenizer=None, scorer: Any = None, **kwargs):
        super().__init__(config, tokenizer, compute_score, reward_router_address, reward_model_tokenizer, **kwargs)
        path = self.settings.estimator_path
        if not path:
            raise ValueError(f"reward manager 'spa' needs a progress estimator checkpoint: {ESTIMATOR_HELP}")
        self._scorer = scorer
        if scorer is None:  # a test may inject a scorer; the real one must exist and match the policy tokenizer
            if not os.path.isdir(path):
                raise FileNotFoundError(f"progress estimator checkpoint {path!r} does not exist: {ESTIMATOR_HELP}")
            self._check_tokenizer(path)

    def _check_tokenizer(self, path: str) -> None:
        key = (path, getattr(self.tokenizer, "name_or_path", id(self.tokenizer)))
        if key in SpaRewardManager._checked_tokenizers:
            return
        from spa_reward.progress.serve import check_tokenizer_compatible

        check_tokenizer_compatible(path, self.tokenizer)  # raises ValueError naming the differing tokens
        SpaRewardManager._checked_tokenizers.add(key)

    def scorer(self) -> Any:
        """The progress scorer: injected, or the named Ray actor the trainer started (looked up, never created
        here: spa_reward.steprm.trainer_hooks starts it at trainer start-up)."""
        if self._scorer is None:
            from spa_reward.steprm.service import lookup_service

            self._scorer = lookup_service(self.settings.scorer_name)
        return self._scorer

    @staticmethod
    def scorer_item(item: Any, episode: dict) -> dict:
        """What the scorer gets for one row: prompt + response ids, turn ends and starts (input_ids coordinates),
        the prompt length (truncation keeps it, as in estimator training) and the episode's R (the ``prefix``
        objective's value after the last step; a window row carries its session's R and ``episode`` key)."""
        prompt_len = int(item.non_tensor_batch.get("prompt_len", item.batch["prompts"].shape[-1]))
        ends = [prompt_len + int(e) for e in episode["turn_ends"]]
        starts = [prompt_len + int(a) for a in episode.get("turn_starts", [])]
        out = {"input_ids": [int(t) for t in item.batch["input_ids"].tolist()], "turn_ends": ends,
               "prompt_length": prompt_len,
               "reward": float(episode["session_reward"] if "session_reward" in episode else episode_reward(episode))}
        if len(starts) == len(ends):
            out["turn_starts"] = starts
        if episode.get("session_key"):
            out["episode"] = str(episode["session_key"])
        return out

    async def prepare_session(self, rows: list, views: list[dict]) -> list[dict]:
        """Window layout: score all the rows of a session in ONE scorer call (their ``episode`` key shared, in step
        order), so that the ``prefix`` objective chains the values across the rows; each view gets its row's c_t
        (``spa_contributions``), which :meth:`turn_rewards` then uses."""
        R = episode_reward(rows[-1][1])
        key = f"session-{id(rows)}"
        batch = [self.scorer_item(item, dict(episode, session_reward=R, session_key=key)) for item, episode in rows]
        batch = [b for b in batch if b["turn_ends"]]
        result = await self._score(batch)
        it = iter(result)
        return [dict(view, spa_contributions=next(it)) if episode["turn_ends"] else view
                for (_, episode), view in zip(rows, views)]

    async def _score(self, batch: list[dict]) -> list[list[float]]:
        if not batch:
            return []
        scorer = self.scorer()
        score = getattr(scorer, "score")
        if hasattr(score, "remote"):  # Ray actor handle: awaited; a dead actor is looked up again once
            from spa_reward.steprm.service import call_service

            self._scorer, result = await call_service(scorer, self.settings.scorer_name, "score", batch)
        elif inspect.iscoroutinefunction(score):
            result = await score(batch)
        else:
            result = await self.loop.run_in_executor(None, score, batch)
        if len(result) != len(batch) or any(len(r) != len(b["turn_ends"]) for r, b in zip(result, batch)):
            raise RuntimeError(
                f"progress scorer returned {[len(r) for r in result]} contributions for trajectories with "
                f"{[len(b['turn_ends']) for b in batch]} turns"
            )
        return [[float(c) for c in r] for r in result]

    async def turn_rewards(self, item: Any, episode: dict) -> tuple[list[float], FusionStats]:
        ends = [int(e) for e in episode["turn_ends"]]
        if not ends:
            return [], FusionStats()
        c = episode.get("spa_contributions")  # a window row scored with its session (prepare_session)
        if c is None:
            c = (await self._score([self.scorer_item(item, episode)]))[0]
        s = self.settings
        rewards, stats = fuse_turn_rewards(
            c, episode["executable"], alpha=s.alpha, beta=s.beta, outcome=episode_reward(episode),
            outcome_coef=s.outcome_coef, clip=s.clip, invalid_penalty=s.invalid_penalty, grounding=s.grounding,
        )
        if stats.nonfinite:
            logger.warning("progress estimator gave %d non-finite contributions of %d (replaced by 0)",
                           stats.nonfinite, len(ends))
        assert all(math.isfinite(r) for r in rewards)
        return rewards, stats


@register("stepagent")
class StepAgentRewardManager(_EnvRewardManager):
    """StepAgent's env part of the per-turn reward, plus the match bonus in mode ``match`` (module docstring).

    Reads ``algorithm.stepagent`` (mode, match_reward, grounding_beta) and ``reward.reward_kwargs.invalid_penalty``.
    The compared turn is turn 0 of the row's policy turns (the expert prefix turns carry mask 0 and are no turns);
    in the window layout, the row with ``step_index`` 0. A row without the agent loop's ``stepagent`` dict (or with
    ``compared`` false: the task has no demonstration) gets no match term."""

    def __init__(self, config, tokenizer, compute_score=None, reward_router_address=None,
                 reward_model_tokenizer=None, **kwargs):
        super().__init__(config, tokenizer, compute_score, reward_router_address, reward_model_tokenizer, **kwargs)
        from spa_reward.stepagent.settings import StepAgentSettings

        self.stepagent = StepAgentSettings.from_config(config)
        problems = [p for p in self.stepagent.problems() if "expert_path" not in p]  # the loop reads the experts
        if problems:
            raise ValueError("reward manager 'stepagent': " + "; ".join(problems))

    @staticmethod
    def compared(episode: dict) -> Optional[bool]:
        """None when this row holds no compared turn, else whether the agent's action matched the expert's."""
        from spa_reward.stepagent.settings import STEPAGENT_KEY

        sa = episode.get(STEPAGENT_KEY)
        if not isinstance(sa, dict) or not sa.get("compared", False):
            return None
        if episode.get("layout") == "window" and int(episode.get("step_index", 0)) != 0:
            return None
        return bool(sa.get("match", False))

    async def turn_rewards(self, item: Any, episode: dict) -> tuple[list[float], FusionStats]:
        sa = self.stepagent
        return stepagent_turn_rewards(
            len(episode["turn_ends"]), episode["executable"], episode_reward(episode),
            self.compared(episode), mode=sa.mode, match_reward=float(sa.match_reward),
            grounding_beta=float(sa.grounding_beta), invalid_penalty=self.settings.invalid_penalty,
        )

    async def run_single(self, data: DataProto) -> dict:
        result = await super().run_single(data)
        from spa_reward.stepagent.settings import STEPAGENT_KEY

        episodes = [ep for ep in (_row_extra(data, i) for i in range(len(data))) if ep is not None]
        sa, matched = {}, None
        for ep in episodes:
            if self.compared(ep) is not None:
                sa, matched = ep[STEPAGENT_KEY], self.compared(ep)
                break
        else:
            if episodes and isinstance(episodes[-1].get(STEPAGENT_KEY), dict):
                sa = episodes[-1][STEPAGENT_KEY]
        result["reward_extra_info"].update({
            "stepagent/compared": float(matched is not None),
            "stepagent/match": float(bool(matched)),
            "stepagent/prefix_turns": float(sa.get("prefix_turns", 0) or 0),
        })
        return result


def _row_extra(data: DataProto, i: int) -> Optional[dict]:
    extra = data[i].non_tensor_batch.get("tool_extra_fields", None)
    episode = extra.get(EPISODE_KEY) if isinstance(extra, dict) else None
    return episode if isinstance(episode, dict) else None


@register("istar")
class IstarRewardManager(_EnvRewardManager):
    """iStar's env part of the per-turn reward: ``grounding_beta * g_t - invalid_penalty * (1 - g_t)`` per turn.

    The implicit step reward ``beta * q_t`` needs the rollout's per-token old log-probs, which the streaming
    reward path does not carry; the ``spa`` trainer mode adds it at each turn's last token before the advantage
    (``spa_reward.steprm.trainer_hooks``). The episode reward R travels as ``episode_reward`` (A_E), as for SPA."""

    async def turn_rewards(self, item: Any, episode: dict) -> tuple[list[float], FusionStats]:
        n = len(episode["turn_ends"])
        s = self.settings
        return fuse_turn_rewards(
            [0.0] * n, episode["executable"], alpha=0.0, beta=s.grounding_beta,
            outcome=episode_reward(episode), outcome_coef=s.outcome_coef, clip=None,
            invalid_penalty=s.invalid_penalty, grounding="bonus",  # grounding_beta * g_t, whatever the spa defaults
        )


__all__ = ["EPISODE_KEY", "IstarRewardManager", "OutcomeRewardManager", "REWARD_SECONDS_KEY", "RewardSettings",
           "SpaRewardManager", "StepAgentRewardManager", "TURN_REWARDS_KEY", "check_episode_rewards", "episode_fields",
           "episode_reward"]
