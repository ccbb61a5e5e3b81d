"""StepAgent inspection in the ``env_agent`` loop: expert-prefix episodes and the comparison with the expert.

Active only with ``algorithm.reward=stepagent`` (settings: ``spa_reward.stepagent.settings.StepAgentSettings``,
read once per loop by :class:`ExpertPrefix`). On a TRAINING episode (the row's ``extra_info.split == "train"``:
verl does not pass its ``validate`` flag to ``AgentLoopBase.run``; ``AgentLoopWorker._run_agent_loop`` keeps it in
the trajectory dict) of a task with an expert demonstration of L actions (``envs.expert.load_expert_demos``)::

    k = prefix_length(settings.prefix, L, global_steps, settings.reverse_steps, settings.seed, key=task_id)

(one k per task and step: every rollout of a GRPO group starts from the same expert state), capped so the policy
keeps at least one env step (``env.max_steps - 1``). After ``env.reset`` the expert's first k actions are stepped
in the real env and shown as earlier turns:

* packed layout: each expert reply (``envs.actions.format_action`` of the action with ``envs.expert.make_thought``
  in the run's ``env.prompt_style``, as ``envs.expert`` writes SFT data) goes into the RESPONSE as an assistant
  turn with mask 0, followed by its observation (a user message merged with the loop's ``ct_merge_context_msg``,
  mask 0, as after a policy turn). The reply's tokens are the chat template's rendering of that assistant turn up
  to its end-of-turn token (:func:`assistant_turn_ids`), i.e. exactly what the policy would have generated; they
  are merged with ``ct_merge_assistant_token`` and their mask set to 0. (``ct_merge_context_msg`` cannot append an
  assistant message there: the runtime already ends with the generation prompt, which it would repeat.) Prefix
  turns are not turns: ``turn_starts/turn_ends/executable/actions/turn_anchors`` hold policy turns only. They use
  the response budget: when the prefix leaves no room for the next expert reply, the episode is reset and
  replayed with the k that fits (counted: ``stepagent/prefix_shortened``).
* window layout: the prefix steps become history pairs (observation, action) of the first row, which is the
  first policy step; no rows are emitted for them.

Divergence: when the env says an expert action did not execute, its anchor differs from the demo's anchor after
that action, the reply does not parse back or the env ends the episode, the prefix stops there (that step stays
in the context: the env took it), it is counted (``stepagent/prefix_diverged``) and nothing is compared. Env
failures (timeouts, crashes) propagate as everywhere (the episode fails and is counted).

The comparison, at the first policy turn (state after k expert actions, where a*_k is known): ``match`` when
``normalize_action(agent) == normalize_action(a*_k)`` ignoring case (``match_by="action"``); else, when the demo
has anchors, when the agent's action executed and the anchor after it equals the demo's anchor after a*_k (``"anchor"``:
different strings, same resulting state, e.g. ALFWorld's ``put x in/on y`` vs ``move x to y``). Written as the
``stepagent`` dict (schema: ``spa_reward.stepagent.settings``) into ``env_episode`` and the output field
``stepagent`` (full key set on every output, ``compared=False`` when off), and as scalars into ``episode_info``
(only when on): ``stepagent_prefix_turns``, ``stepagent_compared``, ``stepagent_match``,
``stepagent/prefix_diverged``, ``stepagent/prefix_shortened``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from verl.utils.profiler import simple_timer

from envs.actions import format_action, normalize_action, parse_action
from envs.expert import ExpertDemo, load_expert_demos, make_thought
from envs.prompts import format_observation
from spa_reward.config_check import select_key
from spa_reward.stepagent.settings import STEPAGENT_KEY, StepAgentSettings, prefix_length

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))

TRAIN_SPLIT = "train"  # the only split whose episodes get a prefix (validation rows carry val/test)


def same_action(a: str, b: str) -> bool:
    """Normalised action equality: ``envs.actions.normalize_action`` (whitespace, markdown/quote wrappers, final
    period) and case (``Go to Desk 1`` is ``go to desk 1``)."""
    return normalize_action(a).casefold() == normalize_action(b).casefold()


def empty_stepagent() -> dict[str, Any]:
    """The ``stepagent`` dict of an episode without inspection (every key of the schema, ``compared=False``)."""
    return {"prefix_turns": 0, "expert_turns": 0, "compared": False, "expert_action": "", "agent_action": "",
            "match": False, "match_by": "", "context_length": 0, "expert_reply_ids": []}


@dataclass
class Inspection:
    """The StepAgent state of one episode (``_Episode.inspection``)."""

    demo: Optional[ExpertDemo]
    k: int  # planned prefix length
    goal: str = ""
    prefix_turns: int = 0  # replayed (after shortening / divergence)
    shortened: int = 0  # expert actions dropped from k because the prefix did not fit the response budget
    diverged: bool = False
    compared: bool = False
    expert_action: str = ""
    expert_reply: str = ""
    agent_action: str = ""
    match: bool = False
    match_by: str = ""
    context_length: int = 0
    expert_reply_ids: list = field(default_factory=list)

    def begin(self, max_steps: int, reset_info: dict) -> None:
        """After ``env.reset``: the goal the expert's thoughts restate, and k capped so the policy keeps at least one
        env step (the prefix's steps count toward the env's ``max_steps``)."""
        self.goal = str(reset_info.get("goal") or "")
        self.k = max(0, min(int(self.k), int(max_steps) - 1))

    @property
    def expert_turns(self) -> int:
        return len(self.demo) if self.demo is not None else 0

    @property
    def will_compare(self) -> bool:
        """The first policy turn acts at a state where the expert's next action is known."""
        return self.demo is not None and not self.diverged and self.prefix_turns < len(self.demo)

    def next_reply(self, env_name: str, style: str, step: Optional[int] = None) -> Optional[str]:
        """The expert's reply at step ``step`` (default: a*_k, after the prefix), formatted as ``envs.expert``
        does; ``None`` when the action cannot be written in ``style`` (``format_action`` refuses it)."""
        j = self.prefix_turns if step is None else step
        action = self.demo.actions[j]
        try:
            return format_action(action, make_thought(env_name, action, self.goal, j), style)
        except ValueError:
            return None

    def compare(self, agent_action: str, executable: bool, anchor_after: str) -> None:
        """Record the comparison of the first policy turn with a*_k (see the module docstring)."""
        j = self.prefix_turns
        self.compared = True
        self.agent_action = agent_action or ""
        if agent_action and same_action(agent_action, self.expert_action):
            self.match, self.match_by = True, "action"
        elif agent_action and executable and self.demo.anchors is not None and anchor_after == self.demo.anchors[j]:
            self.match, self.match_by = True, "anchor"

    def as_dict(self) -> dict[str, Any]:
        return {"prefix_turns": int(self.prefix_turns), "expert_turns": int(self.expert_turns),
                "compared": bool(self.compared), "expert_action": self.expert_action if self.compared else "",
                "agent_action": self.agent_action if self.compared else "", "match": bool(self.match),
                "match_by": self.match_by, "context_length": int(self.context_length) if self.compared else 0,
                "expert_reply_ids": [int(t) for t in self.expert_reply_ids] if self.compared else []}

    def scalars(self) -> dict[str, float]:
        return {"stepagent_prefix_turns": float(self.prefix_turns), "stepagent_compared": float(self.compared),
                "stepagent_match": float(self.match), "stepagent/prefix_diverged": float(self.diverged),
                "stepagent/prefix_shortened": float(self.shortened)}


