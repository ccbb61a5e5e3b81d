"""Build WebShop's product store and search index once, before any env worker starts.

    python -m envs.webshop.index --data-dir $SPA_DATA/webshop [--product-set full] [--cache-dir DIR]

Streams the products file once into the on-disk product store (large sets), writes the manifest of asins,
prices and goals beside it, and builds the BM25 index; all three go to the cache folder (``--cache-dir``, else
``$SPA_RL_CACHE/webshop``, default ``~/.cache/spa_rl/webshop``), where every ``WebShopEnv`` with the same cache
folder then finds them. Env workers never do this work themselves for a large set (``WebShopEnv(prepare="auto")``
refuses a products file over 256 MiB that is not prepared, naming this command), because inside a worker the
products load (~460 s for the full 1.18M set) would run under the 300 s reset timeout and the index build
(~30 min) under the 60 s step timeout. Temp files are deleted if the build fails; those of a build that was
killed are deleted by the next run. Rerunning is cheap: what is built is reused.

One-time cost (measured, see the README): 100k generated products, the figures of
``benchmarks/bench_webshop.py --generate 100000``; the full set scales roughly linearly in products.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def prepare(data_dir: str | Path | None = None, product_set: str = "auto", num_products: int | None = None,
            cache_dir: str | Path | None = None, goals: tuple[str, ...] = ("synthetic",),
            progress: bool = True, disk_store: bool | None = None) -> dict:
    """Build (or find) the store, manifest and index; return figures (seconds, counts, paths)."""
    from envs.webshop import search
    from envs.webshop.products import WebShopData, find_human_goals_file, find_product_files, resolve_data_dir

    root = resolve_data_dir(data_dir)
    products_path, attrs_path, kind = find_product_files(root, product_set)
    cache = Path(cache_dir).expanduser() if cache_dir else search.default_cache_dir()
    out: dict = {"products_file": str(products_path), "product_set": kind, "cache_dir": str(cache),
                 "products_file_bytes": products_path.stat().st_size}
    data = None
    for kind_of_goals in goals:
        human = find_human_goals_file(root) if kind_of_goals == "human" else None
        t0 = time.perf_counter()
        data = WebShopData.load(products_path, attrs_path, goals=kind_of_goals, human_goals_path=human,
                                num_products=num_products, cache_dir=cache, lazy=disk_store, progress=progress)
        out[f"load_{kind_of_goals}_s"] = round(time.perf_counter() - t0, 2)
        out[f"goals_{kind_of_goals}"] = len(data.goals)
    out["products"] = len(data.asins)
    out["index_was_cached"] = data.index_ready()
    t0 = time.perf_counter()

    def docs():
        items = data.documents()
        if progress:
            from tqdm import tqdm

            items = tqdm(items, total=len(data.asins), desc="webshop index", unit="doc", mininterval=1.0)
        return items

    index = search.get_or_build_index(data.index_key(), docs, cache)
    data._index = index
    out["index_s"] = round(time.perf_counter() - t0, 2)
    out["index_terms"], out["index_postings"] = len(index.vocab), int(len(index.post_docs))
    out["index_file"] = str(cache / f"{data.index_key()}.npz")
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envs.webshop.index", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="WebShop data folder (default: $SPA_DATA/webshop)")
    parser.add_argument("--product-set", default="auto", choices=["auto", "small", "full"])
    parser.add_argument("--num-products", type=int, default=None, help="only the first N products (as the env's)")
    parser.add_argument("--cache-dir", default=None, help="default: $SPA_RL_CACHE/webshop or ~/.cache/spa_rl/webshop")
    parser.add_argument("--goals", default="synthetic", choices=["synthetic", "human", "both"],
                        help="goal kinds to precompute for large sets (default synthetic)")
    parser.add_argument("--disk-store", action="store_true",
                        help="write the on-disk product store even for a small file (large files always get one; "
                             "matches WebShopEnv(lazy_products=True))")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.num_products is not None and args.num_products < 1:
        parser.error(f"--num-products must be >= 1, got {args.num_products}")
    goals = ("synthetic", "human") if args.goals == "both" else (args.goals,)
    from envs.webshop.products import WebShopDataError

    try:
        out = prepare(args.data_dir, args.product_set, args.num_products, args.cache_dir, goals,
                      progress=not args.no_progress, disk_store=True if args.disk_store else None)
    except WebShopDataError as exc:
        from envs.cli import error_exit

        return error_exit(parser.prog, exc)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
