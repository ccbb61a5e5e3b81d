"""Expert demonstrations as multi-turn chat rows for verl's SFT trainer.

    python -m envs.expert alfworld --output data/alfworld_sft.parquet --data-dir ../shared/data/alfworld
    python -m envs.expert webshop --output data/webshop_sft.parquet --max-tasks 500 --style react --one-shot
    python -m envs.expert alfworld --output data/alfworld_sft.parquet --workers 8   # planner: ~10-60 s a game

For each task of the split: ``env.reset(task_id)``, ``env.expert_actions()``, then every expert action is
written as an assistant reply with ``envs.actions.format_action`` (a templated one-sentence thought, no LLM),
parsed back with ``parse_action`` exactly as the RL agent loop does, and that parsed action is stepped. The
chat is built with ``envs.prompts`` (``build_messages`` + ``format_observation``), so SFT and RL see the same
text. Only episodes the expert **won** are kept. A summary (success rate per task type, kept rows, failures)
is written next to the output as ``<output>.summary.json``.

Long runs survive faults: every finished task is written at once to ``<output>.parts/shard-<k>.jsonl``; a rerun
with the same ``--output`` and settings skips the tasks found there (a crash or Ctrl-C loses only the tasks in
flight; ``--fresh`` starts over). ``--task-timeout`` (default 600 s) kills a task that runs longer, with its worker
process, and counts it in the summary (``timeouts``). ALFWorld plans are also cached per game on disk
(``envs.alfworld.env.default_plan_cache_dir``), so a rerun does not plan again.

Output columns: ``messages`` (list of ``{"role", "content"}``: system, user, then assistant/user turns,
ending with the assistant's last action), ``data_source`` (``spa_rl/<env>``), ``env_name``, ``task_id``,
``task_type``, ``split``, ``num_turns`` (assistant turns), ``actions`` (the env actions of the assistant turns,
as parsed back), ``anchors`` (the state anchor ``info["anchor"]`` after each of those actions, as the RL agent
loop records it; empty for tasks resumed from parts written before this column existed), ``score``, ``style``,
``prompt_version``.

Reading them back by task id (StepAgent's expert-prefix episodes, ``recipe.spa.expert_prefix``):
:func:`load_expert_demos` ``(path) -> {task_id: ExpertDemo}``, loaded once per process (cached by path + mtime).

Training with verl 0.9.1 (the engine SFT trainer; its dataset is ``verl.utils.dataset.multiturn_sft_dataset.
MultiTurnSFTDataset``, which reads ``data.messages_key`` and puts the loss on assistant turns only)::

    torchrun --standalone --nproc_per_node=<gpus> -m verl.trainer.sft_trainer \\
        data.train_files=data/alfworld_sft.parquet data.val_files=null \\
        data.messages_key=messages data.max_length=8192 data.truncation=error \\
        data.pad_mode=no_padding data.use_dynamic_bsz=True data.max_token_len_per_gpu=16384 \\
        data.train_batch_size=64 data.micro_batch_size_per_gpu=2 \\
        model.path=<hf model dir> trainer.n_gpus_per_node=<gpus> trainer.total_epochs=3 \\
        trainer.project_name=spa-sft trainer.experiment_name=alfworld trainer.logger=[console]

(``verl.trainer.fsdp_sft_trainer`` of older verl releases no longer exists in 0.9.1.) There is no ``tools``
column, so no tool schema is rendered. The dataset checks that tokenising turn by turn equals tokenising the
whole chat; chat templates that rewrite earlier assistant turns (e.g. Qwen3 dropping ``<think>`` blocks of
past turns, which matters for ``--style tag``) fail that check: set ``data.ignore_input_ids_mismatch=True``
there, or use ``--style react``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from envs import check_env_name, env_names, make_env
from envs.actions import STYLES, format_action, parse_action
from envs.base import UNKNOWN_TASK_TYPE
from envs.cli import error_exit, non_negative_int, positive_float, positive_int
from envs.prepare import data_source, env_kwargs, list_split, subsample_tasks, write_parquet
from envs.prompts import SPA_PROMPT_VERSION, build_messages, build_window_messages, format_observation

__all__ = ["THOUGHT_TEMPLATES", "ExpertDemo", "expert_episode", "expert_rows", "load_expert_demos", "main",
           "make_thought", "parts_dir_for", "window_chats"]

# (regex on the lower-cased action, thought template); the first match wins, named groups fill the template.
# A group named "goal" only matches when its text is the task's goal.
THOUGHT_TEMPLATES: dict[str, list[tuple[str, str]]] = {
    "alfworld": [
        (r"go to (?P<r>.+)", "Next I should go to the {r}."),
        (r"take (?P<o>.+) from (?P<r>.+)", "The {o} is at the {r} and I need it, so I will take it."),
        (r"(?:put|move) (?P<o>.+?) (?:in/on|in|on|into|to) (?P<r>.+)",
         "I am carrying the {o} and the {r} is where it should go, so I will put it there."),
        (r"open (?P<r>.+)", "The {r} is closed, so I will open it to see what is inside."),
        (r"close (?P<r>.+)", "I am done with the {r}, so I will close it."),
        (r"clean (?P<o>.+) with (?P<r>.+)", "The {o} has to be clean, so I will clean it with the {r}."),
        (r"heat (?P<o>.+) with (?P<r>.+)", "The {o} has to be hot, so I will heat it with the {r}."),
        (r"cool (?P<o>.+) with (?P<r>.+)", "The {o} has to be cool, so I will cool it with the {r}."),
        (r"slice (?P<o>.+) with (?P<r>.+)", "I will slice the {o} with the {r}."),
        (r"use (?P<o>.+)", "I will turn on the {o} so I can look at the object in its light."),
        (r"examine (?P<o>.+)", "I will examine the {o} more closely."),
        (r"look", "I will look around to see where I am."),
        (r"inventory", "I will check what I am carrying."),
    ],
    "webshop": [
        (r"search\[(?P<goal>.*)\]", "I will search with the words of the instruction."),
        (r"search\[(?P<q>.*)\]", "I will search for {q}."),
        (r"click\[buy now\]", "The product and the selected options match the instruction, so I will buy it."),
        (r"click\[< prev\]", "I will go back to the previous page."),
        (r"click\[next >\]", "None of these results fits well, so I will look at the next page."),
        (r"click\[back to search\]", "I will go back and search again."),
        (r"click\[(?P<x>description|features|reviews|attributes)\]", "I will read the {x} to check the product."),
        (r"click\[(?P<x>b[0-9a-z]{9})\]",
         "Product {x} looks like a good match for the instruction, so I will open it."),
        (r"click\[(?P<x>.+)\]", "The instruction asks for {x}, so I will select that option."),
    ],
    "virtualhome": [
        (r"(?:walk|run) to (?P<o>.+)", "I need to go to the {o}."),
        (r"find (?P<o>.+)", "I will find the {o} here."),
        (r"grab (?P<o>.+)", "I need the {o}, so I will pick it up."),
        (r"put (?P<o>.+?) in (?P<r>.+)", "I am holding the {o}, so I will put it in the {r}."),
        (r"put (?P<o>.+?) on (?P<r>.+)", "I am holding the {o}, so I will put it on the {r}."),
        (r"open (?P<o>.+)", "The {o} is closed, so I will open it."),
        (r"close (?P<o>.+)", "I will close the {o} again."),
        (r"switch on (?P<o>.+)", "The {o} has to be on, so I will switch it on."),
        (r"switch off (?P<o>.+)", "The {o} has to be off, so I will switch it off."),
        (r"(?:sit|lie) on (?P<o>.+)", "The task needs me on the {o}, so I will get on it."),
    ],
}
_COMPILED = {env: [(re.compile(p + r"\.?$"), t) for p, t in rules] for env, rules in THOUGHT_TEMPLATES.items()}


def make_thought(env_name: str, action: str, goal: str | None = None, step: int = 0) -> str:
    """A short templated reason for ``action`` (the first step also restates the goal). Deterministic."""
    text = " ".join(str(action).split())
    goal = " ".join(str(goal or "").split()).rstrip(".")
    thought = f"Next I will {text}."
    for pattern, template in _COMPILED.get(env_name, ()):
        match = pattern.match(text.lower())
        if match and match.groupdict().get("goal", goal.lower()).rstrip(".") == goal.lower():
            groups = {k: text[match.start(k) : match.end(k)] for k in match.groupdict()}  # original case
            thought = template.format(**groups)
            break
    if step == 0 and goal:
        thought = f"My task: {goal}. {thought}"
    return thought


def _failed(error: str, actions: list[str] | None = None) -> dict[str, Any]:
    actions = actions or []
    return {"won": False, "messages": None, "actions": actions, "score": 0.0, "turns": len(actions), "error": error}


def expert_episode(env, env_name: str, task_id: str, style: str = "react", one_shot: bool = False,
                   system_prompt: bool = True, include_admissible: bool | None = None) -> dict[str, Any]:
    """Replay the expert of one task. Returns {"won", "messages", "actions", "score", "turns", "error"}, where
    ``actions`` are the actions stepped (the expert's, as parsed back from the assistant replies)."""
    obs, info = env.reset(task_id)
    actions = env.expert_actions()
    if not actions:
        return _failed("no expert actions")
    messages = build_messages(env_name, obs, info, style=style, one_shot=one_shot, system_prompt=system_prompt,
                              include_admissible=include_admissible)
    goal = info.get("goal")
    reset_info = {"goal": goal}
    anchor = str(info.get("anchor", obs))
    step_info: dict = {"won": False, "score": 0.0}
    stepped: list[str] = []
    anchors: list[str] = []  # info["anchor"] after each expert action (what the agent loop records)
    steps: list[tuple[str, dict, str]] = []  # (observation, its info, reply): what a window-layout row needs
    for step, action in enumerate(actions):
        try:
            reply = format_action(action, make_thought(env_name, action, goal, step), style)
        except ValueError as exc:
            return _failed(f"unformattable: {exc}", stepped)
        parsed = parse_action(reply, style)  # what the RL agent loop would send to the env
        messages.append({"role": "assistant", "content": reply})
        stepped.append(parsed.action)
        steps.append((obs, {"admissible_actions": info.get("admissible_actions")}, reply))
        obs, _reward, done, step_info = env.step(parsed.action)
        anchor = str(step_info.get("anchor", anchor))  # the agent loop's rule (recipe.spa.agent_loop.step_reply)
        anchors.append(anchor)
        info = step_info
        if done:
            break
        messages.append({"role": "user", "content": format_observation(env_name, obs, step_info, include_admissible)})
    won = bool(step_info.get("won"))
    if messages[-1]["role"] != "assistant":  # expert ran out of actions before the episode ended
        won = False
    return {"won": won, "messages": messages, "actions": stepped, "score": float(step_info.get("score", 0.0)),
            "turns": len(stepped), "error": None if won else "expert did not win", "steps": steps,
            "reset_info": reset_info, "anchors": anchors}


def _episode_anchors(episode: dict) -> list[str]:
    """The anchors of an episode, ``[]`` when it was journalled before the column existed (or they do not line up
    with its actions)."""
    anchors = [str(a) for a in (episode.get("anchors") or [])]
    return anchors if len(anchors) == len(episode.get("actions") or []) else []


def window_chats(episode: dict, env_name: str, history_length: int, style: str = "react", one_shot: bool = False,
                 system_prompt: bool = True, include_admissible: bool | None = None) -> list[list[dict]]:
    """One chat per step of an ``expert_episode``, in the window layout (``envs.prompts.build_window_messages``
    + the step's reply), exactly what the RL agent loop shows with ``env.history=window``."""
    chats, history = [], []
    for (obs, info, reply), action in zip(episode["steps"], episode["actions"]):
        chat = build_window_messages(env_name, obs, info, history, history_length, episode["reset_info"], style,
                                     one_shot, system_prompt, include_admissible)
        chats.append(chat + [{"role": "assistant", "content": reply}])
        history.append((obs, action or ""))
    return chats


def _replay(env, env_name: str, task_id: str, options: dict) -> tuple[str, dict]:
    """(task type, episode) of one task; an engine failure becomes a failed episode, not a lost run."""
    try:
        return str(env.task_type(task_id)), expert_episode(env, env_name, task_id, **options)
    except Exception as exc:
        try:
            task_type = str(env.task_type(task_id))
        except Exception:
            task_type = UNKNOWN_TASK_TYPE
        return task_type, _failed(f"error: {exc!r}")


# ----------------------------------------------------------------------------------------------- runners
def _run_in_process(env, env_name: str, task_ids: list[str], options: dict) -> Iterator[tuple[str, str, dict]]:
    for task_id in task_ids:
        yield (task_id, *_replay(env, env_name, task_id, options))


def _worker_loop(conn, env_name: str, kwargs: dict, options: dict) -> None:
    """A forked worker: build the env once, then replay the task ids it is sent until it gets None."""
    env = None
    try:
        env = make_env(env_name, **kwargs)
        while True:
            task_id = conn.recv()
            if task_id is None:
                break
            conn.send((task_id, *_replay(env, env_name, task_id, options)))
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        if env is not None:
            env.close()


class _Worker:
    def __init__(self, ctx, env_name: str, kwargs: dict, options: dict):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_loop, args=(child, env_name, kwargs, options), daemon=True)
        self.proc.start()
        child.close()
        self.task: str | None = None
        self.deadline = math.inf

    def kill(self, grace: float = 0.0) -> None:
        if grace:
            self.proc.join(timeout=grace)
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=10)
        self.conn.close()


