"""The TextWorld side of the ALFWorld adapter: the one module that imports textworld, fast_downward and alfworld.

The engine is textworld's ``PddlEnv`` (fast-downward for the PDDL state and planner, textworld's context-sensitive
grammar for the text) wrapped in alfworld's ``AlfredDemangler`` (``Book_bar__plus_00_dot_30...`` -> ``book 1``),
which is what alfworld's ``AlfredTWEnv`` builds. Each game loads with the domain and grammar inside its own
``game.tw-pddl``, so json_2.1.1 (``put X in/on Y``) and 2.1.2 (``move X to Y``) games both play as released.

Speed-ups, none of which changes any text the engine produces (``tests/envs/test_alfworld.py`` compares with the
stock engine):

* ``PddlEnv.load`` and ``PddlEnv.reset`` each translate the game's PDDL to SAS twice, once plain and once optimised
  for the planner (fast-downward's Python translator: 0.2 s for a small bedroom, several seconds for a kitchen).
  ``_FastPddlEnv`` translates once per game (kept in a small per-process LRU, so group members that reset the same
  game share it), makes the planner's translation only when a plan is asked for, and lets the first reset after
  a load reuse the state that the load built.
* The grammar (~12 KB of twl2 parsed by TatSu, ~0.3 s) differs between games only in its ``task`` rule. The parsed
  grammar is cached per (domain, grammar-without-task); each game gets a copy with its own task rule.
* Every step derives each admissible command and the feedback through the grammar, which re-parses the same short
  templates and conditions with TatSu each time (~0.2 s a step). ``install_parse_cache`` memoises those two pure
  parse functions inside ``textworld.envs.pddl.textgen`` (parsed templates are handed out as deep copies, because
  derivation mutates them). That is a process-wide patch of that one module; ``uninstall_parse_cache`` undoes it.
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
from collections import Counter, OrderedDict, defaultdict
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
from textworld.envs.pddl import logic as pddl_logic  # noqa: E402
from textworld.core import GameState  # noqa: E402
from textworld.utils import check_flag  # noqa: E402

ALFRED_PDDL_PATH = alfworld_info.ALFRED_PDDL_PATH
ALFRED_TWL2_PATH = alfworld_info.ALFRED_TWL2_PATH

BANNER = re.compile(r"^\s*-= Welcome to TextWorld, ALFRED! =-\s*")
_TASK_RULE = re.compile(r'("task"\s*:\s*\[\s*\{\s*"rhs"\s*:\s*)"((?:[^"\\]|\\.)*)"(\s*\}\s*\])')
_TASK_PLACEHOLDER = "__SPA_RL_TASK__"
_CACHE_SIZE = 32  # games whose translation / parsed grammar stay in memory (a few MB each)


# --------------------------------------------------------------------------------------------- parse cache
_parse_cache_lock = threading.Lock()
# kept on the textgen module itself, so that reloading this module never takes a patched function for the original
_ORIGINAL = _textgen.__dict__.setdefault("_spa_rl_originals",
                                         {"parse": _textgen._parse_and_convert, "Rule": _textgen.Rule})


@functools.lru_cache(maxsize=8192)
def _parsed_symbols(text: str, rule_name: str):
    return _ORIGINAL["parse"](text, rule_name=rule_name)


def _cached_parse_and_convert(*args, **kwargs):
    rule_name = kwargs.get("rule_name")
    if len(args) == 1 and isinstance(args[0], str) and set(kwargs) <= {"rule_name", "trace"} \
            and isinstance(rule_name, str) and not kwargs.get("trace"):
        return copy.deepcopy(_parsed_symbols(args[0], rule_name))
    return _ORIGINAL["parse"](*args, **kwargs)


class _CachedQueryRule(_ORIGINAL["Rule"]):
    """textworld's ``Rule`` whose ``parse_conjunctive_query`` (a pure parse to an immutable Rule) is memoised."""

    @classmethod
    def parse_conjunctive_query(cls, expr):
        return _cached_query(expr)


@functools.lru_cache(maxsize=8192)
def _cached_query(expr):
    return _ORIGINAL["Rule"].parse_conjunctive_query(expr)


def install_parse_cache() -> None:
    """Memoise textworld's grammar parsing (see the module docstring). Idempotent."""
    with _parse_cache_lock:
        _textgen._parse_and_convert = _cached_parse_and_convert
        _textgen.Rule = _CachedQueryRule


def uninstall_parse_cache() -> None:
    with _parse_cache_lock:
        _textgen._parse_and_convert = _ORIGINAL["parse"]
        _textgen.Rule = _ORIGINAL["Rule"]


# --------------------------------------------------------------------------------------------- game caches
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


