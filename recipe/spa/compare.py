"""Compare RL runs: a markdown + CSV table per environment and a PNG of validation success vs step.

    python -m recipe.spa.compare outputs/rl/alfworld/* [--out DIR] [--allow-mixed]

A run folder is what the launch scripts write (``run_rl`` in ``examples/common.sh``):

* ``run_settings.json``: the run's settings (``recipe.spa.check.run_settings``). Runs of one environment go into one
  table only when their :data:`recipe.spa.check.COMPARED` settings (model, tasks x group, steps, lr, KL, max steps,
  history, seed, ...) are equal; otherwise this exits 1 naming the differing settings, unless ``--allow-mixed``
  (the table then lists the differences above it). Runs of different environments get separate tables.
* ``logs/*.jsonl``: verl's ``file`` logger (``verl.utils.tracking.FileLogger``: one ``{"step": s, "data": {...}}``
  line per ``Tracking.log`` call; ``VERL_FILE_LOGGER_PATH`` points it here, one file per launch). Files are read in
  name order (launch time); a later launch (a resume) replaces the steps after its first one.
  Validation: ``val-core|val-aux/<data source>/spa/{won,task_score,executable_rate,num_turns}/mean@<n>`` (the
  reward managers' per-episode scalars, averaged by verl); GPU hours: the sum of ``timing_s/step`` x the run's GPUs.
* ``validation/<step>.jsonl``: verl's generation dumps (``trainer.validation_data_dir``), one line per episode with
  ``spa/task_type``: the per-task-type rows (and the overall row when there is no log); dumps of steps the merged
  log has no validation for (left over from a launch that a resume replaced) are ignored.

Columns: best and last validation success (with their steps), task score, grounding (executable-action rate) and
mean turns at the last validation, training steps logged, GPU hours; success/score/grounding in %.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from recipe.spa.check import COMPARED
from recipe.spa.eval_table import DumpError, episode_infos, table_rows

VAL_KEY = re.compile(r"^val-(?:core|aux)/(?P<src>[^/]+)/spa/(?P<var>won|task_score|executable_rate|num_turns)"
                     r"/mean@(?P<n>\d+)$")
VARS = {"won": "success", "task_score": "score", "executable_rate": "grounding", "num_turns": "turns"}
COLUMNS = ("env", "run", "advantage", "group", "best_success", "best_step", "last_success", "last_step", "score",
           "grounding", "turns", "steps", "gpu_hours")
PERCENT = ("best_success", "last_success", "score", "grounding")


class CompareError(ValueError):
    """Runs that cannot be compared (the message says why and what to do)."""


@dataclass
class Run:
    path: Path
    settings: dict | None
    metrics: dict[int, dict] = field(default_factory=dict)  # step -> merged logged metrics
    dumps: dict[int, Path] = field(default_factory=dict)  # step -> validation dump
    _tables: dict[int, list] | None = field(default=None, repr=False)

    def tables(self) -> dict[int, list]:
        """step -> the eval table rows of its dump (:func:`dump_rows`), each dump read once."""
        if self._tables is None:
            self._tables = {step: dump_rows(dump) for step, dump in sorted(self.dumps.items())}
        return self._tables

    @property
    def name(self) -> str:
        return str((self.settings or {}).get("experiment_name") or self.path.name)

    @property
    def env(self) -> str:
        env = (self.settings or {}).get("env")
        return str(env) if env else self.path.parent.name


def read_log(path: Path) -> dict[int, dict]:
    """One verl file-logger file: step -> merged data (a torn last line, e.g. from a killed run, is skipped)."""
    out: dict[int, dict] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
                step, data = int(row["step"]), dict(row["data"])
            except (ValueError, KeyError, TypeError) as exc:
                warnings.warn(f"{path}:{lineno}: skipped a line that is not a file-logger record ({exc})")
                continue
            out.setdefault(step, {}).update(data)
    return out


def load_run(path: Path) -> Run:
    if not path.is_dir():
        raise CompareError(f"{path} is not a run folder (expected outputs/rl/<env>/<experiment>/)")
    settings_file = path / "run_settings.json"
    settings = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else None
    run = Run(path, settings)
    for log in sorted((path / "logs").glob("*.jsonl")):
        part = read_log(log)
        if not part:
            continue
        first = min(part)
        run.metrics = {s: m for s, m in run.metrics.items() if s <= first}  # a resume replaces what came after
        for step, data in part.items():
            run.metrics.setdefault(step, {}).update(data)
    for dump in (path / "validation").glob("*.jsonl"):
        if dump.stem.isdigit():
            run.dumps[int(dump.stem)] = dump
    logged = {s for s, data in run.metrics.items() if any(VAL_KEY.match(k) for k in data)}
    if logged:  # a dump of a step the log no longer has is left over from a launch a resume replaced
        run.dumps = {s: d for s, d in run.dumps.items() if s in logged}
    if not run.metrics and not run.dumps:
        raise CompareError(f"{path}: no logs/*.jsonl (verl file logger: trainer.logger=[console,file]) and no "
                           "validation/<step>.jsonl dumps")
    return run


def val_series(run: Run) -> dict[int, dict[str, float]]:
    """step -> {success, score, grounding, turns} of the whole validation set: from the step's dump (each session
    once, env-failed episodes left out, as ``eval_table``), else from the log (verl's ``val-*`` means, which score an
    env-failed episode 0)."""
    series: dict[int, dict[str, float]] = {}
    tables = run.tables()
    for step, rows in tables.items():
        everything = dict(rows).get("all")
        if everything and everything["success"] == everything["success"]:  # NaN: every episode failed
            series[step] = {k: everything[k] for k in VARS.values()}
    for step, data in sorted(run.metrics.items()):
        if tables.get(step):  # the dump decided (a step whose every episode failed has no value)
            continue
        found: dict[str, dict[str, tuple[int, float]]] = {}
        for key, value in data.items():
            m = VAL_KEY.match(key)
            if m and isinstance(value, (int, float)):
                n = int(m["n"])
                var = found.setdefault(VARS[m["var"]], {})
                if m["src"] not in var or n > var[m["src"]][0]:
                    var[m["src"]] = (n, float(value))
        if found:
            series[step] = {col: sum(v for _, v in srcs.values()) / len(srcs) for col, srcs in found.items()}
    return dict(sorted(series.items()))


def dump_rows(dump: Path) -> list:
    """The eval table rows of one validation dump; torn lines (a run killed mid-write) are skipped and a dump
    without episodes is left out, each said on stderr."""
    try:
        infos, skipped = episode_infos(dump, skip_invalid=True)
    except DumpError as exc:
        print(f"compare: leaving out {exc}", file=sys.stderr)
        return []
    if skipped:
        print(f"compare: {dump}: {skipped} invalid lines skipped", file=sys.stderr)
    return table_rows(infos)


def task_type_series(run: Run) -> dict[str, dict[int, dict[str, float]]]:
    """task type -> step -> {success, score, grounding, turns}, from the validation dumps."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for step, rows in run.tables().items():
        for group, values in rows:
            if group != "all":
                out.setdefault(group, {})[step] = {k: values[k] for k in VARS.values()}
    return out


