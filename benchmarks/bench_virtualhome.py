"""VirtualHome adapter benchmark: expert replay success over all tasks, env steps/second, reset time.

    python benchmarks/bench_virtualhome.py                      # all 518 tasks, max_steps=40
    python benchmarks/bench_virtualhome.py --max-steps 100 --json out.json --data-dir <folder>

For every task: ``reset`` (cold: the task's graph is parsed; then warm: from the in-process cache), then the
task's own program translated to natural language (``expert_actions``) is stepped through the parser, the
object resolver and the simulator. Reported: the success rate (``won``), the failures with their cause
(non-executable expert steps with the simulator's message, or the goal conditions left unmet), the step
rate (single process, the steps of the replay; wall clock and CPU time, the latter robust to a loaded machine)
and reset times (mean / p50 / p95, cold and warm).
Needs ``pip install --no-deps virtualhome-eval==0.1.1``; no GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from envs.virtualhome import VirtualHomeEnv  # noqa: E402


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def run(data_dir: str | None = None, max_steps: int = 40, limit: int | None = None, split: str = "all") -> dict:
    env = VirtualHomeEnv(data_dir=data_dir, max_steps=max_steps, cache_size=4)
    tasks = env.list_tasks(split)[:limit]
    cold, warm, step_time, step_cpu = [], [], 0.0, 0.0
    steps = won = 0
    failures = []
    for task_id in tqdm(tasks, desc="virtualhome expert replay", unit="task", mininterval=1.0):
        t0 = time.perf_counter()
        env.reset(task_id)
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        env.reset(task_id)
        warm.append(time.perf_counter() - t0)
        actions = env.expert_actions() or []
        info: dict = {"won": False}
        failed = []
        done = False
        for action in actions:
            t0, c0 = time.perf_counter(), time.process_time()
            _, _, done, info = env.step(action)
            step_time += time.perf_counter() - t0
            step_cpu += time.process_time() - c0
            steps += 1
            if not info["executable"]:
                failed.append(f"{action!r}: {info.get('error')}")
            if done:
                break
        if info.get("won"):
            won += 1
            continue
        cause = ("truncated: program has %d steps > max_steps" % len(actions)) if info.get("truncated") else ""
        failures.append({
            "task_id": task_id, "task_type": env.task_type(task_id), "program_steps": len(actions),
            "cause": cause or ("expert step failed" if failed else "goal not reached"),
            "failed_steps": failed[:3], "unmet": [c for c, ok in env.goal_status() if not ok][:6],
        })
    return {
        "tasks": len(tasks), "max_steps": max_steps, "won": won, "success_rate": won / max(1, len(tasks)),
        "steps": steps, "steps_per_second": steps / step_time if step_time else 0.0,
        "steps_per_cpu_second": steps / step_cpu if step_cpu else 0.0,
        "reset_cold_s": {"mean": statistics.fmean(cold), "p50": _pct(cold, 0.5), "p95": _pct(cold, 0.95)},
        "reset_warm_s": {"mean": statistics.fmean(warm), "p50": _pct(warm, 0.5), "p95": _pct(warm, 0.95)},
        "failures": failures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--limit", type=int, default=None, help="only the first N tasks")
    parser.add_argument("--split", default="all")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    result = run(args.data_dir, args.max_steps, args.limit, args.split)
    print(f"expert replay: {result['won']}/{result['tasks']} won ({100 * result['success_rate']:.1f}%), "
          f"max_steps={result['max_steps']}")
    print(f"steps/s (single process): {result['steps_per_second']:.0f} wall, "
          f"{result['steps_per_cpu_second']:.0f} per CPU second, over {result['steps']} steps")
    for kind in ("reset_cold_s", "reset_warm_s"):
        r = result[kind]
        print(f"{kind}: mean {1000 * r['mean']:.1f} ms, p50 {1000 * r['p50']:.1f} ms, p95 {1000 * r['p95']:.1f} ms")
    for failure in result["failures"]:
        print(f"FAIL {failure['task_id']} ({failure['task_type']}, {failure['program_steps']} steps): "
              f"{failure['cause']}; {failure['failed_steps'] or failure['unmet']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
