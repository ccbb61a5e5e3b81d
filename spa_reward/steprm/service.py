"""The step-reward model service: one model that gives each assistant turn a reward and, when its objective is
online, learns from every RL batch.

* :class:`StepRMSettings`: what to build (objective, loss, model, optimiser, schedule); the trainer hooks' service
  plan fills it from ``algorithm.istar`` (objective ``implicit``, loss ``trajectory_dpo``), ``algorithm.spa.online``
  (``progress``, loss = ``algorithm.spa.objective``: ``sum`` or ``prefix``, see ``objectives.PROGRESS_OBJECTIVES``;
  ``mse`` is the old name of ``sum``) or ``algorithm.stepagent`` (``implicit`` + ``step_dpo``, or
  ``discriminator`` + ``bce``).
* :class:`StepRewardModel`: the in-process service. ``score(items)`` -> one reward per turn per item;
  ``update(items)`` -> a few optimiser steps on the batch's finished episodes plus a replay window of the last K
  batches; ``save(dir)`` / ``load(dir)`` -> weights, optimiser, replay window, counters (a resumed run scores
  exactly like an uninterrupted one).
* :class:`StepRewardServiceActor`, :func:`start_service`, :func:`lookup_service`, :func:`call_service`: the Ray side.
  The trainer process starts the named actor once (with a timeout that names the resources asked for); reward
  workers and the trainer look it up by name and ``await`` it; a dead actor is restarted by Ray
  (``max_restarts``) and looked up again once by :func:`call_service`. A restarted *online* actor restores the
  state it published after its last update (:func:`publish_state`, :func:`restore_state`) before it serves, or
  refuses to serve (:class:`ServiceNotRestoredError`).

An item is a dict::

    input_ids      list[int]          prompt + response tokens
    prompt_length  int
    turn_spans     list[[start, end)] assistant turns in input_ids coordinates. The progress objective also takes
                                      ``turn_starts`` (first token of each turn) + ``turn_ends`` (last token,
                                      inclusive) instead, the reward manager's form: turn t is
                                      ``[turn_starts[t], turn_ends[t] + 1)``; ``turn_ends`` alone only for ``sum``
                                      (``prefix`` reads the token before each turn's first one and refuses it)
    ref_logprobs   list[float]        implicit + reference=rollout: log-prob of every input token under the rollout
                                      policy (aligned with input_ids; prompt positions are ignored)
    uid, success, reward              for ``update``: the group id, won (implicit) and the episode reward R (progress)
    episode        str                optional, for ``update``: the episode the row belongs to. In the window layout
                                      (``env.history=window``) an episode is several rows, one per step (the
                                      trainer hooks pass ``{uid}_{session_id}`` from the TransferQueue keys); the
                                      losses then aggregate over the episode's rows: iStar's ``Q`` is the mean of
                                      ``beta * q_t`` over all its turns, the progress target is ``sum of its rows'
                                      c_t ~ R``. Rows of one episode must agree on uid, success and reward. Missing
                                      or empty: the item is an episode of its own (the packed layout).

The pair losses (``step_dpo``, ``bce``: StepAgent) train on *pair items* instead (``update`` only; scoring takes
the items above)::

    input_ids      list[int]          the state s: every token before the compared turn
    expert_ids     list[int]          the expert's action at s, as the tokens of an assistant turn
    agent_ids      list[int]          the agent's action at s (its own compared-turn tokens)
    prompt_length  int                optional: where the prompt ends inside s (truncation keeps it)

Each pair becomes two one-turn items, ``s + a_expert`` (label 1) and ``s + a_agent`` (label 0), sharing a pair id;
a pair whose two actions are the same tokens carries no signal and is skipped (``stats["identical_pairs"]``).

Scoring always uses the weights as they were when the call started: an online service trains a separate copy and
swaps the trained weights into the serving copy at the end of each update, under the serving lock, so a reward
call that arrives during an update is answered from the pre-update weights. Memory: an online service holds two
copies of the model (training and serving) plus the optimiser state; with LoRA only the adapter tensors are
copied at each swap, but both copies still hold the frozen base (sharing it is a possible saving, not done).

Precision (:func:`precision`): a model that trains keeps fp32 master weights and fp32 AdamW state and computes in
bf16 under autocast on CUDA (verl's actor does the same: ``model_dtype: fp32``, bf16 compute); a frozen scorer
holds bf16 weights on CUDA. Plain AdamW on bf16 weights loses every step smaller than the weight's bf16 spacing
(at lr 1e-6 about 2% of the weights ever move), so an online model whose trainable weights are not fp32 is refused.
Memory at real lengths: forwards and backwards run on micro-batches of at most ``micro_batch_size`` sequences
and ``max_token_len`` padded tokens (:func:`objectives.token_budget_batches`); the implicit objective takes the
log-probs of the taken turn tokens from the last hidden states a chunk at a time
(:func:`objectives.taken_token_logprobs`), never the full (bs, L, V) logits, and checks at build that this equals
the model's own log-softmax. Scale: ``gradient_checkpointing`` and ``lora_r`` (peft) are implemented and tested on CPU; one actor uses the GPUs
it is given (``num_gpus``). Several GPUs: :mod:`spa_reward.steprm.sharded` (``start_service(..., ranks=N)``)
shards this model with FSDP2 over N rank actors behind the same actor interface; :meth:`StepRewardModel._place`,
``_serving_copy``, ``_values``, ``_accumulate``, ``save`` and ``load`` are where it differs.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import os
import re
import shutil
import threading
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

import torch

from spa_reward import gpu_actor_device
from spa_reward.steprm import objectives as obj

logger = logging.getLogger(__name__)

OBJECTIVES = ("progress", "implicit", "discriminator")
# the losses each objective trains with; the first is its default
LOSSES = {"progress": obj.PROGRESS_OBJECTIVES, "implicit": ("trajectory_dpo", "step_dpo"), "discriminator": ("bce",)}
LOSS_ALIASES = {("progress", "mse"): "sum"}  # the progress loss's name before the objectives had names
PAIR_LOSSES = ("step_dpo", "bce")  # trained on (expert, agent) pair items
REFERENCES = ("rollout", "frozen")
STATE_FORMAT = 1
DCP_LAYOUT = "dcp"  # state.json "layout" of a state saved by a sharded group (spa_reward.steprm.sharded)
SERVICE_NAME = "spa_step_reward_service"


@dataclass
class StepRMSettings:
    """Settings of a :class:`StepRewardModel`.

    Args:
        objective: ``progress`` (SPA: c_t with sum_t c_t ~ R), ``implicit`` (iStar / StepAgent: r_t = beta * q_t)
            or ``discriminator`` (StepAgent irl: r_t = clip(logit of D(s, a)), a causal-LM backbone + scalar head).
        loss: ``sum`` | ``prefix`` (progress: the estimator's objective, which a trained
            ``model_path`` must have been trained with; ``mse`` = ``sum``), ``trajectory_dpo`` (implicit, iStar) or
            ``step_dpo`` (implicit, StepAgent: pairs of expert/agent actions at one state), ``bce``
            (discriminator); None = the objective's default.
        reward_clip: discriminator: |r_t| bound of the scored reward (``objectives.irl_reward``).
        online: train on every RL batch (``update``); ``False`` = a frozen scorer (``update`` refuses).
        model_path: ``implicit``: the causal LM to start from (the policy checkpoint); ``progress``: a trained
            progress estimator dir (``python -m spa_reward.progress.train``).
        backbone_config: a ``PretrainedConfig.to_dict()`` to build a random model instead (tests, synthetic).
        beta: iStar's beta (step reward = beta * q_t; trajectory score = mean_t beta * q_t).
        reference: ``rollout`` (pi_ref = the rollout policy's old log-probs, sent with each item: the authors'
            default) or ``frozen`` (a frozen copy of the initial model).
        lr, grad_clip, weight_decay: AdamW and gradient-norm clip.
        steps_per_batch: optimiser steps per ``update``; each step sees every episode of the replay window.
        replay_batches: K, the window of the last K batches trained on (1 = the current batch only).
        micro_batch_size: at most this many sequences per forward/backward (gradient accumulation over a step).
        max_token_len: and at most this many padded tokens per forward/backward (rows x the longest; verl's
            ``ppo_max_token_len_per_gpu``); a longer sequence is a micro-batch of its own.
        max_length: progress objective: truncation length (default: the estimator's); implicit: longer items raise.
        dtype: weight dtype; ``auto`` = fp32 master weights for an online model, bf16 on CUDA for a frozen scorer
            (:func:`precision`). An online model with bf16 / fp16 trainable weights is refused.
        autocast_bf16: bf16 autocast for forwards and backwards (``auto`` = on CUDA).
        gradient_checkpointing, lora_r, lora_alpha: memory options for large models (LoRA through peft).
        head: progress head for a random model (``mlp`` | ``linear`` | ``logits_linear``).
        seed: seeds the optimiser-side randomness (dropout) per update, so a resumed run repeats it.
        device: default CUDA when available.
    """

    objective: str = "progress"
    loss: Optional[str] = None
    reward_clip: float = 5.0
    online: bool = False
    model_path: Optional[str] = None
    backbone_config: Optional[dict] = None
    beta: float = 0.05
    reference: str = "rollout"
    lr: float = 1e-6
    grad_clip: float = 10.0
    weight_decay: float = 0.0
    steps_per_batch: int = 1
    replay_batches: int = 1
    micro_batch_size: int = 8
    max_token_len: int = 16384
    max_length: Optional[int] = None
    dtype: str = "auto"
    autocast_bf16: bool | str = "auto"
    gradient_checkpointing: bool = False
    lora_r: int = 0
    lora_alpha: int = 16
    head: str = "mlp"
    seed: int = 0
    device: Optional[str] = None

    def __post_init__(self):
        if self.loss is None and self.objective in LOSSES:
            self.loss = LOSSES[self.objective][0]
        self.loss = LOSS_ALIASES.get((self.objective, self.loss), self.loss)
        problems = self.problems()
        if problems:
            raise ValueError("step-reward model settings: " + "; ".join(problems))

    def problems(self) -> list[str]:
        p = []
        if self.objective not in OBJECTIVES:
            p.append(f"objective={self.objective!r} is not one of {OBJECTIVES}")
        elif self.loss not in LOSSES[self.objective]:
            p.append(f"loss={self.loss!r} does not train the {self.objective!r} objective (known: "
                     f"{LOSSES[self.objective]})")
        if self.reference not in REFERENCES:
            p.append(f"reference={self.reference!r} is not one of {REFERENCES}")
        elif self.loss == "step_dpo" and self.reference != "frozen":
            p.append("loss='step_dpo' needs reference='frozen': the expert's reply tokens have no rollout log-probs")
        v = _float(self.reward_clip)
        if v is None or not (math.isfinite(v) and v > 0):
            p.append(f"reward_clip={self.reward_clip!r} must be a finite number > 0")
        if self.model_path is None and self.backbone_config is None:
            p.append("model_path is not set (implicit: the policy checkpoint; progress: a trained estimator dir)")
        for name in ("beta", "lr", "grad_clip"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                p.append(f"{name}={v} must be a finite number > 0")
        for name in ("steps_per_batch", "replay_batches", "micro_batch_size", "max_token_len"):
            if int(getattr(self, name)) < 1:
                p.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.lora_r < 0:
            p.append(f"lora_r={self.lora_r} must be >= 0")
        if self.autocast_bf16 not in (True, False, "auto"):
            p.append(f"autocast_bf16={self.autocast_bf16!r} must be true, false or 'auto' (on CUDA)")
        try:
            weights = None if self.dtype in (None, "auto") else _resolve_dtype(self.dtype)
        except ValueError as e:
            p.append(f"dtype={self.dtype!r}: {e}")
        else:
            if self.online and weights in HALF_DTYPES and self.lora_r == 0:
                p.append(f"dtype={self.dtype!r} with online=true cannot train: AdamW on {weights} weights drops "
                         "every step smaller than the weight's spacing (at lr 1e-6 about 2% of the weights ever "
                         "move). Use dtype=auto or float32 (fp32 master weights; bf16 compute with "
                         "autocast_bf16=true), or LoRA (lora_r > 0: fp32 adapters on a bf16 base)")
        return p

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StepRMSettings:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown step-reward model settings {unknown} (known: {sorted(names)})")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


HALF_DTYPES = (torch.bfloat16, torch.float16)


def _resolve_dtype(dtype, device=None) -> torch.dtype:
    from spa_reward.progress.model import resolve_dtype

    return resolve_dtype(dtype, device)


def precision(settings: StepRMSettings, device: torch.device | str) -> tuple[torch.dtype, bool]:
    """``(weight dtype, bf16 autocast)`` of a step-reward model on ``device``.

    ``dtype=auto``: an online model keeps fp32 master weights (its optimiser state is fp32 too), a frozen scorer
    bf16 weights on CUDA and fp32 elsewhere. ``autocast_bf16=auto``: bf16 compute on CUDA. So on a GPU a training
    PRM computes in bf16 and updates fp32 weights (verl's ``model_dtype: fp32`` with bf16 mixed precision); on a
    CPU everything is fp32 unless asked."""
    device = torch.device(device)
    if settings.dtype in (None, "auto"):
        weights = torch.float32 if settings.online else _resolve_dtype("auto", device)
    else:
        weights = _resolve_dtype(settings.dtype, device)
    auto = settings.autocast_bf16 == "auto"
    return weights, bool(device.type == "cuda" if auto else settings.autocast_bf16)


def _float(x) -> Optional[float]:
    try:
        return None if isinstance(x, bool) else float(x)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ items


@dataclass
class _Item:
    input_ids: list[int]
    prompt_length: int
    spans: list[list[int]]  # [start, end) per turn, input_ids coordinates
    ref_logprobs: Optional[list[float]] = None
    uid: str = ""
    success: bool = False
    reward: float = 0.0
    episode: str = ""  # "" = an episode of its own (packed layout); window layout: "{uid}_{session_id}"

    def to_json(self) -> dict:
        return asdict(self)


def _as_list(x) -> list:
    return x.tolist() if hasattr(x, "tolist") else list(x)


def _spans_from_turn_ends(i: int, it: Mapping[str, Any], loss: Optional[str]) -> list[list[int]]:
    """``[start, end)`` spans of a progress item given as ``turn_ends`` (last token of each turn, inclusive) and
    ``turn_starts`` (first token of each turn): the reward manager's and ``ProgressScorer``'s form. With
    ``turn_starts`` turn t is ``[turn_starts[t], turn_ends[t] + 1)``. Without it only the ``sum`` objective (which
    reads each turn's last token only) has a meaning: ``[turn_ends[t], turn_ends[t] + 1)``; ``prefix`` reads the
    token before each turn's first one and refuses the item (as ``ProgressScorer`` does)."""
    ends = [int(e) for e in _as_list(it["turn_ends"])]
    if it.get("turn_starts") is None:
        if loss in obj.PROGRESS_OBJECTIVES and obj.reads_before(loss):
            raise ValueError(f"item {i} has 'turn_ends' but no 'turn_starts': the {loss!r} progress objective reads "
                             "the value before each turn, at the token before the turn's first one (turn_starts: "
                             "first token of each turn; or pass turn_spans)")
        return [[e, e + 1] for e in ends]  # the sum objective reads only each turn's last token
    starts = [int(a) for a in _as_list(it["turn_starts"])]
    if len(starts) != len(ends) or any(not a <= e for a, e in zip(starts, ends)):
        raise ValueError(f"item {i}: turn_starts {starts} do not fit turn_ends {ends} (one first token per turn, at "
                         "or before the turn's last token)")
    return [[a, e + 1] for a, e in zip(starts, ends)]


def parse_settings_items(batch: Sequence[Mapping[str, Any]], settings: StepRMSettings) -> list[_Item]:
    """:func:`parse_items` for a model with ``settings``: its objective, the reference log-probs an implicit PRM
    against the rollout policy needs, and its progress loss."""
    return parse_items(batch, settings.objective,
                       need_ref=settings.objective == "implicit" and settings.reference == "rollout",
                       loss=settings.loss)


def parse_items(batch: Sequence[Mapping[str, Any]], objective: str, need_ref: bool,
                loss: Optional[str] = None) -> list[_Item]:
    """Validate ``batch`` (see the module docstring); ``ValueError`` names the bad item and field. ``loss``: the
    progress objective (``sum`` / ``prefix``); ``prefix`` refuses a ``turn_ends`` item without ``turn_starts``
    (None: not checked here)."""
    if isinstance(batch, Mapping):
        raise TypeError("pass a list of items, not a single dict")
    out = []
    for i, it in enumerate(batch):
        if not isinstance(it, Mapping) or "input_ids" not in it:
            raise ValueError(f"item {i} must be a dict with 'input_ids' and 'turn_spans'")
        ids = [int(t) for t in _as_list(it["input_ids"])]
        if "turn_spans" in it:
            spans = [[int(a), int(b)] for a, b in _as_list(it["turn_spans"])]
        elif "turn_ends" in it and objective == "progress":
            spans = _spans_from_turn_ends(i, it, loss)
        else:
            raise ValueError(f"item {i} needs 'turn_spans' ([start, end) per assistant turn, input_ids coordinates)")
        prev = 0
        for t, (a, b) in enumerate(spans):
            if not prev <= a < b <= len(ids):
                raise ValueError(f"item {i}: turn_spans[{t}]={[a, b]} is empty, overlaps or leaves [0, {len(ids)})")
            prev = b
        ref = None
        if need_ref:
            if it.get("ref_logprobs") is None:
                raise ValueError(f"item {i} has no 'ref_logprobs' (reference=rollout needs the rollout log-probs)")
            ref = [float(x) for x in _as_list(it["ref_logprobs"])]
            if len(ref) != len(ids):
                raise ValueError(f"item {i}: {len(ref)} ref_logprobs for {len(ids)} input_ids")
        out.append(_Item(ids, int(it.get("prompt_length") or 0), spans, ref, str(it.get("uid", "")),
                         bool(it.get("success", False)), float(it.get("reward", 0.0)), str(it.get("episode") or "")))
    _check_episodes(out)
    return out


def _check_episodes(items: Sequence[_Item]) -> None:
    """Rows of one episode (same non-empty ``episode``) must agree on uid, success and reward."""
    first: dict[str, int] = {}
    for i, it in enumerate(items):
        if not it.episode:
            continue
        j = first.setdefault(it.episode, i)
        a = items[j]
        for name in ("uid", "success", "reward"):
            if getattr(it, name) != getattr(a, name):
                raise ValueError(f"item {i}: episode {it.episode!r} has {name}={getattr(it, name)!r} here and "
                                 f"{getattr(a, name)!r} at item {j}; the rows of one episode share its uid, success "
                                 "and reward")


def episode_index(items: Sequence[_Item]) -> tuple[torch.Tensor, list[int]]:
    """``(index (rows,) long, first row of each episode)``: rows with the same non-empty ``episode`` are one
    episode (numbered in order of first appearance); a row with an empty ``episode`` is an episode of its own."""
    ids: dict[str, int] = {}
    index, first = [], []
    for i, it in enumerate(items):
        key = it.episode if it.episode else f"\0row{i}"  # "\0": never a real key
        e = ids.setdefault(key, len(ids))
        if e == len(first):
            first.append(i)
        index.append(e)
    return torch.tensor(index, dtype=torch.long), first


def parse_pair_items(batch: Sequence[Mapping[str, Any]], tag: str = "") -> tuple[list[_Item], int]:
    """Pair items (see the module docstring) -> ``(one-turn items, identical pairs skipped)``: for pair i,
    ``s + a_expert`` (success True) then ``s + a_agent`` (success False), both with uid ``f"{tag}{i}"``."""
    if isinstance(batch, Mapping):
        raise TypeError("pass a list of pair items, not a single dict")
    out, identical = [], 0
    for i, it in enumerate(batch):
        if not isinstance(it, Mapping) or any(k not in it for k in ("input_ids", "expert_ids", "agent_ids")):
            raise ValueError(f"pair item {i} must be a dict with 'input_ids' (the state), 'expert_ids' and 'agent_ids'")
        s = [int(t) for t in _as_list(it["input_ids"])]
        a_exp = [int(t) for t in _as_list(it["expert_ids"])]
        a_agent = [int(t) for t in _as_list(it["agent_ids"])]
        if not s or not a_exp or not a_agent:
            raise ValueError(f"pair item {i}: the state ({len(s)} tokens), the expert action ({len(a_exp)}) and the "
                             f"agent action ({len(a_agent)}) must all be non-empty")
        if a_exp == a_agent:
            identical += 1
            continue
        plen = min(int(it.get("prompt_length") or 0), len(s))
        for a, won in ((a_exp, True), (a_agent, False)):
            out.append(_Item(s + a, plen, [[len(s), len(s) + len(a)]], None, f"{tag}{i}", won, 0.0))
    return out, identical


# ------------------------------------------------------------------------------------------------ model


def _valid_turns(prepared: list, chunk: list[int], values: torch.Tensor) -> torch.Tensor:
    """(mb, K) bool: turn k of the chunk's row is one of its item's turns (``values`` (mb, K) gives K and device)."""
    counts = torch.tensor([len(prepared[i][1]) for i in chunk])
    return (torch.arange(values.shape[1]).unsqueeze(0) < counts.unsqueeze(1)).to(values.device)


def _device(name: Optional[str]) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


class StepRewardModel:
    """In-process step-reward model service (see the module docstring)."""

    def __init__(self, settings: StepRMSettings | Mapping[str, Any]):
        self.settings = s = settings if isinstance(settings, StepRMSettings) else StepRMSettings.from_dict(settings)
        self.device = _device(s.device)
        self.dtype, self.autocast_bf16 = precision(s, self.device)
        torch.manual_seed(s.seed)
        self.model = self._build_model()
        self.reference = None
        if s.objective == "implicit" and s.reference == "frozen":
            self.reference = copy.deepcopy(self._base(self.model)).requires_grad_(False).eval()
        if s.lora_r > 0 and s.objective == "implicit":
            import peft

            cfg = peft.LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, target_modules="all-linear", bias="none")
            self.model = peft.get_peft_model(self.model, cfg)
        if s.gradient_checkpointing:
            if self._head_model:
                self.model.enable_gradient_checkpointing()
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                if hasattr(self.model, "enable_input_require_grads"):
                    self.model.enable_input_require_grads()
        self._place()
        self.serving = self.model
        self.optimizer = None
        if s.online:
            params = [p for p in self.model.parameters() if p.requires_grad]
            half = sorted({str(p.dtype) for p in params if p.dtype != torch.float32})
            if half:
                raise ValueError(f"this online step-reward model has trainable weights in {half}: AdamW cannot "
                                 "update them at small learning rates. Use dtype=auto or float32 (fp32 master "
                                 "weights, bf16 compute with autocast_bf16)")
            self.serving = self._serving_copy()
            self.optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
        else:
            self.model.requires_grad_(False)
        self.serving.eval()
        self.window: deque[list[_Item]] = deque(maxlen=int(s.replay_batches))
        self.version = 0  # completed updates
        self.stats = {"score_calls": 0, "scored_items": 0, "updates": 0, "trained_episodes": 0, "skipped_episodes": 0,
                      "identical_pairs": 0}
        self._serve_lock = threading.Lock()  # one forward of the serving copy at a time; held while swapping
        self._train_lock = threading.Lock()

    # -------------------------------------------------------------------------------------------- building

    @property
    def _reads_before(self) -> bool:
        """Progress objective ``prefix``: the head is read at the token before each turn (V before the step)."""
        return self.settings.objective == "progress" and obj.reads_before(self.settings.loss)


    @property
    def _head_model(self) -> bool:
        """A backbone + scalar head read at each turn's last token (progress, discriminator), not a causal LM."""
        return self.settings.objective in ("progress", "discriminator")

    def _build_model(self):
        s = self.settings
        if s.objective == "discriminator":
            # a fresh scalar head on the policy checkpoint's backbone (ProgressEstimator built from a causal-LM path)
            from spa_reward.progress.model import ProgressEstimator, ProgressEstimatorConfig

            cfg = ProgressEstimatorConfig(backbone=s.model_path,
                                          backbone_config=None if s.model_path else dict(s.backbone_config),
                                          head=s.head, lora_r=s.lora_r, lora_alpha=s.lora_alpha,
                                          max_length=s.max_length or 4096)
            model = ProgressEstimator(cfg, dtype=self.dtype)
            text = model.base_backbone.config
            text = text.get_text_config() if hasattr(text, "get_text_config") else text
            self.max_length = int(s.max_length or getattr(text, "max_position_embeddings", 4096))
            self.keep_prompt = True
            self.vocab_rows = int(model.base_backbone.get_input_embeddings().weight.shape[0])
            self.pad_id = int(getattr(text, "pad_token_id", None) or 0)
            return model
        if s.objective == "progress":
            from spa_reward.progress.model import ProgressEstimator, ProgressEstimatorConfig

            if s.model_path is not None:
                from spa_reward.progress.serve import resolve_estimator_dir

                model = ProgressEstimator.from_pretrained(resolve_estimator_dir(s.model_path), dtype=self.dtype)
                if model.config.objective != s.loss:
                    raise ValueError(f"the progress estimator {s.model_path!r} was trained with the "
                                     f"{model.config.objective!r} objective, this service trains {s.loss!r} "
                                     "(algorithm.spa.objective): set the estimator's objective or retrain it with "
                                     f"--objective {s.loss}")
            else:
                cfg = ProgressEstimatorConfig(backbone_config=dict(s.backbone_config), head=s.head,
                                              lora_r=s.lora_r, max_length=s.max_length or 4096, objective=s.loss)
                model = ProgressEstimator(cfg, dtype=self.dtype)
            self.max_length = int(s.max_length or model.config.max_length)
            self.keep_prompt = bool(model.config.keep_prompt_on_truncation)
            self.vocab_rows = int(model.base_backbone.get_input_embeddings().weight.shape[0])
            self.pad_id = int(model.config.pad_token_id)
            return model
        from transformers import AutoConfig, AutoModelForCausalLM

        if s.model_path is not None:
            model = AutoModelForCausalLM.from_pretrained(s.model_path, dtype=self.dtype)
        else:
            cfg = dict(s.backbone_config)
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=self.dtype)
        text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.max_length = int(s.max_length or getattr(text, "max_position_embeddings", 1 << 30))
        self.keep_prompt = True
        self.vocab_rows = int(model.get_input_embeddings().weight.shape[0])
        self.pad_id = int(getattr(text, "pad_token_id", None) or 0)
        self.softcap = getattr(text, "final_logit_softcapping", None)
        return model

    def _place(self) -> None:
        """Put the built modules on the device (the sharded model shards them first: ``sharded.py``) and check
        the causal LM's log-prob path."""
        self.model.to(self.device)
        if self.reference is not None:
            self.reference.to(self.device)
        if self.settings.objective == "implicit":
            self._check_logprob_path()

    def _serving_copy(self):
        """The copy that scores while the model trains (swapped after each update, :meth:`_sync_serving`)."""
        return copy.deepcopy(self.model).requires_grad_(False).eval()

    @staticmethod
    def _base(model):
        return model.get_base_model() if type(model).__module__.startswith("peft.") else model

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16)

    # -------------------------------------------------------------------------------------------- forward

    def _prepare(self, items: list[_Item]) -> list[tuple[list[int], list[list[int]], list[int], Optional[list[float]]]]:
        """(ids, spans, kept turn indices, ref) per item, truncated for the head models. Progress: the spans are the
        head's readouts, one per kept turn (``objectives.readout_positions``: the token before the turn for
        ``prefix``)."""
        out = []
        for i, it in enumerate(items):
            if it.input_ids and (min(it.input_ids) < 0 or max(it.input_ids) >= self.vocab_rows):
                raise ValueError(f"item {i} holds a token id outside the model vocabulary [0, {self.vocab_rows}): "
                                 "the policy and the step-reward model tokenizers differ")
            if self._head_model:
                from spa_reward.progress.data import truncate_for_estimator

                ends = [b - 1 for _, b in it.spans]
                head = it.prompt_length if self.keep_prompt else 0
                t = truncate_for_estimator(it.input_ids, ends, self.max_length, min(head, ends[0]) if ends else 0)
                reads = list(t.turn_ends)
                if self._reads_before:
                    from spa_reward.progress.data import before_positions

                    reads = before_positions(t, [a for a, _ in it.spans])
                out.append((t.input_ids, [[e, e + 1] for e in reads], t.kept, None))
            else:
                if len(it.input_ids) > self.max_length:
                    raise ValueError(f"item {i} has {len(it.input_ids)} tokens, more than max_length={self.max_length}")
                out.append((it.input_ids, it.spans, list(range(len(it.spans))), it.ref_logprobs))
        return out

    def _forward(self, model, prepared: list, grad: bool) -> torch.Tensor:
        """(bs, K) per-turn values: c_t (progress), beta * q_t (implicit) or the logit l_t (discriminator), 0 on
        missing turns."""
        from spa_reward.progress.data import collate_sequences

        seqs = [p[0] for p in prepared]
        ends = [[b - 1 for _, b in p[1]] for p in prepared]
        batch = collate_sequences(seqs, ends, self.pad_id, self.device)
        k = max(1, max(len(p[1]) for p in prepared))
        with torch.set_grad_enabled(grad), self._autocast():
            if self._head_model:  # c_t (progress) or the discriminator's logit l_t (raw: the reward clips it)
                return model(batch["input_ids"], batch["attention_mask"], batch["turn_end_positions"]).float()
            ids = batch["input_ids"]
            turn_idx = obj.span_turn_index([p[1] for p in prepared], ids.shape[1]).to(self.device)
            logp = self._turn_token_logprobs(model, ids, batch["attention_mask"], turn_idx)
            if self.reference is not None:
                with torch.no_grad():
                    ref = self._turn_token_logprobs(self.reference, ids, batch["attention_mask"], turn_idx)
            else:
                ref = torch.zeros_like(logp)
                for row, p in enumerate(prepared):
                    ref[row, : len(p[3])] = torch.tensor(p[3], dtype=ref.dtype)
            return self.settings.beta * obj.turn_log_ratio(logp, ref, turn_idx, k)

    def _turn_token_logprobs(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                             turn_idx: torch.Tensor) -> torch.Tensor:
        """(bs, L) float32 ``log p(x_i | x_<i)`` on the turn tokens (i >= 1), 0 elsewhere, from the causal LM's
        last hidden states and its output layer, chunked (:func:`objectives.taken_token_logprobs`): the full
        (bs, L, V) logits are never built, and prompt / observation positions never reach the output layer."""
        from spa_reward.progress.model import last_hidden_state

        base = self._base(model)
        hidden = last_hidden_state(base, input_ids, attention_mask)  # (bs, L, H)
        rows, pos = (turn_idx[:, 1:] >= 0).nonzero(as_tuple=True)
        pos = pos + 1  # token i is predicted at position i - 1
        lp = obj.taken_token_logprobs(hidden[rows, pos - 1], base.get_output_embeddings(), input_ids[rows, pos],
                                      self.vocab_rows, softcap=self.softcap)
        return torch.zeros(input_ids.shape, dtype=torch.float32, device=lp.device).index_put((rows, pos), lp)

    def _check_logprob_path(self) -> None:
        """The chunked log-probs must equal log-softmax of the model's own logits (a model whose forward scales
        or caps its logits in a way :meth:`_turn_token_logprobs` does not reproduce is refused here)."""
        base = self._base(self.model)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, self.vocab_rows, (1, 12), generator=g).to(self.device)
        mask = torch.ones_like(ids)
        turn_idx = torch.zeros_like(ids)
        was = base.training
        base.eval()
        try:
            with torch.no_grad():
                full = obj.token_logprobs(base(input_ids=ids, attention_mask=mask, use_cache=False).logits, ids)
                chunked = self._turn_token_logprobs(self.model, ids, mask, turn_idx)
        finally:
            base.train(was)
        err = float((full - chunked).abs().max())
        if not err <= 1e-3 * max(1.0, float(full.abs().max())):
            raise ValueError(f"the PRM {type(base).__name__} does not compute its logits as output_layer(last hidden "
                             f"state) (max log-prob difference {err:.3g}): the memory-saving log-prob path cannot "
                             "serve it")

    def _values(self, model, prepared: list, grad: bool = False) -> list[torch.Tensor]:
        """Per-item (K_i,) turn values in micro-batches (:meth:`_micro_batches`), in input order."""
        out: list[Optional[torch.Tensor]] = [None] * len(prepared)
        for chunk in self._micro_batches(prepared):
            todo = [i for i in chunk if prepared[i][1]]
            for i in chunk:
                out[i] = torch.zeros(0)
            if not todo:
                continue
            values = self._forward(model, [prepared[i] for i in todo], grad)
            for row, i in enumerate(todo):
                out[i] = values[row, : len(prepared[i][1])].detach().cpu()
        return out

    def _micro_batches(self, prepared: list) -> list[list[int]]:
        """Indices of ``prepared`` in micro-batches, longest first: at most ``micro_batch_size`` sequences and
        ``max_token_len`` padded tokens each (:func:`objectives.token_budget_batches`)."""
        s = self.settings
        return obj.token_budget_batches([len(p[0]) for p in prepared], int(s.max_token_len), int(s.micro_batch_size))

    # -------------------------------------------------------------------------------------------- public API

    def score(self, batch: Sequence[Mapping[str, Any]]) -> list[list[float]]:
        """One reward per turn per item, in input order: c_t (progress), r_t = beta * q_t (implicit) or
        r_t = clip(log D - log(1 - D)) = clip(l_t) (discriminator). Turns that truncation dropped get 0.0."""
        s = self.settings
        items = parse_settings_items(batch, s)
        if not items:
            return []
        if self._reads_before:
            missing = [i for i, it in enumerate(batch) if it.get("reward") is None]
            if missing:
                raise ValueError(f"item {missing[0]} has no 'reward': the prefix objective's value after an episode's "
                                 "last step is its R")
        prepared = self._prepare(items)
        with self._serve_lock:
            was = self.serving.training
            self.serving.eval()
            try:
                values = self._values(self.serving, prepared)
            finally:
                self.serving.train(was)
            self.stats["score_calls"] += 1
            self.stats["scored_items"] += len(items)
        if s.objective == "discriminator":
            values = [obj.irl_reward(v, s.reward_clip) for v in values]
        if s.objective == "progress" and any(p[1] for p in prepared):  # the head's readouts -> c_t (one per kept turn)
            index, first = episode_index(items)  # an episode's rows in step order (the input order within it)
            order = sorted(range(len(items)), key=lambda i: (int(index[i]), i))
            padded = torch.nn.utils.rnn.pad_sequence([values[i] for i in order], batch_first=True)
            c = obj.contributions_from_readouts(padded, _valid_turns(prepared, order, padded), s.loss,
                                                torch.tensor([items[i].reward for i in first]), index[order])
            values = list(values)
            for row, i in enumerate(order):
                values[i] = c[row, : len(prepared[i][2])]
        out = []
        for it, p, v in zip(items, prepared, values):
            full = [0.0] * len(it.spans)
            for k, value in zip(p[2], v.tolist()):
                full[k] = float(value)
            out.append(full)
        return out

    def update(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Train on ``batch`` (finished episodes; drop env-failed ones before calling) plus the replay window:
        ``steps_per_batch`` optimiser steps, then the trained weights replace the serving weights.
        Returns metrics (``steprm/*``)."""
        s = self.settings
        if not s.online:
            raise RuntimeError("this step-reward model is not online (settings.online=false): it does not train")
        with self._train_lock:
            if s.loss in PAIR_LOSSES:  # pair ids unique over the replay window
                items, identical = parse_pair_items(batch, tag=f"{self.version}/")
                self.stats["identical_pairs"] += identical
            else:
                items = parse_settings_items(batch, s)
                for it in items:  # episode keys unique over the replay window
                    if it.episode:
                        it.episode = f"{self.version}/{it.episode}"
            self.window.append([it for it in items if it.spans])
            data = [it for b in self.window for it in b]
            weights_norm = self.weights_norm()
            torch.manual_seed(s.seed * 1_000_003 + self.version)
            losses, pairs = [], 0
            for _ in range(int(s.steps_per_batch)):
                loss, pairs = self._train_step(data)
                losses.append(loss)
            self._sync_serving()
            self.version += 1
            self.stats["updates"] += 1
            self.stats["trained_episodes"] += len(episode_index(items)[1])
        return {
            "steprm/loss": float(sum(losses) / len(losses)) if losses else 0.0,
            "steprm/loss_first": float(losses[0]) if losses else 0.0,
            "steprm/pairs": float(pairs),
            "steprm/episodes": float(len(episode_index(data)[1])),  # pair losses: one-turn items, two per pair
            "steprm/rows": float(len(data)),
            "steprm/version": float(self.version),
            "steprm/weights_norm": weights_norm,  # before this update: a resumed run must start where it stopped
        }

    @torch.no_grad()
    def weights_norm(self) -> float:
        """L2 norm over the trainable weights (a fingerprint of the training state, logged with every update)."""
        total = sum(float(p.detach().float().pow(2).sum()) for p in self.model.parameters() if p.requires_grad)
        return total ** 0.5

    def _train_step(self, data: list[_Item]) -> tuple[float, int]:
        s = self.settings
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        prepared = self._prepare(data)
        keep = [i for i, p in enumerate(prepared) if p[1]]
        if not keep:
            return 0.0, 0
        prepared = [prepared[i] for i in keep]
        data = [data[i] for i in keep]
        n = len(prepared)
        if s.loss == "bce":
            return self._bce_step(prepared, data)
        if s.loss == "step_dpo":
            return self._step_dpo_step(prepared, data)
        episode, first = episode_index(data)
        if len(first) < n:  # window layout: an episode spans several rows
            return self._episode_step(prepared, data, episode, first)
        if s.objective == "progress":
            rewards = torch.tensor([it.reward for it in data], dtype=torch.float32)

            def progress(chunk, c):  # c: the head's readouts (objectives.readout_positions), one per kept turn
                loss = obj.progress_episode_losses(c, _valid_turns(prepared, chunk, c), rewards[chunk].to(c.device),
                                                   s.loss).mean()
                return loss * len(chunk) / n

            total = self._accumulate(prepared, progress)
            self._clip_and_step()
            return total, 0
        # implicit: the DPO loss couples rows of a group, so take dL/dQ from a no-grad pass over every row and
        # back-propagate sum(Q * dL/dQ) micro-batch by micro-batch (exact, memory of one micro-batch)
        with torch.no_grad():
            q = torch.stack([v.mean() if v.numel() else torch.zeros(()) for v in self._values(self.model, prepared)])
        groups = {}
        group = torch.tensor([groups.setdefault(it.uid, len(groups)) for it in data])
        success = torch.tensor([it.success for it in data])
        q_leaf = q.clone().requires_grad_(True)
        loss, pairs = obj.trajectory_dpo_loss(q_leaf, success, group)
        if pairs == 0:
            return 0.0, 0
        (grad_q,) = torch.autograd.grad(loss, q_leaf)

        def dpo(chunk, values):  # values (mb, K) beta * q_t
            scores = obj.trajectory_scores(values, _valid_turns(prepared, chunk, values))
            return (scores * grad_q[chunk].to(scores.device)).sum()

        self._accumulate(prepared, dpo, skip=lambda chunk: not bool((grad_q[chunk] != 0).any()))
        self._clip_and_step()
        return float(loss.detach()), pairs

    def _episode_step(self, prepared: list, data: list[_Item], episode: torch.Tensor, first: list[int]
                      ) -> tuple[float, int]:
        """The progress / trajectory-DPO loss when an episode spans several rows (window layout): the per-turn
        values V (rows, K) of every row from a no-grad pass, the loss of the episodes and dL/dV from them, then
        ``sum(V * dL/dV)`` back-propagated micro-batch by micro-batch (exact; memory of one micro-batch, one extra
        forward per step for progress). Progress: MSE(sum of the episode's rows' c_t, R); implicit: iStar's DPO
        over (success, failure) episodes of one uid group with ``Q`` = the mean of ``beta * q_t`` over all the
        episode's turns. Rows of one episode need not share a micro-batch."""
        with torch.no_grad():
            values = torch.nn.utils.rnn.pad_sequence(self._values(self.model, prepared), batch_first=True)
        lengths = torch.tensor([len(p[1]) for p in prepared])
        valid = torch.arange(values.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
        v_leaf = values.float().clone().requires_grad_(True)
        heads = [data[i] for i in first]  # an episode's uid / success / reward (its rows agree: parse_items)
        if self.settings.objective == "progress":
            rewards = torch.tensor([it.reward for it in heads], dtype=torch.float32)
            loss = obj.progress_episode_losses(v_leaf, valid, rewards, self.settings.loss, episode).mean()
            pairs = 0
        else:
            groups: dict[str, int] = {}
            group = torch.tensor([groups.setdefault(it.uid, len(groups)) for it in heads])
            success = torch.tensor([it.success for it in heads])
            scores = obj.episode_trajectory_scores(v_leaf, valid, episode, len(first))
            loss, pairs = obj.trajectory_dpo_loss(scores, success, group)
            if pairs == 0:
                return 0.0, 0
        (grad_v,) = torch.autograd.grad(loss, v_leaf)

        def pulled(chunk, out):  # out (mb, K') c_t or beta * q_t
            g = grad_v[chunk, : out.shape[1]].to(out.device)
            return (out[:, : g.shape[1]].float() * g).sum()

        self._accumulate(prepared, pulled, skip=lambda chunk: not bool((grad_v[chunk] != 0).any()))
        self._clip_and_step()
        return float(loss.detach()), pairs

    def _bce_step(self, prepared: list, data: list[_Item]) -> tuple[float, int]:
        """Discriminator: binary cross-entropy, expert steps (success) 1, agent steps 0, micro-batch by micro-batch."""
        n = len(prepared)
        labels = torch.tensor([float(it.success) for it in data])

        def bce(chunk, out):  # one turn per item: out[:, 0] is the logit
            return obj.discriminator_loss(out[:, 0], labels[chunk].to(out.device)) * len(chunk) / n

        total = self._accumulate(prepared, bce)
        self._clip_and_step()
        return total, len({it.uid for it in data})

    def _step_dpo_step(self, prepared: list, data: list[_Item]) -> tuple[float, int]:
        """Step-level DPO over the (expert, agent) pairs: dL/dv from a no-grad pass over every item, then
        ``sum(v * dL/dv)`` back-propagated micro-batch by micro-batch (exact, memory of one micro-batch)."""
        chosen, rejected = {}, {}
        for i, it in enumerate(data):
            (chosen if it.success else rejected)[it.uid] = i
        uids = [u for u in chosen if u in rejected]
        if not uids:
            return 0.0, 0
        with torch.no_grad():
            v = torch.stack([x[0] if x.numel() else torch.zeros(()) for x in self._values(self.model, prepared)])
        ci, ri = torch.tensor([chosen[u] for u in uids]), torch.tensor([rejected[u] for u in uids])
        v_leaf = v.clone().requires_grad_(True)
        loss = obj.step_dpo_loss(v_leaf[ci], v_leaf[ri])
        (grad_v,) = torch.autograd.grad(loss, v_leaf)

        def pulled(chunk, out):  # out[:, 0] = beta * q(s, a)
            return (out[:, 0] * grad_v[chunk].to(out.device)).sum()

        self._accumulate(prepared, pulled, skip=lambda chunk: not bool((grad_v[chunk] != 0).any()))
        self._clip_and_step()
        return float(loss.detach()), len(uids)

    def _accumulate(self, prepared: list, loss_of, skip=None) -> float:
        """Gradient accumulation: for each micro-batch ``chunk`` (:meth:`_micro_batches`; ``skip(chunk)`` true:
        left out), ``loss_of(chunk, values)`` with ``values`` = :meth:`_forward` of its items with gradients, back-
        propagated at once (the memory of one micro-batch). Returns the sum of the losses. The sharded model
        splits the micro-batches over its ranks here."""
        total = 0.0
        for chunk in self._micro_batches(prepared):
            if skip is not None and skip(chunk):
                continue
            loss = loss_of(chunk, self._forward(self.model, [prepared[i] for i in chunk], grad=True))
            loss.backward()
            total += float(loss.detach())
        return total

    def _clip_and_step(self) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(params, self.settings.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _sync_serving(self) -> None:
        """Copy the trained (trainable) tensors into the serving copy, between two forwards."""
        trained = {k: v for k, v in self.model.named_parameters() if v.requires_grad}
        serving = dict(self.serving.named_parameters())
        with self._serve_lock, torch.no_grad():
            for k, v in trained.items():
                serving[k].copy_(v)

    # -------------------------------------------------------------------------------------------- state

    def info(self) -> dict[str, Any]:
        s = self.settings
        return {"objective": s.objective, "online": s.online, "model_path": s.model_path, "device": str(self.device),
                "dtype": str(self.dtype), "autocast_bf16": self.autocast_bf16, "version": self.version, "replay": [len(b) for b in self.window],
                "stats": dict(self.stats)}

    def save(self, directory: str | os.PathLike) -> None:
        """Write the trainable weights, optimiser state, replay window and counters to ``directory``."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        with self._train_lock:
            weights = {k: v.detach().cpu().contiguous() for k, v in self.model.named_parameters() if v.requires_grad}
            if not weights:  # frozen scorer: nothing trains, but save the weights so load() can check them
                weights = {k: v.detach().cpu().contiguous() for k, v in self.model.named_parameters()}
            save_file(weights, str(out / "weights.safetensors"))
            if self.optimizer is not None:
                torch.save(self.optimizer.state_dict(), out / "optimizer.pt")
            with open(out / "replay.json", "w", encoding="utf-8") as f:
                json.dump([[it.to_json() for it in b] for b in self.window], f)
            state = {"format": STATE_FORMAT, "version": self.version, "stats": self.stats,
                     "settings": self.settings.to_dict()}
            with open(out / "state.json", "w", encoding="utf-8") as f:
                json.dump(state, f, indent=1, sort_keys=True)

    def load(self, directory: str | os.PathLike) -> None:
        """Restore what :meth:`save` wrote, or what a sharded group saved (``layout: dcp``,
        :mod:`spa_reward.steprm.sharded`; read whole). ``FileNotFoundError`` names a missing file. Loads tensors
        only (``weights_only=True``, safetensors, DCP), never pickled code."""
        from safetensors.torch import load_file

        src = Path(directory)
        state = check_saved_state(src, self.settings)
        with self._train_lock:
            params = dict(self.model.named_parameters())
            if state.get("layout") == DCP_LAYOUT:
                from spa_reward.steprm.sharded import read_full_dcp

                trainable = {k: p for k, p in params.items() if p.requires_grad} or params
                weights, optim = read_full_dcp(src, trainable, self.optimizer is not None)
            else:
                weights, optim = load_file(str(src / "weights.safetensors")), None
                if self.optimizer is not None:
                    opt = src / "optimizer.pt"
                    if not opt.is_file():
                        raise FileNotFoundError(f"step-reward model state {str(opt)!r} is missing")
                    optim = torch.load(opt, map_location=self.device, weights_only=True)
            unknown = sorted(set(weights) - set(params))
            if unknown:
                raise ValueError(f"{src}: weights {unknown[:3]}... do not belong to this model")
            with torch.no_grad():
                for k, v in weights.items():
                    params[k].copy_(v.to(params[k].device, params[k].dtype))
            if self.optimizer is not None:
                if optim is None:  # saved before its first update: a fresh optimiser
                    self.optimizer.state.clear()
                else:
                    self.optimizer.load_state_dict(optim)
            self._set_counters(src, state)

    def _set_counters(self, src: Path, state: Mapping[str, Any]) -> None:
        """The replicated part of a saved state: replay window, version, counters (then the serving copy)."""
        with open(src / "replay.json", encoding="utf-8") as f:
            self.window = deque(([_Item(**d) for d in b] for b in json.load(f)), maxlen=int(self.settings.replay_batches))
        self.version = int(state["version"])
        self.stats.update(state.get("stats", {}))
        if self.serving is not self.model:
            self._sync_serving()


def check_saved_state(src: Path, settings: StepRMSettings) -> dict:
    """``state.json`` of a saved step-reward state, checked: its files are there (``FileNotFoundError`` naming
    the missing one), its format is this code's, and it holds a model of ``settings``' objective and loss."""
    layout_files = {DCP_LAYOUT: ("dcp/.metadata",), None: ("weights.safetensors",)}
    if not (src / "state.json").is_file():
        raise FileNotFoundError(f"step-reward model state {str(src / 'state.json')!r} is missing")
    with open(src / "state.json", encoding="utf-8") as f:
        state = json.load(f)
    if int(state.get("format", -1)) != STATE_FORMAT:
        raise ValueError(f"{src}: step-reward state format {state.get('format')!r}, expected {STATE_FORMAT}")
    layout = state.get("layout")
    if layout not in layout_files:
        raise ValueError(f"{src}: step-reward state layout {layout!r} is not one of {sorted(map(str, layout_files))}")
    for name in ("replay.json", *layout_files[layout]):
        if not (src / name).is_file():
            raise FileNotFoundError(f"step-reward model state {str(src / name)!r} is missing")
    saved = state["settings"]
    saved_loss = saved.get("loss") or LOSSES.get(saved["objective"], (None,))[0]
    saved_loss = LOSS_ALIASES.get((saved["objective"], saved_loss), saved_loss)
    if (saved["objective"], saved_loss) != (settings.objective, settings.loss):
        raise ValueError(f"{src} holds a {saved['objective']!r} model trained with {saved_loss!r}, this service "
                         f"is {settings.objective!r} with {settings.loss!r}")
    return state


# ---------------------------------------------------------------------------------------------------------- Ray


ROLLING_POINTER = "LATEST.json"
DEFAULT_PUBLISH_EVERY = 50  # updates between two full published states when no checkpoint comes in between


class ServiceNotRestoredError(RuntimeError):
    """An online service actor that Ray restarted and that could not be restored: it refuses to score, train or
    save (its weights are the initial ones, not the run's)."""


def ray_restart_info() -> tuple[bool, Optional[int]]:
    """``(restarted, restart count)`` of the Ray actor this runs in; ``(False, None)`` outside an actor.

    The decision uses Ray's public ``RuntimeContext.was_current_actor_reconstructed`` (ray 2.60: the actor's
    ``NumRestarts`` in the GCS is not 0); the count is read from the same GCS record through the private
    ``ray._private.state.actors`` and is None where that is not available (informational only)."""
    try:
        import ray

        ctx = ray.get_runtime_context()
        actor_id = ctx.get_actor_id()
        if actor_id is None:
            return False, None
        restarted = bool(ctx.was_current_actor_reconstructed)
    except Exception:  # not in a Ray worker
        return False, None
    try:
        from ray._private.state import actors

        count: Optional[int] = int(actors(actor_id=actor_id)["NumRestarts"])
    except Exception:
        count = None
    return restarted, count


def _write_pointer(root: Path, pointer: dict) -> None:
    """Replace ``root/LATEST.json`` atomically (temp file, fsync, ``os.replace``)."""
    tmp = root / f".{ROLLING_POINTER}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(pointer, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / ROLLING_POINTER)


POINTER_FORMAT = 2
CHECKPOINT_DIR = "steprm"  # the state in a verl checkpoint: <default_local_dir>/global_step_N/steprm
_CHECKPOINT_REF = re.compile(r"\.\./global_step_\d+/" + CHECKPOINT_DIR)
_JOURNAL_ENTRY = re.compile(r"u\d{8}-[0-9a-f]{8}\.json")


def _jsonable(x: Any) -> Any:
    """Plain JSON data from an update batch (tensors and numpy arrays become lists)."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def checkpoint_ref(root: str | os.PathLike, directory: str | os.PathLike) -> Optional[str]:
    """``../global_step_N/steprm`` when ``directory`` is the step-reward state of a verl checkpoint beside the
    rolling folder ``root`` (both under ``trainer.default_local_dir``), else None."""
    d, r = Path(directory).resolve(), Path(root).resolve()
    ref = f"../{d.parent.name}/{d.name}"
    return ref if d.parent.parent == r.parent and _CHECKPOINT_REF.fullmatch(ref) else None


def _read_pointer(root: Path) -> dict:
    path = root / ROLLING_POINTER
    if not path.is_file():
        raise ServiceNotRestoredError(f"no published state {str(path)!r}")
    try:
        with open(path, encoding="utf-8") as f:
            pointer = json.load(f)
        int(pointer["version"])
        int(pointer.get("state_version", pointer["version"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ServiceNotRestoredError(f"the published state {str(path)!r} is unreadable ({e})") from e
    return pointer


def _clean(root: Path, keep: set[str]) -> None:
    """Remove the children of ``root`` a pointer no longer names: older states (``v*``), journal entries (``u*``)
    and pointer files of a writer that was killed."""
    for child in root.iterdir():
        if child.is_symlink() or child.name in keep:
            continue
        if child.is_dir() and child.name.startswith("v"):
            shutil.rmtree(child, ignore_errors=True)
        elif child.is_file() and (_JOURNAL_ENTRY.fullmatch(child.name) or (
                child.name.startswith(f".{ROLLING_POINTER}.") and child.name.endswith(".tmp"))):
            child.unlink(missing_ok=True)


def publish_state(model: StepRewardModel, root: str | os.PathLike, token: Optional[str],
                  metrics: Optional[Mapping[str, float]] = None, with_state: bool = True,
                  checkpoint: str | os.PathLike | None = None) -> dict:
    """Publish ``model``'s current state as the base a restarted actor restores (the journal starts empty).

    The base is, in this order: ``checkpoint`` (a checkpoint's ``steprm/`` that :meth:`StepRewardModel.save` has
    just written beside ``root``, :func:`checkpoint_ref`: referenced, not copied); else ``with_state``: a fresh
    child ``v<version>-<random>/`` (:meth:`StepRewardModel.save`); else version 0 without files (the initial
    model, which a restarted actor rebuilds from its settings: same checkpoint, same seed). Then ``LATEST.json``
    (token, version, base, the last update's metrics) is replaced atomically and what it no longer names is
    removed: a kill at any point leaves the previous or the new state published, never a torn one. Returns the
    pointer."""
    out = Path(root)
    out.mkdir(parents=True, exist_ok=True)
    name = None if checkpoint is None else checkpoint_ref(out, checkpoint)
    if checkpoint is not None and name is None:
        raise ValueError(f"{str(checkpoint)!r} is not a global_step_N/{CHECKPOINT_DIR} folder beside {str(out)!r}")
    if name is None and with_state:
        name = f"v{model.version:08d}-{uuid.uuid4().hex[:8]}"
        model.save(out / name)
    elif name is None and model.version != 0:
        raise ValueError(f"only version 0 is published without a state (this model is at version {model.version})")
    pointer = {"format": POINTER_FORMAT, "token": token, "version": int(model.version), "state": name,
               "state_version": int(model.version), "journal": [], "metrics": dict(metrics or {})}
    _write_pointer(out, pointer)
    _clean(out, {name} if name else set())
    return pointer


def publish_update(model: StepRewardModel, root: str | os.PathLike, token: Optional[str], batch: Any,
                   metrics: Optional[Mapping[str, float]] = None) -> dict:
    """Publish the update that just took ``model`` from version v - 1 to v by journaling its input batch
    (``u<v - 1>-<random>.json``, fsynced, then the pointer): a restart loads the base and replays the journal
    (:func:`restore_state`; updates are seeded by version, so the replay repeats them). The cost is the batch's
    size, not the model's. Falls back to :func:`publish_state` when the published pointer is not this model's
    version v - 1 of this run."""
    out = Path(root)
    try:
        pointer = _read_pointer(out)
    except ServiceNotRestoredError:
        pointer = None
    if (pointer is None or pointer.get("format") != POINTER_FORMAT or pointer.get("token") != token
            or int(pointer["version"]) != model.version - 1):
        return publish_state(model, out, token, metrics)
    name = f"u{model.version - 1:08d}-{uuid.uuid4().hex[:8]}.json"
    with open(out / name, "w", encoding="utf-8") as f:
        json.dump(_jsonable(list(batch)), f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    pointer = {**pointer, "version": int(model.version), "journal": [*pointer["journal"], name],
               "metrics": dict(metrics or {})}
    _write_pointer(out, pointer)
    return pointer


def restore_state(model: StepRewardModel, root: str | os.PathLike, token: Optional[str]) -> dict:
    """Load the state published under ``root`` into ``model`` (which must be as built): the base
    (:func:`publish_state`), then each journaled update replayed in order (:func:`publish_update`); returns the
    pointer. ``ServiceNotRestoredError`` says why not: no pointer, unreadable, written by another run (token), a
    base or journal name that is not a plain child (or a checkpoint beside ``root``), a state that does not load,
    or versions that do not add up."""
    src = Path(root)
    path = src / ROLLING_POINTER
    pointer = _read_pointer(src)
    version, base_version = int(pointer["version"]), int(pointer.get("state_version", pointer["version"]))
    if pointer.get("format") != POINTER_FORMAT:
        raise ServiceNotRestoredError(f"{str(path)!r} has format {pointer.get('format')!r}, expected {POINTER_FORMAT}")
    if pointer.get("token") != token:
        raise ServiceNotRestoredError(f"{str(path)!r} was published by another run (token {pointer.get('token')!r}, "
                                      f"this service's run is {token!r})")
    name, journal = pointer.get("state"), pointer.get("journal") or []
    if name is None:
        if base_version != 0:
            raise ServiceNotRestoredError(f"{str(path)!r} names no state for version {base_version}")
    else:
        plain = isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name
        if not (plain or (isinstance(name, str) and _CHECKPOINT_REF.fullmatch(name))):
            raise ServiceNotRestoredError(f"{str(path)!r} names state {name!r}, which is not a plain child folder "
                                          f"name nor a global_step_N/{CHECKPOINT_DIR} beside it")
        try:
            model.load(src / name)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ServiceNotRestoredError(f"the published state {str(src / name)!r} does not load ({e})") from e
        if model.version != base_version:
            raise ServiceNotRestoredError(f"{str(src / name)!r} holds version {model.version}, {str(path)!r} says "
                                          f"{base_version}")
    for entry in journal:
        if not (isinstance(entry, str) and _JOURNAL_ENTRY.fullmatch(entry)) or int(entry[1:9]) != model.version:
            raise ServiceNotRestoredError(f"{str(path)!r}: journal entry {entry!r} is not the update from version "
                                          f"{model.version}")
        try:
            with open(src / entry, encoding="utf-8") as f:
                model.update(json.load(f))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise ServiceNotRestoredError(f"the journaled update {str(src / entry)!r} does not replay ({e})") from e
    if model.version != version:
        raise ServiceNotRestoredError(f"{str(path)!r} says version {version}, its base and journal give "
                                      f"{model.version}")
    return pointer


class StepRewardServiceActor:
    """Ray actor body around :class:`StepRewardModel` (async). Scoring and training run on two worker threads,
    so a score call is never queued behind an update (it is served from the pre-update weights). Concurrent score
    calls (one per episode from the reward workers) are validated one by one, so a bad request fails alone, and
    then coalesced into shared forward passes of up to ``coalesce_items`` items.

    Restarts. Each incarnation has a random ``incarnation`` id (in :meth:`info`). An *online* service given
    ``state_dir`` publishes there what a restart needs, at a cost proportional to it: a base state (version 0 at
    first start, without files; the checkpoint's ``steprm/`` at every :meth:`save` into a verl checkpoint beside
    ``state_dir``, referenced, not copied; the loaded one at every :meth:`load`; a full copy after
    ``publish_every`` updates without a checkpoint), and after every other update only that update's input batch
    (:func:`publish_update`), which a restart replays. When Ray restarts the actor, ``__init__`` runs again with the same arguments,
    sees ``ray_restart_info()`` and restores the published state (:func:`restore_state`) before it serves
    anything. When that is impossible (no ``state_dir``, nothing published, another run's state, a state that
    does not load), the actor stays up but refuses ``score``, ``update`` and ``save`` with
    :class:`ServiceNotRestoredError` until :meth:`load` restores it, so neither reward workers nor the trainer
    get rewards from its initial weights. ``update(batch, base_version)`` is idempotent per version: a call
    retried after its update was applied (and published) is answered with that update's metrics, not applied
    twice. A frozen scorer (``online`` false) comes back whole and publishes nothing."""

    def __init__(self, settings: dict, coalesce_items: int = 256, state_dir: Optional[str] = None,
                 run_token: Optional[str] = None, publish_every: int = DEFAULT_PUBLISH_EVERY):
        from spa_reward.progress.serve import Coalescer

        if int(publish_every) < 1:
            raise ValueError(f"publish_every={publish_every} must be >= 1 (updates between two full published states)")
        self.publish_every = int(publish_every)

        self._settings_dict = dict(settings)
        self.model = self._make_model(self._settings_dict)
        self.coalesce_items = max(1, int(coalesce_items))
        self._coalescer = Coalescer(self._score, self.coalesce_items, "steprm-score")
        self._train_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="steprm-train")
        self.incarnation = uuid.uuid4().hex
        self.state_dir = None if state_dir is None else str(state_dir)
        self.run_token = run_token
        self.restarted, self.ray_restarts = ray_restart_info()
        self.restored_from: Optional[str] = None
        self.not_restored: Optional[str] = None  # why this incarnation refuses to serve
        self._last_metrics: dict[str, float] = {}
        self._base_version = 0  # version of the published base state (the journal holds the updates since)
        if not self.model.settings.online:
            return
        if self.restarted:
            self._restore("was restarted by Ray")
        elif self.state_dir is not None:
            publish_state(self.model, self.state_dir, self.run_token, with_state=False)

    def _make_model(self, settings: dict):
        """The model this actor serves (the sharded service builds a group of rank actors instead)."""
        return StepRewardModel(settings)

    def _restore(self, why: str) -> None:
        """Load the published state after a restart (``why``: what restarted it), or record why not."""
        if self.state_dir is None:
            self.not_restored = (f"this online step-reward service {why} and was started without state_dir, so "
                                 "there is no published state to restore")
        else:
            try:
                pointer = restore_state(self.model, self.state_dir, self.run_token)
            except ServiceNotRestoredError as e:
                self.not_restored = f"this online step-reward service {why} and was not restored: {e}"
            else:
                base = os.path.normpath(os.path.join(self.state_dir, pointer["state"] or "(initial model)"))
                journal = len(pointer.get("journal") or [])
                self.restored_from = base + (f" + {journal} journaled updates" if journal else "")
                self._last_metrics = dict(pointer.get("metrics") or {})
                self._base_version = int(pointer["state_version"])
                logger.warning("step-reward service %s (Ray restarts: %s); restored version %d from %s", why,
                               self.ray_restarts, self.model.version, self.restored_from)
                return
        logger.error("%s; it refuses to score, train and save until load() restores it", self.not_restored)

    def _refuse_if_not_restored(self) -> None:
        if self.not_restored:
            raise ServiceNotRestoredError(
                f"{self.not_restored}. It refuses to serve rewards from its initial weights: restore it with "
                "load('<checkpoint>/global_step_N/steprm') or restart the run from its last checkpoint")

    def _score(self, batch: list[dict]) -> list[list[float]]:
        self._refuse_if_not_restored()
        return self.model.score(batch)

    async def score(self, batch: list[dict]) -> list[list[float]]:
        self._refuse_if_not_restored()
        s = self.model.settings
        parse_settings_items(batch, s)  # raises alone
        return await self._coalescer.submit(list(batch))

    async def update(self, batch: list[dict], base_version: Optional[int] = None) -> dict[str, float]:
        """:meth:`StepRewardModel.update`, then publish the new state (``state_dir``). ``base_version``: the
        version the caller expects before this update (the trainer hooks pass it)."""
        return await asyncio.get_running_loop().run_in_executor(self._train_pool, self._update, batch, base_version)

    def _update(self, batch: list[dict], base_version: Optional[int]) -> dict[str, float]:
        self._refuse_if_not_restored()
        if base_version is not None:
            v, base = self.model.version, int(base_version)
            if v == base + 1:  # this update was applied (and published) before the caller got the reply
                logger.warning("update from version %d was already applied (a retried call): not applied again", base)
                return {**self._last_metrics, "steprm/version": float(v), "steprm/retried_update": 1.0}
            if v != base:
                raise RuntimeError(f"the trainer updates the step-reward service from version {base}, but it is at "
                                   f"version {v} (incarnation {self.incarnation}): refusing to train a different model")
        metrics = self.model.update(batch)
        if self.state_dir is not None:
            metrics = {**metrics, "steprm/published_mb": self._publish_update(batch, metrics)}
        self._last_metrics = dict(metrics)
        return metrics

    def _publish_update(self, batch: list[dict], metrics: Mapping[str, float]) -> float:
        """Publish the update just applied: its batch in the journal, or a full state once ``publish_every``
        updates have passed since the base. Returns the MB written."""
        root = Path(self.state_dir)
        if self.model.version - self._base_version >= self.publish_every:
            pointer = publish_state(self.model, root, self.run_token, metrics)
            written = sum(f.stat().st_size for f in (root / pointer["state"]).rglob("*") if f.is_file())
        else:
            pointer = publish_update(self.model, root, self.run_token, batch, metrics)
            written = (root / pointer["journal"][-1]).stat().st_size if pointer["journal"] else 0
        self._base_version = int(pointer["state_version"])
        return written / 2**20

    async def save(self, directory: str) -> dict[str, Any]:
        self._refuse_if_not_restored()
        await asyncio.get_running_loop().run_in_executor(self._train_pool, self._save, directory)
        return self.identity()

    def _save(self, directory: str) -> None:
        """Save; a save into a verl checkpoint beside ``state_dir`` also becomes the published base (the journal
        restarts there), so a checkpoint costs no second copy."""
        self.model.save(directory)
        if self.model.settings.online and self.state_dir is not None and checkpoint_ref(self.state_dir, directory):
            publish_state(self.model, self.state_dir, self.run_token, self._last_metrics, checkpoint=directory)
            self._base_version = self.model.version

    async def load(self, directory: str) -> dict[str, Any]:
        """Restore a saved state (a checkpoint's ``steprm/``); this also makes a not-restored actor serve again."""
        await asyncio.get_running_loop().run_in_executor(self._train_pool, self._load, directory)
        return self.identity()

    def _load(self, directory: str) -> None:
        self.model.load(directory)
        self.not_restored = None
        self.restored_from = str(directory)
        self._last_metrics = {}
        if self.model.settings.online and self.state_dir is not None:
            ref = checkpoint_ref(self.state_dir, directory)
            publish_state(self.model, self.state_dir, self.run_token, checkpoint=directory if ref else None)
            self._base_version = self.model.version

    def identity(self) -> dict[str, Any]:
        """Who answers: ``incarnation`` (new at every start and restart), ``version`` (completed updates),
        ``restarted`` / ``ray_restarts`` (Ray's view), ``restored_from``, ``not_restored`` (why it refuses)."""
        return {"incarnation": self.incarnation, "version": self.model.version, "restarted": self.restarted,
                "ray_restarts": self.ray_restarts, "restored_from": self.restored_from,
                "not_restored": self.not_restored, "state_dir": self.state_dir}

    async def info(self) -> dict[str, Any]:
        return {**self.model.info(), **self.identity()}


DEFAULT_RESTARTS = 3


def start_service(
    settings: StepRMSettings | Mapping[str, Any],
    name: str = SERVICE_NAME,
    num_gpus: float = 0,
    num_cpus: float = 1,
    timeout_s: float = 600.0,
    max_restarts: int = DEFAULT_RESTARTS,
    max_task_retries: int = DEFAULT_RESTARTS,
    namespace: Optional[str] = None,
    state_dir: Optional[str] = None,
    run_token: Optional[str] = None,
    publish_every: int = DEFAULT_PUBLISH_EVERY,
    ranks: int = 1,
):
    """Create (or return the existing) named service actor and wait until it has loaded its model.

    Called once by the trainer process at start-up. ``state_dir`` / ``run_token``: where an online service
    publishes what a restart needs after every update (a base state and a journal of update batches) and which run
    it belongs to (see :class:`StepRewardServiceActor`;
    without them a restarted online actor refuses to serve). Raises ``TimeoutError`` naming the GPUs/CPUs asked
    for and what the cluster has when the actor is not up within ``timeout_s`` (an unschedulable GPU request waits
    forever otherwise).

    ``ranks`` >= 2: the model is sharded over that many rank actors (:mod:`spa_reward.steprm.sharded`), each with
    ``num_gpus / ranks`` GPUs (0: CPU ranks on gloo) and ``num_cpus`` CPUs, behind a coordinator actor of the same
    name and interface that holds no GPU. ``ranks`` = 1 is the one-actor service."""
    import ray

    s = settings if isinstance(settings, StepRMSettings) else StepRMSettings.from_dict(settings)
    if num_gpus and s.device is None:
        s.device = gpu_actor_device()
    ranks = int(ranks)
    if ranks < 1:
        raise ValueError(f"ranks={ranks} must be >= 1")
    options: dict[str, Any] = {"name": name, "get_if_exists": True, "num_gpus": num_gpus, "num_cpus": num_cpus,
                               "max_restarts": int(max_restarts), "max_task_retries": int(max_task_retries),
                               "max_concurrency": 8}
    if namespace is not None:
        options["namespace"] = namespace
    kwargs: dict[str, Any] = {"state_dir": None if state_dir is None else str(state_dir), "run_token": run_token,
                              "publish_every": int(publish_every)}
    cls: Any = StepRewardServiceActor
    wait_s = timeout_s
    if ranks > 1:
        from spa_reward.steprm.sharded import ShardedStepRewardServiceActor

        cls = ShardedStepRewardServiceActor
        options.update(num_gpus=0, num_cpus=0)  # the coordinator only fans calls out to the ranks
        kwargs.update(ranks=ranks, gpus_per_rank=float(num_gpus) / ranks, cpus_per_rank=float(num_cpus), name=name,
                      start_timeout_s=float(timeout_s), namespace=namespace)
        wait_s = 2 * timeout_s  # the coordinator waits timeout_s for the GPUs, then for the ranks
    actor = ray.remote(cls).options(**options).remote(s.to_dict(), **kwargs)
    try:
        ray.get(actor.info.remote(), timeout=wait_s)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(
            f"the step-reward service {name!r} (num_gpus={num_gpus}, num_cpus={num_cpus}, ranks={ranks}) did not "
            f"start within {wait_s:.0f} s; the cluster has {ray.cluster_resources()} with {ray.available_resources()} "
            "free. Give it GPUs outside the trainer's pool (the scorer GPU setting of the launch script) or lower its "
            "num_gpus") from None
    except ray.exceptions.RayActorError as e:
        raise RuntimeError(f"the step-reward service {name!r} (num_gpus={num_gpus}, ranks={ranks}) failed to start: "
                           f"{e}") from None
    return actor


def lookup_service(name: str = SERVICE_NAME, namespace: Optional[str] = None):
    """The running named actor; ``RuntimeError`` saying who starts it when there is none."""
    import ray

    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        raise RuntimeError(
            f"no step-reward service actor named {name!r} is running; the spa trainer mode "
            "(trainer.v1.trainer_mode=spa) starts it at start-up, reward workers only look it up"
        ) from None


_ACTOR_DOWN: tuple = ()


def _actor_down_errors() -> tuple:
    global _ACTOR_DOWN
    if not _ACTOR_DOWN:
        import ray.exceptions as rex

        _ACTOR_DOWN = tuple(getattr(rex, n) for n in ("RayActorError", "ActorDiedError", "ActorUnavailableError")
                            if hasattr(rex, n))
    return _ACTOR_DOWN


async def call_service(handle, name: str, method: str, *args, retry_wait_s: float = 2.0, namespace=None):
    """``await handle.<method>.remote(*args)``; if the actor died, look ``name`` up again once (Ray restarts it
    under the same name within its ``max_restarts``) and retry. Returns ``(handle, result)``; ``RuntimeError``
    when it stays down."""
    errors = _actor_down_errors()
    for attempt in range(2):
        if handle is None:
            handle = lookup_service(name, namespace)
        try:
            return handle, await getattr(handle, method).remote(*args)
        except errors as e:
            if attempt:
                raise RuntimeError(f"the step-reward service {name!r} is down and did not come back after a restart "
                                   f"({type(e).__name__}: {e}); see its actor log") from e
            logger.warning("step-reward service %r died (%s); looking it up again", name, type(e).__name__)
            handle = None
            await asyncio.sleep(retry_wait_s)
    raise AssertionError("unreachable")


__all__ = ["LOSSES", "OBJECTIVES", "precision", "SERVICE_NAME", "ServiceNotRestoredError", "StepRMSettings", "StepRewardModel",
           "StepRewardServiceActor", "call_service", "checkpoint_ref", "episode_index", "lookup_service",
           "parse_items", "parse_pair_items", "publish_state", "publish_update", "restore_state", "start_service"]
