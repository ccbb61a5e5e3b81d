"""Per-turn reward fusion (SPA-RL eq. for r_t) and placement of per-turn rewards on response tokens.

Plain functions on Python lists, no torch: the reward managers call them once per trajectory.

* :func:`fuse_turn_rewards`: ``r_t = alpha * c_t + G_t - invalid_penalty * (1 - g_t)``, plus
  ``outcome_coef * R`` on the last turn, optionally clipped to ``[-clip, clip]``. ``c_t`` is the progress
  estimator's contribution of turn t, ``g_t`` = 1 when the env executed the turn's action, else 0, and the
  grounding term ``G_t`` has one of the forms of :data:`GROUNDING_FORMS` (:func:`grounding_terms`):
  ``bonus`` = ``beta * g_t`` (SPA-RL's literal form), ``penalty`` = ``-beta * (1 - g_t)`` (ours: never positive,
  so no policy can earn more from it by not finishing). SPA-RL's released code uses alpha = 1, beta = 0.5
  (bonus) and no outcome term (R enters only through sum_t c_t ~ R); our defaults are :data:`SPA_DEFAULTS`.
* :func:`outcome_turn_rewards`: the outcome-only baseline, R on the last turn (minus the invalid-action penalty
  on non-executable turns, as GiGPO's ``invalid_action_penalty``).
* :func:`stepagent_turn_rewards`: StepAgent's per-turn reward (+-match_reward on the compared turn in mode
  ``match``, grounding, R on the last turn), shared by the ``stepagent`` reward manager and the learning benchmark.
* :func:`place_turn_rewards`: a dense per-token list with each r_t on its turn's last token.

Non-finite contributions: a NaN/inf c_t is replaced by 0 (the turn keeps its grounding term) and counted in
``FusionStats.nonfinite``; it is never passed on to the trainer. This holds even when *every* c_t of the
trajectory is non-finite: one bad sample must not kill a training run, so nothing is raised here. The count is
reported per sample (``spa/nonfinite_contributions``), and the reward manager logs a warning, so a broken
estimator (NaN everywhere) shows up in the metrics at once. A non-finite *outcome* R, by contrast, is a bug in
the environment or the agent loop and raises ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

# how the grounding flag g_t enters r_t (beta >= 0): the paper's per-step bonus, or only a penalty on non-executed
# actions (a bonus paid on every executed step is worth more than finishing once the stream of future bonuses is
# counted, wherever success ends the episode: see the README's "grounding trap")
GROUNDING_FORMS = ("bonus", "penalty")

# The ONE source of the spa reward's defaults: what the code uses where a key is missing (``RewardSettings``,
# :func:`fuse_turn_rewards`, ``spa_reward.config_check``, ``spa_reward.steprm.trainer_hooks``), equal to
# ``algorithm.spa`` of recipe/spa/config/spa_trainer.yaml and to examples/rl_spa.sh's (a test compares them):
# grounding as a penalty of 0.1 on non-executed actions and the prefix objective (chosen on the learning
# benchmark, README "What makes a learned step reward work"). The paper's literal setting (objective sum,
# grounding bonus, beta 0.5) stays available by name: pass it explicitly.
DEFAULT_ALPHA = 1.0
DEFAULT_BETA = 0.1
DEFAULT_GROUNDING = "penalty"
DEFAULT_OBJECTIVE = "prefix"  # one of spa_reward.steprm.objectives.PROGRESS_OBJECTIVES
SPA_DEFAULTS = {"alpha": DEFAULT_ALPHA, "beta": DEFAULT_BETA, "grounding": DEFAULT_GROUNDING,
                "objective": DEFAULT_OBJECTIVE}  # by algorithm.spa key


def grounding_terms(g: Sequence[float], beta: float, form: str) -> list[float]:
    """G_t per turn from the flags ``g`` (1.0 executed, 0.0 not): ``bonus`` = ``beta * g_t``, ``penalty`` =
    ``-beta * (1 - g_t)``. ``ValueError`` for another ``form``."""
    if form == "bonus":
        return [beta * g_t for g_t in g]
    if form == "penalty":
        return [-beta * (1.0 - g_t) for g_t in g]
    raise ValueError(f"grounding form {form!r} is not one of {GROUNDING_FORMS} (algorithm.spa.grounding)")


@dataclass
class FusionStats:
    """What happened while fusing one trajectory's turn rewards."""

    num_turns: int = 0
    nonfinite: int = 0  # contributions replaced by 0
    clipped: int = 0  # turn rewards changed by the clip
    sum_contribution: float = 0.0  # over finite c_t
    mean_contribution: float = 0.0  # over all turns (replaced ones count as 0)
    executable_rate: float = 0.0
    sum_reward: float = 0.0  # sum of the fused r_t
    mean_reward: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _flags(executable: Sequence, n: int | None = None) -> list[float]:
    g = [1.0 if bool(e) else 0.0 for e in executable]
    if n is not None and len(g) != n:
        raise ValueError(f"executable has {len(g)} entries for {n} turns; need one flag per assistant turn")
    return g


