"""Natural-language actions <-> VirtualHome script lines, and object names <-> graph class names.

Pure Python (no simulator import), so it can be tested and imported cheaply.

Actions
-------
``parse_action(text)`` turns one action string into a :class:`ParsedAction`: a script verb (the names of the
evolving_graph ``Action`` enum: ``WALK``, ``GRAB``, ``PUTBACK``, ...) and its object references. The text is
lower-cased, wrapping quotes/backticks and a final ``.``/``!`` are dropped (an ``Action:`` label is not: like
every env, VirtualHome takes the action itself, see ``envs.base``), and the
first template of :data:`TEMPLATES` that matches the whole text wins (two-object templates come first, so
"put cup on table" is PUTBACK while "put on shirt" is PUTON). The raw script syntax is accepted too:
``[PUTBACK] <cup> (1000) <table> (355)``. Text that matches no template -- an unknown verb, or a known verb
with the wrong number of objects ("grab", "stand up chair") -- gives ``None``.

Canonical phrasing (what :func:`to_natural` writes, e.g. for the expert): see :data:`CANONICAL`, e.g.
``walk to kitchen``, ``put cup on table`` (PUTBACK), ``put cup in fridge`` (PUTIN), ``put back cup``
(PUTOBJBACK), ``put on shirt`` (PUTON), ``take off shirt`` (PUTOFF), ``pour milk into cup``, ``plug in
toaster``, ``type on keyboard``, ``sleep``, ``wake up``.

Object references
-----------------
An object name may only hold ASCII letters, digits, spaces, ``_``, ``-`` and ``'`` (:func:`valid_name`); any
other character (a control character, a stray ``\U000e6f13`` or non-ASCII letter inside ``dishwasher``) makes it
no object at all, so garbled model output is not executed. An object is written as its name, optionally followed by a graph node id: ``cup``, ``coffee table`` (==
``coffee_table`` == ``coffeetable``), ``chair 356`` or ``chair (356)``. Names are matched on a compact key
(lower case, letters and digits only), first against the class names and display names of the scene
(:func:`display_name`: ``food_food`` -> ``food``, ``food_kiwi`` -> ``kiwi``, ``clothes_shirt`` -> ``shirt``,
``coffe_maker`` -> ``coffee maker``, ``tvstand`` -> ``tv stand``, ...), and only when nothing matches
against aliases: :data:`ALIASES` (``kitchen`` -> ``dining_room``, ``living room`` -> ``home_office``, ``tv``
-> ``television``, ``fridge`` -> ``freezer``, ...) and VirtualHome's ``class_name_equivalence.json`` in both
directions (``sofa`` -> ``couch``); a plural ``s``/``es`` is dropped when that matches. Which *instance* of
the matching classes is meant is decided by the environment (``envs.virtualhome.env``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ALIASES", "CANONICAL", "TEMPLATES", "NameIndex", "ObjectRef", "ParsedAction", "compact",
           "display_name", "parse_action", "to_natural", "valid_name"]


@dataclass(frozen=True)
class ObjectRef:
    """An object as the agent wrote it: a name and an optional explicit graph node id."""

    name: str
    node_id: int | None = None


@dataclass(frozen=True)
class ParsedAction:
    verb: str  # evolving_graph Action name, e.g. "PUTBACK"
    objects: tuple[ObjectRef, ...] = ()


# script verb -> canonical natural-language template ({} = object names, in script order)
CANONICAL: dict[str, str] = {
    "WALK": "walk to {}", "RUN": "run to {}", "FIND": "find {}", "GRAB": "grab {}",
    "PUTBACK": "put {} on {}", "PUTIN": "put {} in {}", "PUTOBJBACK": "put back {}",
    "OPEN": "open {}", "CLOSE": "close {}", "SWITCHON": "switch on {}", "SWITCHOFF": "switch off {}",
    "SIT": "sit on {}", "STANDUP": "stand up", "LIE": "lie on {}", "LOOKAT": "look at {}",
    "LOOKAT_SHORT": "look at {}", "LOOKAT_LONG": "look at {}", "WATCH": "watch {}", "TURNTO": "turn to {}",
    "POINTAT": "point at {}", "DRINK": "drink {}", "EAT": "eat {}", "WASH": "wash {}", "RINSE": "rinse {}",
    "SCRUB": "scrub {}", "WIPE": "wipe {}", "PUSH": "push {}", "PULL": "pull {}", "MOVE": "move {}",
    "POUR": "pour {} into {}", "PLUGIN": "plug in {}", "PLUGOUT": "plug out {}", "TYPE": "type on {}",
    "READ": "read {}", "TOUCH": "touch {}", "SQUEEZE": "squeeze {}", "PUTON": "put on {}",
    "PUTOFF": "take off {}", "CUT": "cut {}", "SLEEP": "sleep", "WAKEUP": "wake up", "GREET": "greet {}",
    "DROP": "drop {}", "RELEASE": "drop {}",
}
ARITY = {verb: template.count("{}") for verb, template in CANONICAL.items()}

_O = r"(?P<a>.+?)"  # first object
_P = r"(?P<b>.+?)"  # second object
# (regex on the normalised text, verb). Tried in order; the first full match wins.
TEMPLATES: list[tuple[str, str]] = [
    # no object
    (r"(?:stand up|stand|get up|standup)(?: from .+)?", "STANDUP"),
    (r"(?:sleep|go to sleep|fall asleep)", "SLEEP"),
    (r"(?:wake up|wakeup|wake)", "WAKEUP"),
    # put back / put on (clothes) before the two-object puts
    (rf"(?:put|place) back {_O}", "PUTOBJBACK"),
    (rf"(?:put|place) {_O} back(?: in place| to its place| where it was)?", "PUTOBJBACK"),
    # two objects
    (rf"(?:put|place|set|lay|leave) {_O} (?:on top of|onto|on|upon|atop) {_P}", "PUTBACK"),
    (rf"(?:put|place|set|lay|leave|store) {_O} (?:inside of|inside|into|in) {_P}", "PUTIN"),
    (rf"pour {_O} (?:into|in|inside|onto|on|to) {_P}", "POUR"),
    # one object
    (rf"(?:put on|wear|dress in) {_O}", "PUTON"),
    (rf"put {_O} on", "PUTON"),
    (rf"(?:take off|remove|put off) {_O}", "PUTOFF"),
    (rf"take {_O} off", "PUTOFF"),
    (rf"(?:walk to|walk into|walk in|walk towards|walk toward|walk over to|walk|go to|go into|go in|go towards|"
     rf"move to|head to|navigate to|enter|approach) {_O}", "WALK"),
    (rf"(?:run to|run into|run towards|run toward|run) {_O}", "RUN"),
    (rf"(?:find|search for|look for|locate|search) {_O}", "FIND"),
    (rf"(?:switch on|turn on|power on) {_O}", "SWITCHON"),
    (rf"(?:switch|turn|power) {_O} on", "SWITCHON"),
    (rf"(?:switch off|turn off|power off) {_O}", "SWITCHOFF"),
    (rf"(?:switch|turn|power) {_O} off", "SWITCHOFF"),
    (rf"(?:turn to|turn towards|turn toward|face) {_O}", "TURNTO"),
    (rf"pick up {_O}(?: from .+)?", "GRAB"),
    (rf"pick {_O} up(?: from .+)?", "GRAB"),
    (rf"(?:grab|take|get|hold|pick) {_O}(?: from .+)?", "GRAB"),
    (rf"open {_O}", "OPEN"),
    (rf"(?:close|shut) {_O}", "CLOSE"),
    (rf"(?:sit down on|sit down in|sit down at|sit on|sit in|sit at|sit) {_O}", "SIT"),
    (rf"(?:lie down on|lie down in|lay down on|lie on|lie in|lay on|lie) {_O}", "LIE"),
    (rf"(?:look at|look|examine|check|view|inspect) {_O}", "LOOKAT"),
    (rf"watch {_O}", "WATCH"),
    (rf"(?:point at|point to|point towards|point) {_O}", "POINTAT"),
    (rf"(?:drink from|drink) {_O}", "DRINK"),
    (rf"eat {_O}", "EAT"),
    (rf"wash {_O}", "WASH"),
    (rf"rinse {_O}", "RINSE"),
    (rf"scrub {_O}", "SCRUB"),
    (rf"(?:wipe down|wipe off|wipe) {_O}", "WIPE"),
    (rf"push {_O}", "PUSH"),
    (rf"pull {_O}", "PULL"),
    (rf"move {_O}", "MOVE"),
    (rf"plug in {_O}", "PLUGIN"),
    (rf"plug {_O} in", "PLUGIN"),
    (rf"(?:plug out|unplug) {_O}", "PLUGOUT"),
    (rf"plug {_O} out", "PLUGOUT"),
    (rf"(?:type on|type in|type at|type with|type) {_O}", "TYPE"),
    (rf"read {_O}", "READ"),
    (rf"(?:touch|pet|stroke) {_O}", "TOUCH"),
    (rf"squeeze {_O}", "SQUEEZE"),
    (rf"(?:cut|slice|chop) {_O}", "CUT"),
    (rf"(?:greet|say hello to|say hi to|wave to|wave at) {_O}", "GREET"),
    (rf"(?:drop|release|let go of) {_O}", "DROP"),
]
_COMPILED = [(re.compile(pattern), verb) for pattern, verb in TEMPLATES]

_SCRIPT_LINE = re.compile(r"\[\s*([a-z_]+)\s*\](.*)")
_SCRIPT_ARG = re.compile(r"<([^<>]+)>\s*(?:\(\s*(?:\d+\.)?(\d+)\s*\))?")
_NAME_CHARS = re.compile(r"[a-z0-9 _'\-]+")
_ARTICLES = re.compile(r"^(?:the|a|an|some|my|your|this|that)\s+")
_ID_SUFFIX = re.compile(r"^(?P<name>.*?)\s*(?:\(\s*(?P<id1>\d+)\s*\)|#\s*(?P<id2>\d+)|\s(?P<id3>\d+))$")


def _normalise(text: str) -> str:
    text = " ".join(str(text).lower().split())
    text = text.strip(" \t`\"'*_“”‘’")
    text = re.sub(r"[.!?;,]+$", "", text).strip()
    return text


def _object_ref(raw: str) -> ObjectRef | None:
    raw = raw.strip(" \t`\"'*_“”‘’.,;:!?")
    raw = _ARTICLES.sub("", raw).strip()
    node_id = None
    match = _ID_SUFFIX.match(raw)
    if match and match.group("name"):
        number = match.group("id1") or match.group("id2") or match.group("id3")
        raw, node_id = match.group("name").strip(), int(number)
    raw = _ARTICLES.sub("", raw).strip()
    if not raw or len(raw) > 80 or not valid_name(raw):
        return None
    return ObjectRef(raw, node_id)


def valid_name(name: str) -> bool:
    """An object name holds only ASCII letters, digits, spaces, ``_``, ``-`` and ``'`` (case-insensitive)."""
    return _NAME_CHARS.fullmatch(str(name).lower()) is not None


