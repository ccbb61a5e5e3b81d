"""``env_agent``: verl agent loop that plays one text-environment episode as one multi-turn trajectory.

Selected per dataset row by the column ``agent_name="env_agent"`` (``envs.prepare`` writes it) or by
``actor_rollout_ref.rollout.agent.default_agent_loop=env_agent``. Settings come from the top-level ``env`` block
of the trainer config (the hydra group ``recipe/spa/config/env/<name>.yaml``); a row's ``extra_info`` names the
task (``env_name``, ``task_id``, ``split``, optional ``seed``).

One episode::

    prompt   = chat template of envs.prompts.build_messages(env, first observation)       (continuous tokens)
    response = [assistant turn 0][observation 1][assistant turn 1] ... [assistant turn T-1]
    mask     =  1 1 1 ... 1       0 0 ... 0      1 1 ... 1              1 ... 1

Every turn: ``server_manager.generate`` (one sticky request id per episode, ``max_tokens`` = what is left of
``rollout.response_length``, capped by ``env.max_tokens_per_turn``) -> decode -> ``envs.actions.parse_action``
-> ``env.step(action)``, or ``env.invalid_step(error)`` for a reply without a parseable action (never a crash)
-> the observation is appended as a user message (mask 0). The episode ends when the env says done, after
``env.max_turns`` turns (default: the env's ``max_steps``), when the response budget is used up, or when the
env fails (timeout/crash; see ``recipe.spa.env_pool``; the episode then counts as failed, ``won=False``, R=0).
No observation is appended after the final turn, and an observation that does not fit the budget (leaving at
least one token for the next turn) is dropped and ends the episode. A turn cut by the budget still counts; its
end is the last kept token. The response never exceeds ``rollout.response_length``.

Per-turn bookkeeping goes to ``extra_fields["env_episode"]`` (what the reward managers read as
``tool_extra_fields``; positions in RESPONSE coordinates):

    turn_starts, turn_ends   list[int]   first/last token of each assistant turn
    executable               list[bool]  the env executed the turn's action (grounding g_t)
    actions                  list[str]   the parsed action of each turn ("" when none parsed)
    episode_reward           float       R = env.reward_scale * raw env reward (0 on env failure)
    env_reward_raw           float       the env's final reward (env.reward_mode: final | won)
    won, score, task_type, num_turns, truncated, truncation_reason, env_error, parse_errors, env_name, task_id

The returned :class:`EnvAgentLoopOutput` adds three top-level TransferQueue fields (read by the ``spa`` trainer
mode): ``turn_anchors`` (list[str], the anchor of the state each turn acted on: the reset anchor for turn 0, then
each step's), ``episode_reward`` (float R) and ``episode_info`` (dict of scalars: won, score, num_turns,
executable_rate, truncated, env_error, env_failed (1.0 when the env failed: the trainer then masks the row out of
training and out of the episode metrics), env_error_text, task_type, env_reward, plus sum_contribution when the
``spa`` reward ran). Its ``as_dict()`` writes dense ``rm_scores`` from the reward manager's per-turn list
(``reward_extra_info["spa_turn_rewards"]``, popped so downstream sees only scalars). A fourth field, ``stepagent``
(also ``env_episode["stepagent"]``; schema in ``spa_reward.stepagent.settings``), holds the StepAgent inspection:
with ``algorithm.reward=stepagent`` a training episode starts after k replayed expert actions (mask-0 turns in
the response, not counted as turns) and its first turn is compared with the expert's (``recipe.spa.expert_prefix``);
otherwise it is the empty dict of the same keys (``compared=False``).

``AgentLoopOutput.num_turns`` follows verl's convention (chat messages: the first user message, every assistant
turn and every observation); ``episode_info["num_turns"]`` is the number of assistant turns (env steps).

Collection (``env.collect_dir``, both layouts): one :class:`spa_reward.records.TrajectoryRecord` per episode with
at least one turn, appended to a jsonl shard per worker process (``<collect_dir>/<env>-<host>-<pid>-<rand>.jsonl``).
Its ``reward`` is the raw env reward (what the progress estimator regresses onto); its ``extra`` keeps the layout
it was played in and the raw pieces of both layouts' prompts (``spa_reward.records``, "Both layouts"). Episodes that ended by env failure
are written too, marked ``extra["env_failed"] = True`` (estimator training skips them by default); an episode that
failed before its first turn has nothing to write.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional
from uuid import uuid4

import torch
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, register
from verl.utils.profiler import simple_timer

from envs.actions import parse_action
from envs.prepare import SPLITS
from envs.prompts import build_messages, format_observation, prompt_info
from recipe.spa import expert_prefix
from recipe.spa.env_pool import EnvFailure, get_env_pool
from recipe.spa.expert_prefix import ExpertPrefix, empty_stepagent
from recipe.spa.settings import EnvRolloutSettings, default_pool_size, validate_env_settings
from spa_reward.config_check import select_key
from spa_reward.fusion import place_turn_rewards
from spa_reward.records import LAYOUT_KEY, PIECES_KEY, PIECES_VERSION
from spa_reward.reward_manager import EPISODE_KEY, REWARD_SECONDS_KEY, TURN_REWARDS_KEY

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))

ENV_ERROR_TEXT_CHARS = 500  # how much of an env failure's message rides along in episode_info / records

# ----------------------------------------------------------------------------------------------- output


class EnvAgentLoopOutput(AgentLoopOutput):
    """AgentLoopOutput with dense per-turn rewards and the episode fields the ``spa`` trainer mode reads."""

    turn_anchors: list[str] = []
    """Anchor (state key) each assistant turn acted on; TransferQueue field ``turn_anchors``."""
    episode_reward: float = 0.0
    """Episode return R (scaled env reward); TransferQueue field ``episode_reward``."""
    episode_info: dict[str, Any] = {}
    """Scalars per episode; TransferQueue field ``episode_info``."""
    stepagent: dict[str, Any] = {}
    """StepAgent inspection of this row (schema: ``spa_reward.stepagent.settings``; ``recipe.spa.expert_prefix``);
    TransferQueue field ``stepagent``."""

    def as_dict(self) -> dict[str, Any]:
        output = super().as_dict()
        extra = output.get("extra_fields") or {}
        reward_info = extra.get("reward_extra_info")
        info = dict(output.get("episode_info", self.episode_info))
        if isinstance(reward_info, dict):
            turn_rewards = reward_info.pop(TURN_REWARDS_KEY, None)
            if turn_rewards is not None:
                episode = extra.get(EPISODE_KEY) or {}
                mine = self._row_turn_rewards(turn_rewards, episode)
                length = int(output["responses"].shape[0])
                dense = place_turn_rewards(mine, episode.get("turn_ends", []), length, episode.get("turn_starts"))
                output["rm_scores"] = torch.tensor(dense, dtype=torch.float32)
            if reward_info.get("spa/uses_estimator"):
                info["sum_contribution"] = float(reward_info.get("spa/sum_contribution", 0.0))
            if REWARD_SECONDS_KEY in reward_info:
                info["reward_seconds"] = float(reward_info[REWARD_SECONDS_KEY])
        output["episode_info"] = info
        output.setdefault("turn_anchors", list(self.turn_anchors))
        output.setdefault("episode_reward", float(self.episode_reward))
        output["stepagent"] = dict(output.get("stepagent") or self.stepagent or empty_stepagent())
        return output

    def _row_turn_rewards(self, turn_rewards: list, episode: dict) -> list:
        """The rewards of this row's turns, from the reward manager's per-turn list (one per turn of the episode)."""
        ends = episode.get("turn_ends", [])
        if len(turn_rewards) != len(ends):
            raise ValueError(f"{len(turn_rewards)} turn rewards for {len(ends)} turns in this episode")
        return list(turn_rewards)


# ----------------------------------------------------------------------------------------------- episode


@dataclass
class _Episode:
    env_name: str
    task_id: str
    split: str
    task_type: str = ""
    messages: list = field(default_factory=list)
    prompt_ids: list = field(default_factory=list)
    runtime: list = field(default_factory=list)  # prompt + response tokens so far
    mask: list = field(default_factory=list)
    logprobs: Optional[list] = None
    turn_starts: list = field(default_factory=list)
    turn_ends: list = field(default_factory=list)
    executable: list = field(default_factory=list)
    anchors: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    parse_errors: int = 0
    observations: int = 0
    won: bool = False
    score: float = 0.0
    last_reward: float = 0.0
    done: bool = False
    truncation: str = ""  # why the episode stopped early ("" when the env ended it)
    env_error: str = ""  # EnvFailure.reason (e.g. "timeout:step"); "" when the env did not fail
    env_error_text: str = ""  # the full EnvFailure message
    extra_fields: dict = field(default_factory=dict)
    inspection: Any = None  # recipe.spa.expert_prefix.Inspection when algorithm.reward=stepagent
    seen: list = field(default_factory=list)  # (raw observation, prompt_info) of every step, for the records

    def keep_observation(self, obs: str, info: dict) -> None:
        """Keep a step's raw observation and the info the prompt builders read (records rebuild both layouts)."""
        self.seen.append((str(obs), prompt_info(info)))

    @property
    def num_turns(self) -> int:
        return len(self.turn_ends)

    def fix_last_turn(self) -> None:
        """Keep the last turn's end on a kept assistant token after a merge trimmed the runtime prefix."""
        if not self.turn_ends:
            return
        end = min(self.turn_ends[-1], len(self.mask) - 1)
        while end > self.turn_starts[-1] and self.mask[end] == 0:
            end -= 1
        self.turn_ends[-1] = max(end, self.turn_starts[-1])


