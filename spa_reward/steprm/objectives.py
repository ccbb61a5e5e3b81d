"""Objectives of the step-reward model, as plain tensor functions (shape docstrings, no model or service state).

Two objectives share one service (:mod:`spa_reward.steprm.service`):

* ``progress`` (SPA-RL): per-turn contributions ``c_t`` from a scalar head read at chosen positions of the
  sequence (its *readouts*), with one of :data:`PROGRESS_OBJECTIVES` (the offline trainer
  ``spa_reward.progress.train`` uses the same functions):

  - ``sum`` (the paper): one readout per turn, at the turn's last token, ``c_t`` = that readout;
    :func:`progress_loss` = mean over episodes of ``(sum_t c_t - R)^2``.
  - ``prefix`` (ours): the readouts are values ``V`` of prefixes: ``V_0`` at the prompt's last token (the prefix
    before step 0) and ``V_{t+1}`` at the last token of turn t (the prefix after step t); every readout is
    regressed on R (per episode the mean of ``(V_j - R)^2``, then the mean over episodes) and
    ``c_t = V_{t+1} - V_t``, so ``sum_t c_t = V_T - V_0`` (telescoping).
  - ``prefix_sum`` (ours): ``prefix`` with ``V_0 = 0`` (the prompt is not read), so ``sum_t c_t = V_T`` is the
    paper's decomposition, and the paper's ``(sum_t c_t - R)^2`` is added to the prefix term.

  :func:`readout_positions` places the readouts, :func:`contributions_from_readouts` turns them into ``c_t`` and
  :func:`progress_episode_losses` gives each episode's loss.
* ``implicit`` (iStar, arXiv 2509.19199): a causal LM ``pi_phi``; per turn
  ``q_t = sum over the turn's tokens of (log pi_phi - log pi_ref)`` (:func:`turn_log_ratio`), step reward
  ``r_t = beta * q_t``; trained with the trajectory-level DPO loss (:func:`trajectory_dpo_loss`) over every
  (success, failure) pair inside one uid group, where a trajectory's score is ``Q = mean_t beta * q_t``
  (:func:`trajectory_scores`). A group without both a success and a failure contributes nothing.
* ``implicit`` with the step-level DPO loss (StepAgent, arXiv 2411.03817, our reading): the same PRM and
  ``q``, trained on (expert action, agent action) pairs at one state s: :func:`step_dpo_loss` =
  mean over pairs of ``-log sigmoid(beta * q(s, a_expert) - beta * q(s, a_agent))``.
* ``discriminator`` (StepAgent's inverse-RL reflection, our reading): ``D(s, a) = sigmoid(l)`` with ``l`` a scalar
  head's logit at the action's last token; :func:`discriminator_loss` = binary cross-entropy (expert steps 1, agent
  steps 0); reward :func:`irl_reward` = ``clip(log D - log(1 - D)) = clip(l)``.

Window layout (``env.history=window``: one row per env step): an episode's turns are spread over several rows;
``episode`` (rows,) long says which episode each row belongs to. :func:`episode_trajectory_scores` is
``Q = mean over ALL the episode's turns`` and :func:`progress_loss` with ``episode_index`` regresses the sum of
the episode's rows' ``c_t`` (the offline trainer's ``spa_reward.progress.train.episode_predictions``). With one
row per episode both give exactly the packed numbers.

Turns are given by a per-token turn index (bs, L) long: the 0-based turn a token belongs to, -1 for tokens outside
every assistant turn (prompt, observations, padding); :func:`span_turn_index` builds it from turn spans and
``spa_reward.turns.turn_index`` from a response mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F


def span_turn_index(turn_spans: Sequence[Sequence[Sequence[int]]], length: int) -> torch.Tensor:
    """(bs, length) long turn index from per-item half-open spans ``[[start, end), ...]`` (-1 outside spans).

    Spans must be increasing, non-overlapping and inside ``[0, length)`` (``ValueError`` naming the item)."""
    bs = len(turn_spans)
    starts, ends, rows, turn = [], [], [], []
    for i, spans in enumerate(turn_spans):
        prev = 0
        for t, span in enumerate(spans):
            a, b = int(span[0]), int(span[1])
            if not (prev <= a < b <= length):
                raise ValueError(f"item {i}: turn span {t} = [{a}, {b}) overlaps, is empty or leaves [0, {length})")
            prev = b
            starts.append(a), ends.append(b), rows.append(i), turn.append(t)
    pos = torch.arange(length)
    idx = torch.full((bs, length), -1, dtype=torch.long)
    if rows:
        s, e = torch.tensor(starts), torch.tensor(ends)
        inside = (pos.unsqueeze(0) >= s.unsqueeze(1)) & (pos.unsqueeze(0) < e.unsqueeze(1))  # (n_spans, L)
        r = torch.tensor(rows)
        value = torch.where(inside, torch.tensor(turn).unsqueeze(1), torch.full_like(inside, -1, dtype=torch.long))
        idx = idx.scatter_reduce(0, r.unsqueeze(1).expand(-1, length), value, reduce="amax")
    return idx


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """(bs, L) float32: ``log p(x_i | x_<i)`` for every position i >= 1; position 0 (no prefix) gets 0.

    Args:
        logits: (bs, L, V) next-token logits of a causal LM (row i predicts token i + 1).
        input_ids: (bs, L) long.
    """
    logits = logits[:, :-1].float()
    picked = logits.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    lp = picked - torch.logsumexp(logits, dim=-1)
    return F.pad(lp, (1, 0), value=0.0)


def turn_sums(token_values: torch.Tensor, turn_idx: torch.Tensor, num_turns: int) -> torch.Tensor:
    """(bs, K=num_turns): sum of ``token_values`` (bs, L) over the tokens of each turn (``turn_idx`` (bs, L))."""
    out = torch.zeros(token_values.shape[0], num_turns + 1, dtype=token_values.dtype, device=token_values.device)
    out = out.scatter_add(1, (turn_idx + 1).clamp(min=0, max=num_turns), token_values)  # slot 0: non-turn tokens
    return out[:, 1:]


def turn_log_ratio(
    logp_model: torch.Tensor, logp_ref: torch.Tensor, turn_idx: torch.Tensor, num_turns: int
) -> torch.Tensor:
    """(bs, K) implicit step values ``q_t = sum_{i in turn t} (log pi_phi(x_i) - log pi_ref(x_i))``.

    Args:
        logp_model, logp_ref: (bs, L) per-token log-probs of the same tokens under the PRM and the reference.
        turn_idx: (bs, L) long turn index, -1 on tokens outside assistant turns (they never count).
        num_turns: K, the number of turn slots (missing turns of a row get 0).
    """
    diff = torch.where(turn_idx >= 0, logp_model.float() - logp_ref.float(), torch.zeros_like(logp_model, dtype=torch.float32))
    return turn_sums(diff, turn_idx, num_turns)


def trajectory_scores(step_rewards: torch.Tensor, turn_valid: torch.Tensor) -> torch.Tensor:
    """(bs,) ``Q = mean over the row's valid turns of r_t`` (``step_rewards`` (bs, K), ``turn_valid`` (bs, K) bool);
    0 for a row without turns."""
    valid = turn_valid.to(step_rewards.dtype)
    return (step_rewards * valid).sum(-1) / valid.sum(-1).clamp(min=1.0)


def episode_trajectory_scores(step_rewards: torch.Tensor, turn_valid: torch.Tensor, episode: torch.Tensor,
                              num_episodes: int) -> torch.Tensor:
    """(E,) ``Q_e = mean over the valid turns of every row of episode e of r_t`` (window layout); 0 for an episode
    without turns. One row per episode (``episode`` = arange) gives :func:`trajectory_scores`.

    Args:
        step_rewards: (rows, K) per-turn values of each row (``beta * q_t``).
        turn_valid: (rows, K) bool.
        episode: (rows,) long in ``[0, num_episodes)``.
        num_episodes: E.
    """
    valid = turn_valid.to(step_rewards.dtype)
    zeros = torch.zeros(num_episodes, dtype=step_rewards.dtype, device=step_rewards.device)
    sums = zeros.index_add(0, episode, (step_rewards * valid).sum(-1))
    counts = zeros.index_add(0, episode, valid.sum(-1))
    return sums / counts.clamp(min=1.0)


def dpo_pairs(success: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """(bs, bs) bool: ``[w, l]`` is True for every (success w, failure l) pair of the same group.

    Args:
        success: (bs,) bool.
        group: (bs,) long group id (the uid group); rows with group -1 take part in no pair.
    """
    same = (group.unsqueeze(1) == group.unsqueeze(0)) & (group >= 0).unsqueeze(1)
    return same & success.unsqueeze(1) & ~success.unsqueeze(0)


def trajectory_dpo_loss(scores: torch.Tensor, success: torch.Tensor, group: torch.Tensor) -> tuple[torch.Tensor, int]:
    """iStar's trajectory-level DPO loss: mean over (success w, failure l) pairs of the same group of
    ``-log sigmoid(Q_w - Q_l)``; returns ``(loss, number_of_pairs)``. No pair -> ``(0 * scores.sum(), 0)`` (a zero
    that keeps the graph, so callers can always backward).

    Args:
        scores: (bs,) trajectory scores Q (:func:`trajectory_scores` of ``beta * q_t``).
        success: (bs,) bool.
        group: (bs,) long group id (-1: in no group).
    """
    pairs = dpo_pairs(success.bool(), group)
    n = int(pairs.sum())
    if n == 0:
        return scores.sum() * 0.0, 0
    margin = scores.unsqueeze(1) - scores.unsqueeze(0)  # [w, l] = Q_w - Q_l
    return -F.logsigmoid(margin[pairs]).mean(), n


def step_dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """StepAgent's step-level DPO loss: mean over pairs of ``-log sigmoid(chosen - rejected)``; 0 (keeping the
    graph) for no pair.

    Args:
        chosen: (n_pairs,) ``beta * q(s, a_expert)``, the implicit value of the expert's action at state s.
        rejected: (n_pairs,) ``beta * q(s, a_agent)``, the agent's action at the same state.
    """
    if chosen.shape != rejected.shape:
        raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} differ in shape")
    if chosen.numel() == 0:
        return chosen.sum() * 0.0 + rejected.sum() * 0.0
    return -F.logsigmoid(chosen.float() - rejected.float()).mean()


def discriminator_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the discriminator ``D = sigmoid(logits)``: mean over steps of
    ``-(y log D + (1 - y) log(1 - D))`` (computed from the logits, stable for any magnitude).

    Args:
        logits: (n,) the head's logit at each step's last token.
        labels: (n,) 1 for an expert step, 0 for an agent step.
    """
    if logits.numel() == 0:
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits.float(), labels.to(torch.float32).to(logits.device))


