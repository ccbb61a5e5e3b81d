"""Time the ``spa`` and ``gigpo`` advantage estimators on CPU.

Default shape: 1024 trajectories (128 uid groups of 8) x 40 assistant turns x 32 tokens, with 32 observation tokens
between turns (response length 2560). Prints the median of --repeats runs per estimator.

    python benchmarks/bench_estimators.py [--trajectories 1024 --turns 40 --tokens 32 --repeats 7 --threads 0]

``--threads 0`` (default) runs every call under ``spa_reward.threads.thread_policy`` (what the trainer does);
``--threads N`` pins torch to N threads. The 1-minute load average is printed with the figures: on a shared
machine they depend on it (measure with one core busy: ``python -c 'while True: pass' &``, kill it after).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from omegaconf import OmegaConf

from spa_reward.advantage import compute_gigpo_advantage, compute_spa_advantage


def make_batch(n: int, turns: int, tokens: int, obs: int, group: int, seed: int = 0):
    gen = np.random.default_rng(seed)
    turn_len = tokens + obs
    pattern = torch.tensor(([1] * tokens + [0] * obs) * turns)
    mask = pattern.repeat(n, 1)
    rewards = torch.zeros(mask.shape)
    ends = torch.arange(turns) * turn_len + tokens - 1
    rewards[:, ends] = torch.from_numpy(gen.normal(size=(n, turns))).float()
    index = np.array([f"g{i // group}" for i in range(n)], dtype=object)
    # states recur across a group's trajectories (GiGPO's premise): 12 possible states per turn index
    states = gen.integers(0, 12, size=(n, turns))
    anchors = np.empty(n, dtype=object)
    anchors[:] = [[f"t{t}s{s}" for t, s in enumerate(row)] for row in states]
    values = torch.randn(mask.shape)
    return rewards, mask, index, anchors, values


def median_ms(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock and median process CPU time (ms); CPU time is the steadier figure on a busy machine."""
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - w) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trajectories", type=int, default=1024)
    ap.add_argument("--turns", type=int, default=40)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--obs-tokens", type=int, default=32)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="0 = the spa_reward.threads policy per call")
    args = ap.parse_args()
    import os

    from spa_reward.threads import pick_num_threads, thread_policy

    wrap = thread_policy if args.threads <= 0 else (lambda fn: fn)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rewards, mask, index, anchors, values = make_batch(
        args.trajectories, args.turns, args.tokens, args.obs_tokens, args.group)
    cfg = OmegaConf.create({"gamma": 0.95, "lam": 1.0, "gigpo": {"mode": "mean_norm"}, "spa": {"mode": "mean_norm"}})
    gigpo, spa = wrap(compute_gigpo_advantage), wrap(compute_spa_advantage)
    runs = {
        "gigpo": lambda: gigpo(rewards, mask, index, cfg, turn_anchors=anchors),
        "spa (critic-free)": lambda: spa(rewards, mask, index, cfg),
        "spa (turn GAE, critic)": lambda: spa(rewards, mask, index, cfg, values=values),
    }
    threads = f"policy (picks {pick_num_threads()} now)" if args.threads <= 0 else str(args.threads)
    print(f"shape: {args.trajectories} trajectories x {args.turns} turns x {args.tokens} tokens "
          f"(response length {mask.shape[1]}), torch threads {threads}, "
          f"load average {os.getloadavg()[0]:.2f} on {len(os.sched_getaffinity(0))} cores")
    print("| estimator | median wall ms | median CPU ms |\n|---|---|---|")
    for name, fn in runs.items():
        wall, cpu = median_ms(fn, args.repeats)
        print(f"| {name} | {wall:.1f} | {cpu:.1f} |")


if __name__ == "__main__":
    main()