def _finite_outcome(outcome: float | None) -> float | None:
    if outcome is None:
        return None
    outcome = float(outcome)
    if not math.isfinite(outcome):
        raise ValueError(f"outcome reward R must be finite, got {outcome}")
    return outcome


def _apply_clip(rewards: list[float], clip: float | None) -> int:
    if clip is None:
        return 0
    clip = float(clip)
    if not clip > 0:
        raise ValueError(f"clip must be > 0 (or None for no clipping), got {clip}")
    changed = 0
    for t, r in enumerate(rewards):
        c = min(max(r, -clip), clip)
        if c != r:
            changed += 1
            rewards[t] = c
    return changed


def fuse_turn_rewards(
    contributions: Sequence[float],
    executable: Sequence[bool],
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
    outcome: float | None = None,
    outcome_coef: float = 0.0,
    clip: float | None = None,
    invalid_penalty: float = 0.0,
    grounding: str = DEFAULT_GROUNDING,
) -> tuple[list[float], FusionStats]:
    """Fuse per-turn contributions c_t and grounding flags g_t into per-turn rewards r_t.

    ``r_t = alpha*c_t + G_t - invalid_penalty*(1 - g_t)`` with ``G_t`` = :func:`grounding_terms` (``grounding``:
    ``bonus`` = ``beta*g_t``, ``penalty`` = ``-beta*(1 - g_t)``); ``r_{T-1} += outcome_coef * outcome`` when
    ``outcome`` is given; then each r_t is clipped to ``[-clip, clip]`` when ``clip`` is set (> 0).
    ``contributions`` and ``executable`` need one entry per assistant turn. Returns ``(rewards, stats)``.
    Defaults: :data:`SPA_DEFAULTS` (penalty 0.1); the paper's form is ``grounding="bonus", beta=0.5``.
    """
    c_raw = [float(c) for c in contributions]
    n = len(c_raw)
    g = _flags(executable, n)
    ground = grounding_terms(g, beta, grounding)
    outcome = _finite_outcome(outcome)
    stats = FusionStats(num_turns=n)
    if n == 0:
        return [], stats
    c = []
    for value in c_raw:
        if math.isfinite(value):
            c.append(value)
        else:
            c.append(0.0)
            stats.nonfinite += 1
    rewards = [alpha * c_t + G_t - invalid_penalty * (1.0 - g_t) for c_t, G_t, g_t in zip(c, ground, g)]
    if outcome is not None and outcome_coef:
        rewards[-1] += outcome_coef * outcome
    stats.clipped = _apply_clip(rewards, clip)
    stats.sum_contribution = float(sum(c))
    stats.mean_contribution = stats.sum_contribution / n
    stats.executable_rate = sum(g) / n
    stats.sum_reward = float(sum(rewards))
    stats.mean_reward = stats.sum_reward / n
    return rewards, stats


def outcome_turn_rewards(
    num_turns: int, R: float, executable: Sequence[bool] | None = None, invalid_penalty: float = 0.0
) -> list[float]:
    """Outcome-only per-turn rewards: R on the last turn, 0 elsewhere, minus ``invalid_penalty`` on every turn
    whose action was not executed (``executable`` may be None when ``invalid_penalty`` is 0)."""
    if num_turns < 0:
        raise ValueError(f"num_turns must be >= 0, got {num_turns}")
    R = _finite_outcome(R)
    if num_turns == 0:
        return []
    rewards = [0.0] * num_turns
    rewards[-1] = R
    if invalid_penalty:
        if executable is None:
            raise ValueError("invalid_penalty needs the per-turn executable flags")
        for t, g_t in enumerate(_flags(executable, num_turns)):
            rewards[t] -= invalid_penalty * (1.0 - g_t)
    return rewards


