"""Window layout of the ``env_agent`` loop (``env.history=window``): one output per env step (GiGPO's setting).

``EnvAgentLoop.run`` hands the episode here when ``env.history=window``. Every step is its own sample::

    prompt_t   = chat template of envs.prompts.build_window_messages(..., history[-k:], observation_t)
    response_t = the reply of step t (mask all 1; at most rollout.response_length, capped by env.max_tokens_per_turn)

with k = ``env.history_length``. The list of outputs goes to verl's multi-output session path
(``verl.trainer.ppo.v1.agent_loop_tq.AgentLoopWorkerTQ._agent_loop_postprocess``): TransferQueue keys
``{uid}_{session_id}_{index}`` with index = step, the reward manager is called ONCE with all rows of the session
(``AgentLoopWorker._compute_score``), and its result (score and ``reward_extra_info``) is copied from the final
output to the earlier ones.

Per row, ``extra_fields["env_episode"]`` has the packed layout's schema with ONE turn (response coordinates of
this row) and the episode-level fields repeated (R, won, score, truncation, ... are the episode's), plus::

    layout          "window"
    step_index      t, 0-based (= the TransferQueue key's index)
    episode_turns   T, rows (steps) of the episode
    history_length  k (configured);  history_shown: pairs actually in this prompt (fewer at the start, or when
                    older pairs were dropped to fit rollout.prompt_length)
    reply_truncated the reply was cut at its token cap

``EnvWindowOutput.as_dict`` takes its row's element ``spa_turn_rewards[step_index]`` of the episode-long list the
reward manager returns (see ``spa_reward.layout``) and writes it on the row's last reply token (dense
``rm_scores``). ``turn_anchors`` = [the anchor of the state step t acted on]; ``episode_reward`` = R on every row;
``episode_info`` = the episode's scalars on every row plus ``session_row`` (t) and ``session_rows`` (T), so
per-episode metrics count only the row with ``session_row == session_rows - 1``.

StepAgent (``algorithm.reward=stepagent``, ``recipe.spa.expert_prefix``): the k replayed expert steps are history
pairs of the first row (no rows are emitted for them); row 0 holds the comparison, later rows ``compared=False``.

Stopping rules are the packed layout's, except that a reply cut at its cap does not end the episode (the next
step has its own budget) and the prompt, not the response, is what grows: when the window prompt exceeds
``rollout.prompt_length`` the oldest pairs are dropped first; when even the bare prompt (no history) does not fit
the episode ends before that step (``truncation_reason="prompt_length"``). An env failure (timeout/crash) keeps
every row played so far (the failed step's row has ``executable=False``), and every row gets R=0, won=False,
``env_error`` set. A failure before the first reply gives one placeholder row (one pad token, mask 0), as the
packed layout does.

Collection (``env.collect_dir``): one trajectory record per episode (not per row), written by ``_collect``: its
``input_ids`` are the packed view of the episode, its ``extra["prompt_pieces"]`` rebuild every row token for token
(``spa_reward.records``, "Both layouts"). ``_play`` keeps each step's raw observation and prompt info for it
(``_Episode.keep_observation``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Optional
from uuid import uuid4

from verl.utils.profiler import simple_timer

from envs.prepare import SPLITS
from envs.prompts import build_window_messages
from recipe.spa import expert_prefix
from recipe.spa.agent_loop import EnvAgentLoopOutput, _Episode, episode_summary, step_reply, weight_version_fields
from recipe.spa.env_pool import EnvFailure
from spa_reward.reward_manager import EPISODE_KEY

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))

LAYOUT = "window"


class EnvWindowOutput(EnvAgentLoopOutput):
    """One step of a window-layout episode; ``as_dict`` places this row's element of the episode's turn rewards."""

    def _row_turn_rewards(self, turn_rewards: list, episode: dict) -> list:
        total, ends = int(episode.get("episode_turns", 0)), list(episode.get("turn_ends", []))
        if len(turn_rewards) != total:
            raise ValueError(
                f"{len(turn_rewards)} turn rewards for a window-layout episode of {total} steps: the reward "
                "manager must score every row of the session (spa_reward.layout.score_window_session)"
            )
        return [float(turn_rewards[int(episode["step_index"])])] if ends else []


@dataclass
class _Step:
    prompt_ids: list
    response_ids: list
    logprobs: Optional[list]
    shown: int
    reply_truncated: bool
    metrics: dict = field(default_factory=dict)


async def run_window_episode(loop, ep: _Episode, sampling_params: dict, extra_info: dict,
                             kwargs: dict) -> list[EnvWindowOutput]:
    """Play ``ep`` in the window layout with ``loop`` (an ``EnvAgentLoop``: its settings, server, tokenizer, env
    pool and token builder); return one output per step (see the module docstring)."""
    s = loop.settings
    steps: list[_Step] = []
    try:
        async with loop._pool().session(ep.env_name, s.make_kwargs()) as env:
            await _play(loop, env, ep, steps, sampling_params, extra_info)
    except EnvFailure as exc:
        logger.warning("episode %s/%s failed: %s", ep.env_name, ep.task_id, exc)
        ep.env_error, ep.won, ep.done = exc.reason, False, False
        ep.truncation = ep.truncation or "env_error"
    return await _finish(loop, ep, steps, kwargs)


async def _window_prompt(loop, ep: _Episode, obs: str, info: dict, history: list, reset_info: dict,
                         prompt_limit: int) -> tuple[list[int], list[dict], int]:
    """Token ids, messages and pairs shown of the step's prompt: the last k pairs, fewer while over the limit."""
    s = loop.settings
    shown = min(int(s.history_length), len(history))
    while True:
        messages = build_window_messages(ep.env_name, obs, info, history, shown, reset_info, s.prompt_style,
                                         s.one_shot, s.system_prompt, s.include_admissible)
        # the token builder itself, not ct_build_initial_tokens: that one left-truncates an over-long prompt to
        # rollout.prompt_length (cutting the instructions); here older pairs go first instead
        ids = list(await loop.loop.run_in_executor(
            None, lambda m=messages: loop.continuous_token_builder.build_initial_tokens(m)))
        if len(ids) <= prompt_limit or shown == 0:
            return ids, messages, shown
        shown -= 1


