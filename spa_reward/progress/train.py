"""Train the SPA progress estimator on trajectory records.

    python -m spa_reward.progress.train --records 'rollouts/*.jsonl' --model <SFT checkpoint or estimator dir> \\
        --output runs/progress

Objective (``--objective``, recorded in the estimator's config so that serving reads it the same way; the loss
functions are ``spa_reward.steprm.objectives``): ``sum`` (paper and released code): for every trajectory,
``loss = (sum_t c_t - R)^2``, averaged over the batch, with no per-step target. ``prefix`` (ours): the head is read
at the last token before every turn (the prompt's last token, then the end of each observation; in the window
layout each row's prompt), each readout is the value V_t of the prefix before step t, regressed on R, and
``c_t = V_{t+1} - V_t`` with ``V_T = R`` (so ``sum_t c_t = R - V_0``); the default, as in the recipe. Defaults follow the released code (``prm/train_our_progress_model.py``): lr 3e-6,
1 epoch, effective batch 16 (2 per device x grad-accum), AdamW with weight decay 0.01, gradient clipping 1.0,
DeepSpeed-style ``WarmupLR`` (log warm-up over 500 optimizer steps, then constant), max length 4096.

Precision: the trainable weights are kept in float32 (master weights) and, on CUDA, the forward pass runs under
bf16 autocast, like DeepSpeed's bf16 mode. ``--dtype bfloat16`` stores the weights in bf16 (half the memory, but
AdamW updates of size ~lr * 1 are below bf16's resolution and partly lost).

Over-long sequences are truncated by :func:`spa_reward.progress.data.truncate_for_estimator` (whole leading turns
are dropped, the prompt is kept; dropped turns get no c_t and are not in the sum). The rule and ``--max-length``
are stored in the estimator config so that serving truncates identically.

Outputs in ``--output``: ``checkpoint-<step>/`` (estimator + ``trainer_state.pt``), a ``latest`` file naming the
newest checkpoint, the final estimator at the top level (LoRA merged), ``history.jsonl``, ``metrics.json`` and
``learning_curve.png``. ``--resume`` restores model, optimizer, scheduler, step, RNG and the position in the data
order from ``<output>/latest``; when that marker is missing or names a checkpoint that is gone or unreadable, from
the newest loadable ``checkpoint-*`` (it never starts fresh over existing checkpoints: it fails listing them).
A non-empty ``--output`` is refused without ``--resume`` or ``--overwrite`` (which first deletes the previous
run's checkpoints, logs and estimator), so two runs never mix in one folder.

Safety: ``trainer_state.pt`` holds only tensors and plain data and is loaded with ``torch.load(weights_only=True)``
(a checkpoint received from someone else cannot run code on resume); ``latest`` must be a plain child folder
name (``../x`` or an absolute path is refused). Checkpoint files and folders are fsynced before the renames that
publish them.

Layouts: ``--layout full`` (default) trains on the records' packed sequences (one sequence per episode, SPA's
setting). ``--layout window --history-length k`` trains for runs with ``env.history=window``: every record becomes
its T window rows (``spa_reward.progress.layouts.window_sequences``: the window prompt of step t + the reply tokens
of turn t, its turn end the row's last token; the records must keep ``extra["prompt_pieces"]``, which the
``env_agent`` loop writes in either layout), built with verl's continuous-token builder of the estimator's
tokenizer and ``--hf-model-type`` (default: the backbone's ``model_type``). The loss stays SPA's
``(sum_t c_t - R)^2`` per episode, the sum running over the episode's T rows (``--batch-size`` counts episodes; a
micro-batch of B episodes is B x T rows). ``--history-length`` defaults to the k the records were collected with.
The estimator records the layout in its config (``extra["layout"]``, ``extra["history_length"]``) and serving
refuses it for a run in the other layout (``spa_reward.progress.serve.check_estimator_layout``); ``--resume``
refuses a different layout than the checkpoint's.

Data: records are streamed into packed int32 examples (:class:`~spa_reward.progress.data.ExampleSet`, about 4
bytes a token), never held as record lists. Episodes that ended by an environment error (``extra["env_failed"]``)
are skipped and counted (``--include-env-failures`` keeps them). ``--eval-fraction`` reads the records' uids in
a first pass to draw the held-out groups. A run whose learning rate never leaves the warm-up (``--warmup-steps``
longer than the run) is warned about: at the released defaults a short run learns nothing.

Threads: ``--num-threads 0`` (default) follows :mod:`spa_reward.threads` (free cores by the load average), so a
CPU run does not collapse when other processes share the cores.

Multi-GPU: launch with ``torchrun --nproc_per_node N -m spa_reward.progress.train ...``; with ``WORLD_SIZE > 1``
the model is wrapped in ``DistributedDataParallel`` (NCCL on CUDA, gloo on CPU), every rank keeps only its own
share of the examples (every WORLD_SIZE-th record, from RANK) and shuffles it per epoch, and only rank 0 keeps
the eval set, evaluates, logs and saves. The whole model must fit on each GPU
(no ZeRO/FSDP sharding): about 16 bytes per trainable parameter (fp32 weights, grads, two Adam moments), e.g.
~50 GB for a 3B model -- use ``--lora-r`` or ``--gradient-checkpointing`` to go lower.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import pickle
import random
import shutil
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.cli import non_negative_float, non_negative_int, positive_float, positive_int, unit_interval
from ..fusion import DEFAULT_OBJECTIVE
from ..records import LAYOUTS, fsync_path, iter_records
from ..threads import apply_thread_policy
from ..records import RecordError, prompt_pieces
from .data import (
    Example,
    ExampleSet,
    collate_examples,
    collate_window_examples,
    epoch_order,
    flatten_rows,
    is_env_failure,
)
from ..steprm.objectives import (
    PROGRESS_OBJECTIVES,
    contributions_from_readouts,
    progress_episode_losses,
    readout_positions,
)
from .model import (
    ADAPTER_DIR,
    BACKBONE_DIR,
    CONFIG_NAME,
    HEAD_NAME,
    HEADS,
    TOKENIZER_DIR,
    ProgressEstimator,
    ProgressEstimatorConfig,
    is_estimator_dir,
    predict_contributions,
    resolve_dtype,
)

logger = logging.getLogger("spa_reward.progress.train")

TRAINER_STATE = "trainer_state.pt"
LATEST = "latest"
HISTORY = "history.jsonl"


# ------------------------------------------------------------------------------------------------------- metrics


def _rank(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (like scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def pearson(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if len(a) < 2:
        return float("nan")
    return pearson(_rank(a), _rank(b))


def regression_metrics(contributions: list[list[float]], rewards: list[float], prefix: str = "eval/") -> dict[str, float]:
    """MSE, Pearson and Spearman of ``sum_t c_t`` against R, and the mean ``|c_t|``."""
    sums = np.array([sum(c) for c in contributions], dtype=np.float64)
    r = np.asarray(rewards, dtype=np.float64)
    flat = np.array([x for c in contributions for x in c], dtype=np.float64)
    return {
        f"{prefix}mse": float(np.mean((sums - r) ** 2)) if len(r) else float("nan"),
        f"{prefix}pearson": pearson(sums, r),
        f"{prefix}spearman": spearman(sums, r),
        f"{prefix}mean_abs_c": float(np.mean(np.abs(flat))) if len(flat) else float("nan"),
        f"{prefix}n": float(len(r)),
    }


# -------------------------------------------------------------------------------------------------------- schedule


def warmup_factor(step: int, warmup_steps: int, warmup_type: str) -> float:
    """LR multiplier after ``step`` optimizer updates: warm-up to 1 over ``warmup_steps``, then constant.
    ``log`` follows DeepSpeed's WarmupLR default (``log(step+1) / log(warmup)``, here shifted by one so the first
    update is not at lr 0), ``linear`` ramps linearly."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    if warmup_type == "log":
        return min(1.0, math.log(step + 2) / math.log(warmup_steps + 1))
    return (step + 1) / warmup_steps