async def step_reply(env, ep: _Episode, text: str, parse_style: Optional[str], anchor: str,
                     metrics: dict) -> tuple[str, str, dict, str]:
    """One turn's env side, for both layouts: parse the reply, step the env with its action (an invalid step when
    none parses), record anchor / action / executable / won / score / reward on ``ep`` and, when the env ends the
    episode, ``ep.done`` and its truncation. Returns (action, observation, info, the next turn's anchor). An
    ``EnvFailure`` propagates after the turn is recorded as not executed."""
    parsed = parse_action(text, parse_style)
    ep.anchors.append(anchor)
    ep.actions.append(parsed.action or "")
    try:
        with simple_timer("tool_calls", metrics):
            if parsed.action is None:
                ep.parse_errors += 1
                obs, reward, done, info = await env.invalid_step(parsed.error or "no action")
            else:
                obs, reward, done, info = await env.step(parsed.action)
    except EnvFailure:
        ep.executable.append(False)
        raise
    ep.executable.append(bool(info.get("executable", False)))
    ep.won = bool(info.get("won", False))
    ep.score = float(info.get("score", 0.0))
    ep.last_reward = float(reward)
    if done:
        ep.done = True
        ep.truncation = "max_steps" if info.get("truncated") else ""
    return parsed.action or "", obs, info, str(info.get("anchor", anchor))


