"""The TextWorld side of the ALFWorld adapter: the one module that imports textworld, fast_downward and alfworld.

The engine is textworld's ``PddlEnv`` (fast-downward for the PDDL state and planner, textworld's context-sensitive
grammar for the text) wrapped in alfworld's ``AlfredDemangler`` (``Book_bar__plus_00_dot_30...`` -> ``book 1``),
which is what alfworld's ``AlfredTWEnv`` builds. Each game loads with the domain and grammar inside its own
``game.tw-pddl``, so json_2.1.1 (``put X in/on Y``) and 2.1.2 (``move X to Y``) games both play as released.

textworld's own ``load``/``reset``/``step`` run unchanged; four of the functions they call are answered from caches
while an ``Engine`` method runs (a thread-local switch: any other use of textworld in the process sees the
originals). None changes any text or list the engine produces (the tests compare with the stock engine):

* ``fast_downward.pddl2sas`` (seen from ``textworld.envs.pddl.logic``): ``load`` and ``reset`` each translate the
  game's PDDL twice, plain and optimised for the planner (0.1 s for a bathroom, several seconds for a kitchen).
  Here the plain translation is made once per game and kept in a per-process LRU (so envs of one process that
  reset the same game share it); the planner's is made only when a plan is asked for.
* ``GameLogic``: the grammar (~12 KB of twl2 parsed by TatSu, ~0.3 s) differs between games only in its ``task``
  rule, so it is parsed once per (domain, grammar without the task) and each game gets a copy with its own task.
* textgen's ``_parse_and_convert`` and ``Rule.parse_conjunctive_query``: every step derives each admissible command
  and the feedback through the grammar, re-parsing the same short templates and conditions with TatSu (most of a
  ~0.1-0.2 s step). Both are pure; they are memoised (parsed symbols are handed out as deep copies, because
  derivation mutates them).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
import sys
import threading
from collections import OrderedDict, defaultdict
from contextlib import contextmanager


def _import_alfworld():
    """Import alfworld's demangler without its side effect on ``$ALFWORLD_DATA``.

    ``import alfworld`` sets ``os.environ["ALFWORLD_DATA"]`` to ``~/.cache/alfworld`` when it is unset (and creates
    that folder). We undo the variable, so that our data-dir resolution can still tell "not configured" apart.
    """
    before = os.environ.get("ALFWORLD_DATA")
    try:
        import alfworld.info as alfworld_info
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
    finally:
        if before is None:
            os.environ.pop("ALFWORLD_DATA", None)
        else:
            os.environ["ALFWORLD_DATA"] = before
    return alfworld_info, AlfredDemangler


alfworld_info, AlfredDemangler = _import_alfworld()

import fast_downward  # noqa: E402
import textworld  # noqa: E402
import textworld.envs.pddl.textgen as _textgen  # noqa: E402
from textworld.envs.pddl import PddlEnv  # noqa: E402
from textworld.envs.pddl import logic as _logic  # noqa: E402
from textworld.utils import check_flag  # noqa: E402

ALFRED_PDDL_PATH = alfworld_info.ALFRED_PDDL_PATH
ALFRED_TWL2_PATH = alfworld_info.ALFRED_TWL2_PATH

BANNER = re.compile(r"^\s*-= Welcome to TextWorld, ALFRED! =-\s*")
_TASK_RULE = re.compile(r'"task"\s*:\s*\[\s*\{\s*"rhs"\s*:\s*"((?:[^"\\]|\\.)*)"\s*\}\s*\]')
_TASK_PLACEHOLDER = "__SPA_RL_TASK__"
_CACHE_SIZE = 32  # games whose translation / parsed grammar stay in memory (~5 MB each for a kitchen)

_local = threading.local()


def _active() -> bool:
    return getattr(_local, "depth", 0) > 0


@contextmanager
def _engine_calls():
    """Route textworld's calls through the caches below, for this thread, for the duration."""
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


class _LRU:
    def __init__(self, size: int):
        self.size, self.data, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key, make):
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
        value = make()
        with self.lock:
            self.data[key] = value
            while len(self.data) > self.size:
                self.data.popitem(last=False)
        return value


