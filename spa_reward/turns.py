"""Turn bookkeeping on verl's multi-turn response tensors.

In a multi-turn rollout one response row holds every assistant turn and the observations between them;
``response_mask`` is 1 on assistant (policy) tokens and 0 on observation tokens, so each maximal run of 1s is one
assistant turn. A row cut at ``response_length`` may end in the middle of a turn: that partial run is still a turn.

Everything is vectorised over (batch, tokens). The hot path is a few passes over the (batch, tokens) tensor: the
turn index is computed once (``turn_index``) and can be handed to the other functions as ``idx``; token positions
outside any turn map to a throw-away slot 0, so no masking pass is needed.
"""

from __future__ import annotations

import torch


def turn_index(response_mask: torch.Tensor) -> torch.Tensor:
    """(bs, L) long: the 0-based turn each assistant token belongs to, -1 on observation/padding tokens."""
    mask = (response_mask != 0).to(torch.int32)
    starts = torch.diff(mask, dim=1, prepend=torch.zeros_like(mask[:, :1])) == 1
    idx = torch.cumsum(starts, dim=1, dtype=torch.int64)
    return idx * mask - 1


def num_turns(response_mask: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """(bs,) long: number of assistant turns per row."""
    idx = turn_index(response_mask) if idx is None else idx
    if idx.shape[1] == 0:
        return torch.zeros(idx.shape[0], dtype=torch.long, device=idx.device)
    return idx.max(dim=1).values + 1


def turn_valid(response_mask: torch.Tensor, max_turns: int | None = None, idx: torch.Tensor | None = None):
    """(bs, K) bool: which turn slots exist in each row (K = the largest turn count unless given)."""
    counts = num_turns(response_mask, idx)
    k = _slots(counts, max_turns)
    return torch.arange(k, device=response_mask.device).unsqueeze(0) < counts.unsqueeze(1)


def turn_sums(token_values: torch.Tensor, response_mask: torch.Tensor, max_turns: int | None = None,
              idx: torch.Tensor | None = None) -> torch.Tensor:
    """(bs, K): sum of ``token_values`` over each turn's assistant tokens (0 for missing turns).

    Values on observation tokens are ignored, so a reward misplaced on an observation token does not leak in.
    """
    idx = turn_index(response_mask) if idx is None else idx
    k = _slots(num_turns(response_mask, idx), max_turns)
    out = torch.zeros(token_values.shape[0], k + 1, dtype=token_values.dtype, device=token_values.device)
    out.scatter_add_(1, (idx + 1).clamp(max=k), token_values)  # slot 0 collects non-turn tokens
    return out[:, 1:]


def turn_positions(response_mask: torch.Tensor, which: str = "last", max_turns: int | None = None,
                   idx: torch.Tensor | None = None) -> torch.Tensor:
    """(bs, K) long: position of the first or last token of each turn, -1 for missing turns."""
    if which not in ("first", "last"):
        raise ValueError(f"which must be 'first' or 'last', got {which!r}")
    idx = turn_index(response_mask) if idx is None else idx
    bs, length = idx.shape
    k = _slots(num_turns(response_mask, idx), max_turns)
    pos = torch.arange(length, device=idx.device).expand(bs, length)
    slot = (idx + 1).clamp(max=k)
    if which == "last":
        out = torch.full((bs, k + 1), -1, dtype=torch.long, device=idx.device)
        out.scatter_reduce_(1, slot, pos, reduce="amax")
        return out[:, 1:]
    out = torch.full((bs, k + 1), length, dtype=torch.long, device=idx.device)
    out.scatter_reduce_(1, slot, pos, reduce="amin")
    out = out[:, 1:]
    return torch.where(out == length, torch.full_like(out, -1), out)


def gather_turn_values(token_values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(bs, K): ``token_values`` read at per-turn positions (e.g. from ``turn_positions``); 0 where position is -1."""
    got = torch.gather(token_values, 1, positions.clamp(min=0))
    return torch.where(positions >= 0, got, torch.zeros_like(got))


def broadcast_turns(turn_values: torch.Tensor, response_mask: torch.Tensor,
                    idx: torch.Tensor | None = None) -> torch.Tensor:
    """(bs, L): each assistant token gets its turn's value; observation/padding tokens get 0."""
    idx = turn_index(response_mask) if idx is None else idx
    sink = torch.zeros(turn_values.shape[0], 1, dtype=turn_values.dtype, device=turn_values.device)
    padded = torch.cat([sink, turn_values], dim=1)  # slot 0 = 0 for non-turn tokens
    return torch.gather(padded, 1, (idx + 1).clamp(max=turn_values.shape[1]))


def place_at_turn_ends(turn_values: torch.Tensor, response_mask: torch.Tensor,
                       idx: torch.Tensor | None = None) -> torch.Tensor:
    """(bs, L): each turn's value on that turn's last token, 0 elsewhere (dense per-turn token rewards)."""
    ends = turn_positions(response_mask, "last", max_turns=turn_values.shape[1], idx=idx)
    out = torch.zeros(response_mask.shape, dtype=turn_values.dtype, device=turn_values.device)
    valid = ends >= 0
    out.scatter_add_(1, ends.clamp(min=0), torch.where(valid, turn_values, torch.zeros_like(turn_values)))
    return out


def _slots(counts: torch.Tensor, max_turns: int | None) -> int:
    if max_turns is not None:
        return int(max_turns)
    return int(counts.max().item()) if counts.numel() else 0
