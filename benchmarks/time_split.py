"""Where a training step's time goes, per run: verl's phases against this project's work, from the runs' own logs.

    python benchmarks/time_split.py outputs/cpu/rl/webshop/* [--markdown]
    SPA_E2E_DIR=/tmp/e2e python -m pytest -m e2e; python benchmarks/time_split.py /tmp/e2e/out/rl/*/*

Reads each run folder's `logs/metrics_*.jsonl` (verl's file logger) and averages over its training steps:
- verl (wall seconds of the step's phases): `timing_s/gen` (rollout: generation, env steps and rewards of all
  episodes, run concurrently), `timing_s/old_log_prob` + `timing_s/ref` (log-probs), `timing_s/values` and
  `timing_s/update_critic` (critic), `timing_s/update_actor`, `timing_s/update_weights` (weight sync to the
  rollout server), `timing_s/step` (the whole step);
- this project: `timing_s/adv` (the advantage step; with a step-reward service it includes its scoring and
  update), `timing_s/spa/steprm_score` / `timing_s/spa/steprm_update` (that service, wall), and, summed over the
  step's episodes (they run concurrently, so these are seconds of work inside `timing_s/gen`, not of the step),
  `timing_s/spa/env_sum` (env reset and steps), `timing_s/spa/llm_sum` (waiting for the LLM server) and
  `timing_s/spa/reward_sum` (reward managers, progress-scorer calls included).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COLUMNS = [
    ("step", "timing_s/step"), ("gen", "timing_s/gen"), ("logp+ref", ("timing_s/old_log_prob", "timing_s/ref")),
    ("critic", ("timing_s/values", "timing_s/update_critic")), ("update", "timing_s/update_actor"),
    ("sync", "timing_s/update_weights"), ("adv", "timing_s/adv"), ("prm score", "timing_s/spa/steprm_score"),
    ("prm update", "timing_s/spa/steprm_update"), ("env (sum)", "timing_s/spa/env_sum"),
    ("llm wait (sum)", "timing_s/spa/llm_sum"), ("reward (sum)", "timing_s/spa/reward_sum"),
]


def training_steps(run: Path) -> list[dict]:
    """The data of every logged training step (validation-only steps have no `timing_s/step`)."""
    steps: dict[int, dict] = {}
    for log in sorted((run / "logs").glob("metrics_*.jsonl")):
        for line in log.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                steps.setdefault(int(row["step"]), {}).update(row["data"])
    return [data for _, data in sorted(steps.items()) if "timing_s/step" in data]


def split(steps: list[dict]) -> dict[str, float | None]:
    """Column -> mean seconds per step (None when no step logged it)."""
    out: dict[str, float | None] = {}
    for name, keys in COLUMNS:
        keys = (keys,) if isinstance(keys, str) else keys
        values = [sum(s[k] for k in keys if k in s) for s in steps if any(k in s for k in keys)]
        out[name] = sum(values) / len(values) if values else None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/time_split.py", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (outputs/rl/<env>/<experiment>)")
    args = p.parse_args(argv)
    rows = []
    for run in args.runs:
        steps = training_steps(run)
        if steps:
            rows.append((run.name, len(steps), split(steps)))
        else:
            print(f"{run}: no training step logged (logs/metrics_*.jsonl)", file=sys.stderr)
    if not rows:
        return 1
    print("| run | steps | " + " | ".join(name for name, _ in COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for name, n, cols in rows:
        cells = ["-" if v is None else f"{v:.2f}" for v in cols.values()]
        print(f"| {name} | {n} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