def irl_reward(logits: torch.Tensor, clip: float) -> torch.Tensor:
    """(...) the inverse-RL step reward ``clip(log D - log(1 - D), -clip, clip)`` for ``D = sigmoid(logits)``.

    ``log sigmoid(l) - log(1 - sigmoid(l)) = l`` exactly, so this is ``clamp(l)``: finite for every logit, +-inf
    included (they give +-clip); a NaN logit gives 0 (no reward rather than a poisoned batch)."""
    clip = float(clip)
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"irl clip must be a finite number > 0, got {clip}")
    x = torch.nan_to_num(logits.float(), nan=0.0, posinf=clip, neginf=-clip)
    return x.clamp(-clip, clip)


PROGRESS_OBJECTIVES = ("sum", "prefix", "prefix_sum")


def check_progress_objective(objective: str) -> str:
    """``objective`` if it is one of :data:`PROGRESS_OBJECTIVES`, else ``ValueError`` naming the valid ones."""
    if objective not in PROGRESS_OBJECTIVES:
        raise ValueError(f"progress objective {objective!r} is not one of {PROGRESS_OBJECTIVES} (sum: the paper's "
                         "MSE(sum_t c_t, R); prefix / prefix_sum: every prefix's value regressed on R)")
    return objective


def reads_start(objective: str) -> bool:
    """Whether ``objective`` reads ``V_0`` (the value of the prefix before step 0) at the prompt's last token."""
    return check_progress_objective(objective) == "prefix"


