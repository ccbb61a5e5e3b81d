"""ALFWorld adapter benchmark: replay the planner's walkthrough (the expert) on N games of a split.

Reports the expert's success rate (overall and per task type), env steps per second (single process, so per
core), and the time of each phase: the first load+reset of a game (PDDL->SAS translation + grammar), the expert
plan (fast-downward's planner: its own translation + search), a reset of an already loaded game, and a step.

    python benchmarks/bench_alfworld.py --data-dir ../shared/data/alfworld --split valid_seen -n 140 \
        --json outputs/bench_alfworld.json

``--stock N`` also times the stock engine (textworld PddlEnv + alfworld's AlfredDemangler, as AlfredTWEnv builds
it, without this adapter's caches) on N games spread over the split: a load+reset and the same expert
steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs.alfworld import AlfWorldEnv  # noqa: E402


def _mean(values):
    return statistics.fmean(values) if values else float("nan")


def run_expert(env: AlfWorldEnv, tasks: list[str], verbose: bool) -> dict:
    per_type = defaultdict(lambda: [0, 0])
    load_s, plan_s, step_s, reset_again_s, lengths, failures = [], [], [], [], [], []
    steps = 0
    t_all = time.perf_counter()
    for i, task in enumerate(tasks):
        t0 = time.perf_counter()
        env.reset(task)
        load_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        plan = env.expert_actions() or []
        plan_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        env.reset(task)  # the same game again: what a repeated reset costs
        reset_again_s.append(time.perf_counter() - t0)
        info, obs = {"won": False}, ""
        t0 = time.perf_counter()
        for action in plan:
            obs, _, done, info = env.step(action)
            steps += 1
            if done:
                break
        step_s.append(time.perf_counter() - t0)
        won = bool(info["won"])
        kind = env.task_type(task)
        per_type[kind][0] += won
        per_type[kind][1] += 1
        lengths.append(len(plan))
        if not won:
            failures.append({"task": task, "plan": plan, "last_obs": obs})
        if verbose:
            print(f"[{i + 1}/{len(tasks)}] {'WON ' if won else 'LOST'} load {load_s[-1]:.2f}s plan {plan_s[-1]:.2f}s "
                  f"steps {len(plan)} {task}", flush=True)
    wins = sum(w for w, _ in per_type.values())
    total_step_s = sum(step_s)
    return {
        "games": len(tasks),
        "wins": wins,
        "success_rate": wins / max(1, len(tasks)),
        "per_task_type": {k: {"wins": w, "games": n, "rate": w / n} for k, (w, n) in sorted(per_type.items())},
        "env_steps": steps,
        "steps_per_second": steps / total_step_s if total_step_s else float("nan"),
        "mean_step_s": total_step_s / max(1, steps),
        "mean_first_reset_s": _mean(load_s),
        "median_first_reset_s": statistics.median(load_s) if load_s else float("nan"),
        "max_first_reset_s": max(load_s, default=float("nan")),
        "mean_reset_same_game_s": _mean(reset_again_s),
        "mean_expert_plan_s": _mean(plan_s),
        "max_expert_plan_s": max(plan_s, default=float("nan")),
        "mean_plan_length": _mean(lengths),
        "wall_s": time.perf_counter() - t_all,
        "failures": failures,
    }


def run_stock(root: Path, tasks: list[str], plans: dict[str, list[str]]) -> dict:
    """The stock engine on the same games and expert steps."""
    import textworld
    from textworld.envs.pddl import PddlEnv

    from envs.alfworld import engine as E

    # outside an Engine's calls textworld runs as shipped (our caches are switched off there)
    env = E.AlfredDemangler(shuffle=False)(PddlEnv(textworld.EnvInfos(won=True, admissible_commands=True)))
    load_s, step_s, steps = [], 0.0, 0
    for task in tasks:
        t0 = time.perf_counter()
        env.load(str(root / task / "game.tw-pddl"))
        env.reset()
        load_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for action in plans[task]:
            env.step(action)
            steps += 1
        step_s += time.perf_counter() - t0
    env.close()
    return {"games": len(tasks), "mean_load_reset_s": _mean(load_s), "mean_step_s": step_s / max(1, steps),
            "steps_per_second": steps / step_s if step_s else float("nan")}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None,
                        help="folder holding json_2.1.1/ (default $SPA_DATA/alfworld, see envs.paths)")
    parser.add_argument("--split", default="valid_seen")
    parser.add_argument("-n", "--num-games", type=int, default=0, help="first N games of the split (0: all)")
    parser.add_argument("--stride", type=int, default=1, help="take every k-th game")
    parser.add_argument("--stock", type=int, default=0, help="also time the stock engine on N games (spread)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)

    env = AlfWorldEnv(data_dir=args.data_dir, max_steps=100, plan_cache_dir=False)  # time the planner itself
    tasks = env.list_tasks(args.split)[:: max(1, args.stride)]
    if args.num_games > 0:
        tasks = tasks[: args.num_games]
    result = {"split": args.split, "data_dir": str(env.root), "expert": run_expert(env, tasks, not args.quiet)}
    if args.stock:
        stock_tasks = tasks[:: max(1, len(tasks) // args.stock)][: args.stock]  # spread over the task types
        plans = {}
        for task in stock_tasks:
            env.reset(task)
            plans[task] = env.expert_actions()
        result["stock_engine"] = run_stock(env.root, stock_tasks, plans)
    env.close()

    e = result["expert"]
    print(f"\nALFWorld {args.split}: expert won {e['wins']}/{e['games']} = {e['success_rate']:.1%} "
          f"in {e['wall_s']:.0f}s")
    for kind, row in e["per_task_type"].items():
        print(f"  {kind:32s} {row['wins']:3d}/{row['games']:<3d} {row['rate']:.1%}")
    print(f"  env steps/s (1 process): {e['steps_per_second']:.1f}  (mean step {e['mean_step_s'] * 1000:.1f} ms)")
    print(f"  first reset of a game: mean {e['mean_first_reset_s']:.2f}s, median {e['median_first_reset_s']:.2f}s, "
          f"max {e['max_first_reset_s']:.2f}s;  reset of the same game again: {e['mean_reset_same_game_s']:.3f}s")
    print(f"  expert plan: mean {e['mean_expert_plan_s']:.2f}s, max {e['max_expert_plan_s']:.2f}s, "
          f"{e['mean_plan_length']:.1f} actions")
    if "stock_engine" in result:
        s = result["stock_engine"]
        print(f"  stock engine ({s['games']} games): load+reset {s['mean_load_reset_s']:.2f}s, "
              f"step {s['mean_step_s'] * 1000:.1f} ms ({s['steps_per_second']:.1f} steps/s)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
