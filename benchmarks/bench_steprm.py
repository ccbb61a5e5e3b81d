"""Benchmark: cost of the step-reward service per RL batch on CPU (or a GPU with --device cuda).

For each model and objective: one scoring pass over a batch of ``--episodes`` trajectories (the rewards for the
batch) and one online update on it (``steps_per_batch=1``, replay window 1: for ``implicit`` a no-grad pass for
dL/dQ plus forward/backward; for ``progress`` forward/backward), with AdamW. Randomly initialised Llama backbones
built from configs (no download):

* ``tiny``: 2 layers, hidden 64, vocab 256 (~0.1M parameters);
* ``40m``: 8 layers, hidden 512, 8 heads, intermediate 1376, vocab 16384 (~42M parameters, untied embeddings).

Trajectories: random tokens; a prompt of ``--length // 8`` tokens, then ``--turns`` assistant turns of
``--length // (2 * turns)`` tokens each separated by observations; uid groups of 8 with half successes.

    python benchmarks/bench_steprm.py [--episodes 128] [--length 256] [--models tiny 40m] [--threads 2]
"""

from __future__ import annotations

import sys

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent))
from _report import report  # noqa: E402  (benchmarks/_report.py)

import argparse
import os
import random
import time

import torch

from spa_reward.progress.model import build_tiny_backbone_config
from spa_reward.steprm.service import StepRewardModel

CONFIGS = {
    "tiny": dict(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4),
    "40m": dict(vocab_size=16384, hidden_size=512, num_layers=8, num_heads=8, intermediate_size=1376),
}


def make_items(n: int, length: int, turns: int, vocab: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    prompt = max(1, length // 8)
    turn_len = max(1, (length - prompt) // (2 * turns))
    items = []
    for i in range(n):
        ids = [rng.randrange(vocab) for _ in range(prompt)]
        spans = []
        for _ in range(turns):
            ids += [rng.randrange(vocab) for _ in range(turn_len)]  # observation
            start = len(ids)
            ids += [rng.randrange(vocab) for _ in range(turn_len)]  # assistant turn
            spans.append([start, len(ids)])
        items.append({"input_ids": ids, "prompt_length": prompt, "turn_spans": spans,
                      "ref_logprobs": [-rng.random() * 5 for _ in ids], "uid": f"g{i // 8}",
                      "success": i % 2 == 0, "reward": float(i % 2)})
    return items


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--episodes", type=int, default=128)
    p.add_argument("--length", type=int, default=256, help="tokens per trajectory")
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--models", nargs="+", default=["tiny", "40m"], choices=sorted(CONFIGS))
    p.add_argument("--objectives", nargs="+", default=["progress", "implicit"], choices=["progress", "implicit"])
    p.add_argument("--micro-batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    if args.episodes < 1 or args.length < 16 or args.turns < 1:
        p.error("need --episodes >= 1, --length >= 16, --turns >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        cfg = build_tiny_backbone_config(**CONFIGS[name])
        items = make_items(args.episodes, args.length, args.turns, CONFIGS[name]["vocab_size"])
        for objective in args.objectives:
            torch.manual_seed(0)
            svc = StepRewardModel(dict(objective=objective, online=True, backbone_config=cfg, lr=1e-6,
                                       micro_batch_size=args.micro_batch_size, device=args.device, dtype=args.dtype))
            n_params = sum(p.numel() for p in svc.model.parameters())
            svc.score(items[: args.micro_batch_size])  # warm-up
            t0 = time.perf_counter()
            svc.score(items)
            t1 = time.perf_counter()
            svc.update(items)
            t2 = time.perf_counter()
            rows.append({"model": name, "params_M": round(n_params / 1e6, 1), "objective": objective,
                         "episodes": args.episodes, "tokens/episode": len(items[0]["input_ids"]),
                         "score_s": round(t1 - t0, 2), "update_s": round(t2 - t1, 2),
                         "total_s": round(t2 - t0, 2), "device": args.device})
            print(rows[-1], flush=True)
            del svc
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"\nload average at the end: {load[0]:.2f}" if load[0] != "?" else "")
    report(rows, ["model", "params_M", "objective", "episodes", "tokens/episode", "score_s", "update_s", "total_s",
                  "device"], args.out)
    return rows


if __name__ == "__main__":
    main()