def _parse_script(text: str) -> ParsedAction | None:
    match = _SCRIPT_LINE.fullmatch(text)
    if not match:
        return None
    verb = match.group(1).upper()
    if verb not in ARITY:
        return None
    rest = match.group(2).strip()
    refs = []
    for arg in _SCRIPT_ARG.finditer(rest):
        ref = _object_ref(arg.group(1))
        if ref is None:
            return None
        refs.append(ObjectRef(ref.name, int(arg.group(2)) if arg.group(2) else ref.node_id))
    if _SCRIPT_ARG.sub("", rest).strip() or len(refs) != ARITY[verb]:
        return None
    return ParsedAction(verb, tuple(refs))


def parse_action(text: str) -> ParsedAction | None:
    """The script verb and object references of an action text, or None when no template matches it."""
    text = _normalise(text)
    if not text:
        return None
    if text.startswith("["):
        return _parse_script(text)
    for pattern, verb in _COMPILED:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        groups = match.groupdict()
        names = [g for g in (groups.get("a"), groups.get("b")) if g]
        refs = [_object_ref(name) for name in names]
        if any(ref is None for ref in refs) or len(refs) != ARITY[verb]:
            continue
        return ParsedAction(verb, tuple(refs))  # type: ignore[arg-type]
    return None


