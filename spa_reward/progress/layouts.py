"""Both context layouts from one trajectory record: the packed sequence and the window layout's per-step rows.

A record collected by the ``env_agent`` loop (either ``env.history``) keeps the raw pieces every prompt is built
from in ``extra["prompt_pieces"]`` (see :mod:`spa_reward.records`): each step's raw observation and the part of its
info the prompt builders read (``envs.prompts.prompt_info``; step 0's is the reset info, which carries the goal),
the prompt settings, and the name of verl's continuous-token builder that tokenised the chat. The replies are the
record's own turn spans, so every rebuilt sequence holds exactly the tokens the policy generated.

* :func:`window_sequences` (the window layout, ``env.history=window``): T sequences, one per step::

      sequence_t = builder.build_initial_tokens(build_window_messages(step t))  +  reply tokens of turn t
      turn end   = the sequence's last token

  For a record collected in the window layout this is token for token what the loop emitted (the pairs shown in
  each prompt are the recorded ``history_shown``, so pairs the loop dropped to fit ``rollout.prompt_length`` stay
  dropped; the recorded prompt lengths are checked). For a record collected in the full layout, step t shows
  ``min(k, t)`` pairs for the ``history_length`` k asked for (no prompt-length limit is applied).
* :func:`packed_view` (the full layout): the packed prompt + response tokens the full-history loop builds for the
  same replies (initial prompt, then reply / observation merges through the same builder), without the
  ``rollout.response_length`` budget. The window loop writes it as the record's ``input_ids``.

The builder is verl's continuous-token builder (``verl.utils.tokenizer.continuous_token_wiring``), the one the
agent loop tokenises with: :func:`make_token_builder` makes one from a tokenizer (and the policy's HF
``model_type``, which picks model-specific boundary handling). A builder of another class than the record's is
refused: its token ids would not be the rollout's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from envs.prompts import build_messages, build_window_messages, format_observation

from ..records import LAYOUTS, TrajectoryRecord, prompt_pieces, record_layout

__all__ = ["LAYOUTS", "PackedView", "WindowRow", "builder_name", "check_token_ids", "make_token_builder",
           "packed_view", "window_sequences"]


@dataclass
class WindowRow:
    """One step of the window layout: ``input_ids`` = window prompt + reply, ``prompt_length`` prompt tokens; the
    turn end is ``len(input_ids) - 1``."""

    input_ids: list[int]
    prompt_length: int
    history_shown: int

    @property
    def turn_end(self) -> int:
        return len(self.input_ids) - 1


@dataclass
class PackedView:
    """The full layout of an episode: ``input_ids``, ``prompt_length``, ``turn_spans`` ([start, end) per turn, in
    ``input_ids`` coordinates) and the chat ``messages`` (opening chat, replies, observations)."""

    input_ids: list[int]
    prompt_length: int
    turn_spans: list[list[int]]
    messages: list[dict]


def make_token_builder(tokenizer: Any, hf_model_type: str | None = None, chat_template_kwargs: dict | None = None):
    """verl's continuous-token builder for ``tokenizer``, as the agent loop makes it (``AgentLoopBase.__init__``):
    ``hf_model_type`` is the policy's HF ``model_type`` (e.g. ``"qwen2"``), ``chat_template_kwargs`` the run's
    ``data.apply_chat_template_kwargs``."""
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    return create_continuous_token_builder(tokenizer, hf_model_type=hf_model_type,
                                           chat_template_kwargs=dict(chat_template_kwargs or {}))


def builder_name(builder: Any) -> str:
    return type(builder).__name__


def _check_builder(rec: TrajectoryRecord, pieces: Mapping, builder: Any) -> None:
    if not hasattr(builder, "build_initial_tokens"):
        raise TypeError(f"builder must be verl's continuous-token builder (make_token_builder), not "
                        f"{type(builder).__name__}")
    want = pieces.get("token_builder")
    if want and want != builder_name(builder):
        raise ValueError(
            f"record {rec.episode_id!r} was tokenised by {want}, this builder is {builder_name(builder)}: the rebuilt "
            "token ids would differ from the rollout's. Pass the policy's HF model_type to make_token_builder "
            "(--hf-model-type for the estimator trainer)"
        )
    kwargs = pieces.get("chat_template_kwargs") or {}
    have = getattr(builder, "chat_template_kwargs", {}) or {}
    if dict(kwargs) != dict(have):
        raise ValueError(f"record {rec.episode_id!r} was tokenised with chat_template_kwargs={dict(kwargs)}, this "
                         f"builder uses {dict(have)}")


def window_sequences(rec: TrajectoryRecord, builder: Any, history_length: int | None = None) -> list[WindowRow]:
    """The window layout of ``rec``: one :class:`WindowRow` per turn (see the module docstring).

    ``history_length`` (k): pairs shown per prompt; ``None`` = the k the record was collected with (a record
    collected in the full layout needs it). Raises :class:`~spa_reward.records.RecordError` for a record without
    the pieces (collected before they were kept) and ``ValueError`` when the builder is not the rollout's."""
    pieces = prompt_pieces(rec)
    _check_builder(rec, pieces, builder)
    collected_k = pieces.get("history_length")
    if history_length is None:
        if collected_k is None:
            raise ValueError(f"record {rec.episode_id!r} was collected in the full layout: pass the window's "
                             "history_length (e.g. --history-length 2)")
        history_length = int(collected_k)
    k = int(history_length)
    if k < 0:
        raise ValueError(f"history_length must be >= 0, got {history_length}")
    T = rec.num_turns
    same_as_played = record_layout(rec) == "window" and collected_k is not None and int(collected_k) == k
    shown = [int(x) for x in pieces["history_shown"]] if same_as_played else [min(k, t) for t in range(T)]
    observations, infos, actions = pieces["observations"], pieces["infos"], rec.actions
    history = [(observations[t], actions[t]) for t in range(T)]
    style = pieces.get("style", "react")
    rows = []
    for t in range(T):
        messages = build_window_messages(rec.env_name, observations[t], infos[t], history[:t], shown[t], infos[0],
                                         style, bool(pieces.get("one_shot", False)),
                                         bool(pieces.get("system_prompt", True)), pieces.get("include_admissible"))
        prompt = list(builder.build_initial_tokens(messages))
        start, end = rec.turn_spans[t]
        rows.append(WindowRow(prompt + list(rec.input_ids[start:end]), len(prompt), shown[t]))
    lengths = pieces.get("window_prompt_lengths")
    if same_as_played and lengths is not None:
        got = [r.prompt_length for r in rows]
        if got != [int(x) for x in lengths]:
            t = next(i for i, (a, b) in enumerate(zip(got, lengths)) if a != b)
            raise ValueError(f"record {rec.episode_id!r}: the rebuilt window prompt of step {t} has {got[t]} tokens, "
                             f"the rollout's had {lengths[t]}: this tokenizer/builder is not the policy's")
    return rows


