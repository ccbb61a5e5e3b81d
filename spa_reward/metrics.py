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


def is_env_failure(info: dict) -> bool:
    """True for an episode that ended by env failure (open/reset/step timeout, crash or error), not by the policy.

    The ``env_agent`` loop sets ``env_failed: 1.0`` and the error text in ``env_error``; either marks it.
    """
    return bool(info.get("env_failed")) or bool(info.get("env_error"))


def episode_metrics(infos: list[dict], prefix: str = "episode") -> dict[str, float]:
    """Success rate (overall and per task type), task score, turns, grounding (executable rate) and, when the
    ``spa`` reward ran, mean c_t and corr(sum_t c_t, R), over the episodes that are data; plus the count and share
    of env failures (``<prefix>/env_failures``, ``<prefix>/env_failure_share``), which are left out of the rest.

    ``infos`` must hold only real episodes (the trainer drops verl's padding rows before calling this)."""
    # window layout (env.history=window): every step row repeats its episode's info; count the final row only
    infos = [i for i in infos if isinstance(i, dict) and i.get("session_row", 0) == i.get("session_rows", 1) - 1]
    if not infos:
        return {}
    failed = [i for i in infos if is_env_failure(i)]
    out: dict[str, float] = {
        f"{prefix}/env_failures": float(len(failed)),
        f"{prefix}/env_failure_share": len(failed) / len(infos),
    }
    infos = [i for i in infos if not is_env_failure(i)]
    if not infos:
        return out
    won = [float(i.get("won", 0.0)) for i in infos]
    out[f"{prefix}/success_rate"] = _mean(won)
    for key, name in (("score", "score"), ("num_turns", "num_turns"), ("executable_rate", "executable_rate"),
                      ("truncated", "truncated_rate")):
        vals = [float(i[key]) for i in infos if key in i]
        if vals:
            out[f"{prefix}/{name}"] = _mean(vals)
    by_type: dict[str, list[float]] = defaultdict(list)
    for i, w in zip(infos, won):
        if i.get("task_type"):
            by_type[str(i["task_type"])].append(w)
    for task_type, vals in sorted(by_type.items()):
        out[f"{prefix}/success_rate/{task_type}"] = _mean(vals)
    out.update(stepagent_metrics(infos, won, prefix))
    for key, name in (("env_seconds", "env"), ("llm_seconds", "llm"), ("reward_seconds", "reward")):
        vals = [float(i[key]) for i in infos if key in i]
        if vals:  # summed over the batch's episodes, which run concurrently: seconds of work, not of the step
            out[f"timing_s/spa/{name}_sum"] = sum(vals)
    pairs = [(i["sum_contribution"], i["env_reward"]) for i in infos if "sum_contribution" in i and "env_reward" in i]
    if pairs:
        sums, rewards = zip(*pairs)
        out["spa/mean_sum_contribution"] = _mean(list(sums))
        corr = pearson(sums, rewards)
        if not math.isnan(corr):
            out["spa/corr_sum_contribution_reward"] = corr
    return out


def stepagent_metrics(infos: list[dict], won: list[float], prefix: str = "episode") -> dict[str, float]:
    """StepAgent's inspection over the batch's episodes (the ``stepagent_*`` scalars the agent loop writes when
    ``algorithm.reward=stepagent``): mean prefix length, share compared, match rate among the compared, diverged and
    shortened prefixes, and the success rate of the episodes that started from the task's start state (k = 0): an
    episode with a prefix starts closer to the goal, so ``<prefix>/success_rate`` of a StepAgent run is not the
    policy's own (validation episodes never get a prefix)."""
    rows = [(i, w) for i, w in zip(infos, won) if "stepagent_prefix_turns" in i]
    if not rows:
        return {}
    k = [float(i["stepagent_prefix_turns"]) for i, _ in rows]
    compared = [i for i, _ in rows if i.get("stepagent_compared")]
    out = {
        "stepagent/prefix_turns": _mean(k),
        "stepagent/compared_rate": len(compared) / len(rows),
        "stepagent/prefix_diverged": float(sum(float(i.get("stepagent/prefix_diverged", 0.0)) for i, _ in rows)),
        "stepagent/prefix_shortened": float(sum(float(i.get("stepagent/prefix_shortened", 0.0)) for i, _ in rows)),
    }
    if compared:
        out["stepagent/match_rate"] = _mean([float(i.get("stepagent_match", 0.0)) for i in compared])
    start = [w for (i, w), kk in zip(rows, k) if kk == 0]
    if start:
        out[f"{prefix}/success_rate_no_prefix"] = _mean(start)
    return out