def episode_summary(ep: _Episode, settings: EnvRolloutSettings, num_turns: int,
                    timing: Optional[dict] = None) -> tuple[float, float, dict, dict]:
    """(R, raw env reward, the episode-level fields of ``env_episode``, ``episode_info``) of a finished episode;
    one place for both layouts (packed rows here, per-step rows in ``recipe.spa.window``). ``timing``: the
    episode's ``simple_timer`` seconds (``tool_calls`` = env reset / steps, ``generate_sequences`` = waiting for
    the LLM server), kept in ``episode_info`` as ``env_seconds`` / ``llm_seconds``."""
    raw = 0.0 if ep.env_error else (float(ep.won) if settings.reward_mode == "won" else ep.last_reward)
    R = settings.reward_scale * raw
    won = bool(ep.won) and not ep.env_error
    truncated = bool(ep.truncation)  # "" only when the env ended the episode in a terminal state
    summary = {
        "episode_reward": R,
        "env_reward_raw": raw,
        "won": won,
        "score": ep.score,
        "task_type": ep.task_type,
        "truncated": truncated,
        "truncation_reason": ep.truncation,
        "env_error": ep.env_error,
        "parse_errors": ep.parse_errors,
        "env_name": ep.env_name,
        "task_id": ep.task_id,
    }
    info = {
        "won": won,
        "score": ep.score,
        "num_turns": num_turns,
        "executable_rate": (sum(ep.executable) / num_turns) if num_turns else 0.0,
        "truncated": truncated,
        "env_error": ep.env_error,
        "task_type": ep.task_type,
        "env_reward": R,
        "parse_errors": ep.parse_errors,
        "env_failed": 1.0 if ep.env_error else 0.0,  # not data: the trainer masks it (spa_reward.trainer)
        "env_error_text": ep.env_error_text,
        "env_seconds": float((timing or {}).get("tool_calls", 0.0)),
        "llm_seconds": float((timing or {}).get("generate_sequences", 0.0)),
    }
    return R, raw, summary, info


