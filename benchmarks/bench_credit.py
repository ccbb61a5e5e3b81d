"""What makes a learned step reward work: attribution of the progress estimator's objectives on the lock task of
``bench_learning.py``, against the true worth of every step.

For each task variant (``lock``: opening ends the episode; ``fixed``: fixed length, partial credit), exploration
policy (``sft``: the imitation-trained start every method of the learning benchmark uses; ``scratch``: the uniform
policy) and seed, on the exploration episodes the estimator is trained on (``--explore-episodes``):

* **identifiability of sum supervision** (no network): the exact least-squares solution of ``sum_t c_t = R`` with one
  value per (task, stage, lever) - the best any estimator of that form can do from R alone - and its per-step
  Pearson with the worth, on the data and on 8x more; beside it the trivial "all credit on the first step"
  (``c_0 = R``), the tabular prefix values (``V(task, stage after t, t)`` = the mean R of those prefixes,
  ``c_t = V_{t+1} - V_t``) and ``MSE(sum_t worth_t, R)`` against ``Var R`` (progress lost at truncation);
* **the trained estimators** (the first ``--estimator-seeds`` seeds): ``bench_learning.prepare_spa`` for each
  ``--objectives`` (the tiny Llama and schedule of the learning benchmark, ``spa_reward.progress.train
  --objective``), scored by ``ProgressScorer`` on 256 held-out episodes of the same policy: per-step Pearson with
  the worth, mean c_t on steps 0-4 and 5+ (the length shortcut) and by event.

Outputs in ``--out-dir``: ``credit.md`` (tables), ``credit.json``; ``--figure`` (default
``<out-dir>/credit_objectives.png``): c_t of each objective against the worth on one held-out trajectory of the
lock task (seed 0, sft), and the mean c_t by step index against the mean worth (the length shortcut).

    python benchmarks/bench_credit.py [--seeds 3] [--variants lock fixed] [--inits sft scratch] [--figure PATH]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import importlib.util
import json
import logging
import tempfile
import time

import numpy as np
import torch


def _bench():
    spec = importlib.util.spec_from_file_location("bench_learning", Path(__file__).resolve().parent / "bench_learning.py")
    mod = sys.modules.get(spec.name)
    if mod is None:
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    return mod


def _step_keys(eps, task) -> list[list[int]]:
    """Per step the index of (task, stage before, lever), stage K (an open lock) included."""
    out = []
    for ep in eps:
        lock = int(ep.task_id.removeprefix("lock-"))
        stage, keys = 0, []
        for a, w in zip(ep.actions, ep.worth):
            keys.append((lock * (task.n_stages + 1) + stage) * task.n_actions + a)
            stage = round(stage + w * task.n_stages)
        out.append(keys)
    return out


def identifiability(eps, task) -> dict[str, float]:
    """Sum supervision with one value per (task, stage, lever), solved exactly; tabular prefix values; baselines."""
    bench = _bench()
    n_feat = task.n_tasks * (task.n_stages + 1) * task.n_actions
    keys = _step_keys(eps, task)
    x = np.zeros((len(eps), n_feat))
    for i, k in enumerate(keys):
        np.add.at(x[i], k, 1.0)
    r = np.array([ep.reward for ep in eps])
    w, *_ = np.linalg.lstsq(x, r, rcond=None)
    worth = [v for ep in eps for v in ep.worth]
    ls_c = [w[k] for ks in keys for k in ks]
    first = [ep.reward if t == 0 else 0.0 for ep in eps for t in range(len(ep.actions))]
    # tabular prefix values: V(task, stage after t, t) = mean R of the prefixes with that key; V_0 = the task's mean R
    sums: dict = {}
    for ep, ks in zip(eps, keys):
        stage = 0
        sums.setdefault((ep.task_id, None, -1), []).append(ep.reward)
        for t, wt in enumerate(ep.worth):
            stage = round(stage + wt * task.n_stages)
            sums.setdefault((ep.task_id, stage, t), []).append(ep.reward)
    mean = {k: float(np.mean(v)) for k, v in sums.items()}
    prefix_c = []
    for ep in eps:
        stage, before = 0, mean[(ep.task_id, None, -1)]
        for t, wt in enumerate(ep.worth):
            stage = round(stage + wt * task.n_stages)
            after = mean[(ep.task_id, stage, t)]
            prefix_c.append(after - before)
            before = after
    worth_sum = np.array([sum(ep.worth) for ep in eps])
    return {
        "ls_sum_pearson": bench._pearson(ls_c, worth),
        "ls_sum_mse": float(np.mean((x @ w - r) ** 2)),
        "first_step_pearson": bench._pearson(first, worth),
        "tabular_prefix_pearson": bench._pearson(prefix_c, worth),
        "worth_sum_mse": float(np.mean((worth_sum - r) ** 2)),
        "var_r": float(np.var(r)),
        "success": float(np.mean([ep.won for ep in eps])),
    }


def mean_by_step(values: list[list[float]], max_steps: int) -> list[float]:
    out = []
    for t in range(max_steps):
        col = [v[t] for v in values if len(v) > t]
        out.append(float(np.mean(col)) if col else float("nan"))
    return out


def run(args) -> dict:
    from omegaconf import OmegaConf

    bench = _bench()
    import spa_reward.register  # noqa: F401

    logging.getLogger("spa_reward").setLevel(logging.WARNING)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="spa_bench_credit_"))
    rows, curves, examples = [], {}, {}
    for variant in args.variants:
        task = bench.LockTask(fixed_length=variant == "fixed")
        vocab = bench.Vocab(task)
        for init in args.inits:
            for seed in range(args.seeds):
                bargs = bench.build_parser().parse_args([
                    "--init", init, "--explore-episodes", str(args.explore_episodes), "--est-epochs",
                    str(args.est_epochs), "--threads", str(args.threads)])
                torch.manual_seed(seed)
                policy = bench.Policy(vocab.size, task.n_actions, hidden=bargs.hidden)
                if init == "sft":
                    policy.load_state_dict(bench.pretrain_policy(seed, task, vocab, bargs)["state"])
                base = {"variant": variant, "init": init, "seed": seed}
                for objective in (args.objectives if seed < args.estimator_seeds else []):
                    t0 = time.time()
                    algo = OmegaConf.create({"spa": {"objective": objective}})
                    ctx = bench.prepare_spa(seed, policy, task, vocab, bargs, work, algo=algo)
                    info = ctx["info"]
                    rows.append({**base, "objective": objective, "step_pearson": info["explore_step_pearson"],
                                 "lag1_pearson": info["explore_lag1_pearson"],
                                 "sum_mse": info["explore_sum_mse"] if objective == "sum" else None,
                                 "early": info["mean_c_early_late"]["early"],
                                 "late": info["mean_c_early_late"]["late"], "by_event": info["mean_c_by_event"],
                                 "train_s": round(time.time() - t0, 1)})
                    curves[(variant, init, seed, objective)] = mean_by_step(ctx["held_pred"], task.max_steps)
                    curves[(variant, init, seed, "worth")] = mean_by_step([ep.worth for ep in ctx["held_eps"]],
                                                                          task.max_steps)
                    examples[(variant, init, seed, objective)] = ctx
                    print(f"{variant} {init} seed {seed} {objective}: step Pearson {info['explore_step_pearson']:.2f}",
                          flush=True)
                gen = torch.Generator().manual_seed(10_000 + seed)  # prepare_spa's exploration, episode for episode
                eps = bench.rollout(policy, task, vocab, [f"lock-{i % task.n_tasks}" for i in range(args.explore_episodes)],
                                    [f"explore-{i}" for i in range(args.explore_episodes)], gen)
                ident = identifiability(eps, task)
                more = bench.rollout(policy, task, vocab, [f"lock-{i % task.n_tasks}" for i in range(8 * len(eps))],
                                     [f"more-{i}" for i in range(8 * len(eps))],
                                     torch.Generator().manual_seed(70_000 + seed))
                ident8 = identifiability(more, task)
                rows.append({**base, "objective": "(tabular)", **ident,
                             "ls_sum_pearson_8x": ident8["ls_sum_pearson"],
                             "tabular_prefix_pearson_8x": ident8["tabular_prefix_pearson"]})
    return {"rows": rows, "curves": {"|".join(map(str, k)): v for k, v in curves.items()}, "examples": examples}


def summarize(rows: list[dict]) -> str:
    """Two markdown tables: identifiability (tabular) and the trained estimators, mean over seeds."""
    def agg(sel, key):
        vals = [r[key] for r in sel if r.get(key) is not None and np.isfinite(r[key])]
        return f"{np.mean(vals):.2f}" + (f" ± {np.std(vals):.2f}" if len(vals) > 1 else "") if vals else "-"

    groups = sorted({(r["variant"], r["init"]) for r in rows}, key=lambda g: (g[0] != "lock", g[1] != "sft"))
    lines = ["| task | exploration | wins | LS sum: Pearson (1x / 8x data) | c_0 = R | tabular prefix (1x / 8x) | "
             "MSE(sum worth, R) / Var R |", "|---|---|---|---|---|---|---|"]
    for v, i in groups:
        sel = [r for r in rows if (r["variant"], r["init"]) == (v, i) and r["objective"] == "(tabular)"]
        lines.append(f"| {v} | {i} | {agg(sel, 'success')} | {agg(sel, 'ls_sum_pearson')} / "
                     f"{agg(sel, 'ls_sum_pearson_8x')} | {agg(sel, 'first_step_pearson')} | "
                     f"{agg(sel, 'tabular_prefix_pearson')} / {agg(sel, 'tabular_prefix_pearson_8x')} | "
                     f"{agg(sel, 'worth_sum_mse')} / {agg(sel, 'var_r')} |")
    lines += ["", "| task | exploration | objective | per-step Pearson(c_t, worth) | lag-1 | mean c_t steps 0-4 / 5+ | "
              "MSE(sum c_t, R) |", "|---|---|---|---|---|---|---|"]
    objectives = []
    for r in rows:
        if r["objective"] != "(tabular)" and r["objective"] not in objectives:
            objectives.append(r["objective"])
    for v, i in groups:
        for o in objectives:
            sel = [r for r in rows if (r["variant"], r["init"], r["objective"]) == (v, i, o)]
            if sel:
                lines.append(f"| {v} | {i} | {o} | {agg(sel, 'step_pearson')} | {agg(sel, 'lag1_pearson')} | "
                             f"{agg(sel, 'early')} / {agg(sel, 'late')} | {agg(sel, 'sum_mse')} |")
    return "\n".join(lines) + "\n"


def pick_trajectory(eps) -> int:
    """A held-out episode that shows credit assignment: won, with a reset (trap) and at least 7 steps if any."""
    def score(ep):
        return (ep.won, "reset" in ep.events, 7 <= len(ep.actions) <= 12, -abs(len(ep.actions) - 9))
    return max(range(len(eps)), key=lambda i: score(eps[i]))


def figure(result: dict, path: Path, objectives: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ex = result["examples"]
    key = next(k for k in ex if k[0] == "lock" and k[1] == "sft" and k[2] == 0) if any(
        k[0] == "lock" and k[1] == "sft" and k[2] == 0 for k in ex) else next(iter(ex))
    variant, init, seed, _ = key
    held = ex[key]["held_eps"]
    i = pick_trajectory(held)
    ep = held[i]
    fig, axes = plt.subplots(2, max(len(objectives), 2), figsize=(4.6 * max(len(objectives), 2), 7.4), squeeze=False)
    steps = np.arange(len(ep.actions))
    labels = [f"{t}\n{e}" for t, e in zip(steps, ep.events)]
    for j, o in enumerate(objectives):
        ax = axes[0][j]
        c = ex[(variant, init, seed, o)]["held_pred"][i]
        p = np.corrcoef(c, ep.worth)[0, 1] if np.std(c) > 0 else float("nan")
        ax.bar(steps - 0.2, c, width=0.4, color="C0", label="c_t")
        ax.bar(steps + 0.2, ep.worth, width=0.4, color="0.6", label="true worth")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(steps)
        ax.set_xticklabels(labels, fontsize=6)
        ax.set_title(f"{o}: Pearson {p:.2f} on this episode (R = {ep.reward:g})", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    for j, v in enumerate([v for v in ("lock", "fixed") if any(k[0] == v for k in ex)][:2]):
        ax = axes[1][j]
        curves = result["curves"]
        seeds = sorted({k[2] for k in ex if k[0] == v and k[1] == init})
        for n, o in enumerate(objectives + ["worth"]):
            ys = np.array([curves[f"{v}|{init}|{s}|{o}"] for s in seeds])
            ax.plot(np.arange(ys.shape[1]), np.nanmean(ys, 0), color="k" if o == "worth" else f"C{n}",
                    lw=2 if o == "worth" else 1.4, ls="--" if o == "worth" else "-",
                    label="true worth" if o == "worth" else o)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(xlabel="step index", ylabel="mean c_t (held-out episodes)",
               title=f"{v}: mean c_t by step ({init} exploration, {len(seeds)} seeds)")
        ax.legend(fontsize=7)
    lo = min(axes[0][j].get_ylim()[0] for j in range(len(objectives)))
    hi = max(axes[0][j].get_ylim()[1] for j in range(len(objectives)))
    for j in range(len(objectives)):  # one scale for every objective's episode panel
        axes[0][j].set_ylim(lo, hi)
    for j in range(2, axes.shape[1]):
        axes[1][j].axis("off")
    fig.suptitle(f"progress estimator objectives on the lock task ({init} exploration, seed {seed}; "
                 "top: one held-out episode, x = step and what the pull did)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=["lock", "fixed"], choices=["lock", "fixed"])
    p.add_argument("--inits", nargs="+", default=["sft", "scratch"], choices=["sft", "scratch"])
    p.add_argument("--objectives", nargs="+", default=["sum", "prefix"])
    p.add_argument("--estimator-seeds", type=int, default=1,
                   help="train the estimators for the first N seeds only (the tabular analysis runs for every seed; "
                   "bench_learning.py's spa / spa_sum rows report the trained estimators over all its seeds)")
    p.add_argument("--explore-episodes", type=int, default=1536)
    p.add_argument("--est-epochs", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default="outputs/bench_credit")
    p.add_argument("--figure", default=None, help="where the PNG goes (default <out-dir>/credit_objectives.png)")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    result = run(args)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    load = " / ".join(f"{x:.1f}" for x in __import__("os").getloadavg())
    table = summarize(result["rows"])
    header = f"{args.seeds} seeds, {args.explore_episodes} exploration episodes; wall {time.time() - t0:.0f} s at load {load}\n\n"
    (out / "credit.md").write_text(header + table)
    (out / "credit.json").write_text(json.dumps({"rows": result["rows"], "curves": result["curves"]}, indent=1,
                                                default=float))
    figure(result, Path(args.figure) if args.figure else out / "credit_objectives.png", args.objectives)
    print("\n" + header + table)
    return result


if __name__ == "__main__":
    main()
