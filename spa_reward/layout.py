"""Window-layout sessions (``env.history=window``) for the reward managers: score every row of an episode.

In the window layout (``recipe/spa/window.py``) an episode of T steps arrives as T rows of one verl session
(TransferQueue keys ``{uid}_{session_id}_{t}``). verl calls the reward manager ONCE per session with all its rows
(``AgentLoopWorker._compute_score`` builds one DataProto of every output) and copies the result of the final
output to the earlier ones (``AgentLoopWorkerTQ._agent_loop_postprocess``). Each row's ``env_episode`` holds one
turn (``step_index`` = t, ``episode_turns`` = T) and the episode's fields.

``score_window_session(manager, data)`` scores each row with the manager's own per-trajectory rule
(``manager.turn_rewards(row, row_episode)``, where only the final row carries the outcome R so R lands on the last
step exactly as in the packed layout) and returns ONE result for the session in the packed schema: the T turn
rewards in step order under ``spa_turn_rewards`` (each row's output takes element ``step_index``) and the
episode's scalars. With the ``spa`` reward each row's contribution c_t is scored on that row's window prompt +
reply, its turn end = the row's last token: exactly the sequences ``spa_reward.progress.layouts.window_sequences``
rebuilds from the episode's trajectory record, which is what ``python -m spa_reward.progress.train --layout window``
trains on; the rows of a session go to the scorer in one call (``prepare_session``), so the ``prefix`` objective's
values chain across them (c_t = V(row t+1's prompt) - V(row t's prompt), the last row's next value is R) (an estimator trained in the other layout is refused at start-up:
``spa_reward.progress.serve.check_estimator_layout``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from spa_reward.fusion import FusionStats

EPISODE_KEY = "env_episode"
WINDOW = "window"


def session_key(key: str) -> tuple[str, int]:
    """``(session, step index)`` of a TransferQueue key ``{uid}_{session_id}_{index}`` (verl's
    ``trainer/ppo/v1/agent_loop_tq.py``: one key per agent-loop output); a key of another shape is a session of its
    own at index 0."""
    parts = str(key).rsplit("_", 2)
    if len(parts) == 3 and parts[2].isdigit():
        return f"{parts[0]}_{parts[1]}", int(parts[2])
    return str(key), 0


def _row_episode(data: Any, i: int) -> dict | None:
    extra = data[i].non_tensor_batch.get("tool_extra_fields", None)
    episode = extra.get(EPISODE_KEY) if isinstance(extra, dict) else None
    return episode if isinstance(episode, dict) else None


def is_window_session(data: Any) -> bool:
    """True when ``data`` (one session's rows) came from the window layout."""
    if len(data) == 0:
        return False
    episode = _row_episode(data, len(data) - 1)
    return bool(episode) and episode.get("layout") == WINDOW


def _trimmed(item: Any) -> Any:
    """The row without the session batch's right padding (rows of one session are padded to the longest), so a
    scorer sees exactly prompt + reply, as for a packed row."""
    length = item.non_tensor_batch.get("prompt_len", None), item.non_tensor_batch.get("response_len", None)
    if any(v is None for v in length) or "input_ids" not in item.batch.keys():
        return item
    n = int(length[0]) + int(length[1])
    batch = item.batch.clone(recurse=False)
    batch["input_ids"] = item.batch["input_ids"][:n]
    item.batch = batch
    return item


def window_rows(data: Any) -> list[tuple[Any, dict]]:
    """[(row item, its env_episode)] ordered by ``step_index``; checks the rows form one whole episode."""
    rows = []
    for i in range(len(data)):
        episode = _row_episode(data, i)
        if episode is None or episode.get("layout") != WINDOW:
            raise ValueError(f"row {i} of a window-layout session has no window env_episode bookkeeping")
        rows.append((_trimmed(data[i]), episode))
    rows.sort(key=lambda r: int(r[1]["step_index"]))
    total = int(rows[-1][1].get("episode_turns", 0))
    steps = [int(e["step_index"]) for _, e in rows]
    if total == 0:  # the placeholder row of an episode that never produced a reply
        return rows[-1:]
    if steps != list(range(total)):
        raise ValueError(f"window-layout session has rows for steps {steps}, expected 0..{total - 1}")
    return rows


def merged_episode(episodes: list[dict]) -> dict:
    """The packed-layout view of a window episode: per-turn lists concatenated in step order, episode fields of
    the final row, turn positions dropped (they are per row)."""
    last = dict(episodes[-1])
    for key in ("turn_starts", "turn_ends"):
        last.pop(key, None)
    last["executable"] = [bool(g) for e in episodes for g in e.get("executable", [])]
    last["actions"] = [a for e in episodes for a in e.get("actions", [])]
    last["num_turns"] = len(last["executable"])
    return last


def merge_stats(stats: list[FusionStats]) -> FusionStats:
    """FusionStats of a whole episode from its rows' (one turn each)."""
    n = sum(s.num_turns for s in stats)
    total = FusionStats(num_turns=n)
    if not n:
        return total
    total.nonfinite = sum(s.nonfinite for s in stats)
    total.clipped = sum(s.clipped for s in stats)
    total.sum_contribution = float(sum(s.sum_contribution for s in stats))
    total.mean_contribution = float(sum(s.mean_contribution * s.num_turns for s in stats) / n)
    total.executable_rate = float(sum(s.executable_rate * s.num_turns for s in stats) / n)
    total.sum_reward = float(sum(s.sum_reward for s in stats))
    total.mean_reward = total.sum_reward / n
    return total


async def score_window_session(manager: Any, data: Any) -> dict:
    """One reward result for a window-layout session (see the module docstring); ``manager`` is an
    ``outcome``/``spa`` reward manager (``spa_reward.reward_manager``)."""
    from spa_reward.reward_manager import _extra_info

    rows = window_rows(data)
    final = len(rows) - 1
    R = float(rows[-1][1].get("episode_reward", 0.0))
    views = [dict(e, episode_reward=R if i == final else 0.0) for i, (_, e) in enumerate(rows)]
    prepare = getattr(manager, "prepare_session", None)
    if prepare is not None:  # spa: one scorer call for the whole session (the prefix objective chains its rows)
        views = await prepare(rows, views)
    results = await asyncio.gather(*(manager.turn_rewards(item, view) for (item, _), view in zip(rows, views)))
    rewards = [float(r) for turn_rewards, _ in results for r in turn_rewards]
    stats = merge_stats([st for _, st in results])
    episode = merged_episode([e for _, e in rows])
    if len(rewards) != episode["num_turns"]:
        raise RuntimeError(f"{len(rewards)} turn rewards for a window episode of {episode['num_turns']} steps")
    return {"reward_score": float(sum(rewards)),
            "reward_extra_info": _extra_info(episode, rewards, stats, manager.uses_estimator)}


__all__ = ["is_window_session", "merge_stats", "merged_episode", "score_window_session", "window_rows"]
