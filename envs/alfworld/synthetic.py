"""A tiny ALFWorld game built from the PDDL domain and grammar inside the installed ``alfworld`` wheel.

For tests and smoke runs without the ALFWorld data. The game is a bedroom with a bed, a sofa, a drawer (closed, a
cell phone inside) and a side table; a book lies on the bed; the task is ``put a book in sofa.``
(``pick_and_place_simple``). Object names are mangled the way ALFRED's are (``Book_bar__plus_00_dot_30_...``), so
alfworld's demangler shows them as ``book 1``, ``drawer 1``, ...

``grammar="move"`` uses the wheel's files as they are (ALFWorld 2.1.2: ``move X to Y``, plus a ``help`` action).
``grammar="put"`` rewrites them to the json_2.1.1 logic (``put X in/on Y``, ``You arrive at loc N.``, no ``help``),
which is exactly what the json_2.1.1 release's ``logic/`` files differ by.

    from envs.alfworld import AlfWorldEnv, build_synthetic_game
    build_synthetic_game("/tmp/alf")             # -> /tmp/alf/json_2.1.1/valid_seen/pick_and_place_simple-.../trial_...
    env = AlfWorldEnv(data_dir="/tmp/alf")
    obs, info = env.reset(0, split="valid_seen")
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from envs.alfworld.games import GAME_FILE, JSON_DIR, TRAJ_FILE

BOOK = "Book_bar__plus_00_dot_30_bar__plus_00_dot_55_bar__minus_01_dot_20"
PHONE = "CellPhone_bar__minus_00_dot_40_bar__plus_00_dot_78_bar__plus_01_dot_10"
BED = "Bed_bar__minus_01_dot_00_bar__plus_00_dot_00_bar__minus_01_dot_50"
SOFA = "Sofa_bar__plus_01_dot_20_bar__plus_00_dot_00_bar__plus_00_dot_80"
DRAWER = "Drawer_bar__minus_00_dot_40_bar__plus_00_dot_70_bar__plus_01_dot_10"
SIDETABLE = "SideTable_bar__plus_00_dot_90_bar__plus_00_dot_00_bar__minus_01_dot_30"
RECEPTACLES = {BED: "BedType", SOFA: "SofaType", DRAWER: "DrawerType", SIDETABLE: "SideTableType"}
OBJECTS = {BOOK: "BookType", PHONE: "CellPhoneType"}
LOCATIONS = {
    "start": "loc_bar_0_bar_0_bar_0_bar_30",
    BED: "loc_bar__minus_4_bar__minus_6_bar_2_bar_45",
    SOFA: "loc_bar_5_bar_3_bar_1_bar_60",
    DRAWER: "loc_bar__minus_2_bar_4_bar_0_bar_30",
    SIDETABLE: "loc_bar_3_bar__minus_5_bar_2_bar_45",
}
CONTENTS = {BOOK: BED, PHONE: DRAWER}
# Type constants the alfred domain's actions name (its problems must declare them).
DOMAIN_CONSTANTS = {"SinkBasinType": "rtype", "MicrowaveType": "rtype", "FridgeType": "rtype",
                    "KnifeType": "otype", "ButterKnifeType": "otype"}

TASK_DIR = "pick_and_place_simple-Book-None-Sofa-999"
TASK = "put a book in sofa"  # alfworld.gen.goal_library's first pick_and_place_simple template
EXPERT_PLAN = {
    "move": ["go to bed 1", "take book 1 from bed 1", "go to sofa 1", "move book 1 to sofa 1"],
    "put": ["go to bed 1", "take book 1 from bed 1", "go to sofa 1", "put book 1 in/on sofa 1"],
}


def problem_pddl() -> str:
    """The PDDL problem of the synthetic game (alfred domain)."""
    objects = ["agent1 - agent"]
    objects += [f"{name} - {kind}" for name, kind in DOMAIN_CONSTANTS.items()]
    objects += [f"{t} - otype" for t in sorted(set(OBJECTS.values()))]
    objects += [f"{t} - rtype" for t in sorted(set(RECEPTACLES.values()))]
    objects += [f"{o} - object" for o in OBJECTS] + [f"{r} - receptacle" for r in RECEPTACLES]
    objects += [f"{loc} - location" for loc in LOCATIONS.values()]
    init = [f"(atLocation agent1 {LOCATIONS['start']})"]
    init += [f"(receptacleType {r} {t})" for r, t in RECEPTACLES.items()]
    init += [f"(objectType {o} {t})" for o, t in OBJECTS.items()]
    init += [f"(canContain {rt} {ot})" for rt in RECEPTACLES.values() for ot in OBJECTS.values()]
    init += [f"(pickupable {o})" for o in OBJECTS] + [f"(openable {DRAWER})"]
    init += [f"(receptacleAtLocation {r} {LOCATIONS[r]})" for r in RECEPTACLES]
    init += [f"(objectAtLocation {o} {LOCATIONS[r]})" for o, r in CONTENTS.items()]
    init += [f"(inReceptacle {o} {r})" for o, r in CONTENTS.items()]
    goal = """(:goal
        (and
            (exists (?r - receptacle)
                (exists (?o - object)
                    (and
                        (inReceptacle ?o ?r)
                        (objectType ?o BookType)
                        (receptacleType ?r SofaType)
                    )
                )
            )
        )
    )"""
    lines = "\n        ".join
    return (f"(define (problem plan_synthetic_book_on_sofa)\n(:domain alfred)\n(:objects\n        {lines(objects)}\n)\n"
            f"(:init\n        {lines(init)}\n)\n{goal}\n)\n")


def _sub(pattern: str, repl: str, text: str, count: int) -> str:
    new, n = re.subn(pattern, repl, text, flags=re.S)
    if n != count:
        raise RuntimeError(f"synthetic ALFWorld game: the wheel's logic files changed ({pattern!r} matched {n}x)")
    return new


def logic_files(grammar: str = "move") -> tuple[str, str]:
    """(PDDL domain, TextWorld grammar) of the installed wheel, in the 2.1.2 (``move``) or json_2.1.1 (``put``) form."""
    if grammar not in ("move", "put"):
        raise ValueError(f"grammar must be 'move' (ALFWorld 2.1.2) or 'put' (json_2.1.1), got {grammar!r}")
    from envs.alfworld.engine import ALFRED_PDDL_PATH, ALFRED_TWL2_PATH

    domain = Path(ALFRED_PDDL_PATH).read_text(encoding="utf-8")
    twl2 = Path(ALFRED_TWL2_PATH).read_text(encoding="utf-8")
    if grammar == "put":
        twl2 = _sub(r'template :: "move \{o\} to \{r\}";', 'template :: "put {o} in/on {r}";', twl2, 2)
        twl2 = _sub(r"You move the \{o\.name\} to the \{r\.name\}\.", "You put the {o.name} in/on the {r.name}.",
                    twl2, 1)
        twl2 = _sub(r"You arrive at \{r\.name\}\.", "You arrive at {lend.name}.", twl2, 1)
        twl2 = _sub(r'\n\naction help \{.*?\n    """;\n\}\n', "\n", twl2, 1)
        domain = _sub(r"\(:action help\n.*?\n\)\n\n", "", domain, 1)
    return domain, twl2


