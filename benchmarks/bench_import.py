"""What the spa-rl plug-in adds to ``import verl``: wall time of a fresh interpreter running ``import verl`` with
the plug-in (entry point, the default) and without it (``VERL_USE_EXTERNAL_PLUGINS=none``), median of N runs,
runs interleaved so machine load hits both sides alike. Also the child's CPU time (user + sys), which a loaded
machine disturbs far less than wall time: on a shared machine read the CPU-time overhead.

    python benchmarks/bench_import.py                 # 7 runs each
    python benchmarks/bench_import.py --runs 11 --out import.json
    python benchmarks/bench_import.py --statement "import verl; import verl.trainer.ppo.v1"

The second form times what a trainer process pays once it looks up a trainer mode (then our trainer, estimators
and their verl modules load: see ``spa_reward/register.py``). Target: plug-in overhead on ``import verl`` < 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._report import report  # noqa: E402


def time_once(statement: str, plugins: str) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one fresh interpreter running ``statement``."""
    env = {k: v for k, v in os.environ.items() if k != "VERL_USE_EXTERNAL_MODULES"}
    env["VERL_USE_EXTERNAL_PLUGINS"] = plugins
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", statement], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"`{statement}` failed with VERL_USE_EXTERNAL_PLUGINS={plugins}:\n{out.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--statement", default="import verl")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    wall: dict[str, list[float]] = {"none": [], "auto": []}
    cpu: dict[str, list[float]] = {"none": [], "auto": []}
    time_once(args.statement, "auto")  # warm the file cache once, not counted
    for _ in range(args.runs):
        for plugins in ("none", "auto"):
            w, c = time_once(args.statement, plugins)
            wall[plugins].append(w)
            cpu[plugins].append(c)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    names = {"none": "none (VERL_USE_EXTERNAL_PLUGINS=none)", "auto": "spa-rl (entry point)"}
    rows = [{"plugins": names[k], "wall_median_s": f"{med[k]:.3f}", "wall_min_s": f"{min(wall[k]):.3f}",
             "cpu_median_s": f"{med_cpu[k]:.3f}", "runs": args.runs} for k in ("none", "auto")]
    print(f"statement: {args.statement}")
    report(rows, ["plugins", "wall_median_s", "wall_min_s", "cpu_median_s", "runs"], args.out)
    overhead, overhead_cpu = med["auto"] - med["none"], med_cpu["auto"] - med_cpu["none"]
    print(f"\nplug-in overhead (median difference): wall {overhead:+.3f} s, CPU {overhead_cpu:+.3f} s")
    return {"overhead_s": overhead, "overhead_cpu_s": overhead_cpu}


if __name__ == "__main__":
    main()