_TRANSLATIONS = _LRU(_CACHE_SIZE)
_LOGICS = _LRU(_CACHE_SIZE)


def _digest(*texts: str) -> str:
    h = hashlib.blake2b(digest_size=20)
    for text in texts:
        h.update(text.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


@contextmanager
def _kept_argv():
    """fast_downward.pddl2sas overwrites ``sys.argv`` (a hack for its option parser): put it back."""
    argv = sys.argv
    try:
        yield
    finally:
        sys.argv = argv


class Translation:
    """fast-downward's translation of one (domain, problem), plus which fluents the anchor keeps.

    The planner's own (optimised) translation is made only when a plan is asked for: playing never needs it, and
    it costs as much as the first one.
    """

    def __init__(self, domain: str, problem: str, grammar: str):
        self.domain, self.problem = domain, problem
        with _kept_argv():
            self.task, self.sas = fast_downward.pddl2sas(domain, problem, verbose=check_flag("TW_PDDL_DEBUG"))
        self.sas_replan: str | None = None
        self.anchor_predicates = _anchor_predicates(self.task, grammar)

    def replan_sas(self) -> str:
        if self.sas_replan is None:
            with _kept_argv():
                _, self.sas_replan = fast_downward.pddl2sas(self.domain, self.problem,
                                                            verbose=check_flag("TW_PDDL_DEBUG"), optimize=True)
        return self.sas_replan


def _condition_predicates(cond, out: set) -> set:
    predicate = getattr(cond, "predicate", None)
    if isinstance(predicate, str):
        out.add(predicate.lower())
    for part in getattr(cond, "parts", ()) or ():
        _condition_predicates(part, out)
    return out


def _anchor_predicates(task, grammar: str) -> frozenset:
    """Fluents that matter for what comes next: changed by some action AND read somewhere.

    "Read" means used by an action precondition, an effect condition, an axiom, the goal, or the grammar's text
    conditions (what the observations say). In the ALFRED domain this drops ``checked``, which ``look``,
    ``inventory``, ``examine`` and ``open`` set but nothing ever reads, so e.g. a ``look`` does not split an
    otherwise identical state. Static facts (object types, locations of receptacles) are dropped too: they are the
    same in every state of a game.
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


def _translation(domain: str, problem: str, grammar: str) -> Translation:
    return _TRANSLATIONS.get(_digest(domain, problem, grammar), lambda: Translation(domain, problem, grammar))


def _game_logic(domain: str, grammar: str):
    """The parsed GameLogic, shared between games that differ only in their task sentence."""
    matches = list(_TASK_RULE.finditer(grammar))
    if len(matches) != 1:  # not the layout we know: parse it as is
        return _LOGICS.get(_digest(domain, grammar), lambda: pddl_logic.GameLogic(domain=domain, grammar=grammar))
    match = matches[0]
    template = grammar[: match.start(2)] + _TASK_PLACEHOLDER + grammar[match.end(2):]
    base = _LOGICS.get(_digest(domain, template), lambda: pddl_logic.GameLogic(domain=domain, grammar=template))
    task_text = json.loads('"' + match.group(2) + '"')
    task_rules = _textgen.ContextSensitiveGrammar.parse(json.dumps({"task": [{"rhs": task_text}]}))._rules["task"]
    logic = copy.copy(base)
    logic.grammar = _textgen.ContextSensitiveGrammar()
    logic.grammar._rules = defaultdict(list, {k: list(v) for k, v in base.grammar._rules.items()})
    logic.grammar._rules["task"] = list(task_rules)
    return logic


# --------------------------------------------------------------------------------------------- engine
class _FastPddlState(pddl_logic.PddlState):
    """``PddlState`` built from a cached translation (same code as textworld 1.7.0's ``__init__`` otherwise)."""

    def __init__(self, downward_lib, translation: Translation, logic):  # noqa: D107 - mirrors the parent
        self._facts = defaultdict(set)
        self._vars_by_name = {}
        self._vars_by_type = defaultdict(set)
        self._var_counts = Counter()
        self._logic = logic
        self.downward_lib = downward_lib
        self.pddl_problem = translation.problem
        self.task, self.sas, self.sas_replan = translation.task, translation.sas, None
        self._actions = {a.name: a for a in self.task.actions}
        for type_ in self.task.types:
            try:
                self._logic.types.add(textworld.logic.Type(type_.name, type_.supertype_names))
            except ValueError:
                pass
        self.downward_lib.load_sas(self.sas.encode("utf-8"))  # the planner's task is loaded by Engine.plan
        self.name2type = {o.name: o.type_name for o in self.task.objects}

        def _atom2proposition(atom):
            if isinstance(atom, fast_downward.translate.pddl.conditions.Atom):
                if atom.predicate == "=":
                    return None
                return textworld.logic.Proposition(
                    atom.predicate, [textworld.logic.Variable(arg, self.name2type[arg]) for arg in atom.args])
            if isinstance(atom, fast_downward.translate.pddl.f_expression.Assign):
                if atom.fluent.symbol == "total-cost":
                    return None
                name = "{}".format(atom.expression.value)
                if str.isdigit(name):
                    return None
                return textworld.logic.Proposition(
                    name, [textworld.logic.Variable(arg, self.name2type[arg]) for arg in atom.fluent.args])
            return None

        self.add_facts(list(filter(None, (_atom2proposition(atom) for atom in self.task.init))))
        state_size = self.downward_lib.get_state_size()
        atoms = (pddl_logic.Atom * state_size)()
        self.downward_lib.get_state(atoms)
        facts = [atom.get_fact(self.name2type) for atom in atoms]
        self.add_facts([fact for fact in facts if not fact.is_negation])


class _FastPddlEnv(PddlEnv):
    """textworld's PddlEnv with cached translations/grammars (``load`` and ``reset`` as in textworld 1.7.0)."""

    def load(self, filename_or_data) -> None:
        if isinstance(filename_or_data, (str, os.PathLike)):
            with open(filename_or_data, encoding="utf-8") as f:
                data = json.load(f)
            self._game_file = str(filename_or_data)
        else:
            data, self._game_file = filename_or_data, None
        self._game_data = data
        self.walkthrough = data.get("walkthrough", None)
        self._logic = _game_logic(data["pddl_domain"], data["grammar"])
        self.translation = _translation(data["pddl_domain"], data["pddl_problem"], data["grammar"])
        self._pddl_state = _FastPddlState(self.downward_lib, self.translation, self._logic)
        self._pristine = True  # the state is the initial one: the next reset may keep it
        self._entity_infos = self._get_entity_infos()

    def reset(self):
        if not getattr(self, "_pristine", False):
            self._pddl_state = _FastPddlState(self.downward_lib, self.translation, self._logic)
        self._pristine = False
        self.prev_state = None
        self.state = GameState()
        self._last_action = None
        self._moves = 0
        context = {
            "state": self._pddl_state,
            "facts": list(self._pddl_state.facts),
            "variables": {},
            "mapping": {},
            "entity_infos": self._entity_infos,
        }
        self.state.feedback = self._logic.grammar.derive("#intro#", context)
        self.state.raw = self.state.feedback
        self._gather_infos()
        return self.state

    def close(self) -> None:
        lib, self.downward_lib = getattr(self, "downward_lib", None), None
        if lib is not None:
            fast_downward.close_lib(lib)


class Engine:
    """One TextWorld PDDL engine (its own copy of fast-downward's library): load a game, reset, step."""

    def __init__(self):
        install_parse_cache()
        infos = textworld.EnvInfos(won=True, admissible_commands=True)
        self.pddl = _FastPddlEnv(infos)
        self.env = AlfredDemangler(shuffle=False)(self.pddl)
        self.game_file: str | None = None

    def load(self, game_file: str) -> None:
        if game_file != self.game_file:
            self.game_file = None
            self.env.load(game_file)
            self.game_file = game_file

    def reset(self):
        return self.env.reset()

    def step(self, command: str):
        state, _score, _done = self.env.step(command)
        return state

    def place_template(self) -> str | None:
        """The game's command for putting an object on a receptacle: ``put {o} in/on {r}`` or ``move {o} to {r}``."""
        action = self.pddl._logic.actions.get("putobject")
        return action.template if action is not None else None

    def plan(self) -> list[str]:
        """The game's stored walkthrough, else fast-downward's plan from the current state (as game commands)."""
        walkthrough = self.pddl._game_data.get("walkthrough")
        if walkthrough:
            return [str(c) for c in walkthrough]
        state = self.pddl._pddl_state
        if state.sas_replan is None:  # load_sas_replan only stores the text: the game state is untouched
            state.sas_replan = self.pddl.translation.replan_sas()
            self.pddl.downward_lib.load_sas_replan(state.sas_replan.encode("utf-8"))
        return list(state.replan(self.pddl._entity_infos))

    def state_key(self) -> str:
        """The facts that matter (see ``_anchor_predicates``), one per line, sorted."""
        keep = self.pddl.translation.anchor_predicates
        return "\n".join(sorted(str(fact) for fact in self.pddl._pddl_state.facts if fact.name in keep))

    def close(self) -> None:
        self.game_file = None
        self.pddl.close()