async def _play(loop, env, ep: _Episode, steps: list, sampling_params: dict, extra_info: dict) -> None:
    s = loop.settings
    metrics: dict = {}
    env_split = SPLITS.get(ep.env_name, {}).get(ep.split, ep.split)
    with simple_timer("tool_calls", metrics):
        obs, info = await env.reset(ep.task_id, extra_info.get("seed"), env_split)
    ep.keep_observation(obs, info)
    reset_info = dict(info)
    ep.task_type = str(info.get("task_type", ""))
    anchor = str(info.get("anchor", obs))
    max_turns = env.max_steps if s.max_turns is None else min(int(s.max_turns), env.max_steps)
    parse_style = s.parse_style or s.prompt_style
    request_id = uuid4().hex  # sticky per episode: the same server, and its prefix cache holds the instructions
    prompt_limit = int(loop.rollout_config.prompt_length)
    cap = loop.response_length if s.max_tokens_per_turn is None else min(loop.response_length,
                                                                         int(s.max_tokens_per_turn))
    history: list[tuple[str, str]] = []
    if ep.inspection is not None:  # StepAgent: the expert's first k steps become history pairs (no rows)
        ep.inspection.begin(env.max_steps, reset_info)
        obs, info, anchor = await expert_prefix.play_window_prefix(loop, env, ep, ep.inspection, anchor, obs, info,
                                                                   history, metrics)
        if ep.done:
            return
    for turn in range(max_turns):
        prompt_ids, messages, shown = await _window_prompt(loop, ep, obs, info, history, reset_info, prompt_limit)
        if len(prompt_ids) > prompt_limit:
            ep.truncation = "prompt_length"
            return
        if not ep.prompt_ids:
            ep.prompt_ids = list(prompt_ids)  # the first prompt: the placeholder row's prompt if nothing follows
            ep.messages = messages
        params = dict(sampling_params)
        params["max_tokens"] = cap
        step_metrics = dict(metrics) if turn == 0 else {}
        if turn == 0:
            expert_prefix.before_first_turn(loop, ep, ep.inspection, messages, len(prompt_ids))
        with simple_timer("generate_sequences", step_metrics):
            out = await loop.server_manager.generate(request_id=request_id, prompt_ids=prompt_ids,
                                                     sampling_params=params)
        loop._merge_server_fields(ep, out.extra_fields or {})
        raw_ids = list(out.token_ids)
        ids = raw_ids[:cap]
        if not ids:
            ep.truncation = "empty_generation"
            return
        lps = [float(x) for x in out.log_probs[: len(ids)]] if out.log_probs else None
        if lps is not None and len(lps) != len(ids):
            lps = None
        step = _Step(list(prompt_ids), ids, lps, shown, len(raw_ids) > cap or (
            len(ids) == cap and ids[-1] != loop.tokenizer.eos_token_id), step_metrics)
        steps.append(step)
        text = loop.tokenizer.decode(ids, skip_special_tokens=True)
        ep.turn_starts.append(0)
        ep.turn_ends.append(len(ids) - 1)
        action, next_obs, info, anchor = await step_reply(env, ep, text, parse_style, anchor, step_metrics)
        if turn == 0:
            expert_prefix.after_first_turn(ep, ep.inspection, anchor)
        ep.keep_observation(next_obs, info)
        history.append((obs, action))
        obs = next_obs
        if ep.done:
            return
        if turn == max_turns - 1:
            ep.truncation = "max_turns"
            return
    ep.truncation = ep.truncation or "max_turns"


