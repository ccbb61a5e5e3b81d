"""WebShop engine benchmark: index build, query latency, env steps/second and expert success.

    python benchmarks/bench_webshop.py [--data-dir DIR] [--train-sample 500] [--json out.json]

Data: ``--data-dir``, else ``$WEBSHOP_DATA``, else ``../shared/data/webshop`` beside the checkout.
Measures, on the product set found there (the 1000-product set in this project):
  * index build time from scratch (no cache) and load time from the on-disk cache;
  * query latency (median / p95 / max) over every synthetic goal instruction plus human goal texts;
  * env steps/second replaying the expert on the test goals;
  * expert success (won = reward 1.0) and mean score on the 500 test goals and a train sample, with WebShop's
    own option matching and with value matching (``faithful_option_reward=False``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def find_data_dir(arg: str | None) -> Path:
    for cand in (arg, os.environ.get("WEBSHOP_DATA"), REPO.parent / "shared" / "data" / "webshop"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    sys.exit("no WebShop data: pass --data-dir or set WEBSHOP_DATA")


def run_expert(env, task_ids) -> dict:
    won = score = steps = 0
    t0 = time.perf_counter()
    for tid in task_ids:
        env.reset(tid)
        info = {}
        for a in env.expert_actions():
            _, _, done, info = env.step(a)
            steps += 1
            if done:
                break
        won += bool(info.get("won"))
        score += float(info.get("score", 0.0))
    dt = time.perf_counter() - t0
    n = len(task_ids)
    return {"tasks": n, "won": won / n, "mean_score": score / n, "steps": steps, "steps_per_s": steps / dt,
            "episodes_per_s": n / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--train-sample", type=int, default=500)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    data_dir = find_data_dir(args.data_dir)

    from envs.webshop import WebShopEnv
    from envs.webshop import search as S
    from envs.webshop.products import WebShopData

    out: dict = {"data_dir": str(data_dir), "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        env = WebShopEnv(data_dir=data_dir, cache_dir=cache, spacy_model=None)
        out["load_products_and_goals_s"] = time.perf_counter() - t0
        data = env.data
        out["products"], out["goals"] = len(data.asins), len(data.goals)

        S._INDEX_CACHE.clear()
        t0 = time.perf_counter()
        index = S.BM25Index.build(data.documents())
        out["index_build_s"] = time.perf_counter() - t0
        out["index_terms"], out["index_postings"] = len(index.vocab), int(len(index.post_docs))
        _ = data.index  # build + save through the cache path
        S._INDEX_CACHE.clear()
        data._index = None
        t0 = time.perf_counter()
        _ = data.index
        out["index_load_from_disk_cache_s"] = time.perf_counter() - t0

        queries = [g["instruction_text"] for g in data.goals]
        human = data_dir / "human_goals.json"
        if human.is_file():
            queries += json.loads(human.read_text(encoding="utf-8"))
        queries = queries[:10000]
        # first pass: every new word goes through the Porter stemmer once (cold); second pass: all cached.
        # Wall time suffers from other load on the machine; thread CPU time does not.
        def summary(values):
            values = sorted(values)
            return {"n": len(values), "median": statistics.median(values),
                    "p95": values[int(0.95 * (len(values) - 1))], "max": values[-1]}

        for name in ("cold", "warm"):
            wall, cpu = [], []
            for q in queries:
                c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
                index.search(q, k=50)
                wall.append((time.perf_counter_ns() - t0) / 1e6)
                cpu.append((time.thread_time_ns() - c0) / 1e6)
            out[f"query_latency_ms_{name}"] = {"wall": summary(wall), "cpu": summary(cpu)}

        test_ids = env.list_tasks("test")
        train_all = env.list_tasks("train")
        train_ids = random.Random(0).sample(train_all, min(args.train_sample, len(train_all)))
        out["expert_webshop_option_matching"] = {"test": run_expert(env, test_ids),
                                                 "train_sample": run_expert(env, train_ids)}
        env_v = WebShopEnv(data_dir=data_dir, cache_dir=cache, spacy_model=None, faithful_option_reward=False)
        out["expert_value_option_matching"] = {"test": run_expert(env_v, test_ids),
                                               "train_sample": run_expert(env_v, train_ids)}
        WebShopData._CACHE.clear()

    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
