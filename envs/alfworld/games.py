"""ALFWorld game files on disk: where the data is, which games a split holds, and each game's task type.

Pure file handling: this module imports neither textworld nor alfworld, so listing tasks works without the engine.

Layout (what ``alfworld-download`` writes, and the shared json_2.1.1 copy)::

    <data_dir>/json_2.1.1/<split>/<task>/<trial>/{traj_data.json, game.tw-pddl}

A task id is the trial folder relative to ``<data_dir>/json_2.1.1``, with ``/`` separators, e.g.
``valid_seen/pick_and_place_simple-Book-None-Sofa-201/trial_T20190908_103648_829231``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path

from envs.base import UNKNOWN_TASK_TYPE

JSON_DIR = "json_2.1.1"
GAME_FILE = "game.tw-pddl"
TRAJ_FILE = "traj_data.json"

# ALFWorld's six task types (alfworld.agents.environment.alfred_tw_env.TASK_TYPES, in its order).
TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)

# AlfredTWEnv's train_eval names -> folder names.
SPLIT_ALIASES = {"eval_in_distribution": "valid_seen", "eval_out_of_distribution": "valid_unseen"}

NO_DATA_HELP = (
    "ALFWorld game files are needed. Put a folder holding "
    f"{JSON_DIR}/<split>/<task>/<trial>/{{{GAME_FILE},{TRAJ_FILE}}} at $SPA_DATA/alfworld (see envs.paths), or pass "
    "data_dir= (that folder, or the json_2.1.1 folder itself). With internet: `pip install alfworld && "
    "alfworld-download` writes 2.1.2 games to ~/.cache/alfworld; pass data_dir=~/.cache/alfworld."
)

logger = logging.getLogger(__name__)

_SOLVABLE = re.compile(rb'"solvable"\s*:\s*(true|false)')


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The ``json_2.1.1`` folder: from ``data_dir``, else ``envs.paths.env_data_dir("alfworld")``; a clear error
    when neither has games."""
    source = "data_dir"
    if data_dir is None:
        from envs.paths import data_root, env_data_dir

        data_dir, source = env_data_dir("alfworld"), "the data root"
        if data_dir is None:
            raise FileNotFoundError(f"No ALFWorld data: data_dir is not given and {data_root() / 'alfworld'} "
                                    f"does not exist. {NO_DATA_HELP}")
    path = Path(os.path.expandvars(os.path.expanduser(str(data_dir))))
    for candidate in (path / JSON_DIR, path):
        if candidate.is_dir() and (candidate.name == JSON_DIR or (candidate / "train").is_dir()
                                   or (candidate / "valid_seen").is_dir()):
            return candidate.resolve()
    raise FileNotFoundError(f"No ALFWorld games under {source} {str(data_dir)!r}. {NO_DATA_HELP}")


def canonical_split(split: str) -> str:
    return SPLIT_ALIASES.get(split, split)


def is_solvable(game_file: Path) -> bool:
    """``"solvable": true`` in a game file (AlfredTWEnv skips games without the key or with false).

    The key is found in the raw bytes: every other value in the file is an escaped JSON string, so an unescaped
    ``"solvable"`` can only be the key, and this is ~20x cheaper than parsing 80 KB of JSON per game.
    """
    match = _SOLVABLE.search(game_file.read_bytes())
    return bool(match) and match.group(1) == b"true"


def task_type_of(game_dir: Path) -> str:
    """The ALFWorld task type of a game folder: its task folder's name prefix, else ``traj_data.json``."""
    for part in (game_dir.parent.name, game_dir.name):
        prefix = part.split("-", 1)[0]
        if prefix in TASK_TYPES:
            return prefix
    try:
        with open(game_dir / TRAJ_FILE, encoding="utf-8") as f:
            return str(json.load(f).get("task_type", UNKNOWN_TASK_TYPE))
    except (OSError, ValueError):
        return UNKNOWN_TASK_TYPE


def _keep(rel_dir: str, game_dir: Path) -> bool:
    """AlfredTWEnv.collect_game_files' filters: no movable/Sliced, a known task type, a solvable game file."""
    if "movable" in rel_dir or "Sliced" in rel_dir:
        return False
    game_file = game_dir / GAME_FILE
    if not game_file.is_file():
        return False
    return task_type_of(game_dir) in TASK_TYPES and is_solvable(game_file)