def _run_in_workers(env_name: str, kwargs: dict, task_ids: list[str], options: dict, workers: int,
                    task_timeout: float | None) -> Iterator[tuple[str, str, dict]]:
    """Replay in ``workers`` forked processes; a task over ``task_timeout`` seconds (or whose worker dies) is
    killed with its worker, yielded as a failed episode (``error`` = ``timeout: ...`` / ``crash: ...``), and the
    worker replaced."""
    import multiprocessing
    from multiprocessing.connection import wait

    if not task_ids:
        return
    ctx = multiprocessing.get_context("fork")
    todo = list(reversed(task_ids))
    pool = [_Worker(ctx, env_name, kwargs, options) for _ in range(min(workers, len(task_ids)))]
    finished = False
    try:
        while todo or any(w.task is not None for w in pool):
            for w in pool:
                if w.task is None and todo:
                    w.task = todo.pop()
                    w.deadline = time.monotonic() + task_timeout if task_timeout else math.inf
                    w.conn.send(w.task)
            busy = [w for w in pool if w.task is not None]
            wait_s = min(w.deadline for w in busy) - time.monotonic()
            ready = wait([w.conn for w in busy], timeout=None if wait_s == math.inf else max(wait_s, 0.0))
            now = time.monotonic()
            for i, w in enumerate(pool):
                if w.task is None:
                    continue
                result, failure = None, None
                if w.conn in ready:
                    try:
                        result = w.conn.recv()
                    except (EOFError, OSError):
                        failure = f"crash: worker died (exit code {w.proc.exitcode})"
                elif now >= w.deadline:
                    failure = f"timeout: over {task_timeout:g} s"
                if result is not None:
                    w.task = None
                    yield result
                elif failure is not None:
                    task_id = w.task
                    w.kill()
                    pool[i] = _Worker(ctx, env_name, kwargs, options)
                    yield task_id, UNKNOWN_TASK_TYPE, _failed(failure)
        for w in pool:
            try:
                w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        finished = True
    finally:
        for w in pool:
            w.kill(grace=5.0 if finished else 0.0)


