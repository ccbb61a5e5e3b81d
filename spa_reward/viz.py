"""Picture of SPA's credit assignment for one trajectory.

    python -m spa_reward.viz --records rollouts.jsonl --index 0 [--checkpoint ESTIMATOR_DIR] \\
        --alpha 1 --beta 0.5 --out traj.png

Per turn: the progress contribution c_t, the grounding signal g_t (1 when the action was executable) and the
fused step reward r_t = alpha * c_t + beta * g_t, as grouped bars; the (truncated) action texts label the x axis,
and the title shows R and sum_t c_t. Without ``--checkpoint`` the c_t stored in the record's
``extra["contributions"]`` are used.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from pathlib import Path


def _label(text: str | None, t: int, width: int) -> str:
    text = (text or "").replace("\n", " ").strip()
    if len(text) > width:
        text = text[: width - 1] + "\u2026"
    return f"{t}: {text}" if text else str(t)


def plot_attribution(
    contributions: Sequence[float],
    executable: Sequence[bool],
    actions: Sequence[str] | None,
    alpha: float = 1.0,
    beta: float = 0.5,
    reward: float | None = None,
    out_path: str | os.PathLike = "trajectory.png",
    title: str | None = None,
    label_width: int = 28,
) -> Path:
    """Draw c_t, g_t and r_t = alpha*c_t + beta*g_t per turn as grouped bars and save a PNG at ``out_path``.

    Non-finite c_t are drawn as 0 with an ``x`` marker and counted in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(contributions)
    if len(executable) != n:
        raise ValueError(f"{n} contributions but {len(executable)} executable flags")
    if actions is not None and len(actions) != n:
        raise ValueError(f"{n} contributions but {len(actions)} actions")
    c = np.array([float(x) for x in contributions], dtype=np.float64)
    bad = ~np.isfinite(c)
    c_plot = np.where(bad, 0.0, c)
    g = np.array([1.0 if e else 0.0 for e in executable])
    r = alpha * c_plot + beta * g

    fig_w = min(40.0, max(6.0, 0.9 * n + 2.5))
    fig, ax = plt.subplots(figsize=(fig_w, 4.8))
    x = np.arange(n)
    w = 0.27
    ax.bar(x - w, c_plot, w, label="c_t (progress)", color="#4C72B0")
    ax.bar(x, g, w, label="g_t (executable)", color="#55A868")
    ax.bar(x + w, r, w, label=f"r_t = {alpha:g}\u00b7c_t + {beta:g}\u00b7g_t", color="#C44E52")
    if bad.any():
        ax.scatter(x[bad] - w, np.zeros(int(bad.sum())), marker="x", color="black", zorder=3, label="non-finite c_t")
    ax.axhline(0.0, color="black", linewidth=0.8)
    labels = [_label(actions[t] if actions else None, t, label_width) for t in range(n)]
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center", fontsize=8)
    ax.set_xlabel("assistant turn")
    ax.set_ylabel("per-step value")
    total = float(np.sum(c[~bad])) if n else 0.0
    head = f"R = {reward:.3f}, " if reward is not None and math.isfinite(reward) else ""
    text = f"{head}\u03a3 c_t = {total:.3f}, {n} turns"
    if bad.any():
        text += f", {int(bad.sum())} non-finite c_t"
    ax.set_title(f"{title}\n{text}" if title else text)
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m spa_reward.viz", description=__doc__.split("\n\n")[0])
    p.add_argument("--records", required=True, help="trajectory record file (.jsonl/.parquet), glob or dir")
    p.add_argument("--index", type=int, default=0, help="which record (0-based, in file order)")
    p.add_argument("--checkpoint", default=None, help="progress estimator dir; default: c_t stored in the record")
    p.add_argument("--alpha", type=float, default=1.0, help="weight of c_t (released code: 1)")
    p.add_argument("--beta", type=float, default=0.5, help="weight of g_t (released code: 0.5)")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="trajectory.png", help="PNG to write (default: %(default)s)")
    args = p.parse_args(argv)

    from .records import CONTRIBUTIONS_KEY, iter_records

    rec = None
    for i, r in enumerate(iter_records(args.records)):
        if i == args.index:
            rec = r
            break
    if rec is None:
        raise SystemExit(f"--index {args.index} is past the last record of {args.records}")
    if args.checkpoint:
        from .progress.serve import ProgressScorer, record_item

        scorer = ProgressScorer(args.checkpoint, device=args.device)
        contributions = scorer.score([record_item(rec)])[0]
    else:
        contributions = (rec.extra or {}).get(CONTRIBUTIONS_KEY)
        if contributions is None:
            raise SystemExit(
                f"record {args.index} has no extra[{CONTRIBUTIONS_KEY!r}]; pass --checkpoint to score it with an estimator"
            )
    out = plot_attribution(
        contributions, rec.executable, rec.actions, args.alpha, args.beta, rec.reward, args.out,
        title=f"{rec.env_name} task {rec.task_id} episode {rec.episode_id} (won={rec.won})",
    )
    print(out)
    return out


if __name__ == "__main__":
    main()