class ExpertPrefix:
    """Per agent-loop instance: the StepAgent settings and the demonstrations (cached per process by
    ``envs.expert.load_expert_demos``); ``None`` from :meth:`from_config` when the reward is not ``stepagent``."""

    def __init__(self, settings: StepAgentSettings, env_name: str):
        problems = [p for p in settings.problems() if "expert_path" in p or "prefix" in p or "reverse_steps" in p]
        if problems:
            raise ValueError("algorithm.reward=stepagent: " + "; ".join(problems))
        self.settings = settings
        self.demos = load_expert_demos(settings.expert_path)
        names = {d.env_name for d in self.demos.values() if d.env_name}
        if names and env_name not in names:
            raise ValueError(f"algorithm.stepagent.expert_path={settings.expert_path} holds demonstrations of "
                             f"{sorted(names)}, not of env {env_name!r}: point it at $DATA_DIR/{env_name}_sft.parquet")

    @classmethod
    def from_config(cls, config: Any, env_name: str) -> Optional[ExpertPrefix]:
        if select_key(config, "algorithm.reward") != "stepagent":
            return None
        return cls(StepAgentSettings.from_config(config), env_name)

    def start(self, task_id: str, split: str, global_steps: Any) -> Inspection:
        """The episode's inspection plan: no demo (nothing to do) on validation rows and tasks without one."""
        demo = self.demos.get(str(task_id)) if split == TRAIN_SPLIT else None
        if demo is None:
            return Inspection(None, 0)
        s = self.settings
        step = int(global_steps) if global_steps is not None else 0
        return Inspection(demo, prefix_length(s.prefix, len(demo), step, s.reverse_steps, s.seed, key=str(task_id)))


