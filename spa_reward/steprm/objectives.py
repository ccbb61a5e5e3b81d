"""Objectives of the step-reward model, as plain tensor functions (shape docstrings, no model or service state).

Two objectives share one service (:mod:`spa_reward.steprm.service`):

* ``progress`` (SPA-RL): per-turn contributions ``c_t`` from a scalar head read at chosen tokens of the sequence (its
  *readouts*), with one of :data:`PROGRESS_OBJECTIVES` (the offline trainer ``spa_reward.progress.train`` and the
  scorer ``spa_reward.progress.serve`` use the same functions):

  - ``sum`` (the paper): one readout per turn, at the turn's last token, ``c_t`` = that readout;
    :func:`progress_loss` = mean over episodes of ``(sum_t c_t - R)^2``.
  - ``prefix`` (ours): one readout per turn at the last token *before* the turn (the prompt's last token for turn
    0, else the end of the observation the turn answers): ``V_t``, the value of the prefix before step t. Every
    ``V_t`` is regressed on R (per episode the mean of ``(V_t - R)^2``, then the mean over episodes); the prefix
    after the last step is the whole episode, whose value is its outcome: ``V_T = R``. ``c_t = V_{t+1} - V_t``, so
    ``sum_t c_t = R - V_0`` (telescoping) and c_t is the TD error of the estimator's value (potential-based
    shaping of R).

  :func:`readout_positions` places the readouts, :func:`contributions_from_readouts` turns them into ``c_t`` (across
  the rows of a window-layout episode too) and :func:`progress_episode_losses` gives each episode's loss.
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
``Q = mean over ALL the episode's turns`` and :func:`progress_episode_losses` with ``episode_index`` pools the
episode's rows (``sum``: the sum of their ``c_t``; ``prefix``: the mean over their readouts; the offline trainer
uses the same function). With one row per episode both give exactly the packed numbers.

Turns are given by a per-token turn index (bs, L) long: the 0-based turn a token belongs to, -1 for tokens outside
every assistant turn (prompt, observations, padding); :func:`span_turn_index` builds it from turn spans and
``spa_reward.turns.turn_index`` from a response mask.

Memory at real lengths (a 50-step episode is ~10k tokens, Qwen's vocabulary 151,936 entries): the full logits of
one such sequence are 1.5e9 numbers. :func:`taken_token_logprobs` computes the log-probs of the taken tokens from
the last hidden states, only at the positions asked for (the assistant turns), a chunk of at most
``LOGIT_CHUNK_ELEMENTS`` logits at a time in fp32, and recomputes each chunk in the backward pass instead of keeping
it; :func:`token_budget_batches` packs sequences into micro-batches by a padded-token budget (verl's
``ppo_max_token_len_per_gpu``). Both are plain functions so a sharded wrapper can reuse them.
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
    """(bs, L) float32: ``log p(x_i | x_<i)`` for every position i >= 1; position 0 (no prefix) gets 0. Needs the
    full logits (bs, L, V): the reference for short inputs; the service uses :func:`taken_token_logprobs`.

    Args:
        logits: (bs, L, V) next-token logits of a causal LM (row i predicts token i + 1).
        input_ids: (bs, L) long.
    """
    logits = logits[:, :-1].float()
    picked = logits.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    lp = picked - torch.logsumexp(logits, dim=-1)
    return F.pad(lp, (1, 0), value=0.0)


LOGIT_CHUNK_ELEMENTS = 1 << 26  # fp32 logits per chunk of taken_token_logprobs: 256 MB (441 tokens at vocab 151,936)


def _chunk_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, softcap: Optional[float]) -> torch.Tensor:
    logits = head(hidden).float()  # (c, V): one chunk, in fp32 for the log-sum-exp
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def taken_token_logprobs(hidden: torch.Tensor, head, targets: torch.Tensor, vocab_size: int,
                         chunk_elements: Optional[int] = None, softcap: Optional[float] = None) -> torch.Tensor:
    """(M,) float32 ``log softmax(head(hidden))[target]`` for M selected positions, without the full logits.

    The positions are processed ``max(1, chunk_elements // vocab_size)`` at a time; with gradients on, each chunk
    runs under activation checkpointing, so the backward pass keeps only ``hidden`` and recomputes one chunk's
    logits at a time. Peak extra memory: a few fp32 (chunk, V) tensors instead of (bs, L, V).

    Args:
        hidden: (M, H) the last hidden state (after the final norm) at the position *before* each target token.
        head: the output layer (``model.get_output_embeddings()``), (.., H) -> (.., V).
        targets: (M,) long, the taken tokens.
        vocab_size: V (sets the chunk length).
        chunk_elements: logits per chunk (default ``LOGIT_CHUNK_ELEMENTS``).
        softcap: optional final-logit soft-capping (``tanh(l / c) * c``) of models that use it.
    """
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree on M")
    budget = LOGIT_CHUNK_ELEMENTS if chunk_elements is None else int(chunk_elements)
    step = max(1, budget // max(1, int(vocab_size)))
    grad = torch.is_grad_enabled() and hidden.requires_grad
    out = []
    for start in range(0, hidden.shape[0], step):
        h, t = hidden[start : start + step], targets[start : start + step]
        if grad:
            from torch.utils.checkpoint import checkpoint

            out.append(checkpoint(_chunk_logprobs, head, h, t, softcap, use_reentrant=False))
        else:
            out.append(_chunk_logprobs(head, h, t, softcap))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def token_budget_batches(lengths: Sequence[int], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Micro-batches of sequence indices, longest first: each holds at most ``max_rows`` sequences and at most
    ``max_tokens`` padded tokens (rows x its longest sequence); a sequence longer than ``max_tokens`` is a
    micro-batch of its own. The same budget as verl's ``ppo_max_token_len_per_gpu`` (counted padded, as the
    sequences are padded to the longest of their micro-batch)."""
    if max_tokens < 1 or max_rows < 1:
        raise ValueError(f"max_tokens={max_tokens} and max_rows={max_rows} must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: -int(lengths[i]))
    batches: list[list[int]] = []
    for i in order:
        cur = batches[-1] if batches else None
        if cur is not None and len(cur) < max_rows and (len(cur) + 1) * max(1, int(lengths[cur[0]])) <= max_tokens:
            cur.append(i)
        else:
            batches.append([i])
    return batches


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


PROGRESS_OBJECTIVES = ("sum", "prefix")


def check_progress_objective(objective: str) -> str:
    """``objective`` if it is one of :data:`PROGRESS_OBJECTIVES`, else ``ValueError`` naming the valid ones."""
    if objective not in PROGRESS_OBJECTIVES:
        raise ValueError(f"progress objective {objective!r} is not one of {PROGRESS_OBJECTIVES} (sum: the paper's "
                         "MSE(sum_t c_t, R); prefix: the value of the prefix before every step regressed on R)")
    return objective


def reads_before(objective: str) -> bool:
    """Whether ``objective`` reads the head before each turn (``prefix``) rather than at each turn's end (``sum``);
    the prefix objective also needs each episode's R to score (``V_T = R``)."""
    return check_progress_objective(objective) == "prefix"


def readout_positions(turn_end_positions: torch.Tensor, before_positions: torch.Tensor, objective: str) -> torch.Tensor:
    """(bs, K) long positions where the head is read: each turn's last token (``sum``) or the last token before
    each turn (``prefix``); -1 where padded.

    Args:
        turn_end_positions: (bs, K) long, the last token of each turn, -1 where padded.
        before_positions: (bs, K) long, the last token before each turn's first token, -1 where padded.
        objective: one of :data:`PROGRESS_OBJECTIVES`.
    """
    return before_positions if reads_before(objective) else turn_end_positions


def _next_in_episode(values: torch.Tensor, valid: torch.Tensor, rewards: torch.Tensor,
                     episode_index: Optional[torch.Tensor]) -> torch.Tensor:
    """(rows, K) the value after each readout's step: the next readout of the same episode (row-major: the next
    turn of the row, else the first turn of the episode's next row), R for the episode's last one."""
    rows, k = values.shape
    index = torch.arange(rows, device=values.device) if episode_index is None else episode_index.to(values.device)
    flat_v = values.reshape(-1)
    flat_e = index.unsqueeze(1).expand(rows, k).reshape(-1)
    order = valid.reshape(-1).nonzero(as_tuple=True)[0]  # the readouts, row-major (an episode's rows in step order)
    v, e = flat_v[order], flat_e[order]
    last = torch.ones_like(e, dtype=torch.bool)
    last[:-1] = e[1:] != e[:-1]
    nxt = torch.where(last, rewards.to(v)[e], torch.cat([v[1:], v[-1:]]) if v.numel() else v)
    out = torch.zeros(rows * k, dtype=values.dtype, device=values.device)
    out[order] = nxt
    return out.reshape(rows, k)


def contributions_from_readouts(readouts: torch.Tensor, turn_valid: torch.Tensor, objective: str,
                                rewards: Optional[torch.Tensor] = None,
                                episode_index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(rows, K) ``c_t`` from the head's readouts, 0 on padded turns.

    ``sum``: ``c_t`` = readout t. ``prefix``: ``c_t = V_{t+1} - V_t`` along the episode's turns, with
    ``V_T = R``.

    Args:
        readouts: (rows, K) from the positions of :func:`readout_positions`.
        turn_valid: (rows, K) bool, each row's real turns (a prefix of its slots).
        objective: one of :data:`PROGRESS_OBJECTIVES`.
        rewards: (E,) the episodes' R (``prefix`` only).
        episode_index: (rows,) long, the episode of each row when an episode spans several consecutive rows in step
            order (window layout); None = one row per episode.
    """
    check_progress_objective(objective)
    readouts = readouts.float()
    valid = turn_valid.to(readouts.device)
    if objective == "sum":
        c = readouts
    else:
        if rewards is None:
            raise ValueError("the prefix objective needs each episode's R to score its last step (V_T = R)")
        c = _next_in_episode(readouts, valid, rewards.float(), episode_index) - readouts
    return torch.where(valid, c, torch.zeros_like(c))


def progress_episode_losses(readouts: torch.Tensor, turn_valid: torch.Tensor, rewards: torch.Tensor, objective: str,
                            episode_index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(E,) each episode's loss under ``objective`` (the batch loss is their mean).

    ``sum``: ``(sum_t c_t - R)^2``. ``prefix``: the mean over the episode's readouts ``V_t`` of ``(V_t - R)^2``.

    Args:
        readouts: (rows, K) the head's readouts (:func:`readout_positions`).
        turn_valid: (rows, K) bool, the rows' real turns.
        rewards: (E,) episode rewards R; E = rows without ``episode_index``.
        objective: one of :data:`PROGRESS_OBJECTIVES`.
        episode_index: (rows,) long, the episode of each row (window layout, several rows per episode); the sums
            and means then run over all the episode's rows.
    """
    check_progress_objective(objective)
    rewards = rewards.float().to(readouts.device)
    valid = turn_valid.to(readouts.device)
    index = (torch.arange(readouts.shape[0], device=readouts.device) if episode_index is None
             else episode_index.to(readouts.device))
    zeros = torch.zeros(rewards.shape[0], dtype=torch.float32, device=readouts.device)
    v = torch.where(valid, readouts.float(), torch.zeros_like(readouts.float()))
    if objective == "sum":
        return (zeros.index_add(0, index, v.sum(dim=1)) - rewards) ** 2
    sq = torch.where(valid, (readouts.float() - rewards[index].unsqueeze(1)) ** 2, torch.zeros_like(v))
    count = zeros.index_add(0, index, valid.float().sum(dim=1))
    return zeros.index_add(0, index, sq.sum(dim=1)) / count.clamp(min=1.0)


def progress_loss(contributions: torch.Tensor, turn_valid: torch.Tensor, rewards: torch.Tensor,
                  episode_index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SPA's MSE: mean over episodes of ``(sum_t c_t - R)^2`` (:func:`progress_episode_losses` with ``sum``).

    Args:
        contributions: (rows, K) c_t (padded turns are ignored through ``turn_valid``).
        turn_valid: (rows, K) bool.
        rewards: (E,) episode rewards R; E = rows without ``episode_index``.
        episode_index: (rows,) long, the episode of each row (window layout): an episode's ``sum_t c_t`` is the
            sum over its rows.
    """
    return progress_episode_losses(contributions, turn_valid, rewards, "sum", episode_index).mean()


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
    "reads_before",
    "span_turn_index",
    "taken_token_logprobs",
    "token_budget_batches",
    "token_logprobs",
    "trajectory_dpo_loss",
    "trajectory_scores",
    "turn_log_ratio",
    "turn_sums",
]
