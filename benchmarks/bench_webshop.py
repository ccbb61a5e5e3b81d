"""WebShop engine benchmark: index build, query latency, env steps/second and expert success.

    python benchmarks/bench_webshop.py [--data-dir DIR] [--train-sample 500] [--json out.json]
    python benchmarks/bench_webshop.py --generate 100000 [--json out.json]

Data: ``--data-dir``, else ``$SPA_DATA/webshop`` (``envs.paths``; ``../shared/data/webshop`` beside the checkout).

``--generate N`` instead writes N generated products in WebShop's raw format (full-set file names, seeded, a
vocabulary of ~6k words, 40% with a synthetic instruction) to a temp folder and measures the one-time preparation
(``python -m envs.webshop.index``: product store + manifest, then the BM25 index), its peak memory, the files'
sizes, an env start on the prepared cache (what an env worker pays) and query latency over goal instructions.
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
    from envs.paths import env_data_dir

    for cand in (arg, env_data_dir("webshop")):
        if cand and Path(cand).is_dir():
            return Path(cand)
    sys.exit("no WebShop data: pass --data-dir or put it in $SPA_DATA/webshop")


def generate_products(folder: Path, n: int, seed: int = 0) -> None:
    """N products (and their items_ins_v2 entries) in WebShop's raw format, as the full set's file names."""
    from envs.webshop.products import FULL_FILES

    rng = random.Random(seed)
    syll = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qui", "bel", "dor", "fen", "gar"]
    words = sorted({"".join(rng.choice(syll) for _ in range(rng.randint(2, 4))) for _ in range(8000)})[:6000]
    cum, total = [], 0.0
    for i in range(len(words)):  # Zipf-like word frequencies
        total += 1.0 / (i + 1)
        cum.append(total)
    colors = ["black", "white", "red", "navy blue", "green", "grey", "pink", "beige"]
    sizes = ["small", "medium", "large", "x-large", "6", "7", "8", "9", "10"]

    def text(k: int) -> str:
        return " ".join(rng.choices(words, cum_weights=cum, k=k))

    folder.mkdir(parents=True, exist_ok=True)
    attrs = {}
    with open(folder / FULL_FILES[0], "w", encoding="utf-8") as f:
        f.write("[")
        for i in range(n):
            asin = f"B0G{i:07d}"
            options = {}
            if rng.random() < 0.6:
                options["color"] = [{"value": c} for c in rng.sample(colors, rng.randint(2, 4))]
            if rng.random() < 0.4:
                options["size"] = [{"value": x} for x in rng.sample(sizes, rng.randint(2, 4))]
            title = text(rng.randint(6, 14))
            product = {
                "asin": asin, "name": title, "full_description": text(rng.randint(40, 120)),
                "small_description": [text(rng.randint(8, 20)) for _ in range(rng.randint(1, 4))],
                "pricing": f"${rng.uniform(5, 200):.2f}", "customization_options": options or "",
                "product_category": " › ".join(text(1) for _ in range(4)), "category": rng.choice(
                    ["beauty", "electronics", "fashion", "food", "garden"]), "query": text(3), "images": [],
                "average_rating": round(rng.uniform(1, 5), 1),
            }
            f.write(("," if i else "") + json.dumps(product))
            entry = {"attributes": [text(2) for _ in range(rng.randint(1, 3))]}
            if rng.random() < 0.4:
                entry["instruction"] = "i want " + " ".join(title.split()[:rng.randint(3, 6)])
                entry["instruction_attributes"] = entry["attributes"][:1]
            attrs[asin] = entry
        f.write("]")
    (folder / FULL_FILES[1]).write_text(json.dumps(attrs), encoding="utf-8")


def bench_generated(n: int) -> dict:
    """Generate N products, prepare them as envs.webshop.index does, time an env start and queries."""
    from envs.webshop import WebShopEnv
    from envs.webshop import index as index_cli
    from envs.webshop import search as S
    from envs.webshop.products import FULL_FILES, WebShopData

    out: dict = {"generated_products": n, "python": sys.version.split()[0], "cpus": os.cpu_count(),
                 "load_avg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, cache = Path(tmp) / "data", Path(tmp) / "cache"
        t0 = time.perf_counter()
        generate_products(data_dir, n)
        out["generate_s"] = round(time.perf_counter() - t0, 1)
        out["products_file_mib"] = round((data_dir / FULL_FILES[0]).stat().st_size / 2**20, 1)
        prep = index_cli.prepare(data_dir, "full", cache_dir=cache, progress=False, disk_store=True)
        out["prepare_store_manifest_goals_s"] = prep["load_synthetic_s"]
        out["index_build_s"] = prep["index_s"]
        out["peak_rss_mib_prepare"] = prep["peak_rss_mib"]
        out["goals"], out["index_terms"], out["index_postings"] = (prep["goals_synthetic"], prep["index_terms"],
                                                                   prep["index_postings"])
        out["cache_files_mib"] = {p.suffix if not p.name.endswith(".manifest.json") else ".manifest.json":
                                  round(p.stat().st_size / 2**20, 1) for p in cache.iterdir()}
        WebShopData._CACHE.clear()
        S._INDEX_CACHE.clear()
        t0 = time.perf_counter()
        env = WebShopEnv(data_dir=data_dir, cache_dir=cache, lazy_products=True, spacy_model=None, prepare="require")
        out["env_start_on_prepared_cache_s"] = round(time.perf_counter() - t0, 2)
        queries = [g["instruction_text"] for g in env.goals[:3000]]
        wall, cpu = [], []
        for q in queries:
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            env.index.search(q.lower(), k=50)
            wall.append((time.perf_counter_ns() - t0) / 1e6)
            cpu.append((time.thread_time_ns() - c0) / 1e6)
        wall.sort(), cpu.sort()
        out["query_latency_ms"] = {
            "n": len(queries), "wall_median": round(statistics.median(wall), 2),
            "wall_p95": round(wall[int(0.95 * (len(wall) - 1))], 2), "cpu_median": round(statistics.median(cpu), 2),
            "cpu_p95": round(cpu[int(0.95 * (len(cpu) - 1))], 2)}
        env.reset("0")
        t0 = time.perf_counter()
        steps = 0
        for a in env.expert_actions():
            env.step(a)
            steps += 1
        out["expert_episode_s"] = round(time.perf_counter() - t0, 3)
    out["load_avg_end"] = os.getloadavg()
    return out


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
    ap.add_argument("--generate", type=int, default=None, metavar="N",
                    help="benchmark the one-time preparation on N generated products instead")
    args = ap.parse_args()
    if args.generate is not None:
        if args.generate < 1:
            ap.error(f"--generate must be >= 1, got {args.generate}")
        out = bench_generated(args.generate)
        print(json.dumps(out, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
        return
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