def attach(outputs: list, inspection: Optional[Inspection], enabled: bool, episode_key: str) -> None:
    """Write the ``stepagent`` dict on every output (the compared turn's values on the first row only) and, when
    inspection is on, the episode's scalars into every row's ``episode_info``."""
    for i, out in enumerate(outputs):
        if inspection is None:
            d = empty_stepagent()
        else:
            d = inspection.as_dict()
            if i > 0:  # window layout: later rows hold later steps, not the compared turn
                d = {**empty_stepagent(), "prefix_turns": d["prefix_turns"], "expert_turns": d["expert_turns"]}
        out.stepagent = d
        episode = out.extra_fields.get(episode_key)
        if isinstance(episode, dict):
            episode[STEPAGENT_KEY] = d
        if enabled:  # the episode's scalars on every row, like the rest of episode_info (metrics read one row)
            scalars = inspection.scalars() if inspection is not None else Inspection(None, 0).scalars()
            out.episode_info = {**out.episode_info, **scalars}


# ----------------------------------------------------------------------------------------------- tokens


def assistant_turn_ids(loop, messages: list[dict], reply: str) -> list[int]:
    """The tokens of ``reply`` as the next assistant turn after ``messages``, as a server would generate them:
    the chat template's rendering of the turn after the generation prompt, up to and including its end-of-turn
    token (the first special token after the reply: ChatML's ``<|im_end|>``, Llama-3's ``<|eot_id|>``, ...: where
    the server stops; what follows it, e.g. ChatML's newline, is a boundary token the token builder inserts with
    mask 0). Falls back to ``encode(reply) + [eos]`` when the template does not render the conversation as a
    prefix of the one with the reply."""
    builder = loop.continuous_token_builder
    tok = loop.tokenizer
    eos = tok.eos_token_id
    special = set(getattr(tok, "all_special_ids", None) or ([] if eos is None else [eos]))
    try:  # the builder's own renderer (verl.utils.tokenizer.continuous_token.ContinuousTokenBuilder._render_tokens)
        head = builder._render_tokens(list(messages), add_generation_prompt=True)
        full = builder._render_tokens(list(messages) + [{"role": "assistant", "content": reply}],
                                      add_generation_prompt=False)
    except Exception:  # a template that cannot render this; the plain encoding is what most servers give
        head, full = [], None
    if full is not None and full[: len(head)] == head and len(full) > len(head):
        delta = list(full[len(head):])
        for i, t in enumerate(delta):
            if t in special:
                return delta[: i + 1]
        return delta
    ids = list(tok.encode(reply, add_special_tokens=False))
    return ids + ([int(eos)] if eos is not None else [])


# ----------------------------------------------------------------------------------------------- replay


async def _expert_step(env, insp: Inspection, reply: Optional[str], j: int, style: str, metrics: dict):
    """Step expert action j (its reply ``reply``, parsed back as the loop parses a policy reply) in the env.
    Returns (action, obs, info, done, diverged); action ``None`` (nothing stepped) when the reply does not parse."""
    action = parse_action(reply, style).action if reply is not None else None
    if action is None:
        return None, None, {}, False, True
    with simple_timer("tool_calls", metrics):
        obs, _reward, done, info = await env.step(action)
    anchors = insp.demo.anchors
    diverged = (not info.get("executable", False)) or (anchors is not None and str(info.get("anchor")) != anchors[j])
    return action, obs, info, bool(done), bool(diverged or done)