def readout_positions(turn_end_positions: torch.Tensor, start_positions: torch.Tensor, objective: str
                      ) -> torch.Tensor:
    """(bs, P) long positions where the head is read: the turn ends (P = K; ``sum``, ``prefix_sum``) or the prompt's
    last token followed by the turn ends (P = K + 1; ``prefix``). -1 marks a padded slot; a row without turns
    reads nothing.

    Args:
        turn_end_positions: (bs, K) long, the last token of each turn, -1 where padded.
        start_positions: (bs,) long, the prompt's last token (the prefix before step 0) of each row.
        objective: one of :data:`PROGRESS_OBJECTIVES`.
    """
    if not reads_start(objective):
        return turn_end_positions
    has_turn = (turn_end_positions >= 0).any(dim=1)
    start = torch.where(has_turn, start_positions.to(turn_end_positions), torch.full_like(start_positions, -1)
                        .to(turn_end_positions))
    return torch.cat([start.unsqueeze(1), turn_end_positions], dim=1)


def contributions_from_readouts(readouts: torch.Tensor, turn_valid: torch.Tensor, objective: str) -> torch.Tensor:
    """(bs, K) ``c_t`` from the head's readouts, 0 on padded turns.

    ``sum``: ``c_t`` = readout t. ``prefix``: ``c_t = V_{t+1} - V_t`` with readouts ``V_0..V_K``. ``prefix_sum``:
    ``c_t = V_{t+1} - V_t`` with readouts ``V_1..V_K`` and ``V_0 = 0``.

    Args:
        readouts: (bs, P) from the positions of :func:`readout_positions` (P = K, or K + 1 for ``prefix``).
        turn_valid: (bs, K) bool, the row's real turns (a prefix of the slots).
        objective: one of :data:`PROGRESS_OBJECTIVES`.
    """
    check_progress_objective(objective)
    readouts = readouts.float()
    if objective == "sum":
        c = readouts
    elif objective == "prefix":
        c = readouts[:, 1:] - readouts[:, :-1]
    else:
        c = readouts - F.pad(readouts[:, :-1], (1, 0))
    return torch.where(turn_valid.to(c.device), c, torch.zeros_like(c))


