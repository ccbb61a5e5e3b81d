"""``VirtualHomeEnv``: the text VirtualHome environment on virtualhome-eval's evolving_graph simulator.

An episode: ``reset(task_id)`` loads the task's initial graph (scene 1 plus the task's objects), and every
``step`` parses one natural-language action (:mod:`~envs.virtualhome.actions`), resolves its object names to
graph nodes, and runs the resulting script line with the simulator's ``ScriptExecutor.execute_one_step``
(``instance_selection=True``: the node ids we chose are the ones acted on). An action that matches no
template, names an unknown object or fails a precondition changes nothing and is answered ``"Nothing
happens."`` with ``executable=False`` (the reason in ``info["error"]``). The episode is won when the task's
goal (:func:`~envs.virtualhome.tasks.derive_goal`) holds; it then ends with reward 1 (score 1), else reward 0.

Object-instance resolution (name -> node), for a name without an explicit id; the first rule that separates
the candidates (all nodes of the classes the name may mean, character excluded) decides:

1. not an object already chosen for this action (``put cup on cup`` takes two cups when there are two);
2. hands (first object only): ``grab`` prefers objects not yet held, every other action prefers held ones;
3. objects the task's own program uses (the program names the instance the goal is about);
4. objects close to the character;
5. the object most recently acted on;
6. objects in the character's room;
7. the lowest node id (deterministic).

``name <id>`` / ``name (<id>)`` picks node ``<id>`` directly (it must be of a class the name may mean);
observations print ids only where two listed objects share a name.

``info``: ``goal`` = "<title> (<description>)" (the task text; the first observation says "The task is
<goal>."), ``anchor`` (:func:`~envs.virtualhome.observe.anchor_text`), ``admissible_actions`` = None (the
verb x object space has thousands of entries, and listing only valid ones would give away preconditions),
``progress`` = fraction of goal conditions met, ``script`` = the executed script line, ``error`` on a failed
step. The structured goal is ``env.goal`` (:class:`~envs.virtualhome.tasks.Goal`).

Task graphs are parsed once per process and kept in an LRU cache (``cache_size`` tasks, ~0.7 MB each; the
simulator never mutates the base graph: states are overlays), so a repeated reset costs ~1 ms.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from envs.base import NOTHING_HAPPENS, TextEnv
from envs.virtualhome.actions import NameIndex, compact, display_name, parse_action, to_natural
from envs.virtualhome.observe import View, anchor_text, house_text, observation_text
from envs.virtualhome.sim import simulator
from envs.virtualhome.tasks import (ACTION_FAMILIES, Goal, Program, derive_goal, find_data_root, index_tasks,
                                    load_equivalence, normalise_split, read_program, split_tasks, task_type_of)
from envs.virtualhome.tasks import _titles as _task_titles

__all__ = ["VirtualHomeEnv"]


@dataclass
class _Task:
    task_id: str
    program: Program
    goal: Goal
    graph: object  # evolving_graph EnvironmentGraph (never mutated)
    nodes: dict[int, dict]  # id -> {"class_name", "category", "properties"}
    char_id: int
    rooms: list[int]
    by_class: dict[str, list[int]]
    names: NameIndex
    program_nodes: dict[str, list[int]]  # class -> node ids the program uses, in order of first use
    task_nodes: list[int]  # non-room, non-character nodes of the goal and the program

    @property
    def goal_text(self) -> str:
        description = self.program.description.strip().rstrip(".").strip()
        return f"{self.program.title} ({description})" if description else self.program.title


_CACHE: OrderedDict[tuple[str, str], _Task] = OrderedDict()
_CACHE_LOCK = threading.Lock()


@lru_cache(maxsize=8)
def _index(root: str):
    return index_tasks(Path(root))


@lru_cache(maxsize=8)
def _splits(root: str) -> dict[str, list[str]]:
    return split_tasks(_task_titles(root))


@lru_cache(maxsize=8)
def _equivalence(root: str) -> dict[str, list[str]]:
    return load_equivalence(Path(root))


class VirtualHomeEnv(TextEnv):
    """VirtualHome (evolving_graph, scene 1 of virtualhome-eval) as a text environment."""

    name = "virtualhome"
    step_info_extra = ("progress", "script")

    def __init__(self, data_dir: str | Path | None = None, max_steps: int = 40, cache_size: int = 32,
                 show_room: bool = True):
        super().__init__(max_steps=max_steps)
        self.root = find_data_root(data_dir)
        self._root_key = str(self.root)
        self._sim = simulator()
        if not _index(self._root_key):
            raise FileNotFoundError(f"virtualhome: no task (program + graph) under {self.root}")
        self.cache_size = max(1, int(cache_size))
        self.show_room = bool(show_room)
        self._task: _Task | None = None
        self._state = None
        self._executor = None
        self._done_actions: set[int] = set()
        self._mentions: dict[int, int] = {}
        self._room: int | None = None

    # ------------------------------------------------------------------ tasks
    def list_tasks(self, split: str) -> list[str]:
        split = normalise_split(split)
        if split == "all":
            return list(_index(self._root_key))
        return list(_splits(self._root_key)[split])

    def task_type(self, task_id: str) -> str:
        return task_type_of(_task_titles(self._root_key).get(task_id, ""))

    def _load(self, task_id: str) -> _Task:
        key = (self._root_key, task_id)
        with _CACHE_LOCK:
            if key in _CACHE:
                _CACHE.move_to_end(key)
                return _CACHE[key]
        files = _index(self._root_key).get(task_id)
        if files is None:
            raise ValueError(f"virtualhome: unknown task {task_id!r} (see list_tasks('all'))")
        program = read_program(files.program)
        with open(files.graph, encoding="utf-8") as f:
            graphs = json.load(f)
        init, final = graphs["init_graph"], graphs["final_graph"]
        goal = derive_goal(init, final, program)
        graph = self._sim.EnvironmentGraph(init)
        nodes = {int(n["id"]): {"class_name": str(n["class_name"]), "category": n.get("category"),
                                "properties": tuple(n.get("properties", ()))} for n in init["nodes"]}
        char_id = min(i for i, n in nodes.items() if n["class_name"] == "character")
        rooms = sorted(i for i, n in nodes.items() if n["category"] == "Rooms")
        by_class: dict[str, list[int]] = {}
        for i in sorted(nodes):
            by_class.setdefault(nodes[i]["class_name"], []).append(i)
        program_nodes: dict[str, list[int]] = {}
        for step in program.steps:
            for _, node_id in step.objects:
                if node_id in nodes:
                    ids = program_nodes.setdefault(nodes[node_id]["class_name"], [])
                    if node_id not in ids:
                        ids.append(node_id)
        task_nodes = sorted(({i for ids in program_nodes.values() for i in ids} | goal.node_ids())
                            - set(rooms) - {char_id})
        task = _Task(task_id, program, goal, graph, nodes, char_id, rooms, by_class,
                     NameIndex(by_class, _equivalence(self._root_key)), program_nodes,
                     [i for i in task_nodes if i in nodes])
        with _CACHE_LOCK:
            _CACHE[key] = task
            while len(_CACHE) > self.cache_size:
                _CACHE.popitem(last=False)
        return task

    # ------------------------------------------------------------------ episode
    def _view(self) -> View:
        return View(self._sim, self._state, self._task.char_id, self._task.nodes)

    def _reset(self, task_id: str, seed: int | None) -> tuple[str, dict]:
        task = self._load(task_id)
        sim = self._sim
        equivalence = _equivalence(self._root_key)
        self._task = task
        self._state = sim.EnvironmentState(task.graph, equivalence, instance_selection=True)
        self._executor = sim.ScriptExecutor(task.graph, equivalence)
        self._done_actions, self._mentions = set(), {}
        view = self._view()
        self._room = view.room()
        obs = "\n".join(x for x in (f"The task is {task.goal_text}.", house_text(view, task.rooms),
                                    observation_text(view, show_room=True)) if x)
        won, progress = self._check(view)
        info = {"goal": task.goal_text, "anchor": self._anchor_of(view), "admissible_actions": None,
                "progress": progress, "won": won}
        return obs, info

    def _step(self, action: str) -> tuple[str, float, bool, dict]:
        task = self._task
        if task is None:
            return NOTHING_HAPPENS, 0.0, False, {"executable": False, "error": "no task loaded"}
        parsed = parse_action(action)
        if parsed is None:
            return self._nothing("unknown action (no action template matches)")
        view = self._view()
        ids: list[int] = []
        for position, ref in enumerate(parsed.objects):
            node_id = self._resolve(view, ref.name, ref.node_id, parsed.verb, position, ids)
            if node_id is None:
                suffix = f" {ref.node_id}" if ref.node_id is not None else ""
                return self._nothing(f"unknown object {ref.name!r}{suffix}")
            ids.append(node_id)
        sim = self._sim
        line = sim.ScriptLine(sim.Action[parsed.verb],
                              [sim.ScriptObject(task.nodes[i]["class_name"], i) for i in ids], 0)
        self._executor.info = sim.ExecutionInfo()
        try:
            ok, new_state = self._executor.execute_one_step(sim.Script([line]), self._state)
        except Exception as exc:  # simulator bugs (e.g. None nodes) are failed actions, not crashes
            return self._nothing(f"simulator error: {exc!r}", script=str(line))
        if not ok or new_state is None:
            reason = self._executor.info.get_error_string() or "precondition failed"
            return self._nothing(reason, script=str(line))
        self._state = new_state
        for i in ids:
            self._mentions[i] = self._steps
        family = ACTION_FAMILIES.get(parsed.verb)
        if family is not None:
            for k, (fam, node) in enumerate(task.goal.actions):
                if fam == family and (node is None or (ids and node == ids[0])):
                    self._done_actions.add(k)
        view = self._view()
        room = view.room()
        room_changed = room != self._room
        self._room = room
        names = [f"the {display_name(task.nodes[i]['class_name'])}" for i in ids]
        feedback = f"You {to_natural(parsed.verb, names)}."
        obs = observation_text(view, feedback, show_room=self.show_room and room_changed)
        won, progress = self._check(view)
        info = {"won": won, "executable": True, "anchor": self._anchor_of(view), "score": 1.0 if won else 0.0,
                "progress": progress, "script": str(line).rsplit(" [", 1)[0]}
        return obs, (1.0 if won else 0.0), won, info

    def _carry_info(self) -> dict:
        return {"progress": self._check(self._view())[1]} if self._task is not None else {}

    def _nothing(self, error: str, script: str | None = None) -> tuple[str, float, bool, dict]:
        info = {"executable": False, "error": error, "progress": self._check(self._view())[1]}
        if script:
            info["script"] = script.rsplit(" [", 1)[0]
        return NOTHING_HAPPENS, 0.0, False, info

    # ------------------------------------------------------------------ resolution
    def _resolve(self, view: View, name: str, node_id: int | None, verb: str, position: int,
                 chosen: list[int]) -> int | None:
        task = self._task
        classes = task.names.classes_for(name)
        if node_id is not None:
            node = task.nodes.get(node_id)
            if node is None or node_id == task.char_id:
                return None
            ok = node["class_name"] in classes or compact(name) in {compact(node["class_name"]),
                                                                     compact(display_name(node["class_name"]))}
            return node_id if ok else None
        candidates = [i for c in classes for i in task.by_class.get(c, ()) if i != task.char_id]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        held, close, room = set(view.held()), view.close(), view.room()
        program = {i for ids in task.program_nodes.values() for i in ids}
        if position > 0:  # put/pour destination: no preference on hands
            hand = lambda i: False  # noqa: E731
        elif verb == "GRAB":
            hand = lambda i: i in held  # noqa: E731
        else:
            hand = lambda i: i not in held  # noqa: E731

        def rank(i: int):
            return (i in chosen, hand(i), i not in program, i not in close,
                    -self._mentions.get(i, -1), view.room_of(i) != room, i)

        return min(candidates, key=rank)

    # ------------------------------------------------------------------ goal
    @property
    def goal(self) -> Goal | None:
        """The structured goal of the current task."""
        return self._task.goal if self._task is not None else None

    def goal_status(self) -> list[tuple[str, bool]]:
        """Each goal condition (readable) and whether it holds now."""
        view, goal = self._view(), self._task.goal
        flags = [self._state_ok(view, c) for c in goal.states] + [self._rel_ok(view, c) for c in goal.relations]
        flags += [k in self._done_actions for k in range(len(goal.actions))]
        return list(zip(goal.describe(), flags))

    @staticmethod
    def _state_ok(view: View, cond) -> bool:
        node, state, must = cond
        return (state in view.states(node)) == must

    @staticmethod
    def _rel_ok(view: View, cond) -> bool:
        a, relation, b, must = cond
        return view.has(a, relation, b) == must

    def _check(self, view: View) -> tuple[bool, float]:
        goal = self._task.goal
        met = sum(self._state_ok(view, c) for c in goal.states) + sum(self._rel_ok(view, c) for c in goal.relations)
        met += len(self._done_actions)
        total = len(goal)
        return (total > 0 and met == total), (met / total if total else 0.0)

    def _anchor_of(self, view: View) -> str:
        return anchor_text(view, self._task.task_nodes, sorted(self._done_actions))

    # ------------------------------------------------------------------ expert
    def expert_actions(self) -> list[str] | None:
        """The task's own program as natural-language actions (ids only where the program uses two instances
        of one class)."""
        task = self._task
        if task is None:
            return None
        out = []
        for step in task.program.steps:
            if step.verb not in self._sim.Action.__members__:
                return None
            names = []
            for _, node_id in step.objects:
                cls = task.nodes[node_id]["class_name"] if node_id in task.nodes else None
                if cls is None:
                    return None
                name = display_name(cls)
                names.append(f"{name} {node_id}" if len(task.program_nodes.get(cls, ())) > 1 else name)
            out.append(to_natural(step.verb, names))
        return out

    def close(self) -> None:
        self._task = self._state = self._executor = None