# --------------------------------------------------------------------------------------------------------- helpers


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m spa_reward.progress.train",
        description="Train the SPA progress estimator: MSE between sum_t c_t and the final reward R.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--records", nargs="+", required=True, help="trajectory record files (.jsonl/.parquet), globs or dirs")
    g.add_argument("--eval-records", nargs="*", default=None, help="held-out records for evaluation")
    g.add_argument(
        "--eval-fraction", type=unit_interval(closed_right=False), default=0.0,
        help="hold out this fraction of --records for evaluation (split by uid group, so no task leaks) when no "
        "--eval-records are given",
    )
    g.add_argument("--max-length", type=positive_int, default=4096, help="max tokens per sequence (released code: 4096)")
    g.add_argument(
        "--no-keep-prompt", action="store_true",
        help="when truncating, drop the prompt with the leading turns instead of keeping it",
    )
    g.add_argument("--skip-invalid", action="store_true", help="skip malformed records with a warning instead of failing")
    g.add_argument(
        "--layout", choices=LAYOUTS, default="full",
        help="context layout of the RL run the estimator will score: full = one packed sequence per episode "
        "(env.history=full), window = one sequence per step holding the last --history-length steps "
        "(env.history=window); the records must keep extra['prompt_pieces'] for window",
    )
    g.add_argument(
        "--history-length", type=non_negative_int, default=None,
        help="window layout: past (observation, action) pairs per prompt, the run's env.history_length "
        "(default: the k the records were collected with)",
    )
    g.add_argument(
        "--hf-model-type", default=None,
        help="window layout: the policy's HF model_type, which picks verl's token builder (default: the backbone's)",
    )
    g.add_argument(
        "--include-env-failures", action="store_true",
        help="keep episodes that ended by an environment error (extra['env_failed']); skipped by default, as their "
        "R says nothing about the policy",
    )

    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="HF causal-LM name/path (the SFT policy) or an existing estimator dir")
    g.add_argument("--tokenizer", default=None, help="tokenizer to save with the estimator (default: from --model)")
    g.add_argument("--head", choices=HEADS, default=None, help="head type for a new estimator (default mlp = paper)")
    g.add_argument(
        "--objective", choices=PROGRESS_OBJECTIVES, default=None,
        help="sum: the paper's MSE(sum_t c_t, R); prefix: the value of the prefix before every turn regressed on R, "
        "c_t = V(after step t) - V(before step t) with V(after the last step) = R "
        "(default: an estimator dir's own objective, else prefix, the recipe's algorithm.spa.objective)",
    )
    g.add_argument("--head-hidden-size", type=positive_int, default=None, help="MLP head width (default: backbone hidden size)")
    g.add_argument("--head-dropout", type=unit_interval(closed_right=False), default=0.0)
    g.add_argument("--lora-r", type=non_negative_int, default=0, help="LoRA rank; 0 = full fine-tune (released code)")
    g.add_argument("--lora-alpha", type=positive_int, default=16)
    g.add_argument("--lora-dropout", type=unit_interval(closed_right=False), default=0.05)
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--dtype", default="float32", help="storage dtype of the weights: float32 (master weights) or bfloat16")
    g.add_argument("--autocast", choices=["auto", "none", "bf16"], default="auto", help="auto = bf16 autocast on CUDA only")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument(
        "--num-threads", type=non_negative_int, default=0,
        help="torch CPU threads; 0 = the spa_reward.threads policy (the cores the load average leaves free, "
        "$SPA_NUM_THREADS overrides), which keeps training from collapsing on a shared machine",
    )

    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=positive_float, default=3e-6, help="learning rate (released code: 3e-6)")
    g.add_argument("--head-lr", type=positive_float, default=None, help="separate head learning rate (default: --lr)")
    g.add_argument("--weight-decay", type=non_negative_float, default=0.01, help="AdamW weight decay (released code: 0.01)")
    g.add_argument("--adam-betas", type=unit_interval(closed_right=False), nargs=2, default=(0.9, 0.999))
    g.add_argument("--max-grad-norm", type=non_negative_float, default=1.0, help="gradient clipping (released code: 1.0); 0 = off")
    g.add_argument("--warmup-steps", type=non_negative_int, default=500, help="LR warm-up, optimizer steps (released code: 500)")
    g.add_argument("--warmup-type", choices=["log", "linear"], default="log", help="log = DeepSpeed WarmupLR default")
    g.add_argument("--epochs", type=positive_int, default=1, help="passes over the data (released code: 1)")
    g.add_argument("--batch-size", type=positive_int, default=2, help="trajectories per device per micro-batch")
    g.add_argument(
        "--grad-accum", type=positive_int, default=None,
        help="micro-batches per optimizer step; default: so that batch-size x grad-accum x world-size = 16",
    )
    g.add_argument("--max-steps", type=non_negative_int, default=0, help="stop after this many optimizer steps (0 = no limit)")
    g.add_argument("--seed", type=int, default=42)

    g = p.add_argument_group("bookkeeping")
    g.add_argument("--output", required=True, help="output dir: checkpoints, final estimator, logs, plot")
    g.add_argument("--eval-every", type=non_negative_int, default=0, help="evaluate every N optimizer steps (0 = only at the end)")
    g.add_argument("--eval-batch-size", type=positive_int, default=8)
    g.add_argument("--save-every", type=non_negative_int, default=0, help="checkpoint every N optimizer steps (0 = only at the end)")
    g.add_argument("--save-total-limit", type=non_negative_int, default=2, help="checkpoints to keep (0 = all)")
    g.add_argument(
        "--resume", action="store_true",
        help="continue from <output>/latest (or, when it is missing or unreadable, the newest loadable checkpoint)",
    )
    g.add_argument(
        "--overwrite", action="store_true",
        help="start again in a non-empty --output: delete its checkpoints, logs and estimator first (without it, "
        "a non-empty --output is refused unless --resume)",
    )
    g.add_argument("--log-every", type=positive_int, default=1, help="log train metrics every N optimizer steps")
    g.add_argument(
        "--logger", default="console",
        help="comma-separated verl Tracking backends (console, wandb, tensorboard, file, ...) or 'none'",
    )
    g.add_argument("--project", default="spa-progress-estimator", help="tracking project name")
    g.add_argument("--experiment", default=None, help="tracking experiment name (default: output dir name)")
    g.add_argument("--no-plot", action="store_true", help="do not write learning_curve.png")
    g.add_argument("--no-progress-bar", action="store_true")
    return p


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def _pick_device(arg: str, local_rank: int) -> torch.device:
    if arg == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(arg)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def split_uids(uids, fraction: float, seed: int) -> set[str]:
    """The uid groups to hold out: about ``fraction`` of the distinct uids (at least one when ``fraction > 0``)."""
    uids = sorted(set(uids))
    random.Random(seed).shuffle(uids)
    n_eval = max(1, round(fraction * len(uids))) if fraction > 0 else 0
    return set(uids[:n_eval])


