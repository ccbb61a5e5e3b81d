"""Reading a simulator state: a small query view, the observation text and the GiGPO anchor.

Observation (one line each, empty lines dropped)::

    You walk to the couch.                                  <- what the last action did (not at reset)
    You are in the home office.
    The home office has: bookshelf, chair, computer, ...    <- at reset and whenever the room changes
    Near you: couch, remote control (on couch), television (off).
    You are sitting on the couch.                           <- pose, when sitting or lying
    You have remote control.                                <- held objects, when any

"Near you" lists the objects the character is CLOSE to (held ones excepted), with their states (on/off,
open/closed, plugged in/unplugged, dirty; clean is the default and not shown) and where they are (on/in a
non-room object other than the floor). Walls, floors, ceilings, rooms, the character and body parts (hair,
face, hands, teeth: always close after a walk) are never listed. Names are
:func:`~envs.virtualhome.actions.display_name`; when a listing holds two objects of one name, each gets its
node id ("chair 356, chair 357"), which the agent may write to pick one ("sit on chair 357"). The room
listing hides objects inside a closed container.

Anchor (GiGPO's state key; equal anchors = equal task-relevant state)::

    room=<room class>|pose=<SITTING/LYING + furniture id>|hold=<held ids>|near=<task nodes close to the character>
    |nodes=<task node: sorted states>;...|rels=<task node ON/INSIDE target>;...|done=<action conditions done>

where the *task nodes* are the non-room objects of the goal and of the task's program. Everything is sorted,
so the anchor does not depend on the order actions were taken in.
"""

from __future__ import annotations

from envs.virtualhome.actions import display_name

__all__ = ["HIDDEN_CATEGORIES", "ROOM_NOTES", "View", "anchor_text", "observation_text", "room_listing"]

HIDDEN_CATEGORIES = frozenset({"Walls", "Ceiling", "Floor", "Floors", "Rooms", "Characters"})
ROOM_NOTES = {"dining_room": "the kitchen", "home_office": "the living room"}  # scene-1 room classes
_STATE_TEXT = {"ON": "on", "OFF": "off", "OPEN": "open", "CLOSED": "closed", "PLUGGED_IN": "plugged in",
               "PLUGGED_OUT": "unplugged", "DIRTY": "dirty"}
_NOT_PLACES = frozenset({"floor", "rug"})


class View:
    """Read-only queries on an evolving_graph ``EnvironmentState`` (node ids in, plain Python out)."""

    def __init__(self, sim, state, char_id: int, nodes: dict[int, dict]):
        self.sim, self.state, self.char_id, self.nodes = sim, state, char_id, nodes

    def cls(self, node_id: int) -> str:
        return self.nodes[node_id]["class_name"]

    def states(self, node_id: int) -> set[str]:
        node = self.state.get_node(node_id)
        return {s.name for s in node.states} if node is not None else set()

    def targets(self, node_id: int, relation: str) -> set[int]:
        if relation == "HOLDS":
            return self.targets(node_id, "HOLDS_RH") | self.targets(node_id, "HOLDS_LH")
        return set(self.state.get_node_ids_from(node_id, self.sim.Relation[relation]))

    def has(self, a: int, relation: str, b: int) -> bool:
        return b in self.targets(a, relation)

    def held(self) -> list[int]:
        return sorted(self.targets(self.char_id, "HOLDS"))

    def room(self) -> int | None:
        rooms = [i for i in self.targets(self.char_id, "INSIDE") if self.nodes.get(i, {}).get("category") == "Rooms"]
        return min(rooms) if rooms else None

    def room_of(self, node_id: int) -> int | None:
        seen, frontier = set(), [node_id]
        while frontier:
            current = frontier.pop()
            if current in seen:
                continue
            seen.add(current)
            inside = self.targets(current, "INSIDE")
            rooms = [i for i in inside if self.nodes.get(i, {}).get("category") == "Rooms"]
            if rooms:
                return min(rooms)
            frontier.extend(sorted(inside))
        return None

    def close(self) -> set[int]:
        return self.targets(self.char_id, "CLOSE")

    def pose(self) -> tuple[str, int | None] | None:
        states = self.states(self.char_id)
        for pose in ("SITTING", "LYING"):
            if pose in states:
                on = sorted(i for i in self.targets(self.char_id, "ON") if i in self.nodes)
                return pose, (on[0] if on else None)
        return None

    def listable(self, node_id: int) -> bool:
        node = self.nodes.get(node_id)
        return (node is not None and node_id != self.char_id and node.get("category") not in HIDDEN_CATEGORIES
                and "BODY_PART" not in node.get("properties", ()))

    def hidden_inside(self, node_id: int) -> bool:
        """Inside a closed non-room container."""
        return any(self.nodes.get(c, {}).get("category") != "Rooms" and "CLOSED" in self.states(c)
                   for c in self.targets(node_id, "INSIDE"))

    def place(self, node_id: int) -> str:
        for relation, word in (("ON", "on"), ("INSIDE", "in")):
            where = sorted(i for i in self.targets(node_id, relation)
                           if self.listable(i) and self.cls(i) not in _NOT_PLACES)
            if where:
                return f"{word} {display_name(self.cls(where[0]))}"
        return ""


