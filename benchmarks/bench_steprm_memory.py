"""Benchmark: peak memory and time of the implicit PRM (iStar / StepAgent) on one long episode at Qwen's vocabulary.

A 2-layer Llama with hidden size 64 and vocabulary 151,936 (randomly initialised from a config, no download):
the output layer dominates, as in a real PRM at long lengths. An episode of about ``--length`` tokens is
``bench_steprm.make_items``'s: a prompt of ``length // 8`` tokens and ``--turns`` steps, each an observation and an
assistant reply of equal length. Each case runs in its own process (peak RSS = ``ru_maxrss``):

* ``score``: the rewards of one episode (``StepRewardModel.score``, frozen scorer);
* ``update``: one online update on a won and a lost episode of one uid group (trajectory DPO needs the pair;
  reference = rollout, i.e. the item's own old log-probs), AdamW.

``--code DIR`` runs the cases against the spa-rl tree in DIR (e.g. an older commit: ``git archive <commit> |
tar -x -C DIR``), to compare before / after. ``work_MiB`` is the peak minus the process's RSS after building the
model (the memory the call itself needed).

    python benchmarks/bench_steprm_memory.py --lengths 1000 2000 10000 [--code DIR] [--threads 2]
"""

from __future__ import annotations

import sys

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent))
from _report import report  # noqa: E402  (benchmarks/_report.py)
from bench_steprm import make_items  # noqa: E402  (the same synthetic episodes)

import argparse
import json
import os
import resource
import subprocess
import time
from pathlib import Path

VOCAB = 151_936


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args) -> dict:
    import torch

    from spa_reward.progress.model import build_tiny_backbone_config
    from spa_reward.steprm.service import StepRewardModel

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = build_tiny_backbone_config(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                                     num_heads=4)
    cfg["max_position_embeddings"] = max(args.length + 1, 4096)
    torch.manual_seed(0)
    svc = StepRewardModel(dict(objective="implicit", online=args.phase == "update", backbone_config=cfg, lr=1e-6,
                               micro_batch_size=4, gradient_checkpointing=True, device="cpu"))
    eps = make_items(2, args.length, args.turns, args.vocab)  # one uid group: a won and a lost episode
    base = rss_mib()
    t0 = time.perf_counter()
    if args.phase == "score":
        svc.score(eps[:1])
    else:
        m = svc.update(eps)
        assert m["steprm/pairs"] == 1, m
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"episode_tokens": len(eps[0]["input_ids"]), "peak_MiB": round(peak), "work_MiB": round(peak - base),
            "time_s": round(dt, 2)}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1000, 2000, 10000])
    p.add_argument("--turns", type=int, default=50)
    p.add_argument("--vocab", type=int, default=VOCAB)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--phases", nargs="+", default=["score", "update"], choices=["score", "update"])
    p.add_argument("--code", default=None, help="spa-rl tree to import (default: this one)")
    p.add_argument("--label", default=None, help="name of the code in the table (default: the --code dir)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return []
    code = str(Path(args.code or Path(__file__).resolve().parent.parent).resolve())
    rows = []
    for length in args.lengths:
        for phase in args.phases:
            cmd = [sys.executable, __file__, "--child", "--length", str(length), "--phase", phase, "--turns",
                   str(args.turns), "--vocab", str(args.vocab), "--hidden", str(args.hidden), "--layers",
                   str(args.layers), "--threads", str(args.threads)]
            env = {**os.environ, "PYTHONPATH": code}
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            row = {"code": args.label or code, "tokens": length, "phase": phase}
            if out.returncode != 0:
                row["error"] = (out.stderr.strip().splitlines() or ["?"])[-1][:120]
            else:
                row.update(json.loads(out.stdout.strip().splitlines()[-1]))
            row["load"] = round(os.getloadavg()[0], 2)
            rows.append(row)
            print(row, flush=True)
    report(rows, ["code", "tokens", "episode_tokens", "phase", "peak_MiB", "work_MiB", "time_s", "load", "error"],
           args.out)
    return rows


if __name__ == "__main__":
    main()