def _uids(paths, skip_invalid: bool) -> list[str]:
    with warnings.catch_warnings():  # the main pass warns about the same invalid records
        warnings.simplefilter("ignore")
        return [r.uid for r in iter_records(paths, skip_invalid=skip_invalid)]


def window_row_source(tokenizer, hf_model_type: str | None, chat_template_kwargs: dict | None = None):
    """``rows_of(record, k) -> [(row ids, row prompt length)]``: the window layout through verl's token builder."""
    from .layouts import make_token_builder, window_sequences

    if tokenizer is None:
        raise SystemExit("--layout window builds the window prompts with the policy's tokenizer: pass --tokenizer "
                         "(or a --model folder that holds one)")
    builder = make_token_builder(tokenizer, hf_model_type, chat_template_kwargs)

    def rows_of(rec, k):
        return [(r.input_ids, r.prompt_length) for r in window_sequences(rec, builder, k)]

    return rows_of


def _record_history_length(rec, k: int | None) -> int | None:
    return k if k is not None else prompt_pieces(rec).get("history_length")


def load_examples(args, max_length: int, keep_prompt: bool, world: int = 1, rank: int = 0,
                  rows_of=None) -> dict[str, Any]:
    """Stream the records into packed :class:`ExampleSet` s: no record list is ever held, and with ``world > 1``
    each rank keeps only its share of the training examples (every ``world``-th, from ``rank``); only rank 0
    keeps the eval examples. Episodes that ended by an env error are skipped unless ``--include-env-failures``.

    ``rows_of(record, k)`` gives a record's window rows (``--layout window``, :func:`window_row_source`); with it
    every example is an episode of rows. Returns ``{"train", "eval", "num_train", "env_failed", "tokenizers",
    "history_lengths"}`` (``num_train``: over all ranks; ``history_lengths``: the window k used)."""
    held: set[str] = set()
    if not args.eval_records and args.eval_fraction > 0:
        held = split_uids(_uids(args.records, args.skip_invalid), args.eval_fraction, args.seed)
    train, evals = ExampleSet(), ExampleSet()
    counts = {"train": 0, "env_failed": 0, "no_pieces": 0}
    tokenizers: set[str] = set()
    history_lengths: set[int] = set()
    k = getattr(args, "history_length", None)

    def add(target: ExampleSet, rec) -> None:
        if rows_of is None:
            target.append(rec, max_length, keep_prompt)
        else:
            target.append_rows(rec, rows_of(rec, k), max_length, keep_prompt)

    def consume(paths, is_eval_file: bool) -> None:
        for rec in iter_records(paths, skip_invalid=args.skip_invalid):
            if not args.include_env_failures and is_env_failure(rec):
                counts["env_failed"] += 1
                continue
            if rows_of is not None:
                try:
                    history_lengths.add(int(_record_history_length(rec, k)))
                except (RecordError, TypeError) as e:
                    if not args.skip_invalid:
                        raise SystemExit(f"--layout window: {e}" if isinstance(e, RecordError) else
                                         f"--layout window: record {rec.episode_id!r} was collected in the full "
                                         "layout: pass --history-length (the run's env.history_length)") from None
                    counts["no_pieces"] += 1
                    continue
            tokenizers.add(rec.tokenizer)
            if is_eval_file or rec.uid in held:
                if rank == 0:
                    add(evals, rec)
                continue
            if counts["train"] % world == rank:
                add(train, rec)
            counts["train"] += 1

    consume(args.records, False)
    if args.eval_records:
        consume(args.eval_records, True)
    if counts["env_failed"]:
        logger.info("skipped %d env-failed episodes (extra[%r]); --include-env-failures keeps them",
                    counts["env_failed"], "env_failed")
    if counts["no_pieces"]:
        logger.warning("--layout window: skipped %d records that cannot rebuild the window layout", counts["no_pieces"])
    if len(history_lengths) > 1:
        raise SystemExit(f"--layout window: the records were collected with different history lengths "
                         f"{sorted(history_lengths)}; pass --history-length (the run's env.history_length)")
    return {"train": train, "eval": evals, "num_train": counts["train"], "env_failed": counts["env_failed"],
            "tokenizers": sorted(tokenizers), "history_lengths": sorted(history_lengths)}


