"""The one interface every environment adapter implements.

Modelled on gymnasium's ``Env``: ``reset`` returns ``(observation, info)`` and ``step`` returns
``(observation, reward, done, info)``; everything is text. Adapters implement ``_reset`` and ``_step``;
this base class owns the invariants the trainer relies on, so no adapter has to re-implement them:

* ``step`` never raises, whatever the action string (an engine error becomes a non-executable step);
* every step's ``info`` of one env has the same key set, on every path (engine steps, invalid or empty actions,
  steps after the end): ``STEP_INFO_KEYS`` (``won``, ``executable``, ``anchor``, ``score``, ``step``,
  ``truncated``), ``error`` (None when the step had none) and ``admissible_actions`` (None where the env has no
  list), plus the adapter's ``step_info_extra`` keys (None on a path that has no value for them);
* the episode ends after ``max_steps`` steps (``truncated=True``);
* stepping a finished episode is a non-executable no-op, not a crash.

What ``step`` takes is an action, not a model reply (``envs.actions.parse_action`` turns a reply into an action).
Two kinds of text are therefore never executable, in every env, and change nothing:

* text that starts with an ``Action:`` label (any case, after markdown such as ``**``): a parsed reply never
  does, so it means the reply was garbled (``Action: Action: go to desk 1``);
* text holding control, format, private-use, unassigned or surrogate characters (Unicode categories Cc other
  than tab/newline/carriage return, Cf, Co, Cn, Cs), e.g. ``switch on dishw\U000e6f13asher``: garbled model
  output, which an engine's own matching might otherwise drop and execute.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from abc import ABC, abstractmethod
from typing import Any

logger = logging.getLogger(__name__)

NOTHING_HAPPENS = "Nothing happens."
UNKNOWN_TASK_TYPE = "unknown"  # what task_type() says when the env cannot tell (ALFWorld: a game it cannot read)
MAX_ACTION_CHARS = 512  # longer actions are cut before they reach an engine (no engine needs more)

# Keys every step info dict has (the agent loop and the estimators read them).
STEP_INFO_KEYS = ("won", "executable", "anchor", "score", "step", "truncated")
# ... and these, on every env's step info too (None when a step has no value)
COMMON_STEP_INFO_KEYS = STEP_INFO_KEYS + ("error", "admissible_actions")

_ACTION_LABEL = re.compile(r"^\W*action\s*:", re.IGNORECASE)
_GARBLED_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cn", "Cs"})
_ALLOWED_CONTROLS = frozenset("\t\n\r")


def garbled_reason(action_text: str) -> str | None:
    """Why ``action_text`` cannot be an action (module docstring), or None when it can."""
    for ch in action_text:
        if ch in _ALLOWED_CONTROLS or ch.isascii() and ch.isprintable():
            continue
        category = unicodedata.category(ch)
        if category in _GARBLED_CATEGORIES:
            return f"garbled action: character U+{ord(ch):04X} (category {category}) is not allowed in an action"
    if _ACTION_LABEL.match(action_text):
        return ("the action starts with an 'Action:' label: pass the action itself "
                "(envs.actions.parse_action extracts it from a reply)")
    return None


def clean_action(action_text: Any) -> str:
    """Normalise whatever the model produced into a single-line action string an engine can take."""
    if action_text is None:
        return ""
    text = str(action_text).replace("\x00", " ")
    text = " ".join(text.split())  # collapse newlines/tabs/runs of spaces
    return text[:MAX_ACTION_CHARS]


class TextEnv(ABC):
    """A text environment. Subclasses set ``name`` and implement ``_reset``/``_step``/``list_tasks``."""

    name: str = "base"
    step_info_extra: tuple[str, ...] = ()  # adapter keys on every step's info (see the module docstring)

    def __init__(self, max_steps: int = 40):
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.max_steps = int(max_steps)
        self._steps = 0
        self._done = True
        self._won = False
        self._score = 0.0
        self._anchor = ""
        self.task_id: str | None = None

    # ----------------------------------------------------------------- to implement
    @abstractmethod
    def list_tasks(self, split: str) -> list[str]:
        """Task ids of a split (e.g. 'train', 'valid_seen', 'test'); raise ValueError for unknown splits."""

    @abstractmethod
    def _reset(self, task_id: str, seed: int | None) -> tuple[str, dict]:
        """Start ``task_id``. Return the first observation and an info dict with at least
        ``goal`` (str), ``anchor`` (str) and ``admissible_actions`` (list[str] or None)."""

    @abstractmethod
    def _step(self, action: str) -> tuple[str, float, bool, dict]:
        """Apply a cleaned action. Return obs, reward, done and info with at least
        ``won``, ``executable``, ``anchor``, ``score``."""

    def expert_actions(self) -> list[str] | None:
        """Actions of an expert that solves the current task from its initial state (None if unknown)."""
        return None

    def task_type(self, task_id: str) -> str:
        """A coarse task category, used for per-type success metrics."""
        return self.name

    def close(self) -> None:
        """Release engine resources."""

    def step_info_keys(self) -> tuple[str, ...]:
        """The key set of every step info of this env."""
        return COMMON_STEP_INFO_KEYS + tuple(k for k in self.step_info_extra if k not in COMMON_STEP_INFO_KEYS)

    def _carry_info(self) -> dict:
        """Adapter info (e.g. ``admissible_actions``) to repeat on the steps the base class answers itself (empty
        or unparseable action, step after done), so every step's info has the same shape whatever the model wrote."""
        return {}

    def _no_op(self, reason: str) -> tuple[str, dict]:
        """Observation and info for a step that changed nothing (empty or unparseable action).

        Adapters override this to show the current page/room again."""
        return NOTHING_HAPPENS, self._carry_info()

    # ----------------------------------------------------------------- public API
    def reset(self, task: str | int | None = None, seed: int | None = None, split: str = "train") -> tuple[str, dict]:
        """Start an episode. ``task`` is a task id, an index into ``list_tasks(split)``, or None (seeded pick)."""
        task_id = self._resolve_task(task, seed, split)
        obs, info = self._reset(task_id, seed)
        self.task_id = task_id
        self._steps, self._done, self._won, self._score = 0, False, False, 0.0
        self._anchor = str(info.get("anchor", obs))
        info = dict(info)
        info.setdefault("admissible_actions", None)
        info.update(task_id=task_id, task_type=self.task_type(task_id), anchor=self._anchor, step=0)
        return obs, info

    def step(self, action_text: Any) -> tuple[str, float, bool, dict]:
        """Apply one action. Never raises; see the module docstring for the guarantees."""
        if self._done:
            return self._finished_step("The episode is over.")
        action = clean_action(action_text)
        refused = "empty action" if not action else garbled_reason(str(action_text))
        if refused:
            obs, info = self._no_op(refused)
            reward, done, info = 0.0, False, {**info, "executable": False, "error": refused}
        else:
            try:
                obs, reward, done, info = self._step(action)
            except Exception as exc:  # an engine bug must end in a failed step, not a crashed rollout
                logger.warning("%s engine error on action %r: %r", self.name, action[:80], exc)
                obs, reward, done = NOTHING_HAPPENS, 0.0, False
                info = {**self._carry_info(), "executable": False, "error": repr(exc)}
        return self._finish(obs, reward, done, info)

    def invalid_step(self, reason: str = "invalid action format") -> tuple[str, float, bool, dict]:
        """Spend a step on output that held no parseable action (it is an invalid action, not a crash)."""
        if self._done:
            return self._finished_step("The episode is over.")
        obs, info = self._no_op(f"your response had no valid action: {reason}")
        return self._finish(obs, 0.0, False, {**info, "executable": False, "error": reason})

    # ----------------------------------------------------------------- internals
    def _finish(self, obs: str, reward: float, done: bool, info: dict) -> tuple[str, float, bool, dict]:
        self._steps += 1
        info = dict(info)
        self._won = bool(info.get("won", self._won))
        self._score = float(info.get("score", self._score))
        if "anchor" in info:
            self._anchor = str(info["anchor"])
        truncated = not done and self._steps >= self.max_steps
        self._done = bool(done) or truncated
        info.update(
            won=self._won,
            executable=bool(info.get("executable", False)),
            anchor=self._anchor,
            score=self._score,
            step=self._steps,
            truncated=truncated,
        )
        return str(obs), float(reward), self._done, self._complete(info)

    def _complete(self, info: dict) -> dict:
        for key in self.step_info_keys():
            info.setdefault(key, None)
        return info

    def _finished_step(self, obs: str) -> tuple[str, float, bool, dict]:
        info = dict(self._carry_info(), won=self._won, executable=False, anchor=self._anchor, score=self._score,
                    step=self._steps, truncated=False, error="step after done")
        return obs, 0.0, True, self._complete(info)

    def _resolve_task(self, task: str | int | None, seed: int | None, split: str) -> str:
        if isinstance(task, str):
            return task
        tasks = self.list_tasks(split)
        if not tasks:
            raise ValueError(f"{self.name}: split {split!r} has no tasks; check the data path")
        if task is None:
            import random

            return tasks[random.Random(seed).randrange(len(tasks))]
        if not 0 <= int(task) < len(tasks):
            raise ValueError(f"{self.name}: task index {task} out of range for split {split!r} ({len(tasks)} tasks)")
        return tasks[int(task)]

    @property
    def done(self) -> bool:
        return self._done

    @property
    def steps(self) -> int:
        return self._steps
