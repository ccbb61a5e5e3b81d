"""A synthetic multi-turn task with known per-step contributions: proof that sum-to-R regression attributes
credit to the right steps.

Token vocabulary (ids):

* ``0`` pad, ``1`` BOS, ``2`` task marker, ``3`` observation marker, ``4`` assistant-turn start, ``5`` end of turn;
* ``PROGRESS_BASE + k`` (k < n_progress): "progress" action k, worth ``values[k]`` (known, fixed per task config)
  -- by default only the **first** time it is taken in an episode (repeats are worth 0), so the estimator must
  look back at earlier turns;
* ``NOOP_BASE + k`` (k < n_noop): actions worth 0;
* ``FILLER_BASE ...``: filler tokens for the task description, observations and "thoughts".

Episode layout: ``BOS TASK filler* | (OBS filler* ACT thought* action thought* EOT)+`` -- the prompt is everything
before the first observation; each assistant turn is the span ``ACT ... EOT``. The final reward is
``R = sum_t true_c_t``; the true contributions are stored in ``record.extra["true_contributions"]``.

The estimator only ever sees R (one number per episode). :func:`run_attribution_experiment` trains a tiny
transformer (built from a config, no download) with the real training CLI and measures the per-step Pearson
correlation between predicted ``c_t`` and the true contributions on held-out episodes.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..records import TrajectoryRecord, validate_record, write_records

PAD, BOS, TASK, OBS, ACT, EOT = 0, 1, 2, 3, 4, 5
PROGRESS_BASE = 8
TRUE_KEY = "true_contributions"


@dataclass
class SyntheticTaskConfig:
    n_progress: int = 8
    n_noop: int = 8
    min_turns: int = 3
    max_turns: int = 8
    prompt_filler: tuple[int, int] = (2, 5)
    obs_filler: tuple[int, int] = (1, 4)
    thought_filler: tuple[int, int] = (0, 2)
    n_filler: int = 32
    p_progress: float = 0.5  # probability that a turn's action is a progress action
    count_once: bool = True  # a progress action is worth its value only the first time in an episode
    value_range: tuple[float, float] = (0.1, 1.0)
    value_seed: int = 1234

    @property
    def noop_base(self) -> int:
        return PROGRESS_BASE + self.n_progress

    @property
    def filler_base(self) -> int:
        return self.noop_base + self.n_noop

    @property
    def vocab_size(self) -> int:
        return self.filler_base + self.n_filler

    def values(self) -> list[float]:
        rng = np.random.default_rng(self.value_seed)
        lo, hi = self.value_range
        return [round(float(v), 3) for v in rng.uniform(lo, hi, size=self.n_progress)]


def _fill(rng: random.Random, cfg: SyntheticTaskConfig, bounds: tuple[int, int]) -> list[int]:
    return [cfg.filler_base + rng.randrange(cfg.n_filler) for _ in range(rng.randint(*bounds))]


def make_episode(rng: random.Random, cfg: SyntheticTaskConfig, index: int, values: list[float]) -> TrajectoryRecord:
    ids = [BOS, TASK] + _fill(rng, cfg, cfg.prompt_filler)
    prompt_length = len(ids)
    spans, truth, actions, seen = [], [], [], set()
    for _ in range(rng.randint(cfg.min_turns, cfg.max_turns)):
        ids += [OBS] + _fill(rng, cfg, cfg.obs_filler)
        start = len(ids)
        if rng.random() < cfg.p_progress:
            k = rng.randrange(cfg.n_progress)
            token = PROGRESS_BASE + k
            worth = 0.0 if (cfg.count_once and k in seen) else values[k]
            seen.add(k)
            actions.append(f"progress[{k}]" + (" (repeat)" if worth == 0.0 else ""))
        else:
            k = rng.randrange(cfg.n_noop)
            token = cfg.noop_base + k
            worth = 0.0
            actions.append(f"noop[{k}]")
        ids += [ACT] + _fill(rng, cfg, cfg.thought_filler) + [token] + _fill(rng, cfg, cfg.thought_filler) + [EOT]
        spans.append([start, len(ids)])
        truth.append(worth)
    reward = float(sum(truth))
    return validate_record(
        {
            "format_version": 1,
            "uid": f"synthetic-{index}",
            "episode_id": f"synthetic-{index}",
            "env_name": "synthetic",
            "task_id": str(index),
            "tokenizer": "spa-synthetic",
            "input_ids": ids,
            "prompt_length": prompt_length,
            "turn_spans": spans,
            "executable": [not a.startswith("noop") for a in actions],
            "reward": reward,
            "won": reward > 0,
            "actions": actions,
            "extra": {TRUE_KEY: truth},
        }
    )


def window_rows(rec: TrajectoryRecord, history_length: int | None) -> list[tuple[list[int], int]]:
    """The token-level window layout of a synthetic episode (the synthetic task has no text env, so the window
    prompt is built from its tokens): row t = the prompt, the last k (observation, turn) segments, observation t,
    then turn t; [(row ids, row prompt length)]. Pass as ``rows_of`` to :func:`spa_reward.progress.train.train`."""
    k = 2 if history_length is None else int(history_length)
    ids, spans = rec.input_ids, rec.turn_spans
    starts = [rec.prompt_length] + [end for _, end in spans[:-1]]  # each segment: observation + turn
    rows = []
    for t, (a, b) in enumerate(spans):
        context = [x for j in range(max(0, t - k), t) for x in ids[starts[j]:spans[j][1]]]
        prompt = list(ids[: rec.prompt_length]) + context + list(ids[starts[t]:a])
        rows.append((prompt + list(ids[a:b]), len(prompt)))
    return rows


def make_synthetic_records(n: int, seed: int = 0, cfg: SyntheticTaskConfig | None = None, start_index: int = 0) -> list[TrajectoryRecord]:
    """``n`` episodes; the same ``cfg`` gives the same action values, ``seed`` varies the episodes."""
    cfg = cfg or SyntheticTaskConfig()
    rng = random.Random(seed)
    values = cfg.values()
    return [make_episode(rng, cfg, start_index + i, values) for i in range(n)]


def attribution_metrics(predicted: list[list[float]], records: list[TrajectoryRecord]) -> dict[str, float]:
    """Per-step agreement of predicted c_t with the true contributions, plus the sum-level fit."""
    from .train import pearson, spearman

    pred = np.array([x for p in predicted for x in p], dtype=np.float64)
    true = np.array([x for r in records for x in r.extra[TRUE_KEY]], dtype=np.float64)
    if len(pred) != len(true):
        raise ValueError(f"{len(pred)} predicted steps for {len(true)} true steps")
    sums = np.array([sum(p) for p in predicted])
    rewards = np.array([r.reward for r in records])
    kinds = np.array([_kind(a) for r in records for a in (r.actions or [""] * r.num_turns)])
    by_kind = {}
    for kind in ("progress", "repeat", "noop"):
        sel = kinds == kind
        if sel.any():  # mean signed error shows a bias, e.g. repeats credited as if they were new progress
            by_kind[f"{kind}_mae"] = float(np.mean(np.abs(pred[sel] - true[sel])))
            by_kind[f"{kind}_bias"] = float(np.mean(pred[sel] - true[sel]))
    return {
        "step_pearson": float(pearson(pred, true)),
        "step_spearman": float(spearman(pred, true)),
        "step_mae": float(np.mean(np.abs(pred - true))),
        "sum_mse": float(np.mean((sums - rewards) ** 2)),
        "sum_pearson": float(pearson(sums, rewards)),
        "n_steps": float(len(true)),
        "n_episodes": float(len(records)),
        **by_kind,
    }


def _kind(action: str) -> str:
    """``progress`` (first time), ``repeat`` (progress action already taken: worth 0) or ``noop``."""
    if action.startswith("noop"):
        return "noop"
    return "repeat" if action.endswith("(repeat)") else "progress"


def run_attribution_experiment(
    workdir: str | Path,
    n_train: int = 2000,
    n_eval: int = 300,
    epochs: int = 3,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    head: str = "mlp",
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    task: SyntheticTaskConfig | None = None,
    num_threads: int = 1,
    extra_args: list[str] | None = None,
) -> dict[str, Any]:
    """Write synthetic records, train a tiny estimator with ``spa_reward.progress.train`` (CPU), score the
    held-out episodes and return the attribution metrics (plus timings)."""
    import torch

    from . import train as train_mod
    from .model import ProgressEstimator, ProgressEstimatorConfig, build_tiny_backbone_config, predict_batched

    task = task or SyntheticTaskConfig()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    train_recs = make_synthetic_records(n_train, seed=seed, cfg=task)
    eval_recs = make_synthetic_records(n_eval, seed=seed + 10_000, cfg=task, start_index=n_train)
    (work / "train.jsonl").unlink(missing_ok=True)
    (work / "eval.jsonl").unlink(missing_ok=True)
    write_records(work / "train.jsonl", train_recs)
    write_records(work / "eval.jsonl", eval_recs)

    torch.manual_seed(seed)
    init_dir = work / "init"
    config = ProgressEstimatorConfig(
        backbone_config=build_tiny_backbone_config(
            vocab_size=task.vocab_size, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
            max_position_embeddings=512,
        ),
        head=head,
        tokenizer="spa-synthetic",
        max_length=512,
        pad_token_id=PAD,
    )
    ProgressEstimator(config).save_pretrained(init_dir)

    out = work / "estimator"
    args = [
        "--records", str(work / "train.jsonl"), "--eval-records", str(work / "eval.jsonl"),
        "--model", str(init_dir), "--output", str(out),
        "--lr", str(lr), "--weight-decay", "0.0", "--warmup-steps", "20", "--warmup-type", "linear",
        "--epochs", str(epochs), "--batch-size", str(batch_size), "--grad-accum", "1",
        "--eval-batch-size", "64", "--seed", str(seed), "--logger", "none", "--no-progress-bar",
        "--device", "cpu", "--log-every", "10", "--num-threads", str(num_threads),
    ] + list(extra_args or [])
    t0 = time.time()
    train_mod.main(args)
    train_time = time.time() - t0

    model = ProgressEstimator.from_pretrained(out, device="cpu")
    t0 = time.time()
    pred = predict_batched(model, [r.input_ids for r in eval_recs], [r.turn_ends for r in eval_recs], max_batch_size=64)
    infer_time = time.time() - t0
    metrics = attribution_metrics(pred, eval_recs)
    metrics.update(
        train_time_s=train_time,
        eval_inference_s=infer_time,
        n_train=n_train,
        epochs=epochs,
        backbone_params=sum(p.numel() for p in model.backbone.parameters()),
        task=asdict(task),
        values=task.values(),
    )
    with open(work / "attribution.json", "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics


__all__ = [
    "TRUE_KEY",
    "SyntheticTaskConfig",
    "attribution_metrics",
    "make_episode",
    "make_synthetic_records",
    "run_attribution_experiment",
]
