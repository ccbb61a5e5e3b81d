"""Turning trajectory records into estimator inputs: truncation, examples, padding.

Truncation rule (shared by training and serving, so c_t means the same thing in both):

1. Tokens after the last turn's last token are dropped (the model is causal, they cannot change any c_t).
2. If the sequence still exceeds ``max_length``, whole leading turns are dropped. A turn is dropped together
   with everything before it back to the previous turn's end (the observation that prompted it), so every kept
   turn keeps the observation it answered. When ``keep_prefix > 0`` (the prompt length, with the default
   ``keep_prompt_on_truncation=True``) the first ``keep_prefix`` tokens (system prompt + task) are kept in front
   of the surviving turns. As few turns as possible are dropped.
3. If even the last turn alone does not fit after the prompt, the prompt is dropped as well; if the last turn
   alone (with its preceding observation) is longer than ``max_length``, the last ``max_length`` tokens are
   kept and only the last turn is scored (on a partial context).

Dropped turns get no c_t: in training they are simply absent from ``sum_t c_t`` (the estimator learns that the
kept turns carry R); in serving :class:`~spa_reward.progress.serve.ProgressScorer` returns 0.0 for them.

The ``prefix`` objective (``spa_reward.steprm.objectives``) reads the value of the prefix before every turn at the
last token before the turn's first token: :func:`before_positions` maps those through the truncation (the last
kept token before the turn, 0 when none is kept); a truncated sequence's first kept turn is then valued on what
was kept of its past.

Window layout (``--layout window``): an episode is T one-turn sequences (its window rows, see
:mod:`spa_reward.progress.layouts`), each truncated by the same rule (one turn: an over-long row keeps its last
``max_length`` tokens, as the scorer does for a served window row). :meth:`ExampleSet.append_rows` stores them as
one example whose ``row_starts`` mark where each row begins in the concatenated ``input_ids``;
:func:`collate_window_examples` flattens a batch of such episodes into rows plus ``episode_index`` (row -> episode),
so ``sum_t c_t`` per episode is one ``index_add``.
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..records import TrajectoryRecord


@dataclass
class Truncation:
    """Result of :func:`truncate_for_estimator`."""

    input_ids: list[int]
    turn_ends: list[int]  # positions in the truncated ``input_ids``
    kept: list[int]  # indices (into the original turn list) of the turns that are still scored
    dropped_tokens: int  # all removed tokens, including the harmless tail after the last turn
    truncated: bool  # True when max_length forced a cut (rules 2-3), not for the tail alone
    head: int = 0  # input_ids = original[:head] + original[cut:cut + len(input_ids) - head]
    cut: int = 0


def before_positions(t: Truncation, turn_starts: Sequence[int]) -> list[int]:
    """For every kept turn, where the prefix before it ends in the truncated sequence: the token before the turn's
    first token (``turn_starts``: original coordinates, one per original turn), or, when truncation dropped that
    token, the last kept token before it (the kept prompt's last token), else 0. Each is before the turn's end."""
    out = []
    for k, end in zip(t.kept, t.turn_ends):
        p = int(turn_starts[k]) - 1  # original coordinates
        if p >= t.cut:
            q = p - t.cut + t.head
        else:
            q = min(p, t.head - 1)
        out.append(max(0, min(q, end - 1)))
    return out


def check_turn_ends(turn_ends: Sequence[int], length: int, name: str = "turn_ends") -> None:
    """Raise ``ValueError`` unless ``turn_ends`` is strictly increasing inside ``[0, length)``."""
    prev = -1
    for i, e in enumerate(turn_ends):
        if isinstance(e, bool) or not isinstance(e, int):
            raise ValueError(f"{name}[{i}] must be an int, got {e!r}")
        if not 0 <= e < length:
            raise ValueError(f"{name}[{i}]={e} is outside the sequence [0, {length})")
        if e <= prev:
            raise ValueError(f"{name} must be strictly increasing, got {name}[{i - 1}]={prev} then {e}")
        prev = e


def truncate_for_estimator(
    input_ids: Sequence[int], turn_ends: Sequence[int], max_length: int, keep_prefix: int = 0
) -> Truncation:
    """Fit one trajectory into ``max_length`` tokens (see the module docstring for the rule).

    Args:
        input_ids: the full token sequence.
        turn_ends: index of the last token of every assistant turn, strictly increasing (not checked here).
        max_length: the model's maximum input length.
        keep_prefix: number of leading tokens to keep when turns must be dropped (the prompt length);
            clamped to the first turn end.
    """
    if not turn_ends:
        return Truncation([], [], [], len(input_ids), False)
    ids = list(input_ids)
    ends = list(turn_ends)
    n = ends[-1] + 1  # rule 1
    dropped_tail = len(ids) - n
    if n <= max_length:
        return Truncation(ids[:n], ends, list(range(len(ends))), dropped_tail, False)

    heads = [min(max(keep_prefix, 0), ends[0])] if keep_prefix > 0 else []
    for head in heads + [0]:
        # drop turns 0..m-1 (m >= 1): keep ids[:head] + ids[ends[m-1]+1 : n]
        for m in range(1, len(ends)):
            cut = ends[m - 1] + 1
            if head + (n - cut) <= max_length:
                new_ids = ids[:head] + ids[cut:n]
                new_ends = [e - cut + head for e in ends[m:]]
                return Truncation(new_ids, new_ends, list(range(m, len(ends))), len(ids) - len(new_ids), True, head,
                                  cut)
    # rule 3: the last turn alone is too long: keep the last max_length tokens, score only the last turn
    start = n - max_length
    return Truncation(ids[start:n], [max_length - 1], [len(ends) - 1], len(ids) - max_length, True, 0, start)


@dataclass
class Example:
    """One training/eval trajectory after truncation (token ids as a compact int32 array: a few thousand
    trajectories of a few thousand tokens would take gigabytes as Python lists)."""

    input_ids: np.ndarray
    turn_ends: list[int]
    reward: float
    num_turns: int  # turns in the original record
    kept: list[int]
    truncated: bool
    episode_id: str = ""
    row_starts: list[int] | None = None  # window layout: start of each row (one turn each) in input_ids
    befores: list[int] | None = None  # per kept turn: the last token before it (:func:`before_positions`)


def record_to_example(rec: TrajectoryRecord, max_length: int, keep_prompt: bool = True) -> Example:
    t = truncate_for_estimator(rec.input_ids, rec.turn_ends, max_length, rec.prompt_length if keep_prompt else 0)
    return Example(
        input_ids=np.asarray(t.input_ids, dtype=np.int32),
        turn_ends=t.turn_ends,
        reward=float(rec.reward),
        num_turns=rec.num_turns,
        kept=t.kept,
        truncated=t.truncated,
        episode_id=rec.episode_id,
        befores=before_positions(t, [a for a, _ in rec.turn_spans]),
    )


def records_to_examples(records: Iterable[TrajectoryRecord], max_length: int, keep_prompt: bool = True) -> list[Example]:
    return [record_to_example(r, max_length, keep_prompt) for r in records]


ENV_FAILED_KEY = "env_failed"


def is_env_failure(rec: TrajectoryRecord) -> bool:
    """The episode ended by an environment error (timeout/crash), not by the policy: ``extra["env_failed"]``."""
    return bool((rec.extra or {}).get(ENV_FAILED_KEY, False))


class ExampleSet(Sequence[Example]):
    """Truncated examples packed into flat arrays (tokens as int32: 4 bytes a token, against ~41 for a record's
    Python list), filled one record at a time by :meth:`append`; indexing gives an :class:`Example`."""

    def __init__(self) -> None:
        self._tokens = array("i")  # C int: 4 bytes on every platform torch supports
        self._tok_off = array("q", [0])
        self._ends = array("i")
        self._end_off = array("q", [0])
        self._reward = array("d")
        self._num_turns = array("i")
        self._first_kept = array("i")
        self._truncated = array("b")
        # window layout only (a set holds one layout): row starts (relative to the example), offsets per example
        self._rows = array("i")
        self._row_off: array | None = None
        self._befores = array("i")  # one per kept turn (window: per row), aligned with _ends (:func:`before_positions`)
        self.episode_ids: list[str] = []
        self.max_token_id = -1

    def append(self, rec: TrajectoryRecord, max_length: int, keep_prompt: bool = True) -> None:
        t = truncate_for_estimator(rec.input_ids, rec.turn_ends, max_length, rec.prompt_length if keep_prompt else 0)
        self._tokens.extend(t.input_ids)
        self._tok_off.append(len(self._tokens))
        self._ends.extend(t.turn_ends)
        self._end_off.append(len(self._ends))
        self._reward.append(float(rec.reward))
        self._num_turns.append(rec.num_turns)
        self._first_kept.append(t.kept[0] if t.kept else rec.num_turns)
        if self._row_off is not None:
            raise ValueError("this ExampleSet holds window-layout episodes (append_rows); keep one layout per set")
        self._truncated.append(int(t.truncated))
        self._befores.extend(before_positions(t, [a for a, _ in rec.turn_spans]))
        self.episode_ids.append(rec.episode_id)
        if t.input_ids:
            self.max_token_id = max(self.max_token_id, max(t.input_ids))

    def append_rows(self, rec: TrajectoryRecord, rows: Sequence[tuple[Sequence[int], int]], max_length: int,
                    keep_prompt: bool = True) -> None:
        """Add one episode in the window layout: ``rows`` = [(row token ids, row prompt length)], one turn each,
        its end the row's last token (``spa_reward.progress.layouts.window_sequences``)."""
        if len(rows) != rec.num_turns:
            raise ValueError(f"record {rec.episode_id!r}: {len(rows)} window rows for {rec.num_turns} turns")
        if self._row_off is None:
            if len(self):
                raise ValueError("this ExampleSet holds packed examples (append); keep one layout per set")
            self._row_off = array("q", [0])
        start, truncated = len(self._tokens), False
        ends, starts = [], []
        for ids, prompt_length in rows:
            t = truncate_for_estimator(ids, [len(ids) - 1], max_length, prompt_length if keep_prompt else 0)
            starts.append(len(self._tokens) - start)
            self._befores.append(starts[-1] + before_positions(t, [prompt_length])[0])  # the reply starts the row
            self._tokens.extend(t.input_ids)
            ends.append(len(self._tokens) - start - 1)
            truncated = truncated or t.truncated
            if t.input_ids:
                self.max_token_id = max(self.max_token_id, max(t.input_ids))
        self._tok_off.append(len(self._tokens))
        self._ends.extend(ends)
        self._end_off.append(len(self._ends))
        self._reward.append(float(rec.reward))
        self._num_turns.append(rec.num_turns)
        self._first_kept.append(0)  # a row keeps its turn
        self._truncated.append(int(truncated))
        self._rows.extend(starts)
        self._row_off.append(len(self._rows))
        self.episode_ids.append(rec.episode_id)

    def __len__(self) -> int:
        return len(self._reward)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"example {i} of {len(self)}")
        a, b = self._tok_off[i], self._tok_off[i + 1]
        n = self._num_turns[i]
        rows = None
        if self._row_off is not None:
            rows = self._rows[self._row_off[i]:self._row_off[i + 1]].tolist()
        return Example(
            input_ids=np.frombuffer(self._tokens[a:b], dtype=np.int32),
            turn_ends=self._ends[self._end_off[i] : self._end_off[i + 1]].tolist(),
            reward=self._reward[i],
            num_turns=n,
            kept=list(range(self._first_kept[i], n)),
            truncated=bool(self._truncated[i]),
            episode_id=self.episode_ids[i],
            row_starts=rows,
            befores=self._befores[self._end_off[i] : self._end_off[i + 1]].tolist(),
        )

    @property
    def num_tokens(self) -> int:
        return len(self._tokens)

    @property
    def num_truncated(self) -> int:
        return sum(self._truncated)

    @property
    def num_dropped_turns(self) -> int:
        return sum(self._first_kept)

    def nbytes(self) -> int:
        """Bytes held by the arrays (the episode id strings not counted)."""
        arrays = (self._tokens, self._tok_off, self._ends, self._end_off, self._reward, self._num_turns,
                  self._first_kept, self._truncated, self._rows, self._row_off or array("q"), self._befores)
        return sum(a.itemsize * len(a) for a in arrays)