def training_steps(run: Run) -> int | None:
    steps = [int(d["training/global_step"]) for d in run.metrics.values() if "training/global_step" in d]
    return max(steps) if steps else None


def gpu_hours(run: Run) -> float | None:
    seconds = [float(d["timing_s/step"]) for d in run.metrics.values() if "timing_s/step" in d]
    gpus = (run.settings or {}).get("gpus")
    if not seconds or not gpus:
        return None
    return sum(seconds) * float(gpus) / 3600.0


def summary(series: dict[int, dict[str, float]]) -> dict:
    if not series:
        return {}
    best_step = max(series, key=lambda s: (series[s].get("success", -math.inf), -s))
    last_step = max(series)
    last = series[last_step]
    return {"best_success": series[best_step].get("success"), "best_step": best_step,
            "last_success": last.get("success"), "last_step": last_step, "score": last.get("score"),
            "grounding": last.get("grounding"), "turns": last.get("turns")}


def table(runs: list[Run]) -> list[dict]:
    rows = []
    for run in runs:
        base = {"env": run.env, "run": run.name, "advantage": (run.settings or {}).get("advantage", ""),
                "steps": training_steps(run), "gpu_hours": gpu_hours(run)}
        rows.append({**base, "group": "all", **summary(val_series(run))})
        for group, series in sorted(task_type_series(run).items()):
            rows.append({**base, "group": group, **summary(series)})
    return rows