def to_natural(verb: str, names: list[str] | tuple[str, ...] = ()) -> str:
    """The canonical text of a script line: ("PUTBACK", ["cup", "table"]) -> "put cup on table"."""
    return CANONICAL[verb].format(*names)


# ----------------------------------------------------------------------------------------------- names
def compact(name: str) -> str:
    """Matching key of a name: lower case, letters and digits only ("Coffee Table" == "coffee_table")."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


# class names whose plain "underscores to spaces" form reads badly
_DISPLAY_OVERRIDES = {
    "food_food": "food", "coffe_maker": "coffee maker", "hands_both": "hands", "cpuscreen": "computer screen",
    "tvstand": "tv stand", "tablelamp": "table lamp", "walllamp": "wall lamp", "ceilinglamp": "ceiling lamp",
    "closetdrawer": "closet drawer", "wallshelf": "wall shelf", "stovefan": "stove fan",
    "powersocket": "power socket", "mousepad": "mouse pad", "creditcard": "credit card",
    "doorjamb": "door jamb", "trashcan": "trash can", "dishrack": "dish rack", "bookshelf": "bookshelf",
}


def display_name(class_name: str) -> str:
    """How a class is written in observations and expert actions (parseable back to the same class):
    underscores become spaces, ``food_``/``clothes_`` prefixes are dropped (``food_kiwi`` -> ``kiwi``,
    ``clothes_shirt`` -> ``shirt``) and a few run-together names are split (:data:`_DISPLAY_OVERRIDES`)."""
    if class_name in _DISPLAY_OVERRIDES:
        return _DISPLAY_OVERRIDES[class_name]
    for prefix in ("food_", "clothes_"):
        if class_name.startswith(prefix) and len(class_name) > len(prefix):
            class_name = class_name[len(prefix):]
            break
    return class_name.replace("_", " ")


# alias (any spelling; compacted on use) -> scene class names it may mean
ALIASES: dict[str, tuple[str, ...]] = {
    "kitchen": ("dining_room",), "living room": ("home_office",), "livingroom": ("home_office",),
    "lounge": ("home_office",), "office": ("home_office",), "study": ("home_office",),
    "bath": ("bathroom",), "restroom": ("bathroom",), "toilet room": ("bathroom",), "bed room": ("bedroom",),
    "tv": ("television",), "telly": ("television",), "sofa": ("couch",), "fridge": ("freezer",),
    "refrigerator": ("freezer",), "remote": ("remote_control",), "tv remote": ("remote_control",),
    "telephone": ("phone",), "cellphone": ("phone",), "cell phone": ("phone",), "mobile phone": ("phone",),
    "pc": ("computer",), "monitor": ("cpuscreen",), "screen": ("cpuscreen",),
    "lamp": ("floor_lamp", "tablelamp", "walllamp", "ceilinglamp", "light"),
    "glass": ("water_glass", "drinking_glass"), "mug": ("coffee_cup", "cup"),
    "cabinet": ("kitchen_cabinet", "bathroom_cabinet", "cupboard", "filing_cabinet"),
    "counter": ("kitchen_counter", "bathroom_counter"), "shelf": ("bookshelf", "wallshelf"),
    "bookcase": ("bookshelf",), "trash": ("trashcan",), "bin": ("trashcan",), "garbage can": ("trashcan",),
    "socket": ("powersocket", "electrical_outlet"), "outlet": ("electrical_outlet", "powersocket"),
    "book": ("novel", "address_book"), "hand": ("hands_both",), "coffee machine": ("coffe_maker",),
    "coffeemaker": ("coffe_maker",), "stove": ("oven",), "drawer": ("closetdrawer",), "shoe": ("shoes",),
    "washer": ("washing_machine",), "computer screen": ("cpuscreen",), "keys": ("keys",),
    "radio": ("stereo", "cd_player"), "music player": ("stereo", "cd_player"), "soap dish": ("soap",),
    "toothpaste": ("tooth_paste",), "dish washer": ("dishwasher",), "towel rack": ("towel_rack",),
}


class NameIndex:
    """Maps an object name to the class names of one scene that it may mean (exact matches win over aliases)."""

    def __init__(self, class_names, equivalence: dict[str, list[str]] | None = None):
        self.classes = sorted(set(class_names))
        present = set(self.classes)
        self._exact: dict[str, list[str]] = {}
        for cls in self.classes:
            for key in {compact(cls), compact(display_name(cls))}:
                self._exact.setdefault(key, []).append(cls)
        alias: dict[str, set[str]] = {}

        def add(name: str, targets) -> None:
            hits = {t for t in targets if t in present}
            if hits:
                alias.setdefault(compact(name), set()).update(hits)

        for name, targets in ALIASES.items():
            add(name, targets)
        for abstract, details in (equivalence or {}).items():  # both directions
            add(abstract, details)
            for detail in details:
                add(detail, [abstract])
        self._alias = {key: sorted(v) for key, v in alias.items()}

    def classes_for(self, name: str) -> list[str]:
        """Scene classes ``name`` may refer to ([] when none)."""
        key = compact(name)
        if not key or not valid_name(name):
            return []
        for candidate in (key, key[:-1] if key.endswith("s") else None, key[:-2] if key.endswith("es") else None):
            if candidate and candidate in self._exact:
                return list(self._exact[candidate])
        for candidate in (key, key[:-1] if key.endswith("s") else None, key[:-2] if key.endswith("es") else None):
            if candidate and candidate in self._alias:
                return list(self._alias[candidate])
        return []