def collate_sequences(
    seqs: Sequence[Sequence[int]],
    turn_ends: Sequence[Sequence[int]],
    pad_token_id: int = 0,
    device: torch.device | str | None = None,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad a batch: ``input_ids``/``attention_mask`` ``(bs, L)`` and ``turn_end_positions`` ``(bs, K)``
    (-1 padded)."""
    if not seqs:
        raise ValueError("empty batch")
    length = max(len(s) for s in seqs)
    if pad_to_multiple_of:
        length = int(math.ceil(length / pad_to_multiple_of) * pad_to_multiple_of)
    k = max(1, max(len(e) for e in turn_ends))
    ids = torch.full((len(seqs), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    pos = torch.full((len(seqs), k), -1, dtype=torch.long)
    for i, (s, e) in enumerate(zip(seqs, turn_ends)):
        ids[i, : len(s)] = torch.as_tensor(np.asarray(s), dtype=torch.long)
        mask[i, : len(s)] = 1
        if len(e):
            pos[i, : len(e)] = torch.as_tensor(list(e), dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": mask, "turn_end_positions": pos}
    if device is not None:
        out = {k_: v.to(device) for k_, v in out.items()}
    return out


def _befores(example: Example) -> list[int]:
    """Per kept turn, the last token before it (examples built without them: the previous turn's end, or 0)."""
    if example.befores is not None:
        return list(example.befores)
    return [0] + [e + 1 for e in example.turn_ends[:-1]] if example.row_starts is None else list(example.row_starts)


def _positions(lists: Sequence[Sequence[int]], k: int) -> torch.Tensor:
    out = torch.full((len(lists), k), -1, dtype=torch.long)
    for i, x in enumerate(lists):
        if len(x):
            out[i, : len(x)] = torch.as_tensor(list(x), dtype=torch.long)
    return out


def collate_examples(examples: Sequence[Example], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """:func:`collate_sequences` plus ``rewards`` ``(bs,)`` and ``before_positions`` ``(bs, K)`` (the last token before
    each turn, where the prefix objective reads the value before the step; -1 padded)."""
    batch = collate_sequences([e.input_ids for e in examples], [e.turn_ends for e in examples], pad_token_id)
    batch["rewards"] = torch.tensor([e.reward for e in examples], dtype=torch.float32)
    batch["before_positions"] = _positions([_befores(e) for e in examples], batch["turn_end_positions"].shape[1])
    return batch


def window_rows(example: Example) -> tuple[list[np.ndarray], list[list[int]], list[list[int]]]:
    """(row sequences, their turn ends, their before positions) of one example: its window rows, or the example
    itself when packed."""
    if example.row_starts is None:
        return [example.input_ids], [list(example.turn_ends)], [_befores(example)]
    bounds = list(example.row_starts) + [len(example.input_ids)]
    seqs = [example.input_ids[bounds[r]:bounds[r + 1]] for r in range(len(example.row_starts))]
    befores = [[p - bounds[r]] for r, p in enumerate(_befores(example))]
    return seqs, [[len(s) - 1] for s in seqs], befores


def flatten_rows(examples: Sequence[Example]) -> tuple[list[np.ndarray], list[list[int]], list[int], list[list[int]]]:
    """Every example's rows (:func:`window_rows`) in order: (sequences, their turn ends, the example index of each,
    their before positions)."""
    seqs, ends, index, befores = [], [], [], []
    for e, ex in enumerate(examples):
        rows, row_ends, row_befores = window_rows(ex)
        seqs += rows
        ends += row_ends
        index += [e] * len(rows)
        befores += row_befores
    return seqs, ends, index, befores


def collate_window_examples(examples: Sequence[Example], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """A batch of episodes in the window layout, flattened into rows (an episode's rows consecutive, in step order):
    ``input_ids``/``attention_mask`` ``(rows, L)``, ``turn_end_positions`` and ``before_positions`` ``(rows, 1)``
    (each row's reply end and its prompt's last token), ``episode_index`` ``(rows,)`` (which episode each row
    belongs to) and ``rewards`` ``(episodes,)``. ``sum_t c_t`` of episode e = the sum of c over the rows with
    index e."""
    seqs, ends, index, befores = flatten_rows(examples)
    batch = collate_sequences(seqs, ends, pad_token_id)
    batch["before_positions"] = _positions(befores, 1)
    batch["episode_index"] = torch.tensor(index, dtype=torch.long)
    batch["rewards"] = torch.tensor([ex.reward for ex in examples], dtype=torch.float32)
    return batch


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """Deterministic shuffled order of ``n`` examples for one epoch (restorable on resume)."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


__all__ = [
    "ENV_FAILED_KEY",
    "Example",
    "ExampleSet",
    "Truncation",
    "check_turn_ends",
    "collate_examples",
    "collate_sequences",
    "collate_window_examples",
    "epoch_order",
    "is_env_failure",
    "before_positions",
    "record_to_example",
    "records_to_examples",
    "truncate_for_estimator",
    "window_rows",
]
