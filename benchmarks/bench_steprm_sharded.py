"""Benchmark: the sharded step-reward service on CPU ranks: what each rank holds against the memory plan, and time.

The implicit PRM (trajectory DPO, reference = the items' rollout log-probs, lr 1e-6, AdamW) on a Qwen2-style model
built from a config (no download; ``--hidden`` 512, ``--layers`` 8, intermediate 1376, vocab 16384, untied: ~44M
parameters), one scoring pass and one update on ``--episodes`` episodes of ``--length`` tokens
(``bench_steprm.make_items``), in a local Ray cluster of its own:

* N = 1: the one-actor model (``StepRewardModel``, with its serving copy) in one Ray actor (``--threads`` threads);
* N = 2: the sharded group (``spa_reward.steprm.sharded``, two CPU ranks on gloo, ``--threads // 2`` each).

Per rank, after the update: the tensors it holds (``memory_plan.held_bytes``: weights, AdamW state, serving copy)
next to the plan's figures for the same parts (``memory_plan.plan`` on this config), and the process's peak RSS
(which also holds the gradients and activations of the update, and ~0.5 GiB of Python, torch and Ray).

    python benchmarks/bench_steprm_sharded.py [--episodes 32] [--length 256] [--threads 2]
"""

from __future__ import annotations

import sys

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent))
from _report import report  # noqa: E402  (benchmarks/_report.py)

import argparse
import os
import shutil
import tempfile
import time

MIB = 2**20


class OneActor:
    """The one-actor model in a Ray actor, with its memory (the sharded ranks have ``RankActor.memory``)."""

    def __init__(self, settings: dict, threads: int):
        import torch

        from spa_reward.steprm.service import StepRewardModel

        torch.set_num_threads(threads)
        self.model = StepRewardModel(settings)

    def score(self, items):
        return self.model.score(items)

    def update(self, items):
        return self.model.update(items)

    def memory(self) -> dict:
        import resource

        from spa_reward.steprm.memory_plan import held_bytes

        return {**held_bytes(self.model), "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--episodes", type=int, default=32)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="CPU threads in all (N = 2: half per rank)")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    if args.episodes < 2 or args.length < 16 or args.threads < 1 or args.hidden < 8 or args.layers < 1:
        p.error("need --episodes >= 2, --length >= 16, --threads >= 1, --hidden >= 8, --layers >= 1")
    os.environ["SPA_STEPRM_RANK_THREADS"] = str(max(1, args.threads // 2))  # read by the rank actors
    import ray

    from bench_steprm import make_items
    from spa_reward.progress.model import build_tiny_backbone_config
    from spa_reward.steprm.memory_plan import count_params, plan
    from spa_reward.steprm.service import StepRMSettings
    from spa_reward.steprm.sharded import ShardedGroup

    vocab = 16384
    backbone = build_tiny_backbone_config(vocab_size=vocab, hidden_size=args.hidden, num_layers=args.layers,
                                          num_heads=8, intermediate_size=1376 * args.hidden // 512, model_type="qwen2")
    settings = dict(objective="implicit", online=True, backbone_config=backbone, lr=1e-6, micro_batch_size=8,
                    device="cpu")
    items = make_items(args.episodes, args.length, args.turns, vocab)
    n_params = count_params(backbone, "implicit").total
    tmp = tempfile.mkdtemp(prefix="ray-bench-", dir="/tmp")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, _temp_dir=tmp)
    rows = []
    try:
        for ranks in (1, 2):
            t0 = time.perf_counter()
            if ranks == 1:
                actor = ray.remote(OneActor).options(num_cpus=1).remote(settings, args.threads)
                ray.get(actor.memory.remote())
                score = lambda b: ray.get(actor.score.remote(b))  # noqa: E731
                update = lambda b: ray.get(actor.update.remote(b))  # noqa: E731
                memory = lambda: [ray.get(actor.memory.remote())]  # noqa: E731
            else:
                group = ShardedGroup(StepRMSettings.from_dict(settings), ranks, gpus_per_rank=0, name="bench",
                                     timeout_s=900)
                score, update = group.score, group.update
                memory = lambda: ray.get([a.memory.remote() for a in group.actors])  # noqa: E731
            t1 = time.perf_counter()
            score(items)
            t2 = time.perf_counter()
            update(items)
            t3 = time.perf_counter()
            planned = plan(backbone, "implicit", ranks, tokens=StepRMSettings.max_token_len)
            for rank, m in enumerate(memory()):
                rows.append({"N": ranks, "rank": rank, "params_M": round(n_params / 1e6, 1),
                             "weights_MiB": round(m["weights"] / MIB, 1),
                             "plan_weights_MiB": round(planned["weights"] * 1024, 1),
                             "adam_MiB": round(m["adam"] / MIB, 1), "plan_adam_MiB": round(planned["adam"] * 1024, 1),
                             "serving_MiB": round(m["serving"] / MIB, 1),
                             "plan_serving_MiB": round(planned["serving"] * 1024, 1),
                             "peak_rss_MiB": round(m["peak_rss"] / MIB), "start_s": round(t1 - t0, 1),
                             "score_s": round(t2 - t1, 1), "update_s": round(t3 - t2, 1)})
                print(rows[-1], flush=True)
            if ranks == 1:
                ray.kill(actor)
            else:
                group.shutdown()
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()
    print(f"\n{args.episodes} episodes x {len(items[0]['input_ids'])} tokens; load average at the end: {load[0]:.2f}")
    report(rows, ["N", "rank", "params_M", "weights_MiB", "plan_weights_MiB", "adam_MiB", "plan_adam_MiB",
                  "serving_MiB", "plan_serving_MiB", "peak_rss_MiB", "start_s", "score_s", "update_s"], args.out)
    return rows


if __name__ == "__main__":
    main()