def weight_version_fields(ep: _Episode, kwargs: dict) -> dict:
    """A copy of the episode's server fields with the weight-version tags verl's metrics need on every row.

    verl's ``_compute_metrics`` reads ``min_global_steps``/``max_global_steps`` from every row's tags
    (``agent_loop_tq.py _agent_loop_postprocess`` copies them from extra_fields; ``trainer_base._compute_metrics``
    builds an int array); an episode whose env failed before the first generation has none from the server: use the
    global step the loop was given, which is the weight version in sync training."""
    extra_fields = dict(ep.extra_fields)
    step = kwargs.get("global_steps")
    if step is not None:
        extra_fields.setdefault("min_global_steps", int(step))
        extra_fields.setdefault("max_global_steps", int(step))
    return extra_fields


@register("env_agent")
class EnvAgentLoop(AgentLoopBase):
    """Plays one environment episode per call; see the module docstring."""

    def __init__(self, *args, **kwargs):
        kwargs.pop("tools", None)
        super().__init__(*args, **kwargs)
        self.settings = EnvRolloutSettings.from_config(self.config)
        validate_env_settings(self.settings)
        self.response_length = int(self.rollout_config.response_length)
        # StepAgent inspection (algorithm.reward=stepagent): expert-prefix episodes + the comparison; None otherwise
        self.expert_prefix = ExpertPrefix.from_config(self.config, self.settings.name)

    @property
    def wants_logprobs(self) -> bool:
        """verl keeps the rollout's log-probs (``rollout.calculate_log_probs``): every row must then carry them."""
        return bool(getattr(self.rollout_config, "calculate_log_probs", False))

    def _pool(self):
        s = self.settings
        return get_env_pool(s.pool_num_workers or default_pool_size(self.config), s.pool_backend, s.step_timeout,
                            s.reset_timeout, s.allow_custom_env_classes)

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> EnvAgentLoopOutput | list[EnvAgentLoopOutput]:
        extra_info = dict(kwargs.get("extra_info") or {})
        s = self.settings
        env_name = str(extra_info.get("env_name") or s.name)
        split = str(extra_info.get("split") or "train")
        task_id = extra_info.get("task_id")
        if task_id is None:
            raise ValueError(
                "env_agent needs extra_info.task_id in every dataset row; build the parquet with "
                "`python -m envs.prepare <env> --output-dir <dir>`"
            )
        ep = _Episode(env_name=env_name, task_id=str(task_id), split=split)
        if self.expert_prefix is not None:  # this episode's k (0 on validation rows / tasks without a demo)
            ep.inspection = self.expert_prefix.start(ep.task_id, split, kwargs.get("global_steps"))
        if s.history == "window":  # window layout: one output per step (recipe/spa/window.py)
            from recipe.spa.window import run_window_episode
            outputs = await run_window_episode(self, ep, sampling_params, extra_info, kwargs)
            expert_prefix.attach(outputs, ep.inspection, self.expert_prefix is not None, EPISODE_KEY)
            return outputs
        metrics: dict[str, float] = {}
        try:
            async with self._pool().session(env_name, s.make_kwargs()) as env:
                await self._play(env, ep, sampling_params, extra_info, metrics)
        except EnvFailure as exc:
            logger.warning("episode %s/%s failed: %s", env_name, task_id, exc)
            ep.env_error, ep.won, ep.done = exc.reason, False, False
            ep.env_error_text = str(exc)[:ENV_ERROR_TEXT_CHARS]
            ep.truncation = ep.truncation or "env_error"
        output = await self._finish(ep, kwargs, metrics)
        expert_prefix.attach([output], ep.inspection, self.expert_prefix is not None, EPISODE_KEY)
        return output

    async def _play(self, env, ep: _Episode, sampling_params: dict, extra_info: dict, metrics: dict) -> None:
        s = self.settings
        env_split = SPLITS.get(ep.env_name, {}).get(ep.split, ep.split)  # our split name -> the adapter's
        with simple_timer("tool_calls", metrics):
            obs, info = await env.reset(ep.task_id, extra_info.get("seed"), env_split)
        ep.keep_observation(obs, info)
        ep.task_type = str(info.get("task_type", ""))
        anchor = str(info.get("anchor", obs))
        ep.messages = build_messages(ep.env_name, obs, info, s.prompt_style, s.one_shot, s.system_prompt,
                                     s.include_admissible)
        ep.prompt_ids = list(await self.ct_build_initial_tokens(ep.messages))
        ep.runtime = list(ep.prompt_ids)
        max_turns = env.max_steps if s.max_turns is None else min(int(s.max_turns), env.max_steps)
        parse_style = s.parse_style or s.prompt_style
        request_id = uuid4().hex
        budget_limit = self.response_length
        if ep.inspection is not None:  # StepAgent: replay the expert's first k actions (mask 0, not turns)
            ep.inspection.begin(env.max_steps, info)
            anchor = await expert_prefix.play_packed_prefix(self, env, ep, ep.inspection, anchor,
                                                            extra_info.get("seed"), env_split, budget_limit, metrics)
            if ep.done:
                return

        for turn in range(max_turns):
            budget = budget_limit - len(ep.mask)
            if budget <= 0:
                ep.truncation = "response_length"
                return
            params = dict(sampling_params)
            params["max_tokens"] = budget if s.max_tokens_per_turn is None else min(budget, int(s.max_tokens_per_turn))
            if turn == 0:
                expert_prefix.before_first_turn(self, ep, ep.inspection, ep.messages, len(ep.prompt_ids) + len(ep.mask))
            with simple_timer("generate_sequences", metrics):
                out = await self.server_manager.generate(
                    request_id=request_id, prompt_ids=ep.runtime, sampling_params=params
                )
            self._merge_server_fields(ep, out.extra_fields or {})
            ids = list(out.token_ids)[:budget]
            if not ids:
                ep.truncation = "empty_generation"
                return
            lps = [float(x) for x in out.log_probs[: len(ids)]] if out.log_probs else None
            if lps is not None and len(lps) != len(ids):
                lps = None
            if lps is not None and ep.logprobs is None:  # first logprobs seen: earlier tokens get 0.0
                ep.logprobs = [0.0] * len(ep.mask)
            elif lps is None and ep.logprobs is not None:  # keep the logprob list aligned with the mask
                lps = [0.0] * len(ids)
            merge, ep.mask, new_lp = await self.ct_merge_assistant_token(ep.runtime, ids, ep.mask, ep.logprobs, lps)
            ep.runtime = list(merge.token_ids)
            if new_lp is not None:
                ep.logprobs = new_lp
            ep.turn_starts.append(len(ep.mask) - merge.appended_token_count)
            ep.turn_ends.append(len(ep.mask) - 1)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            _, obs, info, anchor = await step_reply(env, ep, text, parse_style, anchor, metrics)
            if turn == 0:
                expert_prefix.after_first_turn(ep, ep.inspection, anchor)
            ep.keep_observation(obs, info)
            if ep.done:
                return
            if len(ep.mask) >= budget_limit:
                ep.truncation = "response_length"
                return
            if turn == max_turns - 1:
                ep.truncation = "max_turns"
                return
            ep.messages.append({"role": "assistant", "content": text})
            previous = list(ep.messages)
            ep.messages.append({"role": "user", "content": format_observation(ep.env_name, obs, info,
                                                                               s.include_admissible)})
            merge, mask, new_lp = await self.ct_merge_context_msg(
                previous, ep.messages, ep.runtime, ep.mask, ep.logprobs
            )
            if len(mask) >= budget_limit:  # the observation (plus one token for the next turn) does not fit
                ep.messages.pop()
                ep.truncation = "response_length"
                return
            ep.runtime, ep.mask = list(merge.token_ids), mask
            if new_lp is not None:
                ep.logprobs = new_lp
            ep.observations += 1
            if merge.removed_prefix_token_count:
                ep.fix_last_turn()
        ep.truncation = ep.truncation or "max_turns"

    @staticmethod
    def _merge_server_fields(ep: _Episode, fields: dict) -> None:
        """Carry the server's weight-version fields (staleness tags in the v1 trainer) like verl's tool agent."""
        if not ep.extra_fields:
            ep.extra_fields.update(fields)
        elif fields.get("max_global_steps") is not None:
            ep.extra_fields["max_global_steps"] = fields["max_global_steps"]

    async def _finish(self, ep: _Episode, kwargs: dict, metrics: dict) -> EnvAgentLoopOutput:
        s = self.settings
        if not ep.prompt_ids:  # the env failed before the first observation: fall back to the dataset prompt
            ep.prompt_ids = list(await self.ct_build_initial_tokens(list(kwargs.get("raw_prompt") or
                                                                         [{"role": "user", "content": ep.task_id}])))
            ep.runtime = list(ep.prompt_ids)
        response_ids = ep.runtime[len(ep.prompt_ids):]
        if len(response_ids) != len(ep.mask):
            raise RuntimeError(f"env_agent bookkeeping bug: {len(response_ids)} response tokens, mask {len(ep.mask)}")
        if not response_ids:  # verl needs at least one response token; this one carries no loss (mask 0)
            pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
            response_ids, ep.mask = [int(pad)], [0]
            if ep.logprobs is not None:
                ep.logprobs = [0.0]
        if ep.logprobs is None and self.wants_logprobs:  # nothing generated (the env failed first): verl reads
            ep.logprobs = [0.0] * len(ep.mask)           # rollout_log_probs of every row of the batch or none
        n = ep.num_turns
        R, raw, summary, info = episode_summary(ep, s, n, metrics)
        episode = {
            "turn_starts": list(ep.turn_starts),
            "turn_ends": list(ep.turn_ends),
            "executable": list(ep.executable),
            "actions": list(ep.actions),
            "num_turns": n,
            **summary,
        }
        extra_fields = weight_version_fields(ep, kwargs)
        extra_fields[EPISODE_KEY] = episode
        output = EnvAgentLoopOutput(
            prompt_ids=ep.prompt_ids,
            response_ids=response_ids,
            response_mask=ep.mask,
            response_logprobs=ep.logprobs,
            num_turns=1 + n + ep.observations,
            metrics=metrics,
            extra_fields=extra_fields,
            turn_anchors=list(ep.anchors),
            episode_reward=R,
            episode_info=info,
        )
        if s.collect_dir and n:
            P = len(output.prompt_ids)
            self._collect(ep, kwargs, raw, info, list(output.prompt_ids) + list(output.response_ids), P,
                          [[P + a, P + b + 1] for a, b in zip(ep.turn_starts, ep.turn_ends)], ep.messages)
        return output

    def prompt_pieces(self, ep: _Episode, window: Optional[dict] = None) -> dict:
        """``extra["prompt_pieces"]`` of a record (schema in ``spa_reward.records``): the raw observations, the
        prompt settings and the token builder; ``window`` adds the window layout's keys."""
        s = self.settings
        template_kwargs = self.apply_chat_template_kwargs
        if hasattr(template_kwargs, "items"):
            from omegaconf import OmegaConf

            template_kwargs = (OmegaConf.to_container(template_kwargs, resolve=True)
                               if OmegaConf.is_config(template_kwargs) else dict(template_kwargs))
        pieces = {"version": PIECES_VERSION, "observations": [o for o, _ in ep.seen],
                  "infos": [i for _, i in ep.seen], "style": s.prompt_style, "one_shot": bool(s.one_shot),
                  "system_prompt": bool(s.system_prompt), "include_admissible": s.include_admissible,
                  "token_builder": type(self.continuous_token_builder).__name__,
                  "chat_template_kwargs": template_kwargs or {}}
        pieces.update(window or {})
        return pieces

    def _collect(self, ep: _Episode, kwargs: dict, raw: float, info: dict, input_ids: list, P: int, spans: list,
                 messages: list, layout: str = "full", window: Optional[dict] = None) -> None:
        """Write the episode's trajectory record: the packed sequence ``input_ids`` (prompt length ``P``, turn
        ``spans``) and, in ``extra``, the layout it was played in and the pieces of both layouts."""
        R = float(info["env_reward"])
        uid = str(kwargs.get("uid") or f"{ep.env_name}-{ep.task_id}")
        record = {
            "format_version": 1,
            "uid": uid,
            "episode_id": f"{uid}-{kwargs.get('session_id', 0)}-{uuid4().hex[:8]}",
            "env_name": ep.env_name,
            "task_id": ep.task_id,
            "tokenizer": str(getattr(self.tokenizer, "name_or_path", "") or
                             select_key(self.config, "actor_rollout_ref.model.path", "unknown")),
            "input_ids": list(input_ids),
            "prompt_length": P,
            "turn_spans": [list(span) for span in spans],
            "executable": list(ep.executable),
            "reward": raw,
            "won": bool(info["won"]),
            "actions": list(ep.actions),
            "truncated": bool(info["truncated"]),
            "extra": {
                "episode_reward": R,
                "reward_scale": self.settings.reward_scale,
                "score": ep.score,
                "task_type": ep.task_type,
                "split": ep.split,
                "truncation_reason": ep.truncation,
                "env_error": ep.env_error,
                "env_failed": bool(ep.env_error),  # estimator training skips these by default
                "global_steps": int(kwargs["global_steps"]) if kwargs.get("global_steps") is not None else -1,
                "turn_anchors": list(ep.anchors),
                LAYOUT_KEY: layout,
                PIECES_KEY: self.prompt_pieces(ep, window),
            },
        }
        if self.settings.collect_messages:
            record["messages"] = list(messages)
        _record_writer(self.settings.collect_dir, ep.env_name).write(record)


