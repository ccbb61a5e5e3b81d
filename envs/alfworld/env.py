"""ALFWorld (text) on the real TextWorld PDDL engine, behind ``envs.base.TextEnv``.

Episode contract (what ``reset``/``step`` return beyond the base class):

* observation: the engine's text. The first one drops TextWorld's ``-= Welcome to TextWorld, ALFRED! =-`` banner and
  is the room description followed by ``Your task is to: ...``, as in ALFWorld/ReAct/ETO prompts.
* ``reset`` info: ``goal`` (the task sentence), ``admissible_actions`` (the engine's list without ``help``),
  ``anchor``, ``gamefile``, ``task_type`` (one of ALFWorld's six), ``grammar`` (``"put"``: json_2.1.1's
  ``put X in/on Y``; ``"move"``: 2.1.2's ``move X to Y``).
* ``step``: reward 1.0 on the step that wins, else 0.0; ``done`` once won (``max_steps`` truncation is the base
  class's). Info: ``won``, ``executable``, ``anchor``, ``score`` (1.0 if won), ``admissible_actions`` (for the next
  step) and ``command`` (what was sent to the game after the put/move mapping below).
* ``executable`` is False when the command is not in the admissible list before the step. Such a command does not
  reach the engine: the answer is ``Nothing happens.``, which is what the engine itself answers for any command
  outside its list, and the state is unchanged. (The one difference: 2.1.2 games' own ``help`` command, which is
  dropped from the list, answers ``Nothing happens.`` here instead of printing the command list.)
* Put/move variants: when a command is not admissible as written, ``put|move|place X in|on|in/on|into|onto|to Y``
  is rewritten to the loaded game's form (``put X in/on Y`` or ``move X to Y``) if that form is admissible. Every
  other command goes to the game unchanged (no case folding).
* ``anchor`` (for GiGPO's step groups) is an exact world-state key: a hash of the task id and the sorted facts
  that can affect the future (fluents some precondition, the goal or the grammar reads, see
  ``engine._anchor_predicates``): agent location, what it holds, where every object is, what is open, on, clean,
  hot, cool, sliced. Two trajectories of one task that reach the same world state get the same anchor whatever
  the path or the last observation; raw text would alias (``Nothing happens.`` is the same text everywhere) and
  split (``look`` vs arriving describe one state differently). ``anchor="observation"`` gives verl-agent's raw
  observation anchor instead.

Game files are code. TextWorld evaluates the ``{...}`` expressions in a game's grammar and fast-downward runs its
PDDL, so a game file can do what a Python file can. Load only games you trust. A task id is resolved (``..`` and
symlinks included) and must lie under the data root, or under the target of a split folder that is a symlink
(``json_2.1.1/train -> /scratch/...``: the root's own layout), so a dataset row cannot point the env at a game
elsewhere; a symlink further down that leaves is neither listed nor loaded. ``allow_outside_root=True`` (used by tests
for synthetic games in temporary folders) lifts that for trusted callers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path

from envs.alfworld.engine import BANNER, Engine
from envs.alfworld.games import GAME_FILE, GameIndex, resolve_data_dir, task_type_of
from envs.base import NOTHING_HAPPENS, UNKNOWN_TASK_TYPE, TextEnv

_GOAL = re.compile(r"Your task is to:\s*(.*)", re.S)
_PLACE_VERBS = {"put", "move", "place"}
_PLACE_PREPOSITIONS = {"in", "on", "in/on", "into", "onto", "to"}
_ANCHOR_MODES = ("state", "observation")
PLAN_CACHE_VERSION = 1
MAX_PLAN_STEPS = 1000
logger = logging.getLogger(__name__)


def default_plan_cache_dir() -> Path:
    """``$SPA_RL_CACHE/alfworld/plans`` (default ``~/.cache/spa_rl/alfworld/plans``)."""
    root = os.environ.get("SPA_RL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "spa_rl")
    return Path(root) / "alfworld" / "plans"


def read_cached_plan(path: Path) -> list[str] | None:
    """A cached plan: JSON ``{"version": 1, "plan": [command, ...]}``; None (and a warning) for anything else.

    The plan is data, never code: it is parsed with ``json`` and must be a list of short one-line strings, which
    are then only compared with the engine's admissible commands."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        plan = data["plan"] if isinstance(data, dict) and data.get("version") == PLAN_CACHE_VERSION else None
        if not (isinstance(plan, list) and 0 < len(plan) <= MAX_PLAN_STEPS and all(
                isinstance(c, str) and c.strip() and len(c) <= 512 and "\n" not in c for c in plan)):
            raise ValueError("not a list of one-line command strings")
        return list(plan)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("alfworld: ignoring invalid cached plan %s (%s)", path, exc)
        return None