def _digest(*texts: str) -> str:
    h = hashlib.blake2b(digest_size=20)
    for text in texts:
        h.update(text.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- translations
class Translation:
    """fast-downward's translation of one (domain, problem); the planner's own is made on first use."""

    def __init__(self, domain: str, problem: str):
        self.domain, self.problem = domain, problem
        self.task, self.sas = self._pddl2sas(optimize=False)
        self._sas_replan: str | None = None
        self.initial_plan: list[str] | None = None  # the plan from the initial state, once asked for

    def _pddl2sas(self, optimize: bool):
        argv = sys.argv  # fast_downward.pddl2sas overwrites sys.argv (a hack for its option parser)
        try:
            return fast_downward.pddl2sas(self.domain, self.problem, verbose=check_flag("TW_PDDL_DEBUG"),
                                          optimize=optimize)
        finally:
            sys.argv = argv

    def replan_sas(self) -> str:
        if self._sas_replan is None:
            self._sas_replan = self._pddl2sas(optimize=True)[1]
        return self._sas_replan


_TRANSLATIONS = _LRU(_CACHE_SIZE)


def translation_of(domain: str, problem: str) -> Translation:
    return _TRANSLATIONS.get(_digest(domain, problem), lambda: Translation(domain, problem))


class _FastDownwardSeenByTextworld:
    """Stands in for the ``fast_downward`` module inside ``textworld.envs.pddl.logic``."""

    def __getattr__(self, name):
        return getattr(fast_downward, name)

    @staticmethod
    def pddl2sas(domain, problem, verbose=False, optimize=False):
        if not _active():
            return fast_downward.pddl2sas(domain, problem, verbose=verbose, optimize=optimize)
        translation = translation_of(domain, problem)
        if not optimize:
            return translation.task, translation.sas
        # The planner's task: only stored by load_sas_replan; Engine.initial_plan loads the real one before planning.
        return translation.task, translation._sas_replan or ""


# --------------------------------------------------------------------------------------------- grammar
_LOGICS = _LRU(_CACHE_SIZE)
_ORIGINAL = _textgen.__dict__.setdefault("_spa_rl_originals", {  # on textworld's module: survives a reload of ours
    "parse": _textgen._parse_and_convert, "Rule": _textgen.Rule, "GameLogic": _logic.GameLogic})


def _game_logic(domain: str, grammar: str):
    """``GameLogic(domain, grammar)``, parsed once for all games that differ only in their task sentence."""
    make = _ORIGINAL["GameLogic"]
    if not _active():
        return make(domain=domain, grammar=grammar)
    matches = list(_TASK_RULE.finditer(grammar))
    if len(matches) != 1:  # not the layout we know: parse it as is
        return _LOGICS.get(_digest(domain, grammar), lambda: make(domain=domain, grammar=grammar))
    match = matches[0]
    template = grammar[: match.start(1)] + _TASK_PLACEHOLDER + grammar[match.end(1):]
    base = _LOGICS.get(_digest(domain, template), lambda: make(domain=domain, grammar=template))
    task_text = json.loads('"' + match.group(1) + '"')
    task_rules = _textgen.ContextSensitiveGrammar.parse(json.dumps({"task": [{"rhs": task_text}]}))._rules["task"]
    logic = copy.copy(base)  # actions and types are shared read-only; the grammar's rule table is the game's own
    logic.grammar = _textgen.ContextSensitiveGrammar()
    logic.grammar._rules = defaultdict(list, {k: list(v) for k, v in base.grammar._rules.items()})
    logic.grammar._rules["task"] = list(task_rules)
    return logic


@functools.lru_cache(maxsize=8192)
def _parsed_symbols(text: str, rule_name: str):
    return _ORIGINAL["parse"](text, rule_name=rule_name)


def _parse_and_convert(*args, **kwargs):
    rule_name = kwargs.get("rule_name")
    if _active() and len(args) == 1 and isinstance(args[0], str) and isinstance(rule_name, str) \
            and set(kwargs) <= {"rule_name", "trace"} and not kwargs.get("trace"):
        return copy.deepcopy(_parsed_symbols(args[0], rule_name))
    return _ORIGINAL["parse"](*args, **kwargs)


@functools.lru_cache(maxsize=8192)
def _parsed_query(expr: str):
    return _ORIGINAL["Rule"].parse_conjunctive_query(expr)


class _Rule(_ORIGINAL["Rule"]):
    """textworld's ``Rule`` whose ``parse_conjunctive_query`` (a pure parse to an immutable Rule) is memoised."""

    @classmethod
    def parse_conjunctive_query(cls, expr):
        return _parsed_query(expr) if _active() else _ORIGINAL["Rule"].parse_conjunctive_query(expr)


_textgen._parse_and_convert = _parse_and_convert
_textgen.Rule = _Rule
_logic.GameLogic = _game_logic
_logic.fast_downward = _FastDownwardSeenByTextworld()


# --------------------------------------------------------------------------------------------- anchors
def _condition_predicates(cond, out: set) -> set:
    predicate = getattr(cond, "predicate", None)
    if isinstance(predicate, str):
        out.add(predicate.lower())
    for part in getattr(cond, "parts", ()) or ():
        _condition_predicates(part, out)
    return out


def anchor_predicates(task, grammar: str) -> frozenset:
    """Fluents that matter for what comes next: changed by some action AND read somewhere.

    "Read" means used by an action precondition, an effect condition, an axiom, the goal, or the grammar's text
    conditions (what the observations say). In the ALFRED domain this drops ``checked``, which ``look``,
    ``inventory``, ``examine`` and ``open`` set but nothing reads, so a ``look`` does not split an otherwise
    identical state. Static facts (object types, where receptacles are) are dropped too: every state of a game has
    the same ones.
    """
    written, read = set(), set()
    for action in task.actions:
        _condition_predicates(action.precondition, read)
        for effect in action.effects:
            _condition_predicates(effect.condition, read)
            _condition_predicates(effect.literal, written)
    for axiom in getattr(task, "axioms", ()) or ():
        _condition_predicates(axiom.condition, read)
        written.add(str(axiom.name).lower())
    _condition_predicates(task.goal, read)
    lowered = grammar.lower()
    read.update(p for p in written if re.search(r"\b" + re.escape(p) + r"\(", lowered))
    return frozenset(written & read)


# --------------------------------------------------------------------------------------------- engine
_RETIRED_LIBS: list = []  # closed engines' libraries, kept referenced so they are never unloaded


class _PddlEnv(PddlEnv):
    def close(self) -> None:
        """Free the planner state of this env's private copy of fast-downward's library, but keep it loaded.

        ``fast_downward.close_lib`` also ``dlclose``s the copy; anything that still points into it afterwards (the
        C++ runtime's thread-exit and at-exit hooks) then jumps into unmapped code and kills the whole process at a
        random later moment. One mapped copy per engine is a small price for that."""
        lib, self.downward_lib = getattr(self, "downward_lib", None), None
        if lib is not None:
            lib.cleanup()
            _RETIRED_LIBS.append(lib)


class Engine:
    """One TextWorld PDDL engine (its own copy of fast-downward's library): load a game, reset, step."""

    def __init__(self):
        self.pddl = _PddlEnv(textworld.EnvInfos(won=True, admissible_commands=True))
        self.env = AlfredDemangler(shuffle=False)(self.pddl)
        self.game_file: str | None = None
        self.translation: Translation | None = None
        self.anchor_predicates: frozenset = frozenset()

    def load(self, game_file: str) -> None:
        if game_file == self.game_file:
            return
        self.game_file = None
        with _engine_calls():
            self.env.load(game_file)
        data = self.pddl._game_data
        self.translation = translation_of(data["pddl_domain"], data["pddl_problem"])
        self.anchor_predicates = anchor_predicates(self.translation.task, data["grammar"])
        self.game_file = game_file

    def reset(self):
        with _engine_calls():
            return self.env.reset()

    def step(self, command: str):
        with _engine_calls():
            state, _score, _done = self.env.step(command)
        return state

    def place_template(self) -> str | None:
        """The game's command for putting an object on a receptacle: ``put {o} in/on {r}`` or ``move {o} to {r}``."""
        action = self.pddl._logic.actions.get("putobject")
        return action.template if action is not None else None

    def has_walkthrough(self) -> bool:
        return bool(self.pddl._game_data.get("walkthrough"))

    def has_initial_plan(self) -> bool:
        return bool(self.pddl._game_data.get("walkthrough")) or self.translation.initial_plan is not None

    def initial_plan(self) -> list[str]:
        """The game's stored walkthrough, else fast-downward's plan (game commands), kept with the translation.

        Call it in the game's initial state unless ``has_initial_plan()``. Planning takes from 0.1 s to minutes
        (a few two-object kitchen games).
        """
        walkthrough = self.pddl._game_data.get("walkthrough")
        if walkthrough:
            return [str(c) for c in walkthrough]
        if self.translation.initial_plan is None:
            # load_sas_replan only stores the planner's task: the game state is untouched
            self.pddl.downward_lib.load_sas_replan(self.translation.replan_sas().encode("utf-8"))
            with _engine_calls():
                self.translation.initial_plan = list(self.pddl._pddl_state.replan(self.pddl._entity_infos))
        return list(self.translation.initial_plan)

    def state_key(self) -> str:
        """The facts that matter (see ``anchor_predicates``), one per line, sorted."""
        keep = self.anchor_predicates
        return "\n".join(sorted(str(fact) for fact in self.pddl._pddl_state.facts if fact.name in keep))

    def close(self) -> None:
        self.game_file = None
        self.pddl.close()