class GameIndex:
    """The games of each split under one ``json_2.1.1`` folder (scanned once per split, shared per process).

    Where games may lie (:meth:`areas`): under the data root, resolved, and under the resolved target of each split
    folder (a direct child of the root, e.g. ``train -> /scratch/alfworld/train``) that is a symlink: the split
    folders are the root's own layout, placed by whoever assembled it (as the root itself may be a symlink). A
    symlink below a split folder (a task or trial folder) that points anywhere else is refused: it is not listed
    (the count is logged) and a task id through it does not load, unless ``allow_outside_root`` is passed.
    """

    _cache: dict[tuple[str, str, bool], list[str]] = {}
    _lock = threading.Lock()

    def __init__(self, root: Path):
        self.root = Path(root)
        self._areas: dict[str, Path] | None = None

    def splits(self) -> list[str]:
        """Split folders present, plus the aliases whose target is present."""
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
        return found + sorted(alias for alias, target in SPLIT_ALIASES.items() if target in found)

    def areas(self) -> dict[str, Path]:
        """``{"": resolved root, split: resolved target of each symlinked split folder}``: where games may lie."""
        if self._areas is None:
            areas = {"": self.root.resolve()}
            if self.root.is_dir():
                for child in self.root.iterdir():
                    if child.is_symlink() and child.is_dir():
                        areas[child.name] = child.resolve()
            self._areas = areas
        return self._areas

    def _area_of(self, path: Path) -> tuple[str, Path] | None:
        """(split name or "", area) of a resolved path inside one of :meth:`areas`, else None."""
        for name, area in self.areas().items():
            if path == area or area in path.parents:
                return name, area
        return None

    def list_tasks(self, split: str, allow_outside_root: bool = False) -> list[str]:
        name = canonical_split(split)
        split_dir = self.root / name
        if not name or "/" in name or name.startswith(".") or not split_dir.is_dir():
            raise ValueError(f"alfworld: unknown split {split!r} under {self.root}. Available: {self.splits()}")
        key = (str(self.root), name, bool(allow_outside_root))
        with self._lock:
            if key not in self._cache:
                self._cache[key] = sorted(self._scan(split_dir, allow_outside_root))
            return list(self._cache[key])

    def _scan(self, split_dir: Path, allow_outside_root: bool) -> list[str]:
        """The kept games under ``split_dir``, following symlinked folders that stay inside :meth:`areas` (each
        folder once); the ones that leave are skipped and counted in one warning."""
        tasks, seen, refused = [], set(), []
        for dirpath, dirnames, filenames in os.walk(split_dir, followlinks=True):
            real = Path(dirpath).resolve()
            if real in seen:  # a symlink loop, or a folder reached twice
                dirnames[:] = []
                continue
            seen.add(real)
            if not allow_outside_root and self._area_of(real) is None:
                refused.append((dirpath, real))
                dirnames[:] = []
                continue
            if TRAJ_FILE in filenames:
                rel = Path(dirpath).relative_to(self.root).as_posix()
                if _keep(rel, Path(dirpath)):
                    tasks.append(rel)
        if refused:
            logger.warning(
                "alfworld: %d folder(s) under %s are symlinks to places outside the data root %s and its split "
                "folders (first: %s -> %s); their games are not listed, since game files are code. Put the data under "
                "the root (a split folder itself may be a symlink), or pass AlfWorldEnv(allow_outside_root=True) "
                "(env.env_kwargs.allow_outside_root=true) to trust them", len(refused), split_dir,
                self.areas()[""], refused[0][0], refused[0][1])
        return tasks

    def game_dir(self, task_id: str, allow_outside_root: bool = False) -> Path:
        """The folder of a task id (``<split>/<task>/<trial>``, optionally ending in ``/game.tw-pddl``).

        The path is resolved (``..`` and symlinks included) and must lie in one of :meth:`areas` (the data root,
        or a symlinked split folder's target): a game file is code (TextWorld evaluates the ``{...}`` expressions
        of its grammar, and its PDDL drives the planner), so a task id from a dataset row must not load one from
        elsewhere. ``allow_outside_root=True`` also accepts paths outside (e.g. an absolute path to a synthetic game
        built for a test); only trusted code should set it.
        """
        text = str(task_id).strip()
        if text.endswith(GAME_FILE):
            text = text[: -len(GAME_FILE)].rstrip("/\\") or "."
        if not text or "\x00" in text:
            raise ValueError(f"alfworld: invalid task id {task_id!r}")
        path = Path(text)
        candidate = (path if path.is_absolute() else self.root / path).resolve()
        if not allow_outside_root and self._area_of(candidate) is None:
            linked = [f"{n} -> {a}" for n, a in self.areas().items() if n]
            raise ValueError(
                f"alfworld: task id {task_id!r} resolves to {candidate}, outside the data root {self.areas()['']}"
                + (f" and its symlinked split folders ({', '.join(linked)})" if linked else "")
                + "; game files are code and are only loaded from there (AlfWorldEnv(allow_outside_root=True) "
                "lifts this for trusted paths)")
        if (candidate / GAME_FILE).is_file():
            return candidate
        raise ValueError(f"alfworld: no game for task id {task_id!r} (looked for {candidate / GAME_FILE})")

    def relative_id(self, game_dir: Path) -> str:
        """A task id for a game folder: relative to the root (through its split folder when that is a symlink)
        when inside :meth:`areas`, else the absolute path."""
        real = game_dir.resolve()
        found = self._area_of(real)
        if found is None:
            return real.as_posix()
        name, area = found
        rel = real.relative_to(area)
        return (Path(name) / rel).as_posix() if name else rel.as_posix()