class _Tracker:
    """verl's Tracking on rank 0 (imported lazily: importing verl takes seconds), or nothing."""

    def __init__(self, args, config: dict, enabled: bool):
        self.impl = None
        backends = [b.strip() for b in args.logger.split(",") if b.strip() and b.strip() != "none"]
        if enabled and backends:
            from verl.utils.tracking import Tracking

            self.impl = Tracking(
                project_name=args.project,
                experiment_name=args.experiment or Path(args.output).name,
                default_backend=backends,
                config=config,
            )

    def log(self, data: dict, step: int) -> None:
        if self.impl is not None:
            self.impl.log(data=data, step=step)

    def finish(self) -> None:
        if self.impl is not None:
            self.impl.finish()


def _load_tokenizer(name: str | None):
    if not name:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name)
    except Exception as e:  # a backbone without tokenizer files is fine: the estimator just cannot check vocabs
        logger.warning("could not load a tokenizer from %r (%s); the estimator will be saved without one", name, e)
        return None


def _build_model(args, dtype: torch.dtype, records_tokenizer: str | None):
    """(model, tokenizer) for a fresh run: a saved estimator (continued) or a new head on an HF backbone."""
    if args.model is None:
        raise SystemExit("--model is required (an HF causal-LM path/name or an estimator dir)")
    keep_prompt = not args.no_keep_prompt
    if is_estimator_dir(args.model):
        model = ProgressEstimator.from_pretrained(args.model, dtype=dtype, merge_lora=True)
        if args.head and args.head != model.config.head:
            raise SystemExit(f"--head {args.head} differs from the estimator's head {model.config.head!r} in {args.model}")
        if args.objective and args.objective != model.config.objective:
            raise SystemExit(f"--objective {args.objective} differs from the objective {model.config.objective!r} the "
                             f"estimator in {args.model} was trained with (its readouts mean something else); train "
                             "a new head from the backbone, or leave --objective out to continue")
        tok_dir = Path(args.model) / "tokenizer"
        tokenizer = _load_tokenizer(args.tokenizer or (str(tok_dir) if tok_dir.is_dir() else None))
        model.config.max_length = args.max_length
        model.config.keep_prompt_on_truncation = keep_prompt
        if args.lora_r > 0:
            model.config.lora_r, model.config.lora_alpha, model.config.lora_dropout = args.lora_r, args.lora_alpha, args.lora_dropout
            model._wrap_lora()
        return model, tokenizer
    tokenizer = _load_tokenizer(args.tokenizer or args.model)
    pad = 0
    if tokenizer is not None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    config = ProgressEstimatorConfig(
        backbone=args.model,
        head=args.head or "mlp",
        head_hidden_size=args.head_hidden_size,
        head_dropout=args.head_dropout,
        tokenizer=args.tokenizer or (args.model if tokenizer is not None else records_tokenizer),
        max_length=args.max_length,
        keep_prompt_on_truncation=keep_prompt,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        pad_token_id=int(pad),
        objective=args.objective or DEFAULT_OBJECTIVE,
    )
    return ProgressEstimator(config, dtype=dtype), tokenizer


def _make_optimizer(model: ProgressEstimator, args) -> torch.optim.Optimizer:
    decay, no_decay, head = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("head."):
            head.append(param)
        elif param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": args.weight_decay, "lr": args.lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": args.lr},
        {"params": head, "weight_decay": args.weight_decay, "lr": args.head_lr or args.lr},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], betas=tuple(args.adam_betas))


