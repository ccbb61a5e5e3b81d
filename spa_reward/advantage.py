"""Turn-level advantage estimators registered in verl's ``core_algos`` registry: ``spa`` and ``gigpo``.

Both read per-turn rewards r_k = sum of the token rewards inside assistant turn k (the agent loop places each
turn's reward on its last token) and write one advantage per turn, broadcast over that turn's tokens.

Extra inputs (``values``, ``turn_anchors``, ``episode_rewards``, ``row_mask``, ``sessions``, ``step_index``) are
keyword arguments. verl's stock
``compute_advantage`` passes none of them; the ``spa`` trainer mode (``spa_reward.trainer``) fetches them from the
rollout and supplies them through :func:`estimator_inputs` for the duration of one advantage computation.

``row_mask`` (bs,) bool marks the rows that are data: False for an episode that ended by env failure and for verl's
padding rows. Masked rows take no part in any group statistic (episode or step level, nor the whitening of the
critic variant) and get advantage 0.

``sessions`` (bs,) and ``step_index`` (bs,) say which rows form one trajectory and in which order (an episode split
into per-step rows, TransferQueue keys ``{uid}_{session_id}_{index}``): the estimators then see the episode's turns
in one sequence, exactly as if it were one packed row (see ``_Layout``). Absent: every row is one trajectory.

Normalisation modes (``algorithm.<spa|gigpo>.mode``), per group of values x_1..x_n:

* ``mean_norm``:      x_i - mean(x)                        (a group of one: x_i, verl's GRPO convention)
* ``mean_std_norm``:  (x_i - mean(x)) / (std(x) + eps)     (unbiased std; a group of one: x_i / (1 + eps))
* ``rloo``:           x_i - mean_{j != i} x_j = n/(n-1) (x_i - mean(x))   (leave-one-out; a group of one: 0)

GiGPO's step groups of one always get 0 (no other visit of that state to compare with).

Precision: advantages and returns are computed in float64 and returned in float32 (or the rewards' dtype when
wider), whatever the dtype of the critic's ``values``: under mixed precision they are bf16, and whitening or value
targets near 8-10 in bf16 would be rounded to multiples of 0.0625 (verl's own ``gae`` promotes to fp32 likewise).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from spa_reward import turns
from spa_reward.threads import thread_policy

EPS = 1e-6
NORM_MODES = ("mean_norm", "mean_std_norm", "rloo")

_EXTRA_INPUTS: contextvars.ContextVar[dict] = contextvars.ContextVar("spa_estimator_inputs", default={})


@contextlib.contextmanager
def estimator_inputs(**inputs: Any) -> Iterator[None]:
    """Make per-batch extra inputs (values, turn_anchors, episode_rewards) visible to the estimators."""
    token = _EXTRA_INPUTS.set({k: v for k, v in inputs.items() if v is not None})
    try:
        yield
    finally:
        _EXTRA_INPUTS.reset(token)


def _input(kwargs: dict, name: str) -> Any:
    value = kwargs.get(name)
    return _EXTRA_INPUTS.get().get(name) if value is None else value


def _cfg(config: Any, path: str, default: Any) -> Any:
    """Read ``a.b`` from a DictConfig / verl dataclass config / dict / None."""
    node = config
    for key in path.split("."):
        if node is None:
            return default
        node = node.get(key, None) if hasattr(node, "get") else getattr(node, key, None)
    return default if node is None else node


def _norm_mode(config: Any, section: str) -> str:
    """``algorithm.<section>.mode``, checked against :data:`NORM_MODES`."""
    mode = _cfg(config, f"{section}.mode", "mean_norm")
    if mode not in NORM_MODES:
        raise ValueError(f"algorithm.{section}.mode={mode!r} is not one of {NORM_MODES}")
    return str(mode)


def _row_mask(kwargs: dict, bs: int) -> torch.Tensor:
    """(bs,) bool rows that are data (see the module docstring); all True when not given."""
    mask = _input(kwargs, "row_mask")
    if mask is None:
        return torch.ones(bs, dtype=torch.bool)
    mask = torch.as_tensor(np.asarray(mask, dtype=bool))
    if mask.shape != (bs,):
        raise ValueError(f"row_mask has shape {tuple(mask.shape)}, expected ({bs},)")
    return mask


def _require_index(index: Any, name: str) -> np.ndarray:
    if index is None:
        raise ValueError(f"advantage estimator {name!r} needs the uid index (group id per row); got index=None")
    return np.asarray(index, dtype=object)


def _group_ids(keys) -> tuple[torch.Tensor, int]:
    """Dense 0..G-1 ids for a sequence of hashable keys (first-seen order), hashed by pandas, not a Python loop."""
    codes, uniques = pd.factorize(pd.Series(list(keys), dtype=object))
    return torch.from_numpy(codes.astype(np.int64)), len(uniques)


def group_normalize(
    values: torch.Tensor,
    group: torch.Tensor,
    num_groups: int,
    mode: str,
    singleton_zero: bool,
    include: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N,) float64: each value normalised within its group by ``mode`` (module docstring); unbiased std.

    values (N,), group (N,) long ids in [0, num_groups). ``include`` (N,) bool: items that count; the others take
    no part in the statistics and get 0. A group of one gets mean 0 and std 1 (verl's GRPO convention) in the
    mean modes, 0 under ``rloo``, and 0 in every mode when ``singleton_zero``.
    """
    if mode not in NORM_MODES:
        raise ValueError(f"normalisation mode {mode!r} is not one of {NORM_MODES}")
    values = values.double()
    weight = torch.ones_like(values) if include is None else include.to(torch.double)
    if include is not None:  # excluded items may hold anything (even NaN); they add nothing below
        values = torch.where(include, values, torch.zeros_like(values))
    count = torch.zeros(num_groups, dtype=torch.double).scatter_add_(0, group, weight)
    total = torch.zeros(num_groups, dtype=torch.double).scatter_add_(0, group, values)
    mean = total / count.clamp(min=1)
    sq = torch.zeros(num_groups, dtype=torch.double).scatter_add_(0, group, weight * (values - mean[group]) ** 2)
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    n = count[group]
    single = n <= 1
    if mode == "rloo":
        out = (values - mean[group]) * n / (n - 1).clamp(min=1)
        single_value = torch.zeros_like(values)
    else:
        out = values - mean[group]
        single_value = values.clone()
        if mode == "mean_std_norm":
            out = out / (std[group] + EPS)
            single_value = single_value / (1.0 + EPS)
    out = torch.where(single, torch.zeros_like(out) if singleton_zero else single_value, out)
    return out * weight


