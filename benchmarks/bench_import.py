"""What the spa-rl plug-in adds to ``import verl``: wall time of a fresh interpreter running ``import verl`` with
the plug-in (entry point, the default) and without it (``VERL_USE_EXTERNAL_PLUGINS=none``), median of N runs,
runs interleaved so machine load hits both sides alike.

    python benchmarks/bench_import.py                 # 7 runs each
    python benchmarks/bench_import.py --runs 11 --out import.json
    python benchmarks/bench_import.py --statement "import verl; import verl.trainer.ppo.v1"

The second form times what a trainer process pays once it looks up a trainer mode (then our trainer, estimators
and their verl modules load: see ``spa_reward/register.py``). Target: plug-in overhead on ``import verl`` < 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._report import report  # noqa: E402


def time_once(statement: str, plugins: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "VERL_USE_EXTERNAL_MODULES"}
    env["VERL_USE_EXTERNAL_PLUGINS"] = plugins
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", statement], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"`{statement}` failed with VERL_USE_EXTERNAL_PLUGINS={plugins}:\n{out.stderr[-2000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--statement", default="import verl")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    times: dict[str, list[float]] = {"none": [], "auto": []}
    time_once(args.statement, "auto")  # warm the file cache once, not counted
    for _ in range(args.runs):
        for plugins in ("none", "auto"):
            times[plugins].append(time_once(args.statement, plugins))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        {"plugins": "none (VERL_USE_EXTERNAL_PLUGINS=none)", "median_s": f"{med['none']:.3f}",
         "min_s": f"{min(times['none']):.3f}", "runs": args.runs},
        {"plugins": "spa-rl (entry point)", "median_s": f"{med['auto']:.3f}", "min_s": f"{min(times['auto']):.3f}",
         "runs": args.runs},
    ]
    print(f"statement: {args.statement}")
    report(rows, ["plugins", "median_s", "min_s", "runs"], args.out)
    overhead = med["auto"] - med["none"]
    print(f"\nplug-in overhead (median difference): {overhead:+.3f} s")
    return {"overhead_s": overhead, **{f"median_{k}_s": v for k, v in med.items()}}


if __name__ == "__main__":
    main()