def _names(view: View, ids: list[int]) -> dict[int, str]:
    """Display names, with the node id appended where two listed objects share a name."""
    base = {i: display_name(view.cls(i)) for i in ids}
    counts: dict[str, int] = {}
    for name in base.values():
        counts[name] = counts.get(name, 0) + 1
    return {i: (f"{n} {i}" if counts[n] > 1 else n) for i, n in base.items()}


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def room_name(view: View, room: int | None) -> str:
    return display_name(view.cls(room)) if room is not None else "house"


def room_listing(view: View, room: int | None, limit: int = 60) -> str:
    if room is None:
        return ""
    ids = [i for i in view.nodes if view.listable(i) and view.has(i, "INSIDE", room) and not view.hidden_inside(i)]
    names = sorted({display_name(view.cls(i)) for i in ids})
    if not names:
        return ""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"The {room_name(view, room)} has: {', '.join(names[:limit])}{more}."


def near_listing(view: View, limit: int = 30) -> str:
    held = set(view.held())
    ids = sorted(i for i in view.close() if view.listable(i) and i not in held)
    if not ids:
        return ""
    names = _names(view, ids)
    items = []
    for i in sorted(ids, key=lambda i: (names[i], i))[:limit]:
        details = ", ".join(_STATE_TEXT[s] for s in sorted(view.states(i)) if s in _STATE_TEXT)
        place = view.place(i)
        details = "; ".join(x for x in (details, place) if x)
        items.append(names[i] + (f" ({details})" if details else ""))
    return "Near you: " + ", ".join(items) + "."


def observation_text(view: View, feedback: str = "", show_room: bool = False) -> str:
    room = view.room()
    lines = [feedback, f"You are in the {room_name(view, room)}."]
    if show_room:
        lines.append(room_listing(view, room))
    lines.append(near_listing(view))
    pose = view.pose()
    if pose is not None:
        verb = "sitting" if pose[0] == "SITTING" else "lying"
        lines.append(f"You are {verb} on the {display_name(view.cls(pose[1]))}." if pose[1] is not None
                     else f"You are {verb}.")
    held = view.held()
    if held:
        names = _names(view, held)
        lines.append(f"You have {_join([names[i] for i in held])}.")
    return "\n".join(line for line in lines if line)


def house_text(view: View, rooms: list[int]) -> str:
    names = []
    for room in sorted(rooms, key=lambda r: view.cls(r)):
        note = ROOM_NOTES.get(view.cls(room))
        names.append(display_name(view.cls(room)) + (f" ({note})" if note else ""))
    return f"The house has {len(names)} rooms: {', '.join(names)}." if names else ""


def anchor_text(view: View, task_nodes: list[int], done: list[int]) -> str:
    room = view.room()
    pose = view.pose()
    close = view.close()
    nodes, rels = [], []
    for i in task_nodes:
        nodes.append(f"{i}:{','.join(sorted(view.states(i)))}")
        for relation in ("ON", "INSIDE"):
            for j in sorted(view.targets(i, relation)):
                if view.nodes.get(j, {}).get("category") != "Rooms":
                    rels.append(f"{i}>{relation}>{j}")
    return "|".join([
        f"room={view.cls(room) if room is not None else ''}",
        f"pose={pose[0] + ':' + str(pose[1]) if pose else ''}",
        f"hold={','.join(map(str, view.held()))}",
        f"near={','.join(str(i) for i in task_nodes if i in close)}",
        f"nodes={';'.join(nodes)}",
        f"rels={';'.join(rels)}",
        f"done={','.join(map(str, sorted(done)))}",
    ])