def _rng_state() -> dict:
    """Every RNG as plain data (ints, lists, tensors), so the checkpoint loads with ``weights_only=True``."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [int(version), [int(x) for x in internal], gauss],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class UnsafeCheckpointError(RuntimeError):
    """A trainer state that holds more than tensors and plain data (it could run code when unpickled)."""


def _checkpoint_step(path: Path) -> int | None:
    tail = path.name.rsplit("-", 1)[-1]
    return int(tail) if path.name.startswith("checkpoint-") and tail.isdigit() else None


def list_checkpoints(output: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-<step>`` folders of a training output, newest (highest step) first."""
    out = Path(output)
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if p.is_dir() and _checkpoint_step(p) is not None]
    return sorted(found, key=_checkpoint_step, reverse=True)


def _marker_target(output: Path) -> Path | None:
    """The folder ``<output>/latest`` names; refuses anything but a plain child folder name."""
    marker = output / LATEST
    if not marker.is_file():
        return None
    name = marker.read_text(encoding="utf-8", errors="replace").strip()
    bad = (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or os.path.isabs(name)
           or (os.altsep is not None and os.altsep in name))
    if bad:
        raise ValueError(
            f"{marker} names {name!r}, which is not a checkpoint folder inside {output} (expected a plain name such "
            "as 'checkpoint-12'); refusing to follow it. Delete the file (resume then uses the newest checkpoint-*)."
        )
    return output / name


def latest_checkpoint(output: str | os.PathLike) -> Path | None:
    """The checkpoint named by ``<output>/latest``, if it exists and has a trainer state. Raises ``ValueError``
    when the marker is not a plain child folder name (``../x``, an absolute path, ...)."""
    ckpt = _marker_target(Path(output))
    return ckpt if ckpt is not None and (ckpt / TRAINER_STATE).is_file() else None


def load_trainer_state(ckpt: str | os.PathLike) -> dict:
    """``<ckpt>/trainer_state.pt`` loaded with ``weights_only=True`` (tensors and plain data only)."""
    path = Path(ckpt) / TRAINER_STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        # a class/function reference is what can run code; anything else (bad opcodes) is a torn or foreign file
        reason = next((ln.strip() for ln in text.splitlines() if "Unsupported global" in ln or "GLOBAL" in ln), None)
        if reason is None:
            raise
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain data, which could run code "
            f"when unpickled ({reason}). Only resume from checkpoints this trainer wrote; delete this checkpoint "
            "to fall back to an older one."
        ) from None


def find_resume_checkpoint(output: str | os.PathLike) -> tuple[Path, dict] | None:
    """(checkpoint, trainer state) to resume from: the one ``latest`` names, else (missing, dangling or
    unreadable) the newest loadable ``checkpoint-*``. ``None`` only when there is no checkpoint at all; raises
    ``SystemExit`` listing them when checkpoints exist but none loads, and :class:`UnsafeCheckpointError` for a
    state that is not plain data (never skipped silently)."""
    out = Path(output)
    named = _marker_target(out)
    candidates = list_checkpoints(out)
    if named is not None:
        candidates = [named] + [c for c in candidates if c != named]
    problems = []
    for ckpt in candidates:
        if not (ckpt / TRAINER_STATE).is_file() or not (ckpt / CONFIG_NAME).is_file():
            problems.append(f"{ckpt.name}: missing {TRAINER_STATE} or {CONFIG_NAME}")
            continue
        try:
            state = load_trainer_state(ckpt)
        except UnsafeCheckpointError:
            raise
        except Exception as e:  # torn or truncated file: try the next older one
            problems.append(f"{ckpt.name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        if problems:
            logger.warning("--resume: skipped unusable checkpoints (%s); resuming from %s", "; ".join(problems), ckpt)
        return ckpt, state
    if candidates:
        raise SystemExit(
            f"--resume: {out} has checkpoints but none can be loaded, refusing to start fresh over them:\n  "
            + "\n  ".join(problems)
            + "\nRepair or remove them, or pass --overwrite (without --resume) to delete them and start again."
        )
    return None


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fsync_path(Path(dirpath) / name)
        fsync_path(dirpath)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def _save_checkpoint(model: ProgressEstimator, tokenizer, optimizer, scheduler, state: dict, output: Path, limit: int) -> Path:
    name = f"checkpoint-{state['step']}"
    final = output / name
    tmp = output / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, tokenizer=tokenizer, merge_lora=False)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state(), **state},
        tmp / TRAINER_STATE,
    )
    _fsync_tree(tmp)  # the data is on disk before the rename makes it the checkpoint
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync_path(output)
    _atomic_write_text(output / LATEST, name)
    if limit > 0:
        for old in list_checkpoints(output)[limit:]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


# what a training run writes into --output (``--overwrite`` deletes exactly these)
_RUN_OUTPUTS = (LATEST, f".{LATEST}.tmp", HISTORY, "metrics.json", "run_config.json", "learning_curve.png",
                CONFIG_NAME, HEAD_NAME, BACKBONE_DIR, ADAPTER_DIR, TOKENIZER_DIR)


def prepare_output(output: Path, resume: bool, overwrite: bool, model: str | None) -> None:
    """Refuse to mix runs in one folder: a non-empty ``output`` needs ``resume`` or ``overwrite``; ``overwrite``
    deletes the previous run's checkpoints, logs and estimator (and nothing else) before anything is written."""
    if resume and overwrite:
        raise SystemExit("--resume and --overwrite contradict each other: pick one")
    entries = sorted(p.name for p in output.iterdir()) if output.is_dir() else []
    if not entries or resume:
        return
    if not overwrite:
        shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
        raise SystemExit(
            f"--output {output} is not empty ({shown}). Pass --resume to continue the run in it, --overwrite to "
            "delete its checkpoints, logs and estimator and start again, or choose a new folder."
        )
    if model is not None:
        src = Path(model).resolve()
        if src == output.resolve() or output.resolve() in src.parents:
            raise SystemExit(f"--overwrite would delete --model {model}, which lies in --output {output}: "
                             "copy it elsewhere or choose a new --output")
    doomed = [output / n for n in _RUN_OUTPUTS if (output / n).exists()]
    doomed += [p for p in output.iterdir() if _checkpoint_step(p) is not None
               or (p.name.startswith(".checkpoint-") and p.name.endswith(".tmp"))]
    for p in doomed:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    logger.warning("--overwrite: deleted %d entries of the previous run in %s (%s)", len(doomed), output,
                   ", ".join(sorted(p.name for p in doomed)))