def check_token_ids(replies: Sequence[Sequence[int]], tokenizer: Any) -> None:
    """Every id of every reply is a token of ``tokenizer`` (0 <= id < len(tokenizer)); else a ValueError naming the
    reply, the position and the id (a tokenizer's decode raises ``OverflowError`` for -1, e.g. from a padded
    array, and may return garbage for ids past its vocabulary)."""
    import numpy as np

    size = len(tokenizer)
    for t, reply in enumerate(replies):
        ids = np.asarray(reply, dtype=np.int64).reshape(-1)
        bad = np.flatnonzero((ids < 0) | (ids >= size))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"reply {t} has token id {int(ids[i])} at position {i}, outside the tokenizer's "
                             f"vocabulary of {size} ids ({bad.size} such ids in this reply): the replies are not "
                             "this tokenizer's (or hold padding, e.g. -1); pass the policy's tokenizer and unpadded "
                             "ids")


def packed_view(env_name: str, pieces: Mapping, replies: Sequence[Sequence[int]], builder: Any) -> PackedView:
    """The full-history sequence of an episode from its pieces (``extra["prompt_pieces"]`` layout) and its reply
    tokens, built with ``builder`` exactly as the packed loop merges them (``EnvAgentLoop._play``), without the
    response-length budget."""
    check_token_ids(replies, builder.tokenizer)
    observations, infos = pieces["observations"], pieces["infos"]
    style, one_shot = pieces.get("style", "react"), bool(pieces.get("one_shot", False))
    include = pieces.get("include_admissible")
    messages = build_messages(env_name, observations[0], infos[0], style, one_shot,
                              bool(pieces.get("system_prompt", True)), include)
    runtime = list(builder.build_initial_tokens(messages))
    prompt_length = len(runtime)
    spans: list[list[int]] = []
    for t, reply in enumerate(replies):
        merge = builder.merge_assistant_tokens(runtime, list(reply))
        runtime = list(merge.token_ids)
        spans.append([len(runtime) - merge.appended_token_count, len(runtime)])
        if t == len(replies) - 1:
            break
        messages.append({"role": "assistant", "content": builder.tokenizer.decode(list(reply),
                                                                                 skip_special_tokens=True)})
        previous = list(messages)
        messages.append({"role": "user", "content": format_observation(env_name, observations[t + 1], infos[t + 1],
                                                                       include)})
        merge = builder.merge_context_tokens(previous, messages, runtime)
        runtime = list(merge.token_ids)
        if merge.removed_prefix_token_count:  # the merge trimmed the end of the reply (a boundary token)
            kept = len(runtime) - merge.appended_token_count - len(merge.inserted_token_ids)
            spans[-1][1] = max(spans[-1][0] + 1, min(spans[-1][1], kept))
    return PackedView(runtime, prompt_length, spans, messages)