_WRITERS: dict[tuple[str, str], Any] = {}


def _record_writer(collect_dir: str, env_name: str):
    """One jsonl shard per (worker process, collect dir, env), opened on first use."""
    key = (str(collect_dir), env_name)
    if key not in _WRITERS:
        from spa_reward.records import RecordWriter, shard_path

        _WRITERS[key] = RecordWriter(shard_path(os.path.expanduser(str(collect_dir)), prefix=env_name))
    return _WRITERS[key]


# ----------------------------------------------------------------------------------------------- start-up


class EnvStartupError(RuntimeError):
    """The run's environment cannot be built or reset with its settings (raised before any worker exists)."""


def check_env_at_startup(config: Any) -> None:
    """Build one env in this (trainer) process with the run's ``env`` settings and reset it on its first training
    task, so a bad data dir, a missing engine or a broken ``env.env_kwargs`` fails at start-up with a clear error
    instead of as env failures in every rollout worker. Registered as a ``spa`` trainer start-up check by
    ``spa_reward.register``; runs in the driver's trainer before verl builds workers."""
    if select_key(config, "env") is None:
        return  # no env block: this run does not use the env_agent loop (config_check reports it if it should)
    s = EnvRolloutSettings.from_config(config)
    validate_env_settings(s)
    from envs import make_env

    kwargs = s.make_kwargs()
    stage = "build"
    try:
        env = make_env(s.name, **kwargs)
    except Exception as exc:
        raise EnvStartupError(
            f"env start-up check: cannot build env {s.name!r} with env.env_kwargs={kwargs}: "
            f"{type(exc).__name__}: {exc}\nFix env.env_kwargs (e.g. data_dir) or install the env's engine; "
            "nothing was started yet."
        ) from exc
    split = SPLITS.get(s.name, {}).get("train", "train")
    try:
        stage = f"list_tasks({split!r})"
        tasks = env.list_tasks(split)
        if not tasks:
            raise ValueError(f"split {split!r} has no tasks")
        stage = f"reset({tasks[0]!r})"
        env.reset(tasks[0], seed=None, split=split)
    except Exception as exc:
        raise EnvStartupError(
            f"env start-up check: env {s.name!r} (env.env_kwargs={kwargs}) was built but {stage} failed: "
            f"{type(exc).__name__}: {exc}\nCheck the env's data and engine; nothing was started yet."
        ) from exc
    finally:
        try:
            env.close()
        except Exception:  # closing is best effort
            logger.debug("env close after the start-up check failed", exc_info=True)
    logger.info("env start-up check passed: %s built and reset on %s task %s", s.name, split, tasks[0])