async def play_packed_prefix(loop, env, ep, insp: Inspection, anchor: str, seed: Any, split: str,
                             budget_limit: int, metrics: dict) -> str:
    """Replay ``insp.k`` expert actions into ``ep`` (packed layout; see the module docstring), right after the reset
    and the prompt. Returns the anchor of the state the first policy turn acts on. ``seed``/``split`` are the
    reset's, for a replay again (reset + fewer actions) when the prefix does not fit the budget."""
    s = loop.settings
    style = s.prompt_style
    start = (list(ep.messages), list(ep.runtime), list(ep.mask), None if ep.logprobs is None else list(ep.logprobs))
    start_anchor, k = anchor, insp.k
    while True:
        fits_at = None
        for j in range(k):
            reply = insp.next_reply(ep.env_name, style, step=j)
            if reply is None:
                insp.diverged = True
                break
            ids = assistant_turn_ids(loop, ep.messages, reply)
            lps = [0.0] * len(ids) if ep.logprobs is not None else None
            merge, mask, new_lp = await loop.ct_merge_assistant_token(ep.runtime, ids, ep.mask, ep.logprobs, lps)
            mask[len(mask) - merge.appended_token_count:] = [0] * merge.appended_token_count  # not the policy's
            ep.runtime, ep.mask = list(merge.token_ids), mask
            if new_lp is not None:
                ep.logprobs = new_lp
            action, obs, info, done, diverged = await _expert_step(env, insp, reply, j, style, metrics)
            insp.prefix_turns = j + 1
            anchor = str(info.get("anchor", anchor))
            if done:  # the env ended the episode inside the expert's prefix: nothing left for the policy
                insp.diverged, ep.done, ep.truncation = True, True, "expert_prefix_done"
                return anchor
            ep.messages.append({"role": "assistant", "content": reply})
            previous = list(ep.messages)
            ep.messages.append({"role": "user", "content": format_observation(ep.env_name, obs, info,
                                                                               s.include_admissible)})
            merge, mask, new_lp = await loop.ct_merge_context_msg(previous, ep.messages, ep.runtime, ep.mask,
                                                                  ep.logprobs)
            ep.runtime, ep.mask = list(merge.token_ids), mask
            if new_lp is not None:
                ep.logprobs = new_lp
            ep.observations += 2  # verl's num_turns counts chat messages: the expert reply and its observation
            nxt = insp.next_reply(ep.env_name, style, step=j + 1) if j + 1 < len(insp.demo) and not diverged else None
            room = len(assistant_turn_ids(loop, ep.messages, nxt)) if nxt is not None else 1
            if len(ep.mask) + room > budget_limit:  # no room for the next reply: replay the steps that fit
                fits_at = j
                break
            if diverged:
                insp.diverged = True
                break
        if fits_at is None:
            return anchor
        # restart from the reset state with the k that fits (the env is deterministic given task and seed)
        insp.shortened += k - fits_at
        k = fits_at
        ep.messages, ep.runtime, ep.mask = list(start[0]), list(start[1]), list(start[2])
        ep.logprobs = None if start[3] is None else list(start[3])
        ep.observations, insp.prefix_turns, insp.diverged, anchor = 0, 0, False, start_anchor
        with simple_timer("tool_calls", metrics):
            await env.reset(ep.task_id, seed, split)


async def play_window_prefix(loop, env, ep, insp: Inspection, anchor: str, obs: str, info: dict,
                             history: list, metrics: dict) -> tuple[str, dict, str]:
    """Replay ``insp.k`` expert actions as history pairs (window layout). Returns (observation, info, anchor) of
    the state the first row acts on."""
    style = loop.settings.prompt_style
    for j in range(insp.k):
        action, next_obs, next_info, done, diverged = await _expert_step(
            env, insp, insp.next_reply(ep.env_name, style, step=j), j, style, metrics)
        if action is None:
            insp.diverged = True
            break
        insp.prefix_turns = j + 1
        history.append((obs, action))
        obs, info, anchor = next_obs, next_info, str(next_info.get("anchor", anchor))
        if done:
            insp.diverged, ep.done, ep.truncation = True, True, "expert_prefix_done"
            break
        if diverged:
            insp.diverged = True
            break
    return obs, info, anchor


def before_first_turn(loop, ep, insp: Optional[Inspection], messages: list[dict], context_length: int) -> None:
    """At the first policy turn: fix a*_k, its reply tokens in this context, and where the turn starts."""
    if insp is None or not insp.will_compare or ep.num_turns:
        return
    insp.expert_action = insp.demo.actions[insp.prefix_turns]
    insp.expert_reply = insp.next_reply(ep.env_name, loop.settings.prompt_style) or ""
    insp.expert_reply_ids = assistant_turn_ids(loop, messages, insp.expert_reply) if insp.expert_reply else []
    insp.context_length = int(context_length)


def after_first_turn(ep, insp: Optional[Inspection], anchor_after: str) -> None:
    """After the first policy turn's env step: compare its action with a*_k."""
    if insp is None or not insp.will_compare or ep.num_turns != 1 or insp.compared or not insp.expert_action:
        return
    insp.compare(ep.actions[0], bool(ep.executable[0]), anchor_after)


__all__ = ["Inspection", "ExpertPrefix", "after_first_turn", "assistant_turn_ids", "attach", "before_first_turn",
           "empty_stepagent", "play_packed_prefix", "play_window_prefix", "same_action"]