def stepagent_turn_rewards(
    num_turns: int,
    executable: Sequence[bool],
    outcome: float,
    matched: bool | None = None,
    mode: str = "match",
    match_reward: float = 1.0,
    grounding_beta: float = 0.0,
    invalid_penalty: float = 0.0,
) -> tuple[list[float], FusionStats]:
    """StepAgent's per-turn rewards (the ``stepagent`` reward manager's, our reading of arXiv 2411.03817).

    ``r_t = grounding_beta*g_t - invalid_penalty*(1 - g_t)`` on every policy turn, ``+ outcome`` (R) on the last;
    in mode ``match`` also ``+match_reward`` on turn 0 (the compared turn: the first policy turn after the expert
    prefix) when ``matched`` is True, ``-match_reward`` when it is False; ``matched=None`` (no compared turn in
    this row) and the modes ``implicit`` / ``irl`` (their step reward comes from the step-reward service) add no
    term. ``executable`` needs one flag per turn. Returns ``(rewards, stats)`` as :func:`fuse_turn_rewards`."""
    bonus = [0.0] * int(num_turns)
    if mode == "match" and matched is not None and num_turns:
        bonus[0] = float(match_reward) if matched else -float(match_reward)
    return fuse_turn_rewards(
        bonus, executable, alpha=1.0, beta=float(grounding_beta), outcome=float(outcome), outcome_coef=1.0,
        clip=None, invalid_penalty=invalid_penalty, grounding="bonus",  # grounding_beta * g_t, whatever the defaults
    )


def clamp_turn_positions(
    turn_end_positions: Sequence[int], response_length: int, turn_start_positions: Sequence[int] | None = None
) -> list[int | None]:
    """Where each turn's reward goes in a response kept to ``response_length`` tokens; None = the turn was cut away.

    A turn whose last token survives keeps its position. A turn cut by the truncation keeps its reward at the
    last surviving token (``response_length - 1``) when it has at least one surviving token, i.e. when its
    start is ``< response_length``; a turn that starts at or past the cut is dropped (None). Without
    ``turn_start_positions`` a turn is assumed to start right after the previous turn's end (the earliest it can),
    so the first turn that crosses the cut is kept and all later ones are dropped.
    Positions must be strictly increasing and >= 0 (``ValueError`` otherwise).
    """
    if response_length < 0:
        raise ValueError(f"response_length must be >= 0, got {response_length}")
    ends = [int(p) for p in turn_end_positions]
    if turn_start_positions is None:
        starts = [0] + [e + 1 for e in ends[:-1]]
    else:
        starts = [int(s) for s in turn_start_positions]
        if len(starts) != len(ends):
            raise ValueError(f"{len(starts)} turn starts for {len(ends)} turn ends")
    out: list[int | None] = []
    prev = -1
    for t, (s, e) in enumerate(zip(starts, ends)):
        if e <= prev or e < 0:
            raise ValueError(f"turn end positions must be strictly increasing and >= 0, got {ends}")
        if s > e or s <= prev:
            raise ValueError(f"turn {t} span [{s}, {e}] is reversed or overlaps the previous turn (ends {ends})")
        prev = e
        if e < response_length:
            out.append(e)
        elif s < response_length:
            out.append(response_length - 1)
        else:
            out.append(None)
    return out


def place_turn_rewards(
    turn_rewards: Sequence[float],
    turn_end_positions: Sequence[int],
    response_length: int,
    turn_start_positions: Sequence[int] | None = None,
) -> list[float]:
    """Dense per-token rewards of length ``response_length``: r_t at the last token of turn t, 0 elsewhere.

    ``turn_end_positions`` are response coordinates (index of each turn's last token). Turns past a truncation
    follow :func:`clamp_turn_positions`: a cut turn's reward lands on the last surviving token, a turn with no
    surviving token is dropped (its reward is lost, consistently for every caller).
    """
    if len(turn_rewards) != len(turn_end_positions):
        raise ValueError(f"{len(turn_rewards)} turn rewards for {len(turn_end_positions)} turn positions")
    dense = [0.0] * response_length
    for r, pos in zip(turn_rewards, clamp_turn_positions(turn_end_positions, response_length, turn_start_positions)):
        if pos is not None:
            dense[pos] += float(r)
    return dense


__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_BETA",
    "DEFAULT_GROUNDING",
    "DEFAULT_OBJECTIVE",
    "FusionStats",
    "GROUNDING_FORMS",
    "SPA_DEFAULTS",
    "clamp_turn_positions",
    "fuse_turn_rewards",
    "grounding_terms",
    "outcome_turn_rewards",
    "place_turn_rewards",
    "stepagent_turn_rewards",
]