def setting_differences(runs: list[Run]) -> list[str]:
    """``key: run=value, ...`` for each compared setting that is not equal across ``runs`` (and missing files)."""
    out = [f"{run.name}: no run_settings.json (written by the launch scripts' check step)"
           for run in runs if run.settings is None]
    have = [run for run in runs if run.settings is not None]
    for key in COMPARED:
        values = [json.dumps(run.settings.get(key), sort_keys=True) for run in have]
        if len(set(values)) > 1:
            out.append(f"{key}: " + ", ".join(f"{run.name}={v}" for run, v in zip(have, values)))
    return out


def fmt(col: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if col in PERCENT:
        return f"{100 * value:.1f}"
    if col == "turns":
        return f"{value:.1f}"
    if col == "gpu_hours":
        return f"{value:.2f}"
    return str(value)


def markdown(env: str, rows: list[dict], runs: list[Run], differences: list[str]) -> str:
    cols = [c for c in COLUMNS if c != "env"]
    lines = [f"## {env}", ""]
    settings = next((r.settings for r in runs if r.settings), None)
    if settings:
        lines.append("Shared settings: " + "; ".join(f"{k}={json.dumps(settings.get(k))}" for k in COMPARED) + ".")
        lines.append("")
    if differences:
        lines += ["**Mixed settings (--allow-mixed):**", ""] + [f"- {d}" for d in differences] + [""]
    lines += ["success / score / grounding in %, at validation; score, grounding and turns at the last validation.",
              "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(c, row.get(c)) for c in cols) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot(env: str, runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for run in runs:
        series = val_series(run)
        steps = sorted(s for s in series if series[s].get("success") is not None)
        if steps:
            ax.plot(steps, [100 * series[s]["success"] for s in steps], marker="o", markersize=3, label=run.name)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("training step")
    ax.set_ylabel("validation success (%)")
    ax.set_title(f"{env}: validation success")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(paths: list[Path], out: Path, allow_mixed: bool = False) -> str:
    """Write ``comparison.md``, ``comparison.csv`` and ``val_success_<env>.png`` to ``out``; the markdown."""
    runs = [load_run(p) for p in paths]
    by_env: dict[str, list[Run]] = {}
    for run in runs:
        by_env.setdefault(run.env, []).append(run)
    differences = {env: setting_differences(group) for env, group in by_env.items()}
    bad = {env: d for env, d in differences.items() if d}
    if bad and not allow_mixed:
        lines = [f"  [{env}] {d}" for env, ds in bad.items() for d in ds]
        raise CompareError("these runs do not compare (settings differ); nothing written:\n" + "\n".join(lines)
                           + "\nrerun them with equal settings, or pass --allow-mixed to tabulate them anyway")
    out.mkdir(parents=True, exist_ok=True)
    parts, all_rows = [], []
    for env, group in sorted(by_env.items()):
        rows = table(group)
        all_rows += rows
        parts.append(markdown(env, rows, group, differences[env]))
        plot(env, group, out / f"val_success_{env}.png")
    text = "# Comparison\n\n" + "\n".join(parts)
    (out / "comparison.md").write_text(text, encoding="utf-8")
    with open(out / "comparison.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        for row in all_rows:
            writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in COLUMNS})
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipe.spa.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders (outputs/rl/<env>/<experiment>)")
    parser.add_argument("--out", default="outputs/compare",
                        help="folder for comparison.md/.csv and the PNGs (default: %(default)s)")
    parser.add_argument("--allow-mixed", action="store_true", help="tabulate runs whose settings differ")
    args = parser.parse_args(argv)
    try:
        text = compare([Path(p) for p in args.runs], Path(args.out), args.allow_mixed)
    except CompareError as exc:
        print(f"[spa-rl] compare: {exc}", file=sys.stderr)
        return 1
    print(text)
    print(f"written: {args.out}/comparison.md, comparison.csv, val_success_<env>.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
