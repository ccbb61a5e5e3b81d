"""Batch metrics over finished episodes (one ``episode_info`` dict of scalars per trajectory).

Used by the trainer mode at every training step, and by the evaluation table, so both report the same numbers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable

import numpy as np


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def pearson(x: Iterable[float], y: Iterable[float]) -> float:
    """Pearson correlation; NaN when either side is constant or there are fewer than two points."""
    x, y = np.asarray(list(x), dtype=np.float64), np.asarray(list(y), dtype=np.float64)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def episode_metrics(infos: list[dict], prefix: str = "episode") -> dict[str, float]:
    """Success rate (overall and per task type), task score, turns, grounding (executable rate), env errors,
    and, when the ``spa`` reward ran, mean c_t and corr(sum_t c_t, R) on the batch."""
    # window layout (env.history=window): every step row repeats its episode's info; count the final row only
    infos = [i for i in infos if isinstance(i, dict) and i.get("session_row", 0) == i.get("session_rows", 1) - 1]
    if not infos:
        return {}
    out: dict[str, float] = {}
    won = [float(i.get("won", 0.0)) for i in infos]
    out[f"{prefix}/success_rate"] = _mean(won)
    for key, name in (("score", "score"), ("num_turns", "num_turns"), ("executable_rate", "executable_rate"),
                      ("truncated", "truncated_rate")):
        vals = [float(i[key]) for i in infos if key in i]
        if vals:
            out[f"{prefix}/{name}"] = _mean(vals)
    out[f"{prefix}/env_errors"] = float(sum(1 for i in infos if i.get("env_error")))
    by_type: dict[str, list[float]] = defaultdict(list)
    for i, w in zip(infos, won):
        if i.get("task_type"):
            by_type[str(i["task_type"])].append(w)
    for task_type, vals in sorted(by_type.items()):
        out[f"{prefix}/success_rate/{task_type}"] = _mean(vals)
    pairs = [(i["sum_contribution"], i["env_reward"]) for i in infos if "sum_contribution" in i and "env_reward" in i]
    if pairs:
        sums, rewards = zip(*pairs)
        out["spa/mean_sum_contribution"] = _mean(list(sums))
        corr = pearson(sums, rewards)
        if not math.isnan(corr):
            out["spa/corr_sum_contribution_reward"] = corr
    return out
