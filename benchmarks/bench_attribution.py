"""Benchmark: does sum-to-R regression recover the true per-step contributions?

Trains tiny progress estimators (built from a config, CPU, no download) with the real training CLI on the
synthetic task of :mod:`spa_reward.progress.synthetic` and reports, on held-out episodes, the per-step Pearson
and Spearman correlation between predicted c_t and the true contributions, the MAE per step, the MSE of
sum_t c_t against R, and the training time.

Two task variants:

* ``values``: every progress action is worth its hidden value each time it is taken (c_t depends on the turn);
* ``first-time``: a progress action counts only the first time in an episode (c_t depends on the history too).

    python benchmarks/bench_attribution.py [--quick] [--out results.json]
"""

from __future__ import annotations

import sys

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent))
from _report import report  # noqa: E402  (benchmarks/_report.py)

import argparse
import json
import tempfile
import time
from pathlib import Path

from spa_reward.progress.synthetic import SyntheticTaskConfig, run_attribution_experiment


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    p.add_argument("--n-train", type=int, default=6000)
    p.add_argument("--n-eval", type=int, default=500)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", nargs="+", default=["mlp"], help="estimator heads to compare")
    p.add_argument("--tasks", nargs="+", default=["values", "first-time"], choices=["values", "first-time"])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.n_train, args.n_eval, args.epochs = 1200, 200, 4

    work = Path(args.workdir or tempfile.mkdtemp(prefix="spa_bench_attr_"))
    rows = []
    tasks = {"values": SyntheticTaskConfig(count_once=False), "first-time": SyntheticTaskConfig(count_once=True)}
    for variant in args.tasks:
        task = tasks[variant]
        for head in args.heads:
            t0 = time.time()
            m = run_attribution_experiment(
                work / f"{variant}-{head}", n_train=args.n_train, n_eval=args.n_eval, epochs=args.epochs,
                hidden_size=args.hidden_size, num_layers=args.layers, head=head, lr=args.lr, seed=args.seed,
                task=task, num_threads=args.threads,
            )
            row = {
                "task": variant, "head": head, "n_train": args.n_train, "epochs": args.epochs,
                "backbone_params": m["backbone_params"],
                "step_pearson": round(m["step_pearson"], 4), "step_spearman": round(m["step_spearman"], 4),
                "step_mae": round(m["step_mae"], 4), "sum_mse": round(m["sum_mse"], 5),
                "sum_pearson": round(m["sum_pearson"], 4), "eval_steps": int(m["n_steps"]),
                **{k: round(m[k], 4) for k in ("progress_mae", "repeat_mae", "noop_mae", "repeat_bias") if k in m},
                "train_time_s": round(m["train_time_s"], 1), "total_time_s": round(time.time() - t0, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    cols = ["task", "head", "step_pearson", "step_mae", "progress_mae", "repeat_mae", "noop_mae", "sum_mse", "sum_pearson",
            "train_time_s"]
    report(rows, cols, args.out, missing="-")
    return rows


if __name__ == "__main__":
    main()
