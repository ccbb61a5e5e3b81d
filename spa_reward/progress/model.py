"""SPA progress estimator: a causal-LM backbone plus a scalar head read at the last token of every assistant turn.

Paper (SPA-RL, arXiv 2505.20732): ``c_t = MLP(h_t)`` where ``h_t`` is the backbone's last hidden state at the end
of turn ``t``; training regresses ``sum_t c_t`` onto the episode's final reward ``R`` with MSE. The released code
instead puts ``nn.Linear(vocab_size, 1)`` on the LM *logits* at that token. Both are available here:

* ``head="mlp"``: ``Linear(H, head_hidden) -> GELU -> Dropout -> Linear(head_hidden, 1)`` on the hidden state
  (paper, default);
* ``head="linear"``: ``Linear(H, 1)`` on the hidden state;
* ``head="logits_linear"``: the backbone's own LM head, then ``Linear(vocab, 1)`` on the logits (released code).

The head always runs in float32 (its weights stay fp32 whatever the backbone dtype is). Any Hugging Face causal
LM works as backbone (``AutoModelForCausalLM``); the last hidden layer is read through ``get_decoder()`` (so no
vocabulary-sized logits are computed for the whole sequence), falling back to ``output_hidden_states`` for models
without a separable decoder. Optional LoRA through ``peft`` (``lora_r > 0``).

On-disk layout written by :meth:`ProgressEstimator.save_pretrained`::

    <dir>/config.json          ProgressEstimatorConfig (model_type "spa_progress_estimator")
    <dir>/backbone/            backbone.save_pretrained(...) (base weights; LoRA not merged unless asked)
    <dir>/adapter/             peft adapter, only when LoRA is active and was not merged
    <dir>/head.safetensors     head weights (float32)
    <dir>/tokenizer/           tokenizer.save_pretrained(...), when a tokenizer was given
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODEL_TYPE = "spa_progress_estimator"
ESTIMATOR_FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
HEAD_NAME = "head.safetensors"
BACKBONE_DIR = "backbone"
ADAPTER_DIR = "adapter"
TOKENIZER_DIR = "tokenizer"
HEADS = ("mlp", "linear", "logits_linear")


@dataclass
class ProgressEstimatorConfig:
    """Configuration of a :class:`ProgressEstimator`.

    Args:
        backbone: Hugging Face name or local path of the causal-LM backbone (the SFT policy checkpoint in SPA).
        backbone_config: the backbone's ``PretrainedConfig.to_dict()``; used to build a randomly initialised
            backbone when ``backbone`` is ``None`` (tests, synthetic tasks). Filled in automatically.
        head: ``"mlp"`` (paper), ``"linear"`` (linear on the hidden state) or ``"logits_linear"`` (released code:
            linear on the LM logits).
        head_hidden_size: width of the MLP head's hidden layer; ``None`` = the backbone hidden size.
        head_dropout: dropout inside the MLP head.
        tokenizer: name or path of the tokenizer the estimator expects (must be the policy's tokenizer).
        max_length: longest sequence fed to the backbone; longer ones are truncated by
            :func:`spa_reward.progress.data.truncate_for_estimator` the same way in training and serving.
        keep_prompt_on_truncation: when truncating, keep the prompt (task description) and drop whole leading
            turns; ``False`` drops the prompt with them (pure left truncation at turn boundaries).
        lora_r, lora_alpha, lora_dropout, lora_target_modules: LoRA through peft when ``lora_r > 0``
            (``lora_target_modules=None`` = ``"all-linear"``).
        pad_token_id: id used to pad batches (any id works: padded positions are masked out).
        objective: what the head's readouts mean and how they were trained (``spa_reward.steprm.objectives``):
            ``sum`` (the paper: one c_t per turn end, MSE(sum_t c_t, R)) or ``prefix`` (the value of the prefix
            before every turn regressed on R, c_t = V_{t+1} - V_t with V_T = R). Serving turns the readouts into
            c_t the same way.
    """

    backbone: str | None = None
    backbone_config: dict | None = None
    head: str = "mlp"
    head_hidden_size: int | None = None
    head_dropout: float = 0.0
    tokenizer: str | None = None
    max_length: int = 4096
    keep_prompt_on_truncation: bool = True
    lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | str | None = None
    pad_token_id: int = 0
    objective: str = "sum"
    model_type: str = MODEL_TYPE
    format_version: int = ESTIMATOR_FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"ProgressEstimatorConfig.head must be one of {HEADS}, not {self.head!r}")
        if self.backbone is None and self.backbone_config is None:
            raise ValueError("ProgressEstimatorConfig needs a backbone name/path or a backbone_config")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, not {self.max_length}")
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0, not {self.lora_r}")
        from spa_reward.steprm.objectives import check_progress_objective

        check_progress_objective(self.objective)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProgressEstimatorConfig:
        d = dict(d)
        if d.get("model_type") != MODEL_TYPE:
            raise ValueError(f"not a progress-estimator config (model_type={d.get('model_type')!r}, expected {MODEL_TYPE!r})")
        if int(d.get("format_version", -1)) > ESTIMATOR_FORMAT_VERSION:
            raise ValueError(
                f"progress-estimator format_version {d.get('format_version')} is newer than this code "
                f"({ESTIMATOR_FORMAT_VERSION}); upgrade spa-rl"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown progress-estimator config keys {unknown}")
        return cls(**d)

    def save(self, directory: str | os.PathLike) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        with open(Path(directory) / CONFIG_NAME, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ProgressEstimatorConfig:
        with open(Path(directory) / CONFIG_NAME, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def is_estimator_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a saved progress estimator (its config.json has our model_type)."""
    cfg = Path(path) / CONFIG_NAME
    if not cfg.is_file():
        return False
    try:
        with open(cfg, encoding="utf-8") as f:
            return json.load(f).get("model_type") == MODEL_TYPE
    except (OSError, ValueError):
        return False


def default_dtype(device: str | torch.device | None) -> torch.dtype:
    """bf16 on CUDA, fp32 elsewhere."""
    return torch.bfloat16 if device is not None and torch.device(device).type == "cuda" else torch.float32


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None = None) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
    name = aliases.get(str(dtype), str(dtype))
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r} (use float32, bfloat16 or float16)")
    return value