def episode_advantage(scores: torch.Tensor, index: np.ndarray, mode: str,
                      include: torch.Tensor | None = None) -> torch.Tensor:
    """(bs,) A_E: each trajectory's score normalised within its uid group, each trajectory counted once.

    include (bs,) bool: rows that count (None: all); the others get 0 and are left out of the group statistics.
    """
    group, n = _group_ids(index)
    return group_normalize(scores, group, n, mode, singleton_zero=False, include=include)


def discounted_turn_returns(turn_rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """(bs, K) G_k = r_k + gamma * G_{k+1}; missing turns must carry r = 0."""
    k = turn_rewards.shape[1]
    pos = torch.arange(k, dtype=turn_rewards.dtype)
    expo = pos.unsqueeze(0) - pos.unsqueeze(1)  # [k, j] = j - k
    disc = torch.where(expo >= 0, gamma ** expo.clamp(min=0), torch.zeros_like(expo))
    return turn_rewards @ disc.T


def _episode_scores(token_level_rewards: torch.Tensor, kwargs: dict) -> torch.Tensor:
    episode_rewards = _input(kwargs, "episode_rewards")
    if episode_rewards is None:
        return token_level_rewards.sum(dim=-1)
    scores = torch.as_tensor(np.asarray(episode_rewards, dtype=np.float64))
    if scores.shape != (token_level_rewards.shape[0],):
        raise ValueError(f"episode_rewards has shape {tuple(scores.shape)}, expected ({token_level_rewards.shape[0]},)")
    return scores


def _out_dtype(token_level_rewards: torch.Tensor) -> torch.dtype:
    """float32, or the rewards' dtype when it is wider: never the bf16 of a mixed-precision critic."""
    return torch.promote_types(token_level_rewards.dtype, torch.float32)


def _check_finite(name: str, tensor: torch.Tensor) -> None:
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name} has {bad} non-finite values (NaN/inf); fix the reward before the advantage step")