# ----------------------------------------------------------------------------------------------- journal
class _Journal:
    """Finished tasks, one JSON line each, in ``<parts_dir>/shard-<k>.jsonl`` (a new shard per run), so a crash or
    Ctrl-C loses at most the tasks in flight, and a rerun with the same settings skips the tasks already done.

    ``meta.json`` holds the settings the episodes were made with; a rerun with other settings is refused."""

    def __init__(self, parts_dir: Path, meta: dict):
        self.dir = Path(parts_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        meta_path = self.dir / "meta.json"
        if meta_path.is_file():
            old = json.loads(meta_path.read_text(encoding="utf-8"))
            if old != meta:
                diff = {k: (old.get(k), meta.get(k)) for k in sorted(set(old) | set(meta)) if old.get(k) != meta.get(k)}
                raise ValueError(f"{self.dir} holds expert episodes made with other settings {diff} (old, new); "
                                 "use the same settings, another --output, or --fresh to discard them")
        else:
            meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        self.done: dict[str, tuple[str, dict]] = {}
        self.torn = 0
        shards = sorted(self.dir.glob("shard-*.jsonl"), key=lambda p: int(p.stem.split("-")[1]))
        for shard in shards:
            with open(shard, "rb") as f:
                for raw in f:
                    try:
                        item = json.loads(raw.decode("utf-8"))
                        self.done[str(item["task_id"])] = (str(item["task_type"]), dict(item["episode"]))
                    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
                        self.torn += 1  # a line cut by a crash: that task runs again
        number = int(shards[-1].stem.split("-")[1]) + 1 if shards else 0
        self.path = self.dir / f"shard-{number:04d}.jsonl"
        self._f = None

    def add(self, task_id: str, task_type: str, episode: dict) -> None:
        if self._f is None:
            self._f = open(self.path, "a", encoding="utf-8")
        self._f.write(json.dumps({"task_id": task_id, "task_type": task_type, "episode": episode},
                                 ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None


def parts_dir_for(output: str | Path) -> Path:
    """Where ``envs.expert --output X`` keeps its finished tasks: ``X.parts/``."""
    output = Path(output)
    return output.with_name(output.name + ".parts")


def expert_rows(env_name: str, split: str = "train", *, env=None, data_dir: str | Path | None = None,
                max_tasks: int | None = None, seed: int = 0, style: str = "react", one_shot: bool = False,
                system_prompt: bool = True, include_admissible: bool | None = None, progress: bool = True,
                task_ids: list[str] | None = None, workers: int = 1, task_timeout: float | None = None,
                parts_dir: str | Path | None = None,
                history_length: int | None = None) -> tuple[list[dict], dict]:
    """SFT rows of the won expert episodes of a split (or of ``task_ids``, labelled ``split``), and the summary.

    ``workers > 1`` (or a ``task_timeout``) replays tasks in that many forked processes, each with its own
    environment built from ``data_dir`` (ALFWorld's planner takes seconds to minutes per game); a task that runs
    over ``task_timeout`` seconds is killed with its worker and counted in ``summary["timeouts"]``. Rows keep the
    task order, so the output does not depend on ``workers``. With ``parts_dir`` every finished task is written
    there at once and tasks already there (from an earlier, interrupted run with the same settings) are not run
    again (``summary["resumed"]``).
    ``history_length=k`` writes the window layout instead: one row per step (``window_chats``; extra columns
    ``step_index``, ``history_length``), ``None`` one row per episode.
    """
    check_env_name(env_name)
    if style not in STYLES:
        raise ValueError(f"Unknown response style {style!r}; use one of {', '.join(STYLES)}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if task_timeout is not None and not (task_timeout > 0 and math.isfinite(task_timeout)):
        raise ValueError(f"task_timeout must be a positive number of seconds (or None), got {task_timeout}")
    options = {"style": style, "one_shot": one_shot, "system_prompt": system_prompt,
               "include_admissible": include_admissible}
    kwargs = env_kwargs(env_name, data_dir)
    own_env = env is None
    env = make_env(env_name, **kwargs) if own_env else env
    start = time.perf_counter()
    journal = None
    try:
        if task_ids is None:
            task_ids = subsample_tasks(list_split(env, split), max_tasks, seed)
        task_ids = [str(t) for t in task_ids]
        if parts_dir is not None:
            journal = _Journal(Path(parts_dir), {"env": env_name, "split": split, "prompt_version": SPA_PROMPT_VERSION,
                                                 **options})
        done = dict(journal.done) if journal else {}
        todo = [t for t in task_ids if t not in done]
        if workers > 1 or task_timeout is not None:
            results = _run_in_workers(env_name, kwargs, todo, options, workers, task_timeout)
        else:
            results = _run_in_process(env, env_name, todo, options)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(todo), desc=f"{env_name} expert ({split})", unit="task",
                           mininterval=0.1 if sys.stderr.isatty() else 10.0)
        new: dict[str, tuple[str, dict]] = {}
        for task_id, task_type, episode in results:
            if task_type == UNKNOWN_TASK_TYPE:  # a killed task: ask the parent's env for its type
                try:
                    task_type = str(env.task_type(task_id))
                except Exception:
                    pass
            new[task_id] = (task_type, episode)
            if journal:
                journal.add(task_id, task_type, episode)
    finally:
        if journal:
            journal.close()
        if own_env:
            env.close()
    rows: list[dict] = []
    per_type: dict[str, Counter] = defaultdict(Counter)
    failures: Counter = Counter()
    for task_id in task_ids:
        task_type, episode = new.get(task_id) or done[task_id]
        per_type[task_type]["tasks"] += 1
        if not episode["won"]:
            failures[str(episode["error"]).split(":")[0]] += 1
            continue
        per_type[task_type]["won"] += 1
        if history_length is not None:
            for t, chat in enumerate(window_chats(episode, env_name, history_length, **options)):
                rows.append({"messages": chat, "data_source": data_source(env_name), "env_name": env_name,
                             "task_id": task_id, "task_type": task_type, "split": split,
                             "num_turns": episode["turns"], "actions": [episode["actions"][t]],
                             "anchors": list(_episode_anchors(episode)[t:t + 1]),
                             "score": episode["score"], "style": style, "prompt_version": SPA_PROMPT_VERSION,
                             "step_index": t, "history_length": int(history_length)})
            continue
        rows.append({
            "messages": episode["messages"],
            "data_source": data_source(env_name),
            "env_name": env_name,
            "task_id": task_id,
            "task_type": task_type,
            "split": split,
            "num_turns": episode["turns"],
            "actions": episode["actions"],
            "anchors": _episode_anchors(episode),
            "score": episode["score"],
            "style": style,
            "prompt_version": SPA_PROMPT_VERSION,
        })
    n_tasks = sum(c["tasks"] for c in per_type.values())
    n_won = sum(c["won"] for c in per_type.values())
    won_turns = [r["num_turns"] for r in rows if r.get("step_index", 0) == 0]
    summary = {
        "env": env_name,
        "split": split,
        "style": style,
        "one_shot": one_shot,
        "system_prompt": system_prompt,
        "prompt_version": SPA_PROMPT_VERSION,
        "tasks": n_tasks,
        "won": n_won,
        "kept": len(rows),
        "history": "full" if history_length is None else f"window:{history_length}",
        "success_rate": n_won / n_tasks if n_tasks else 0.0,
        "mean_turns": sum(won_turns) / n_won if n_won else 0.0,
        "seconds": round(time.perf_counter() - start, 1),
        "workers": workers,
        "task_timeout": task_timeout,
        "timeouts": failures.get("timeout", 0),
        "resumed": sum(1 for t in task_ids if t not in new),
        "torn_lines_skipped": journal.torn if journal else 0,
        "per_task_type": {
            t: {"tasks": c["tasks"], "won": c["won"], "success_rate": c["won"] / c["tasks"]}
            for t, c in sorted(per_type.items())
        },
        "failures": dict(sorted(failures.items())),
    }
    return rows, summary


# ----------------------------------------------------------------------------------------------- reading back
@dataclass(frozen=True)
class ExpertDemo:
    """One task's expert demonstration, as ``envs.expert`` wrote it.

    ``actions[j]`` is the j-th expert action (as parsed back from its reply, i.e. what the env was stepped with);
    ``anchors[j]`` the state anchor after it, or ``None`` when the file has no (usable) anchors for this task: then
    a comparison can only use action equality."""

    task_id: str
    env_name: str
    actions: tuple[str, ...]
    anchors: Optional[tuple[str, ...]] = None
    task_type: str = ""

    def __len__(self) -> int:
        return len(self.actions)


DEMO_COLUMNS = ("task_id", "actions")  # what a demonstration file must have
_DEMO_CACHE: dict[str, tuple[tuple[int, int], dict[str, ExpertDemo]]] = {}
_NO_ANCHOR_LOGGED: set[str] = set()


def load_expert_demos(path: str | Path) -> dict[str, ExpertDemo]:
    """``{task_id: ExpertDemo}`` of an ``envs.expert`` output parquet (either layout: one row per episode, or one
    row per step with ``step_index`` from ``--history k``). Read once per process: the result is cached by path,
    modification time and size (do not mutate it). Only parquet rows are read (data, never code).

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing, is not parquet, lacks a
    column of :data:`DEMO_COLUMNS` or holds one task twice. A file without an ``anchors`` column (written before
    it existed) still loads; every demo then has ``anchors=None`` (said once per file in the log)."""
    path = Path(os.path.expanduser(str(path)))
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"expert demonstrations not found: {path} (write them with `python -m envs.expert <env> --output "
            f"{path}` or examples/prepare_data.sh, or point algorithm.stepagent.expert_path at the file)") from None
    if not path.is_file():
        raise ValueError(f"expert demonstrations {path} is not a file (expected envs.expert's parquet output)")
    key, stamp = str(path.resolve()), (st.st_mtime_ns, st.st_size)
    cached = _DEMO_CACHE.get(key)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    demos = _read_demos(path)
    _DEMO_CACHE[key] = (stamp, demos)
    return demos


def _read_demos(path: Path) -> dict[str, ExpertDemo]:
    import logging

    import pyarrow.parquet as pq

    try:
        names = set(pq.read_schema(path).names)
    except Exception as exc:
        raise ValueError(f"expert demonstrations {path} are not a readable parquet file: {exc}") from exc
    missing = [c for c in DEMO_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"expert demonstrations {path} lack the column(s) {missing} (have {sorted(names)}); "
                         "write the file with `python -m envs.expert`")
    wanted = [c for c in ("task_id", "actions", "anchors", "env_name", "task_type", "step_index") if c in names]
    table = pq.read_table(path, columns=wanted).to_pydict()
    n = len(table["task_id"])
    col = lambda name, default: table.get(name, [default] * n)  # noqa: E731
    steps: dict[str, dict[int, tuple[list, Optional[list]]]] = defaultdict(dict)
    meta: dict[str, tuple[str, str]] = {}
    for i, (task_id, actions, anchors, env_name, task_type, step) in enumerate(zip(
            col("task_id", ""), col("actions", None), col("anchors", None), col("env_name", ""),
            col("task_type", ""), col("step_index", 0))):
        task_id, step = str(task_id), int(step if step is not None else 0)
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise ValueError(f"expert demonstrations {path}: row {i} (task {task_id!r}) has actions {actions!r}, "
                             "expected a list of strings")
        if step in steps[task_id]:
            raise ValueError(f"expert demonstrations {path} hold task {task_id!r}"
                             + (f" step {step}" if "step_index" in names else "") + " twice")
        steps[task_id][step] = (actions, anchors if isinstance(anchors, list) else None)
        meta.setdefault(task_id, (str(env_name or ""), str(task_type or "")))
    demos: dict[str, ExpertDemo] = {}
    for task_id, by_step in steps.items():
        actions, anchors = [], []
        for step in sorted(by_step):
            acts, anc = by_step[step]
            actions += acts
            anchors = None if anchors is None or anc is None or len(anc) != len(acts) else anchors + anc
        if actions:
            demos[task_id] = ExpertDemo(task_id, meta[task_id][0], tuple(actions),
                                        tuple(anchors) if anchors else None, meta[task_id][1])
    if "anchors" not in names and str(path) not in _NO_ANCHOR_LOGGED:
        _NO_ANCHOR_LOGGED.add(str(path))
        logging.getLogger(__name__).warning(
            "expert demonstrations %s have no anchors column (written by an older envs.expert): the expert "
            "comparison uses action equality only; rewrite the file with `python -m envs.expert` to add anchors", path)
    return demos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envs.expert", description=__doc__.split("\n\n")[0])
    parser.add_argument("env", help=f"one of: {', '.join(env_names())}")
    parser.add_argument("--output", required=True, help="output parquet file")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"])
    parser.add_argument("--max-tasks", type=non_negative_int, default=None, help="a seeded random subset of N tasks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--style", default="react", choices=list(STYLES))
    parser.add_argument("--one-shot", action="store_true", help="put the one-shot example in the system prompt")
    parser.add_argument("--no-system-prompt", action="store_true", help="instructions in the first user message")
    parser.add_argument("--data-dir", default=None, help="environment data folder (default: $SPA_DATA/<env>)")
    parser.add_argument("--workers", type=positive_int, default=1, help="replay in N processes (one env each)")
    parser.add_argument("--task-timeout", type=positive_float, default=600.0,
                        help="seconds one task may take before it is killed and counted as a timeout (default 600)")
    parser.add_argument("--fresh", action="store_true",
                        help="discard the finished tasks kept in <output>.parts/ from an earlier run")
    parser.add_argument("--history", default="full",
                        help="full: one row per episode; an integer k: one row per step holding the last k steps "
                             "(the RL loop's env.history=window, env.history_length=k)")
    args = parser.parse_args(argv)
    try:
        check_env_name(args.env)
    except ValueError as exc:
        parser.error(str(exc))
    if args.history != "full" and not (args.history.isdigit()):
        parser.error(f"--history must be 'full' or an integer k >= 0, got {args.history!r}")
    output = Path(args.output)
    parts = parts_dir_for(output)
    if args.fresh and parts.exists():
        shutil.rmtree(parts)
    try:
        rows, summary = expert_rows(args.env, args.split, data_dir=args.data_dir, max_tasks=args.max_tasks,
                                    seed=args.seed, style=args.style, one_shot=args.one_shot,
                                    system_prompt=not args.no_system_prompt, workers=args.workers,
                                    task_timeout=args.task_timeout, parts_dir=parts,
                                    history_length=None if args.history == "full" else int(args.history))
    except ValueError as exc:
        parser.error(str(exc))
    except (FileNotFoundError, ImportError) as exc:  # no data folder / no engine: say so, no traceback
        return error_exit(parser.prog, exc)
    summary["output"] = str(output)
    summary["parts_dir"] = str(parts)
    if rows:
        tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
        try:
            write_parquet(rows, tmp)
            os.replace(tmp, output)
        finally:
            if tmp.exists():
                tmp.unlink()
    summary_path = output.with_name(output.name + ".summary.json")
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("env", "split", "tasks", "kept", "success_rate", "timeouts",
                                             "resumed")}))
    for task_type, stats in summary["per_task_type"].items():
        print(f"  {task_type}: {stats['won']}/{stats['tasks']} ({stats['success_rate']:.1%})")
    if summary["failures"]:
        print(f"  failures: {summary['failures']}")
    print(f"summary -> {summary_path} (finished tasks kept in {parts}; rerun to resume, --fresh to redo)")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
