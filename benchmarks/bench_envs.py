"""Environment speed on one core: reset time, expert_actions() time, steps per second replaying the expert
(+ WebShop search latency). Steps/s counts ``step`` calls only (not reset or expert planning).

    python benchmarks/bench_envs.py                      # every installed env, 20 train tasks each
    python benchmarks/bench_envs.py --envs webshop --tasks 50 --data-root ../shared/data

Everything runs in this one process (one core), so the numbers are per-core throughput; a rollout with W
env workers scales them by about W. Environments whose engine or data is missing are listed as skipped.
Data: ``--data-root/<env>`` when that folder exists (default ``envs.paths.data_root()``: ``$SPA_DATA``, else ``../shared/data``
beside the checkout), else the adapter's own default.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from envs import env_names, make_env  # noqa: E402
from envs.prepare import env_kwargs, list_split, subsample_tasks  # noqa: E402


def _data_dir(root: Path, env_name: str) -> Path | None:
    path = root / env_name
    return path if path.exists() else None


def _search_engine(env):
    """The adapter's search engine if it exposes one with a ``search(query, ...)`` method (WebShop)."""
    for name in ("index", "search_engine", "engine", "searcher"):
        engine = getattr(env, name, None)
        if engine is not None and callable(getattr(engine, "search", None)):
            return engine
    return None


def bench_env(env_name: str, data_root: Path, n_tasks: int, seed: int) -> dict:
    t0 = time.perf_counter()
    env = make_env(env_name, **env_kwargs(env_name, _data_dir(data_root, env_name)))
    build_s = time.perf_counter() - t0
    try:
        task_ids = subsample_tasks(list_split(env, "train"), n_tasks, seed)
        resets, plans, step_times, won, goals = [], [], [], 0, []
        for task_id in task_ids:
            t0 = time.perf_counter()
            _obs, info = env.reset(task_id)
            resets.append(time.perf_counter() - t0)
            goals.append(str(info.get("goal", "")))
            t0 = time.perf_counter()
            actions = env.expert_actions() or []
            plans.append(time.perf_counter() - t0)
            done, step_info = False, {}
            for action in actions:
                t0 = time.perf_counter()
                _obs, _r, done, step_info = env.step(action)
                step_times.append(time.perf_counter() - t0)
                if done:
                    break
            won += bool(step_info.get("won"))
        result = {
            "env": env_name,
            "build_s": build_s,
            "tasks": len(task_ids),
            "expert_won": won,
            "reset_ms": 1000 * statistics.mean(resets) if resets else float("nan"),
            "expert_ms": 1000 * statistics.mean(plans) if plans else float("nan"),
            "expert_max_ms": 1000 * max(plans) if plans else float("nan"),
            "steps": len(step_times),
            "step_ms": 1000 * statistics.mean(step_times) if step_times else float("nan"),
            "steps_per_s": len(step_times) / sum(step_times) if step_times else float("nan"),
            "search_ms": None,
        }
        engine = _search_engine(env)
        if engine is not None and any(goals):
            times = []
            for goal in [g for g in goals if g]:
                t0 = time.perf_counter()
                engine.search(goal)
                times.append(time.perf_counter() - t0)
            result["search_ms"] = 1000 * statistics.mean(times)
        return result
    finally:
        env.close()


def main(argv: list[str] | None = None) -> int:
    from envs.paths import data_root

    default_root = str(data_root())
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", default=",".join(env_names()), help="comma list (default: all)")
    parser.add_argument("--tasks", type=int, default=20, help="train tasks per env (seeded subset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=default_root)
    args = parser.parse_args(argv)

    rows, skipped = [], []
    for env_name in [e.strip() for e in args.envs.split(",") if e.strip()]:
        try:
            rows.append(bench_env(env_name, Path(args.data_root), args.tasks, args.seed))
        except Exception as exc:  # missing engine or data: report, keep going
            skipped.append((env_name, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))

    print(f"Single process (one core), {args.tasks} train tasks per env, expert actions replayed.\n")
    print("| env | env build (s) | reset (ms) | expert_actions() mean / max (ms) | step (ms) | steps/s | steps "
          "| expert won | search (ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        search = f"{r['search_ms']:.1f}" if r["search_ms"] is not None else "n/a"
        plan = f"{r['expert_ms']:.0f} / {r['expert_max_ms']:.0f}"
        print(f"| {r['env']} | {r['build_s']:.2f} | {r['reset_ms']:.1f} | {plan} | {r['step_ms']:.2f} "
              f"| {r['steps_per_s']:.0f} | {r['steps']} | {r['expert_won']}/{r['tasks']} | {search} |")
    for env_name, reason in skipped:
        print(f"\nskipped {env_name}: {reason}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