def progress_episode_losses(readouts: torch.Tensor, turn_valid: torch.Tensor, rewards: torch.Tensor, objective: str,
                            episode_index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(E,) each episode's loss under ``objective`` (the batch loss is their mean).

    ``sum``: ``(sum_t c_t - R)^2``. ``prefix``: the mean over the episode's readouts ``V_j`` of ``(V_j - R)^2``.
    ``prefix_sum``: that mean plus ``(sum_t c_t - R)^2`` (= ``(V_T - R)^2``).

    Args:
        readouts: (rows, P) the head's readouts (:func:`readout_positions`).
        turn_valid: (rows, K) bool, the rows' real turns.
        rewards: (E,) episode rewards R; E = rows without ``episode_index``.
        objective: one of :data:`PROGRESS_OBJECTIVES`.
        episode_index: (rows,) long, the episode of each row (window layout, several rows per episode); the sums
            and means then run over all the episode's rows.
    """
    check_progress_objective(objective)
    rewards = rewards.float().to(readouts.device)
    turn_valid = turn_valid.to(readouts.device)
    rows = readouts.shape[0]
    index = torch.arange(rows, device=readouts.device) if episode_index is None else episode_index.to(readouts.device)
    zeros = torch.zeros(rewards.shape[0], dtype=torch.float32, device=readouts.device)
    c = contributions_from_readouts(readouts, turn_valid, objective)
    total = zeros.index_add(0, index, c.sum(dim=1))
    sum_term = (total - rewards) ** 2
    if objective == "sum":
        return sum_term
    # prefix readouts: the start slot counts when the row has a turn; the turn slots where the turns are
    valid = turn_valid if objective == "prefix_sum" else torch.cat([turn_valid.any(dim=1, keepdim=True), turn_valid], 1)
    sq = torch.where(valid, (readouts.float() - rewards[index].unsqueeze(1)) ** 2, torch.zeros_like(readouts.float()))
    count = zeros.index_add(0, index, valid.float().sum(dim=1))
    prefix_term = zeros.index_add(0, index, sq.sum(dim=1)) / count.clamp(min=1.0)
    return prefix_term + sum_term if objective == "prefix_sum" else prefix_term


def progress_loss(contributions: torch.Tensor, turn_valid: torch.Tensor, rewards: torch.Tensor,
                  episode_index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SPA's MSE: mean over episodes of ``(sum_t c_t - R)^2``.

    Args:
        contributions: (rows, K) c_t (padded turns are ignored through ``turn_valid``).
        turn_valid: (rows, K) bool.
        rewards: (E,) episode rewards R; E = rows without ``episode_index``.
        episode_index: (rows,) long, the episode of each row (window layout): an episode's ``sum_t c_t`` is the
            sum over its rows, added up with the offline trainer's ``episode_predictions`` (index_add).
    """
    if episode_index is None:
        total = (contributions.float() * turn_valid.float()).sum(-1)
    else:
        from spa_reward.progress.train import episode_predictions

        masked = contributions.float() * turn_valid.float()
        total = episode_predictions(masked, {"episode_index": episode_index.to(masked.device), "rewards": rewards})
    return ((total - rewards.float().to(total.device)) ** 2).mean()


__all__ = [
    "PROGRESS_OBJECTIVES",
    "check_progress_objective",
    "contributions_from_readouts",
    "discriminator_loss",
    "dpo_pairs",
    "episode_trajectory_scores",
    "irl_reward",
    "step_dpo_loss",
    "progress_episode_losses",
    "progress_loss",
    "readout_positions",
    "reads_start",
    "span_turn_index",
    "token_logprobs",
    "trajectory_dpo_loss",
    "trajectory_scores",
    "turn_log_ratio",
    "turn_sums",
]