def build_synthetic_game(data_dir: str | Path, grammar: str = "move", split: str = "valid_seen",
                         walkthrough: list[str] | None = None) -> Path:
    """Write the game under ``<data_dir>/json_2.1.1/<split>/<task>/<trial>/`` and return that folder.

    ``walkthrough``: stored in the game file like 2.1.2 games store theirs (by default none: the planner plans).
    """
    domain, twl2 = logic_files(grammar)
    trial = "trial_T20000101_000000_%06d" % (0 if grammar == "move" else 1)
    game_dir = Path(data_dir) / JSON_DIR / split / TASK_DIR / trial
    game_dir.mkdir(parents=True, exist_ok=True)
    game = {
        "pddl_domain": domain,
        "grammar": _sub(r"UNKNOWN GOAL", TASK, twl2, 1),
        "pddl_problem": problem_pddl(),
        "solvable": True,
    }
    if walkthrough is not None:
        game["walkthrough"] = list(walkthrough)
    traj = {
        "task_id": trial,
        "task_type": "pick_and_place_simple",
        "pddl_params": {"object_target": "Book", "parent_target": "Sofa", "toggle_target": "",
                        "mrecep_target": "", "object_sliced": False},
        "turk_annotations": {"anns": [{"task_desc": "Put the book on the sofa.",
                                       "high_descs": ["Go to the bed.", "Take the book.", "Go to the sofa.",
                                                      "Put the book on the sofa."], "votes": [1]}]},
    }
    (game_dir / GAME_FILE).write_text(json.dumps(game, indent=1), encoding="utf-8")
    (game_dir / TRAJ_FILE).write_text(json.dumps(traj, indent=2), encoding="utf-8")
    return game_dir