def last_hidden_state(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """``(bs, L, H)`` last-layer hidden states (after the final norm) of a causal LM ``model`` (a
    ``PreTrainedModel``, LoRA layers injected or not), from its decoder alone: the LM head is not run."""
    get = getattr(model, "get_decoder", None)
    dec = None
    if get is not None:
        try:
            dec = get()
        except Exception:  # some remote-code models raise instead of returning None
            dec = None
    if dec is not None and dec is not model:
        out = dec(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
    return out.hidden_states[-1]


def _build_head(kind: str, in_features: int, hidden: int, dropout: float) -> nn.Module:
    if kind == "mlp":
        head = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        out = head[-1]
    else:
        head = nn.Sequential(nn.Linear(in_features, 1))
        out = head[0]
    # small output layer: the first sums of c_t start near 0 instead of at a random offset
    nn.init.normal_(out.weight, std=0.02 / max(1.0, (out.in_features / 64) ** 0.5))
    nn.init.zeros_(out.bias)
    return head.float()


def _import_peft():
    try:
        import peft
    except ImportError as e:
        raise ImportError("LoRA needs peft: pip install 'spa-rl[lora]' (or peft>=0.13)") from e
    return peft


class ProgressEstimator(nn.Module):
    """Causal-LM backbone + scalar head at the last token of each assistant turn.

    Args:
        config: the :class:`ProgressEstimatorConfig`.
        backbone: an already built ``PreTrainedModel`` (causal LM). ``None`` builds it from
            ``config.backbone`` (``from_pretrained``) or ``config.backbone_config`` (random init).
        dtype: dtype of the backbone when it is built here.
    """

    def __init__(self, config: ProgressEstimatorConfig, backbone: nn.Module | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoModelForCausalLM

        dtype = dtype or torch.float32
        if backbone is None:
            if config.backbone is not None:
                backbone = AutoModelForCausalLM.from_pretrained(config.backbone, dtype=dtype)
            else:
                bb_cfg = AutoConfig.for_model(**config.backbone_config)
                backbone = AutoModelForCausalLM.from_config(bb_cfg, dtype=dtype)
        self.config = config
        config.backbone_config = backbone.config.to_dict()
        text_cfg = backbone.config.get_text_config() if hasattr(backbone.config, "get_text_config") else backbone.config
        self.hidden_size = int(text_cfg.hidden_size)
        self.vocab_size = int(text_cfg.vocab_size)
        if config.head == "logits_linear":
            in_features = self.vocab_size
        else:
            in_features = self.hidden_size
        head_hidden = config.head_hidden_size or self.hidden_size
        self.backbone = backbone
        if config.head != "logits_linear":
            # the LM head is never run (the hidden state is read directly): freeze an untied one so it gets no
            # optimizer state and DDP does not wait for its gradient
            out_emb, in_emb = backbone.get_output_embeddings(), backbone.get_input_embeddings()
            if out_emb is not None and in_emb is not None and out_emb.weight is not in_emb.weight:
                out_emb.requires_grad_(False)
        if config.lora_r > 0:
            self._wrap_lora()
        self.head = _build_head(config.head, in_features, head_hidden, config.head_dropout)

    # ------------------------------------------------------------------------------------------------- backbone

    def _wrap_lora(self) -> None:
        peft = _import_peft()
        LoraConfig, get_peft_model = peft.LoraConfig, peft.get_peft_model

        cfg = self.config
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules or "all-linear",
            bias="none",
        )
        self.backbone = get_peft_model(self.backbone, lora)

    @property
    def has_lora(self) -> bool:
        return type(self.backbone).__module__.startswith("peft.")

    @property
    def base_backbone(self) -> nn.Module:
        """The ``PreTrainedModel`` (with LoRA layers injected when LoRA is active)."""
        return self.backbone.get_base_model() if self.has_lora else self.backbone

    def enable_gradient_checkpointing(self) -> None:
        base = self.base_backbone
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.has_lora and hasattr(base, "enable_input_require_grads"):
            base.enable_input_require_grads()

    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    @property
    def backbone_dtype(self) -> torch.dtype:
        return next(self.base_backbone.parameters()).dtype

    def last_hidden_state(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """``(bs, L, H)`` hidden states of the backbone's last layer (after its final norm)."""
        return last_hidden_state(self.base_backbone, input_ids, attention_mask)

    # ----------------------------------------------------------------------------------------------------- forward

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        turn_end_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-turn contributions.

        Args:
            input_ids: ``(bs, L)`` token ids, right-padded.
            attention_mask: ``(bs, L)`` 1 on real tokens, 0 on padding (``None`` = all ones).
            turn_end_positions: ``(bs, K)`` long, the index of the last token of each assistant turn, ``-1`` where
                padded. Positions must point at real (unpadded) tokens.

        Returns:
            ``(bs, K)`` float32 contributions ``c_t``, 0 where ``turn_end_positions == -1``.
        """
        if turn_end_positions is None:
            raise ValueError("turn_end_positions is required: (bs, K) long, -1 for padding")
        if turn_end_positions.dim() != 2 or turn_end_positions.size(0) != input_ids.size(0):
            raise ValueError(
                f"turn_end_positions must be (bs={input_ids.size(0)}, K), got {tuple(turn_end_positions.shape)}"
            )
        if turn_end_positions.numel() and int(turn_end_positions.max()) >= input_ids.size(1):
            raise ValueError(
                f"turn_end_positions reach {int(turn_end_positions.max())}, past the sequence length {input_ids.size(1)}"
            )
        positions = turn_end_positions.to(input_ids.device).long()
        valid = positions >= 0
        hidden = self.last_hidden_state(input_ids, attention_mask)  # (bs, L, H)
        index = positions.clamp(min=0).unsqueeze(-1).expand(-1, -1, hidden.size(-1))
        picked = torch.gather(hidden, 1, index)  # (bs, K, H)
        if self.config.head == "logits_linear":
            picked = self.base_backbone.get_output_embeddings()(picked)
        with torch.autocast(device_type=picked.device.type, enabled=False):
            contributions = self.head(picked.float()).squeeze(-1)
        return contributions.masked_fill(~valid, 0.0)

    def predict_turns(
        self,
        input_ids: list[list[int]] | list[int],
        turn_ends: list[list[int]] | list[int],
        max_batch_size: int = 16,
    ) -> list[list[float]] | list[float]:
        """Convenience inference on Python lists, without truncation, for the ``sum`` objective (one c_t per turn
        end). A single sequence (``list[int]``, ``list[int]``) gives ``list[float]``; a batch gives
        ``list[list[float]]``. For serving (truncation, validation, the ``prefix`` objective, Ray) use
        :class:`spa_reward.progress.serve.ProgressScorer`."""
        if self.config.objective != "sum":
            raise ValueError(f"predict_turns reads c_t at turn ends (the sum objective); this estimator's objective "
                             f"is {self.config.objective!r}: score it with spa_reward.progress.serve.ProgressScorer")
        single = bool(input_ids) and isinstance(input_ids[0], int)
        seqs = [input_ids] if single else input_ids
        ends = [turn_ends] if single else turn_ends
        result = predict_batched(self, seqs, ends, max_batch_size=max_batch_size)
        return result[0] if single else result

    # --------------------------------------------------------------------------------------------------- save/load

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().contiguous() for k, v in self.head.state_dict().items()}

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        tokenizer: Any = None,
        merge_lora: bool = False,
        is_main_process: bool = True,
    ) -> None:
        """Write config, backbone, head and (optionally) tokenizer to ``save_directory``.

        With LoRA active: ``merge_lora=False`` writes the base weights to ``backbone/`` and the adapter to
        ``adapter/``; ``merge_lora=True`` merges the adapter into the backbone **in place** (this module stops
        having LoRA) and writes a plain backbone.
        """
        if not is_main_process:
            return
        from safetensors.torch import save_file

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        if self.has_lora and merge_lora:
            self.backbone = self.backbone.merge_and_unload()
            self.config.lora_r = 0
        if self.has_lora:
            self.backbone.save_pretrained(out / ADAPTER_DIR)
            base = self.backbone.get_base_model()
            state = _strip_lora_state_dict(base.state_dict())
            base.save_pretrained(out / BACKBONE_DIR, state_dict=state)
        else:
            self.backbone.save_pretrained(out / BACKBONE_DIR)
        save_file(self.head_state_dict(), str(out / HEAD_NAME))
        if tokenizer is not None:
            tokenizer.save_pretrained(out / TOKENIZER_DIR)
            if self.config.tokenizer is None:
                self.config.tokenizer = getattr(tokenizer, "name_or_path", None) or None
        self.config.save(out)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        merge_lora: bool = True,
        is_trainable: bool = False,
    ) -> ProgressEstimator:
        """Load an estimator saved by :meth:`save_pretrained`.

        Args:
            directory: the saved estimator.
            device: where to put it (default CPU).
            dtype: backbone dtype; default bf16 on CUDA, fp32 elsewhere. The head is always fp32.
            merge_lora: merge a saved LoRA adapter into the backbone (fast inference). ``False`` keeps it as a
                separate peft adapter (``is_trainable`` makes it trainable, for resuming training).
        """
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        src = Path(directory)
        if not (src / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"no progress estimator at {str(src)!r} (missing {CONFIG_NAME}); train one with "
                "`python -m spa_reward.progress.train --records ... --model ... --output DIR`"
            )
        config = ProgressEstimatorConfig.load(src)
        torch_dtype = resolve_dtype(dtype, device)
        backbone = AutoModelForCausalLM.from_pretrained(src / BACKBONE_DIR, dtype=torch_dtype)
        adapter = src / ADAPTER_DIR
        lora_r = config.lora_r
        config.lora_r = 0  # the adapter is attached below, not re-created
        model = cls(config, backbone=backbone, dtype=torch_dtype)
        if adapter.is_dir():
            PeftModel = _import_peft().PeftModel
            peft_model = PeftModel.from_pretrained(model.backbone, adapter, is_trainable=is_trainable and not merge_lora)
            if merge_lora:
                model.backbone = peft_model.merge_and_unload()
            else:
                model.backbone = peft_model
                config.lora_r = lora_r
        model.head.load_state_dict(load_file(str(src / HEAD_NAME)))
        if device is not None:
            model.to(device)
        model.eval()
        return model


_LORA_KEY = re.compile(r"\.lora_(A|B|embedding_A|embedding_B|dropout|magnitude_vector)\b")


def _strip_lora_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Base-model weights out of a peft-injected model's state dict: drop ``lora_*`` tensors and undo the
    ``.base_layer.`` renaming, so ``AutoModelForCausalLM.from_pretrained`` loads them as a plain model."""
    clean = {}
    for key, value in state.items():
        if _LORA_KEY.search(key):
            continue
        clean[key.replace(".base_layer.", ".")] = value
    return clean


@torch.no_grad()
def predict_batched(
    model: ProgressEstimator,
    seqs: Sequence[Sequence[int]],
    turn_ends: Sequence[Sequence[int]],
    max_batch_size: int = 16,
    max_batch_tokens: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> list[list[float]]:
    """c_t for many (already truncated) sequences: sorted by length, cut into batches of at most
    ``max_batch_size`` sequences and (if given) ``max_batch_tokens`` padded tokens, results in input order.
    Sequences without turns get ``[]`` and are not run."""
    from .data import collate_sequences

    if len(seqs) != len(turn_ends):
        raise ValueError(f"{len(seqs)} sequences but {len(turn_ends)} turn-end lists")
    results: list[list[float]] = [[] for _ in seqs]
    todo = sorted((i for i in range(len(seqs)) if len(turn_ends[i])), key=lambda i: -len(seqs[i]))
    device = model.device
    was_training = model.training
    model.eval()
    try:
        start = 0
        while start < len(todo):
            longest = len(seqs[todo[start]])  # sorted longest first: the first item sets the padded length
            size = max_batch_size
            if max_batch_tokens:
                size = max(1, min(size, max_batch_tokens // max(1, longest)))
            chunk = todo[start : start + size]
            start += len(chunk)
            batch = collate_sequences([seqs[i] for i in chunk], [turn_ends[i] for i in chunk], model.config.pad_token_id, device)
            with torch.autocast(device_type=device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                out = model(batch["input_ids"], batch["attention_mask"], batch["turn_end_positions"])
            out = out.float().cpu()
            for row, i in enumerate(chunk):
                results[i] = out[row, : len(turn_ends[i])].tolist()
    finally:
        model.train(was_training)
    return results


def predict_contributions(model: ProgressEstimator, seqs, ends, befores, rewards=None, episodes=None,
                          batch_size: int = 16, autocast_dtype=None, max_batch_tokens: int | None = None
                          ) -> tuple[list[list[float]], list[list[float]]]:
    """(c_t per sequence, the head's readouts per sequence) for already truncated sequences, under the estimator's
    objective (``model.config.objective``): the head is read at
    :func:`~spa_reward.steprm.objectives.readout_positions` (``sum``: the turn ends; ``prefix``: ``befores``, the
    last token before each turn) and the readouts become c_t by
    :func:`~spa_reward.steprm.objectives.contributions_from_readouts`.

    Args:
        seqs, ends, befores: per sequence its token ids, turn ends and before-positions (same length as its ends).
        rewards: ``prefix``: each episode's R (the value after its last step).
        episodes: ``prefix``: per sequence the index of its episode in ``rewards``, when an episode is several
            consecutive sequences in step order (window rows); None = one episode per sequence.
    """
    from spa_reward.steprm.objectives import contributions_from_readouts, readout_positions, reads_before

    objective = model.config.objective
    n = len(seqs)
    lengths = torch.tensor([len(e) for e in ends], dtype=torch.long)
    k = max(1, int(lengths.max())) if n else 1
    valid = torch.arange(k).unsqueeze(0) < lengths.unsqueeze(1)  # (n, K)

    def padded(lists) -> torch.Tensor:
        out = torch.full((n, k), -1, dtype=torch.long)
        out[valid] = torch.tensor([int(x) for e in lists for x in e], dtype=torch.long)
        return out

    end_pos = padded(ends)
    pos = readout_positions(end_pos, padded(befores) if reads_before(objective) else end_pos, objective)
    positions = [pos[i, : int(lengths[i])].tolist() for i in range(n)]
    readouts = predict_batched(model, seqs, positions, max_batch_size=batch_size, autocast_dtype=autocast_dtype,
                               max_batch_tokens=max_batch_tokens)
    values = torch.zeros(n, k)
    values[valid] = torch.tensor([x for r in readouts for x in r], dtype=torch.float32)
    c = contributions_from_readouts(values, valid, objective,
                                    None if rewards is None else torch.as_tensor(rewards, dtype=torch.float32),
                                    None if episodes is None else torch.as_tensor(episodes, dtype=torch.long))
    return [c[i, : int(lengths[i])].tolist() for i in range(n)], readouts


def build_tiny_backbone_config(
    vocab_size: int = 256,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
    model_type: str = "llama",
    **extra: Any,
) -> dict[str, Any]:
    """A small decoder config (as a dict for :class:`ProgressEstimatorConfig.backbone_config`), for tests and
    synthetic tasks; nothing is downloaded."""
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(
        model_type,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        intermediate_size=intermediate_size or 2 * hidden_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        **extra,  # e.g. model_type="mistral", sliding_window=64 (local attention: learns fast on long pages)
    )
    return cfg.to_dict()


__all__ = [
    "HEADS",
    "ProgressEstimator",
    "ProgressEstimatorConfig",
    "build_tiny_backbone_config",
    "default_dtype",
    "is_estimator_dir",
    "predict_batched",
    "last_hidden_state",
    "predict_contributions",
    "resolve_dtype",
]