def warmup_warnings(total_steps: int, warmup_steps: int, warmup_type: str, lr: float) -> list[str]:
    """Warnings for a run whose learning rate spends most or all of it in the warm-up (a short run that learns
    nothing because the lr never got near ``--lr``)."""
    if warmup_steps <= 0 or total_steps <= 0:
        return []
    if total_steps < warmup_steps:
        end = warmup_factor(total_steps, warmup_steps, warmup_type)  # the lr logged after the last step
        return [
            f"this run has {total_steps} optimizer steps but the {warmup_type} LR warm-up takes {warmup_steps}: the "
            f"learning rate never leaves the warm-up and ends at {lr * end:.3g} ({100 * end:.0f}% of --lr {lr:g}). "
            f"Lower --warmup-steps (e.g. {max(1, total_steps // 10)}) or train for more steps."
        ]
    if 2 * warmup_steps > total_steps:
        return [f"the LR warm-up ({warmup_steps} steps) takes more than half of this run's {total_steps} optimizer "
                "steps; consider a shorter --warmup-steps"]
    return []


def plot_learning_curve(history: list[dict], out_path: str | os.PathLike) -> Path | None:
    """Train loss (raw and smoothed) and eval metrics against the optimizer step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [h for h in history if "train/loss" in h]
    evals = [h for h in history if "eval/mse" in h]
    if not train and not evals:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    if train:
        steps = [h["step"] for h in train]
        loss = [h["train/loss"] for h in train]
        ax.plot(steps, loss, alpha=0.35, label="train loss")
        if len(loss) >= 5:
            w = max(2, len(loss) // 20)
            smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
            ax.plot(steps[w - 1 :], smooth, label=f"train loss (mean of {w})")
    if evals:
        ax.plot([h["step"] for h in evals], [h["eval/mse"] for h in evals], "o-", label="eval MSE")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MSE(sum c_t, R)")
    plotted = [h["train/loss"] for h in train] + [h["eval/mse"] for h in evals]
    ax.set_yscale("log" if plotted and min(plotted) > 0 else "linear")
    ax.legend()
    ax.grid(alpha=0.3)
    ax = axes[1]
    if evals:
        st = [h["step"] for h in evals]
        ax.plot(st, [h["eval/pearson"] for h in evals], "o-", label="Pearson(sum c_t, R)")
        ax.plot(st, [h["eval/spearman"] for h in evals], "s-", label="Spearman(sum c_t, R)")
        ax.plot(st, [h["eval/mean_abs_c"] for h in evals], "^-", label="mean |c_t|")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no evaluation", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("optimizer step")
    ax.grid(alpha=0.3)
    fig.suptitle("progress estimator training")
    fig.tight_layout()
    out = Path(out_path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def evaluate(model: ProgressEstimator, examples: list[Example], batch_size: int, autocast_dtype) -> dict[str, float]:
    """Regression metrics of ``sum_t c_t`` against R and the objective's own loss (``eval/loss``); a window-layout
    example's c_t are its rows' (one each)."""
    seqs, ends, owner, befores = flatten_rows(examples)
    rewards = [e.reward for e in examples]
    preds, readouts = predict_contributions(model, seqs, ends, befores, rewards, owner, batch_size, autocast_dtype)
    contributions: list[list[float]] = [[] for _ in examples]
    for i, p in zip(owner, preds):
        contributions[i].extend(p)
    metrics = regression_metrics(contributions, rewards)
    if seqs:
        k = max(1, max(len(e) for e in ends))
        valid = torch.arange(k).unsqueeze(0) < torch.tensor([len(e) for e in ends]).unsqueeze(1)
        values = torch.zeros(len(seqs), k)
        values[valid] = torch.tensor([x for r in readouts for x in r], dtype=torch.float32)
        losses = progress_episode_losses(values, valid, torch.tensor(rewards, dtype=torch.float32),
                                         model.config.objective, episode_index=torch.tensor(owner))
        metrics["eval/loss"] = float(losses.mean())
    return metrics


# ------------------------------------------------------------------------------------------------------------ main


def _set_layout(cfg: ProgressEstimatorConfig, args, ckpt, history_lengths: list[int]) -> None:
    """Record the layout (and window length) in the estimator config; a resumed checkpoint must match it."""
    k = None
    if args.layout == "window":
        k = args.history_length if args.history_length is not None else (history_lengths[0] if history_lengths
                                                                          else None)
    extra = dict(cfg.extra or {})
    before = (str(extra.get("layout") or "full"), extra.get("history_length"))
    if ckpt is not None and before != (args.layout, k):
        raise SystemExit(f"--resume: the checkpoint {ckpt} was trained in layout {before[0]!r} (history_length "
                         f"{before[1]}), this run asks for {args.layout!r} (history_length {k}); resume with the "
                         "checkpoint's --layout/--history-length or start a new --output")
    if before != (args.layout, k) and is_estimator_dir(args.model or ""):
        logger.warning("continuing the estimator %s (layout %s, history_length %s) in layout %s (history_length %s)",
                       args.model, before[0], before[1], args.layout, k)
    extra.update(layout=args.layout, history_length=k)
    cfg.extra = extra
    if ckpt is not None and args.objective and args.objective != cfg.objective:
        raise SystemExit(f"--resume: the checkpoint {ckpt} was trained with --objective {cfg.objective}, this run asks "
                         f"for {args.objective}; resume with the checkpoint's objective or start a new --output")


def train(args: argparse.Namespace, rows_of=None) -> dict[str, Any]:
    """Run the training (see the module docstring). ``rows_of(record, k)`` overrides how ``--layout window`` turns
    a record into its rows (default :func:`window_row_source`; the synthetic task has its own token-level one)."""
    world, rank, local_rank = _dist_info()
    is_main = rank == 0
    device = _pick_device(args.device, local_rank)
    if world > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")

    threads = apply_thread_policy(args.num_threads)
    output = Path(args.output)
    if args.model is None and not args.resume:
        raise SystemExit("--model is required (an HF causal-LM path/name or an estimator dir)")
    if is_main:
        prepare_output(output, args.resume, args.overwrite, args.model)
    if world > 1:
        torch.distributed.barrier()
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)

    # ---- model (first: its config fixes the truncation the examples are built with)
    dtype = resolve_dtype(args.dtype, device)
    resumed = find_resume_checkpoint(output) if args.resume else None
    if args.resume and resumed is None:
        logger.warning("--resume: no checkpoint in %s, starting fresh", output)
    ckpt = resumed[0] if resumed else None
    if ckpt is not None:
        model = ProgressEstimator.from_pretrained(ckpt, dtype=dtype, merge_lora=False, is_trainable=True)
        model.train()
        tokenizer = _load_tokenizer(str(ckpt / "tokenizer")) if (ckpt / "tokenizer").is_dir() else None
    else:
        model, tokenizer = _build_model(args, dtype, None)
    cfg = model.config
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.to(device)
    model.train()

    # ---- data
    if args.layout == "window" and rows_of is None:
        rows_of = window_row_source(tokenizer, args.hf_model_type or (cfg.backbone_config or {}).get("model_type"))
    data = load_examples(args, cfg.max_length, cfg.keep_prompt_on_truncation, world, rank,
                         rows_of if args.layout == "window" else None)
    _set_layout(cfg, args, ckpt, data["history_lengths"])
    examples, eval_examples = data["train"], data["eval"]
    if not data["num_train"]:
        raise SystemExit("no training records" + (f" ({data['env_failed']} env-failed episodes skipped; "
                                                  "--include-env-failures keeps them)" if data["env_failed"] else ""))
    rec_tokenizers = data["tokenizers"]
    if len(rec_tokenizers) > 1:
        logger.warning("records come from several tokenizers %s: their token ids must mean the same", rec_tokenizers)
    if cfg.tokenizer is None and ckpt is None and rec_tokenizers:
        cfg.tokenizer = rec_tokenizers[0]
    max_id = max(examples.max_token_id, eval_examples.max_token_id)
    emb_rows = model.base_backbone.get_input_embeddings().weight.shape[0]
    if max_id >= emb_rows:
        raise SystemExit(
            f"records hold token id {max_id} but the backbone has only {emb_rows} embeddings: the records were "
            f"tokenised with {rec_tokenizers} which does not match the estimator's tokenizer ({cfg.tokenizer})"
        )
    if cfg.tokenizer and any(Path(t).name != Path(cfg.tokenizer).name for t in rec_tokenizers):
        logger.warning("records were tokenised with %s, the estimator expects %s: make sure the vocabularies match",
                       rec_tokenizers, cfg.tokenizer)
    n_trunc = examples.num_truncated
    n_dropped_turns = examples.num_dropped_turns
    if world > 1:  # each rank holds only its share: sum the counts for the run config
        counts = torch.tensor([n_trunc, n_dropped_turns], dtype=torch.long, device=device)
        torch.distributed.all_reduce(counts)
        n_trunc, n_dropped_turns = (int(x) for x in counts.tolist())

    # ---- schedule
    per_rank = data["num_train"] // world
    if per_rank == 0:
        raise SystemExit(f"{data['num_train']} training examples for {world} ranks")
    grad_accum = args.grad_accum or max(1, math.ceil(16 / (args.batch_size * world)))
    micro_per_epoch = math.ceil(per_rank / args.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / grad_accum)
    total_steps = steps_per_epoch * args.epochs
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    run_warnings = warmup_warnings(total_steps, args.warmup_steps, args.warmup_type, args.lr)
    if is_main:
        for w in run_warnings:
            logger.warning("%s", w)

    optimizer = _make_optimizer(model, args)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_factor(s, args.warmup_steps, args.warmup_type)
    )
    step, epoch, micro_done, history = 0, 0, 0, []
    if ckpt is not None:
        state = resumed[1]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, micro_done, history = state["step"], state["epoch"], state["micro_done"], state["history"]
        _set_rng_state(state["rng"])
        if state.get("world_size", 1) != world:
            logger.warning("resuming with world size %d, checkpoint was written with %d: data order changes",
                           world, state.get("world_size", 1))
        logger.info("resumed from %s at step %d (epoch %d, micro-batch %d)", ckpt, step, epoch, micro_done)

    autocast_dtype = None
    if args.autocast == "bf16" or (args.autocast == "auto" and device.type == "cuda"):
        autocast_dtype = torch.bfloat16
    train_model: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    run_config = {
        "args": {k: v for k, v in vars(args).items()},
        "estimator": {k: v for k, v in asdict(cfg).items() if k != "backbone_config"},
        "data": {
            "train": data["num_train"], "eval": len(eval_examples), "truncated": n_trunc,
            "dropped_turns": n_dropped_turns, "env_failed_skipped": data["env_failed"],
            "tokens_held_per_rank": examples.num_tokens, "bytes_held_per_rank": examples.nbytes(),
            "layout": args.layout, "history_length": cfg.extra.get("history_length"),
        },
        "schedule": {
            "world_size": world, "grad_accum": grad_accum, "effective_batch": args.batch_size * grad_accum * world,
            "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "torch_threads": threads,
        },
        "warnings": run_warnings,
    }
    if is_main:
        logger.info("progress estimator training: %s", json.dumps({k: run_config[k] for k in ("data", "schedule")}))
        with open(output / "run_config.json", "w") as f:
            json.dump(run_config, f, indent=2, default=str)
        with open(output / HISTORY, "w") as f:  # fresh run: empty; resumed: what the checkpoint knew
            f.writelines(json.dumps(h) + "\n" for h in history)
    tracker = _Tracker(args, run_config, enabled=is_main)

    def log(data: dict) -> None:
        history.append({"step": step, **data})
        if is_main:
            tracker.log(data, step)
            with open(output / HISTORY, "a") as f:
                f.write(json.dumps({"step": step, **data}) + "\n")

    def run_eval() -> dict:
        metrics = {}
        if is_main and eval_examples:
            metrics = evaluate(model, eval_examples, args.eval_batch_size, autocast_dtype)
            log(metrics)
        if world > 1:
            torch.distributed.barrier()
        return metrics

    def save() -> None:
        if is_main:
            state = {"step": step, "epoch": epoch, "micro_done": micro_done, "history": history, "world_size": world,
                     "args": vars(args)}
            _save_checkpoint(model, tokenizer, optimizer, scheduler, state, output, args.save_total_limit)
        if world > 1:
            torch.distributed.barrier()

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=step, desc="progress-estimator", disable=not is_main or args.no_progress_bar)
    t0 = time.time()
    last_save_step = step
    stop = step >= total_steps
    while not stop and epoch < args.epochs:
        order = epoch_order(len(examples), args.seed, epoch)[:per_rank]  # this rank's share, shuffled
        micro_batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
        while micro_done < len(micro_batches):
            group = micro_batches[micro_done : micro_done + grad_accum]
            n_group = sum(len(mb) for mb in group)
            loss_sum, abs_c, n_c, tokens = 0.0, 0.0, 0, 0
            optimizer.zero_grad(set_to_none=True)
            for j, mb in enumerate(group):
                collate = collate_window_examples if args.layout == "window" else collate_examples
                batch = collate([examples[i] for i in mb], cfg.pad_token_id)
                batch = {k: v.to(device) for k, v in batch.items()}
                sync = j == len(group) - 1
                ctx = train_model.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
                with ctx:
                    positions = readout_positions(batch["turn_end_positions"], batch["before_positions"], cfg.objective)
                    with torch.autocast(device_type=device.type, dtype=autocast_dtype or torch.float32,
                                        enabled=autocast_dtype is not None):
                        readouts = train_model(batch["input_ids"], batch["attention_mask"], positions)
                    valid = batch["turn_end_positions"] >= 0
                    sq = progress_episode_losses(readouts, valid, batch["rewards"], cfg.objective,
                                                 episode_index=batch.get("episode_index"))
                    (sq.sum() / n_group).backward()
                loss_sum += float(sq.detach().sum())
                contrib = contributions_from_readouts(readouts.detach(), valid, cfg.objective, batch["rewards"],
                                                      batch.get("episode_index"))
                abs_c += float(contrib.abs()[valid].sum())
                n_c += int(valid.sum())
                tokens += int(batch["attention_mask"].sum())
            grad_norm = float("nan")
            if args.max_grad_norm and args.max_grad_norm > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], args.max_grad_norm))
            optimizer.step()
            scheduler.step()
            micro_done += len(group)
            step += 1
            bar.update(1)
            loss = loss_sum / n_group
            if not math.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {loss} at step {step}")
            if step % max(1, args.log_every) == 0 or step == total_steps:
                log({
                    "train/loss": loss,
                    "train/lr": scheduler.get_last_lr()[0],
                    "train/grad_norm": grad_norm,
                    "train/mean_abs_c": abs_c / max(1, n_c),
                    "train/tokens_per_s_rank": tokens / max(1e-9, time.time() - t0),
                    "train/epoch": epoch + micro_done / len(micro_batches),
                })
            t0 = time.time()
            bar.set_postfix(loss=f"{loss:.4f}")
            if args.eval_every and step % args.eval_every == 0 and step != total_steps:
                run_eval()
            if args.save_every and step % args.save_every == 0 and step != total_steps:
                save()
                last_save_step = step
            if step >= total_steps:
                stop = True
                break
        if micro_done >= len(micro_batches):
            epoch += 1
            micro_done = 0
    bar.close()

    final_metrics = run_eval()
    if last_save_step != step or latest_checkpoint(output) is None:
        save()
    if is_main:
        model.save_pretrained(output, tokenizer=tokenizer, merge_lora=True)
        summary = {"step": step, "epoch": epoch, "train_examples": data["num_train"], "eval_examples": len(eval_examples),
                   "truncated_examples": n_trunc, "dropped_turns": n_dropped_turns, **final_metrics}
        train_losses = [h["train/loss"] for h in history if "train/loss" in h]
        if train_losses:
            summary["final_train_loss"] = train_losses[-1]
        with open(output / "metrics.json", "w") as f:
            json.dump(summary, f, indent=2)
        if not args.no_plot:
            plot_learning_curve(history, output / "learning_curve.png")
        logger.info("saved the progress estimator to %s: %s", output, json.dumps(summary))
    tracker.finish()
    if world > 1:
        torch.distributed.destroy_process_group()
    return {"step": step, **final_metrics}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    return train(args)


if __name__ == "__main__":
    main(sys.argv[1:])