def _turn_rewards(token_level_rewards: torch.Tensor, response_mask: torch.Tensor):
    """Turn index (bs, L), turn counts (bs,), valid turn slots (bs, K) and turn rewards r (bs, K, float64)."""
    idx = turns.turn_index(response_mask)
    counts = turns.num_turns(response_mask, idx)
    k = int(counts.max()) if counts.numel() else 0
    valid = torch.arange(k).unsqueeze(0) < counts.unsqueeze(1)
    r = turns.turn_sums(token_level_rewards, response_mask, max_turns=k, idx=idx).double()
    _check_finite("token_level_rewards", r)
    return idx, counts, valid, r


class _Layout:
    """The turns of a batch regrouped into trajectories.

    A trajectory is one session: the rows sharing a ``sessions`` entry (TransferQueue ``{uid}_{session_id}``),
    ordered by ``step_index`` (the ``_{index}`` of the key); without ``sessions`` every row is its own trajectory
    (one packed row per episode). Either way an episode's turns get the same positions 0..T-1, so the estimators
    give the same per-turn advantages for an episode packed in one row or split into per-step rows.

    Per turn (N = all turns of the batch, row-major over (row, row turn)): ``rows``, ``cols`` (its row and slot in
    that row), ``traj`` and ``pos`` (its trajectory and position there). Per trajectory: ``last_row`` (the row of
    its final step, whose episode fields speak for it), ``keep`` (every row of it is data).
    """

    def __init__(self, token_level_rewards: torch.Tensor, response_mask: torch.Tensor, kwargs: dict):
        bs = token_level_rewards.shape[0]
        self.idx, self.counts, valid, self.r = _turn_rewards(token_level_rewards, response_mask)
        self.row_k = valid.shape[1]
        sessions, steps = _input(kwargs, "sessions"), _input(kwargs, "step_index")
        if sessions is None:
            row_traj, n_traj = torch.arange(bs), bs
            step = torch.zeros(bs, dtype=torch.long)
        else:
            if len(sessions) != bs or steps is None or len(steps) != bs:
                raise ValueError(f"sessions/step_index need one entry per row ({bs}); got "
                                 f"{len(sessions)} sessions and {None if steps is None else len(steps)} step indices")
            row_traj, n_traj = _group_ids(sessions)
            step = torch.as_tensor(np.asarray(steps, dtype=np.int64))
        order = torch.from_numpy(np.lexsort((step.numpy(), row_traj.numpy())))  # by trajectory, then step
        sorted_traj = row_traj[order]
        before = torch.cumsum(self.counts[order], 0) - self.counts[order]  # turns before each sorted row, overall
        start = torch.full((n_traj,), before.numel() and int(before.max()) + 1, dtype=torch.long)
        start = start.scatter_reduce(0, sorted_traj, before, reduce="amin") if bs else start
        offset = torch.empty(bs, dtype=torch.long)
        offset[order] = before - start[sorted_traj]  # turns of the same trajectory in earlier steps
        is_last = torch.ones(bs, dtype=torch.bool)
        if bs > 1:
            is_last[:-1] = sorted_traj[1:] != sorted_traj[:-1]
        self.last_row = torch.empty(n_traj, dtype=torch.long)
        self.last_row[sorted_traj[is_last]] = order[is_last]
        self.rows, self.cols = valid.nonzero(as_tuple=True)
        self.traj, self.pos = row_traj[self.rows], offset[self.rows] + self.cols
        self.row_traj, self.n_traj = row_traj, n_traj
        per_traj = torch.zeros(n_traj, dtype=torch.long).scatter_add_(0, row_traj, self.counts)
        self.k = int(per_traj.max()) if n_traj else 0
        self.valid = torch.arange(self.k).unsqueeze(0) < per_traj.unsqueeze(1)  # (n_traj, k)
        keep_row = _row_mask(kwargs, bs)
        self.keep = torch.ones(n_traj, dtype=torch.bool).scatter_reduce(0, row_traj, keep_row, reduce="amin")
        self.keep_row = self.keep[row_traj]

    def to_traj(self, row_turn_values: torch.Tensor) -> torch.Tensor:
        """(bs, K_row) per-row turn values -> (n_traj, k) per-trajectory turn values (0 in empty slots)."""
        out = torch.zeros(self.n_traj, self.k, dtype=row_turn_values.dtype)
        out[self.traj, self.pos] = row_turn_values[self.rows, self.cols]
        return out

    def to_rows(self, traj_turn_values: torch.Tensor) -> torch.Tensor:
        """(n_traj, k) -> (bs, K_row): every row's turns read back from their trajectory."""
        out = torch.zeros(self.row_traj.shape[0], self.row_k, dtype=traj_turn_values.dtype)
        out[self.rows, self.cols] = traj_turn_values[self.traj, self.pos]
        return out

    def episode_scores(self, token_level_rewards: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """(n_traj,) R of each trajectory: ``episode_rewards`` of its final row, else the sum of its rewards."""
        episode_rewards = _input(kwargs, "episode_rewards")
        if episode_rewards is None:
            row_sum = token_level_rewards.sum(dim=-1).double()
            return torch.zeros(self.n_traj, dtype=torch.double).scatter_add_(0, self.row_traj, row_sum)
        return _episode_scores(token_level_rewards, kwargs).double()[self.last_row]

    def broadcast(self, traj_turn_values: torch.Tensor, response_mask: torch.Tensor, dtype) -> torch.Tensor:
        """(n_traj, k) per-turn values -> (bs, L) token values (0 off the assistant tokens)."""
        return turns.broadcast_turns(self.to_rows(traj_turn_values).to(dtype), response_mask, idx=self.idx)


@thread_policy  # threads the free cores allow (spa_reward.threads): never collapses under load
def compute_gigpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GiGPO (arXiv 2505.10978): A = A_E + w * A_S.

    A_E normalises each trajectory's total reward within its uid group. A_S normalises the discounted turn return
    G_k within the step group = turns of the same uid whose anchor (state) key is equal; a step group of one gets 0.
    A trajectory is one packed row or the per-step rows of one session (``sessions``/``step_index``, see
    :class:`_Layout`).
    """
    index = _require_index(index, "gigpo")
    anchors = _input(kwargs, "turn_anchors")
    if anchors is None:
        raise ValueError(
            "advantage estimator 'gigpo' needs turn_anchors (one state key per assistant turn). They come from the "
            "env_agent agent loop and reach the estimator through trainer.v1.trainer_mode=spa."
        )
    mode = _norm_mode(config, "gigpo")
    weight = float(_cfg(config, "gigpo.step_advantage_w", 1.0))
    gamma = float(_cfg(config, "gamma", 1.0))
    lay = _Layout(token_level_rewards, response_mask, kwargs)

    returns = discounted_turn_returns(lay.to_traj(lay.r), gamma)  # (n_traj, k), across the rows of a session
    step_adv = torch.zeros_like(returns)
    if lay.rows.numel():  # turns in (row, row turn) order, which is how the anchors are flattened
        group, n = _step_groups(index, anchors, lay.counts.tolist())
        step_adv[lay.traj, lay.pos] = group_normalize(returns[lay.traj, lay.pos], group, n, mode,
                                                      singleton_zero=True, include=lay.keep[lay.traj])

    ep_adv = episode_advantage(lay.episode_scores(token_level_rewards, kwargs), index[lay.last_row.numpy()], mode,
                               include=lay.keep)
    per_turn = ep_adv.unsqueeze(1) + weight * step_adv
    adv = lay.broadcast(per_turn, response_mask, _out_dtype(token_level_rewards))
    return adv, adv


def _step_groups(index: np.ndarray, anchors, counts: list[int]) -> tuple[torch.Tensor, int]:
    """Group id of every (row, turn), row-major: turns of the same uid with an equal anchor share a group."""
    flat_uid, flat_anchor = [], []
    for row, (uid, n) in enumerate(zip(index, counts)):
        row_anchors = anchors[row]
        have = 0 if row_anchors is None else len(row_anchors)
        if have < n:
            raise ValueError(
                f"turn_anchors[{row}] has {have} entries but the row has {n} assistant turns; "
                "the agent loop must record one anchor per turn"
            )
        flat_uid.extend([uid] * n)
        flat_anchor.extend(row_anchors[:n])
    uid_codes, _ = _group_ids(flat_uid)
    anchor_codes, n_anchors = _group_ids(flat_anchor)
    return _group_ids((uid_codes * max(n_anchors, 1) + anchor_codes).tolist())


def _spa_critic_free(token_level_rewards, response_mask, index, config, kwargs):
    index = _require_index(index, "spa")
    mode = _norm_mode(config, "spa")
    weight = float(_cfg(config, "spa.step_advantage_w", 1.0))
    lay = _Layout(token_level_rewards, response_mask, kwargs)
    step_adv = torch.zeros(lay.n_traj, lay.k, dtype=torch.double)
    if lay.rows.numel():
        uid_codes, n_uids = _group_ids(index)
        step_adv[lay.traj, lay.pos] = group_normalize(lay.r[lay.rows, lay.cols], uid_codes[lay.rows], n_uids, mode,
                                                      singleton_zero=False, include=lay.keep[lay.traj])
    ep_adv = episode_advantage(lay.episode_scores(token_level_rewards, kwargs), index[lay.last_row.numpy()], mode,
                               include=lay.keep)
    per_turn = ep_adv.unsqueeze(1) + weight * step_adv
    adv = lay.broadcast(per_turn, response_mask, _out_dtype(token_level_rewards))
    return adv, adv


def _spa_turn_gae(token_level_rewards, response_mask, values, config, kwargs):
    if values.shape != token_level_rewards.shape:
        raise ValueError(f"values shape {tuple(values.shape)} != rewards shape {tuple(token_level_rewards.shape)}")
    gamma = float(_cfg(config, "gamma", 1.0))
    lam = float(_cfg(config, "lam", 1.0))
    lay = _Layout(token_level_rewards, response_mask, kwargs)
    first = turns.turn_positions(response_mask, "first", max_turns=lay.row_k, idx=lay.idx)
    v_rows = turns.gather_turn_values(values, first).double()
    _check_finite("values", v_rows)
    r, v, valid = lay.to_traj(lay.r), lay.to_traj(v_rows), lay.valid  # (n_traj, k), across a session's rows
    v_next = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1)  # 0 after the last turn
    delta = torch.where(valid, r + gamma * v_next - v, torch.zeros_like(r))
    adv_turn = discounted_turn_returns(delta, gamma * lam)
    dtype = _out_dtype(token_level_rewards)  # fp32 even when the critic's values are bf16
    ret = lay.broadcast(adv_turn + v, response_mask, dtype)
    adv = lay.broadcast(adv_turn, response_mask, dtype)
    mask = response_mask.to(dtype) * lay.keep_row.unsqueeze(1).to(dtype)  # masked: out of the whitening, adv 0
    if int(mask.bool().sum()) > 1:
        from verl.utils.torch_functional import masked_whiten

        adv = masked_whiten(adv, mask)
    adv = adv * mask
    ret = ret * mask
    return adv, ret


@thread_policy  # threads the free cores allow (spa_reward.threads): never collapses under load
def compute_spa_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SPA's turn-level advantage over dense per-turn rewards r_k (progress + grounding).

    With critic ``values`` (the paper's PPO setting): GAE over turns, V_k = value at the first token of turn k,
    delta_k = r_k + gamma V_{k+1} - V_k, A_k = sum_j (gamma lam)^j delta_{k+j}; advantages whitened like verl's gae.
    Without values (critic-free, GRPO's cost): A = A_E + w * A_S with A_S = r_k normalised over all turns of the
    uid group (``algorithm.spa.mode``: mean_norm, mean_std_norm or rloo, where rloo's baseline for a turn is the
    mean of the group's other turns); the learned step rewards stand in for GiGPO's exact state matches.
    ``row_mask`` rows (env failures, padding) are left out of every statistic and get 0.
    """
    values = _input(kwargs, "values")
    if values is not None:
        return _spa_turn_gae(token_level_rewards, response_mask, values, config, kwargs)
    return _spa_critic_free(token_level_rewards, response_mask, index, config, kwargs)


def register_estimators() -> None:
    from verl.trainer.ppo.core_algos import register_adv_est

    register_adv_est("spa")(compute_spa_advantage)
    register_adv_est("gigpo")(compute_gigpo_advantage)