def write_cached_plan(path: Path, plan: list[str]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": PLAN_CACHE_VERSION, "plan": list(plan)}, f)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:  # a read-only cache costs time, not correctness
        logger.warning("alfworld: could not write plan cache %s: %r", path, exc)


class AlfWorldEnv(TextEnv):
    """Text ALFWorld. ``data_dir``: a folder holding ``json_2.1.1/`` (or that folder), else ``$SPA_DATA/alfworld``
    (:mod:`envs.paths`). ``allow_outside_root``: accept task ids that are paths outside the data root (trusted
    callers only: game files are code, see the module docstring). ``plan_cache_dir``: where expert plans are kept
    per game (a JSON list of commands named by the sha256 of the game file, so reruns skip the planner); None =
    :func:`default_plan_cache_dir`, ``False`` = no cache."""

    name = "alfworld"
    step_info_extra = ("command",)

    def __init__(self, data_dir: str | Path | None = None, max_steps: int = 40, anchor: str = "state",
                 allow_outside_root: bool = False, plan_cache_dir: str | Path | None | bool = None):
        super().__init__(max_steps=max_steps)
        self.allow_outside_root = bool(allow_outside_root)
        if plan_cache_dir is True:
            plan_cache_dir = None
        self.plan_cache_dir = None if plan_cache_dir is False else (
            Path(plan_cache_dir).expanduser() if plan_cache_dir else default_plan_cache_dir())
        self._game_hash = ""
        if anchor not in _ANCHOR_MODES:
            raise ValueError(f"alfworld: anchor must be one of {_ANCHOR_MODES}, got {anchor!r}")
        self.anchor_mode = anchor
        self.root = resolve_data_dir(data_dir)
        self.games = GameIndex(self.root)
        self._engine: Engine | None = None  # created on the first reset, reused for every game after
        self._admissible: list[str] = []
        self._place: str | None = None
        self._executed: list[str] = []
        self._key_id = ""

    # ----------------------------------------------------------------- TextEnv
    def list_tasks(self, split: str) -> list[str]:
        return self.games.list_tasks(split, self.allow_outside_root)

    def task_type(self, task_id: str) -> str:
        try:
            return task_type_of(self.games.game_dir(task_id, self.allow_outside_root))
        except ValueError:
            return UNKNOWN_TASK_TYPE

    def _reset(self, task_id: str, seed: int | None) -> tuple[str, dict]:
        game_dir = self.games.game_dir(task_id, self.allow_outside_root)
        if self._engine is None:
            self._engine = Engine()
        self._engine.load(str(game_dir / GAME_FILE))
        self._game_hash = hashlib.sha256((game_dir / GAME_FILE).read_bytes()).hexdigest()
        state = self._engine.reset()
        self._key_id = self.games.relative_id(game_dir)
        self._place = self._engine.place_template()
        self._executed = []
        obs = BANNER.sub("", state.feedback, count=1).strip()
        self._admissible = self._admissible_of(state)
        match = _GOAL.search(obs)
        info = {
            "goal": match.group(1).strip() if match else "",
            "admissible_actions": list(self._admissible),
            "anchor": self._make_anchor(obs),
            "gamefile": str(game_dir / GAME_FILE),
            "grammar": (self._place or "unknown").split(" ", 1)[0],
        }
        return obs, info

    def _step(self, action: str) -> tuple[str, float, bool, dict]:
        command = self.to_game_command(action)
        if command not in self._admissible:
            obs, won, executable = NOTHING_HAPPENS, self._won, False
            anchor = self._anchor
        else:
            state = self._engine.step(command)
            self._executed.append(command)
            obs = state.feedback.strip()
            won = bool(state["won"])
            executable = obs != NOTHING_HAPPENS
            self._admissible = self._admissible_of(state)
            anchor = self._make_anchor(obs)
        info = {
            "won": won,
            "executable": executable,
            "anchor": anchor,
            "score": 1.0 if won else 0.0,
            "admissible_actions": list(self._admissible),
            "command": command,
        }
        return obs, (1.0 if won and not self._won else 0.0), won, info

    def expert_actions(self) -> list[str] | None:
        """The planner's walkthrough from the initial state (the game's stored walkthrough if it has one).

        Plans are cached on disk per game file content (``plan_cache_dir``), so a rerun does not plan again."""
        if self._engine is None or self.task_id is None:
            return None
        cache = self.plan_cache_dir / f"{self._game_hash}.json" if self.plan_cache_dir and self._game_hash else None
        plan = None
        if cache is not None and not self._engine.has_walkthrough():
            plan = read_cached_plan(cache)
        if plan is None:
            if self._executed and not self._engine.has_initial_plan():
                # plan from the initial state, then replay this episode's commands to come back where we were
                self._engine.reset()
                plan = self._engine.initial_plan()
                for command in self._executed:
                    self._engine.step(command)
            else:
                plan = self._engine.initial_plan()
            if cache is not None and not self._engine.has_walkthrough() and plan:
                write_cached_plan(cache, plan)
        return [self._to_place_form(c) for c in plan]

    def _carry_info(self) -> dict:
        return {"admissible_actions": list(self._admissible)}

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        self._done = True

    # ----------------------------------------------------------------- helpers
    def to_game_command(self, action: str) -> str:
        """``action`` as the loaded game understands it (see the module docstring's put/move rule)."""
        if action in self._admissible or not self._place:
            return action
        words = action.split(" ")
        if len(words) < 4 or words[0].lower() not in _PLACE_VERBS:
            return action
        for i in range(2, len(words) - 1):
            if words[i].lower() in _PLACE_PREPOSITIONS:
                candidate = self._place.format(o=" ".join(words[1:i]), r=" ".join(words[i + 1:]))
                if candidate in self._admissible:
                    return candidate
        return action

    def _to_place_form(self, command: str) -> str:
        """A planner/walkthrough command in the game's put grammar (they already are, for the games we know)."""
        match = re.fullmatch(r"(?:put (.+) in/on|move (.+) to) (.+)", command)
        if not match or not self._place:
            return command
        return self._place.format(o=match.group(1) or match.group(2), r=match.group(3))

    @staticmethod
    def _admissible_of(state) -> list[str]:
        return [c for c in state["admissible_commands"] if c != "help"]

    def _make_anchor(self, obs: str) -> str:
        if self.anchor_mode == "observation":
            return obs
        digest = hashlib.blake2b(f"{self._key_id}\n{self._engine.state_key()}".encode(), digest_size=16)
        return f"alfworld:{digest.hexdigest()}"