async def _finish(loop, ep: _Episode, steps: list, kwargs: dict) -> list[EnvWindowOutput]:
    s = loop.settings
    T = len(steps)
    timing: dict[str, float] = {}
    for step in steps:  # the episode's seconds over its rows (step 0's include the reset and any expert prefix)
        for key, value in step.metrics.items():
            timing[key] = timing.get(key, 0.0) + float(value)
    R, raw, summary, info = episode_summary(ep, s, T, timing)
    common = {**summary, "layout": LAYOUT, "episode_turns": T, "history_length": int(s.history_length)}
    if not steps:  # nothing was generated: one placeholder row so the session still reaches the trainer
        prompt_ids = ep.prompt_ids or list(await loop.ct_build_initial_tokens(
            list(kwargs.get("raw_prompt") or [{"role": "user", "content": ep.task_id}])))
        pad = loop.tokenizer.eos_token_id if loop.tokenizer.eos_token_id is not None else 0
        episode = {"turn_starts": [], "turn_ends": [], "executable": [], "actions": [], "num_turns": 0,
                   **common, "step_index": 0, "history_shown": 0, "reply_truncated": False}
        extra_fields = weight_version_fields(ep, kwargs)
        extra_fields[EPISODE_KEY] = episode
        return [EnvWindowOutput(prompt_ids=prompt_ids, response_ids=[int(pad)], response_mask=[0],
                                response_logprobs=[0.0] if loop.wants_logprobs else None,
                                num_turns=1, metrics={}, extra_fields=extra_fields, turn_anchors=[],
                                episode_reward=R, episode_info={**info, "session_row": 0, "session_rows": 1})]
    # every row of a batch has the same fields
    with_logprobs = loop.wants_logprobs or any(st.logprobs is not None for st in steps)
    outputs = []
    for t, st in enumerate(steps):
        episode = {
            "turn_starts": [0],
            "turn_ends": [len(st.response_ids) - 1],
            "executable": [bool(ep.executable[t])],
            "actions": [ep.actions[t]],
            "num_turns": 1,
            **common,
            "step_index": t,
            "history_shown": st.shown,
            "reply_truncated": st.reply_truncated,
        }
        extra_fields = weight_version_fields(ep, kwargs)
        extra_fields[EPISODE_KEY] = episode
        lps = st.logprobs if st.logprobs is not None else ([0.0] * len(st.response_ids) if with_logprobs else None)
        outputs.append(EnvWindowOutput(
            prompt_ids=st.prompt_ids,
            response_ids=st.response_ids,
            response_mask=[1] * len(st.response_ids),
            response_logprobs=lps,
            num_turns=2,  # verl's convention: one user message and one assistant turn
            metrics=st.metrics,
            extra_fields=extra_fields,
            turn_anchors=[ep.anchors[t]],
            episode_reward=R,
            episode_info={**info, "session_row": t, "session_rows": T},
        ))
    if s.collect_dir:
        await _collect(loop, ep, steps, kwargs, raw, info)
    return outputs


async def _collect(loop, ep: _Episode, steps: list, kwargs: dict, raw: float, info: dict) -> None:
    """One trajectory record for the whole episode (not one per row): ``input_ids`` is the packed view rebuilt with
    the loop's token builder from the raw pieces and the exact replies; the pieces keep what rebuilds every row
    (``spa_reward.progress.layouts.window_sequences``)."""
    from spa_reward.progress.layouts import packed_view

    window = {"history_length": int(loop.settings.history_length), "history_shown": [st.shown for st in steps],
              "window_prompt_lengths": [len(st.prompt_ids) for st in steps]}
    pieces = loop.prompt_pieces(ep, window)
    replies = [st.response_ids for st in steps]
    packed = await loop.loop.run_in_executor(
        None, lambda: packed_view(ep.env_name, pieces, replies, loop.continuous_token_builder))
    loop._collect(ep, kwargs, raw, info, packed.input_ids, packed.prompt_length, packed.turn_spans, packed.messages,
                  layout=LAYOUT, window=window)
