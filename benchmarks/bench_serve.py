"""Benchmark: ProgressScorer throughput (trajectories/second) on CPU (or a GPU with --device cuda).

Two randomly initialised backbones built from configs (no download):

* ``tiny``:  Llama, 2 layers, hidden 64, vocab 256;
* ``small``: Llama, 2 layers, hidden 512, 8 heads, intermediate 1408, vocab 32000 (real-sized layer width; the
  LM head over the vocabulary is never computed, the hidden state is read directly).

Trajectories: random tokens, ``--turns`` assistant turns spread over ``--length`` tokens. Reports trajectories/s
and tokens/s for several ``max_batch_size`` values, plus the round trip through the named Ray actor.

    python benchmarks/bench_serve.py [--lengths 512 2048] [--batch-sizes 1 8] [--threads 2] [--no-ray]
"""

from __future__ import annotations

import sys

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent))
from _report import report  # noqa: E402  (benchmarks/_report.py)

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from spa_reward.progress.model import ProgressEstimator, ProgressEstimatorConfig, build_tiny_backbone_config
from spa_reward.progress.serve import ProgressScorer, get_progress_scorer

CONFIGS = {
    "tiny": dict(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4),
    "small": dict(vocab_size=32000, hidden_size=512, num_layers=2, num_heads=8, intermediate_size=1408),
}


def make_items(n: int, length: int, turns: int, vocab: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        ln = rng.randint(length * 3 // 4, length)
        ends = sorted(rng.sample(range(ln // 4, ln - 1), turns - 1)) + [ln - 1]
        items.append({"input_ids": [rng.randrange(vocab) for _ in range(ln)], "turn_ends": ends, "prompt_length": ln // 8})
    return items


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--n", type=int, default=32, help="trajectories per measurement")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="spa_bench_serve_"))
    rows = []
    for name in args.configs:
        torch.manual_seed(0)
        cfg = ProgressEstimatorConfig(
            backbone_config=build_tiny_backbone_config(max_position_embeddings=8192, **CONFIGS[name]), max_length=8192
        )
        model_dir = work / name
        ProgressEstimator(cfg).save_pretrained(model_dir)
        for bs in args.batch_sizes:
            scorer = ProgressScorer(model_dir, device=args.device, dtype=args.dtype, max_batch_size=bs)
            params = sum(p.numel() for p in scorer.model.parameters())
            for length in args.lengths:
                items = make_items(args.n, length, args.turns, CONFIGS[name]["vocab_size"])
                scorer.score(items[: max(1, bs)])  # warm-up
                t0 = time.perf_counter()
                scorer.score(items)
                dt = time.perf_counter() - t0
                tokens = sum(len(it["input_ids"]) for it in items)
                row = {"config": name, "params": params, "device": args.device, "threads": torch.get_num_threads(),
                       "max_batch_size": bs, "length": length, "turns": args.turns, "n": args.n,
                       "traj_per_s": round(args.n / dt, 2), "tokens_per_s": round(tokens / dt)}
                rows.append(row)
                print(json.dumps(row), flush=True)

    if not args.no_ray:
        import ray

        ray.init(num_cpus=max(1, torch.get_num_threads()), include_dashboard=False, log_to_driver=False)
        try:
            actor = get_progress_scorer(work / "tiny", name="bench-scorer", max_batch_size=8, device=args.device)
            items = make_items(args.n, 512, args.turns, CONFIGS["tiny"]["vocab_size"], seed=1)
            ray.get(actor.score.remote(items[:2]))
            t0 = time.perf_counter()
            ray.get([actor.score.remote([it]) for it in items])  # n concurrent single-trajectory callers
            dt = time.perf_counter() - t0
            info = ray.get(actor.info.remote())
            row = {"config": "tiny via Ray actor", "device": args.device, "length": 512, "n": args.n,
                   "concurrent_single_item_calls": args.n, "forward_calls": info["stats"]["calls"] - 1,
                   "traj_per_s": round(args.n / dt, 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        finally:
            ray.shutdown()

    cols = ["config", "max_batch_size", "length", "traj_per_s", "tokens_per_s"]
    report(rows, cols, args.out, missing="")
    return rows


if __name__ == "__main__":
    main()
