"""The one parser that turns a model's reply into an environment action (and its inverse, for SFT data).

Two reply formats are supported:

* ``react`` (SPA-RL / ETO / IPR)::

      Thought: <reasoning>
      Action: <action>

  The action is the rest of the **last** line that starts with an ``Action:`` label (case-insensitive;
  markdown around the label such as ``**Action:**``, ``**Action**:``, ``> Action:`` or ``- Action:`` is
  tolerated). When that line is empty after the label, the next non-empty line is taken (models often
  write ``Action:\\n`go to desk 1```). Without any such line, the last ``Action:`` (capitalised) inside a
  line is used (``Thought: ... Action: go to desk 1`` on one line). The thought is the text after the first
  ``Thought:`` label and before the action (or, without a label, all the text before the action).
* ``tag`` (verl-agent / GiGPO)::

      <think>...</think>
      <action>...</action>

  verl-agent's rule: the action is the text of the first ``<action>...</action>`` element (tags are
  case-insensitive). One deviation, for nested tags only: ``<action><action>a</action>`` gives ``a``
  (the innermost text), not ``<action>a``. The thought is the first closed ``<think>...</think>``; it may be
  missing (``thought=None``, not an error: whether a missing ``<think>`` is penalised is the agent loop's
  choice). An ``<action>`` without ``</action>`` is an error.
* ``auto``: ``tag`` if the reply contains an ``<action>`` tag, else ``react`` if it has an ``Action:`` line,
  else a **bare action**: the whole reply, when it is a single line of at most ``MAX_BARE_CHARS``
  characters (e.g. ``go to desk 1``). ``react`` and ``tag`` never accept a bare action: they are the
  strict styles used for training, where a reply without the format is a format error.

Normalisation of the action (all styles): whitespace runs (newlines included) become one space; wrappers
that are never part of an action are peeled off the ends, repeatedly: backticks, ``*``, ``_``, double quotes
and typographic double quotes (matched or not) and matched single quotes; a sentence-final period is dropped
when it follows a letter, digit, closing bracket or one of those wrappers (``go to desk 1.`` -> ``go to desk
1``), never a period inside the action (``click[3.4 oz]``, ``search[st. patrick]``) or an ellipsis. Case is
kept.
Thoughts get the same whitespace collapse and nothing else.

An empty action, or one longer than ``MAX_ACTION_CHARS`` (512) after normalisation, gives ``action=None``
with an ``error``. ``parse_action`` never raises on any text (only on an unknown ``style``, a programming
error). ``format_action`` is its exact inverse: ``parse_action(format_action(a, t, s), s)`` returns
``(a, t)`` normalised as above (in ``auto`` style too), and ``format_action`` raises ``ValueError`` for an
action/thought that would not come back unchanged (so expert SFT data always parses back to the action that
was replayed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from envs.base import MAX_ACTION_CHARS

STYLES = ("react", "tag")  # formats a model is asked to write; parse_action also takes "auto"
MAX_BARE_CHARS = 200  # longest reply taken whole as an action in "auto" style

__all__ = ["MAX_BARE_CHARS", "STYLES", "ParsedAction", "format_action", "normalize_action", "parse_action"]


@dataclass(frozen=True)
class ParsedAction:
    """What ``parse_action`` found. ``action`` is None exactly when ``error`` is set.

    ``style`` is the format that matched (``react``, ``tag`` or ``bare``), or the requested style on failure.
    """

    action: str | None
    thought: str | None
    error: str | None
    style: str

    @property
    def ok(self) -> bool:
        return self.action is not None


# A label line: optional markdown/quote/list prefix, the word, optional markdown, a colon, optional markdown.
# Character classes exclude "\n" so a scan is linear (no backtracking across lines).
_ACTION_LINE = re.compile(r"^[ \t>*_#`-]*action[ \t*_`]*:[ \t*_]*(?P<rest>[^\n]*)$", re.IGNORECASE | re.MULTILINE)
_THOUGHT_LABEL = re.compile(r"^[ \t>*_#`-]*thought[ \t*_`]*:[ \t*_]*", re.IGNORECASE | re.MULTILINE)
_ACTION_OPEN = re.compile(r"<action>", re.IGNORECASE)
_ACTION_CLOSE = re.compile(r"</action>", re.IGNORECASE)
_ACTION_INLINE = re.compile(r"(?<![A-Za-z])Action:[ \t*_]*(?P<rest>[^\n]*)")  # fallback: "Thought: x Action: y"
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)

_ALWAYS_STRIP = "`*_\"“”„"  # never the first/last character of an action
_PAIRS = (("'", "'"), ("‘", "’"))  # stripped only as a matched pair
_FINAL_PERIOD = re.compile(r"(?<=[^\W_]|[\])}`*_\"'“”’])\.$")  # after a letter/digit, bracket or wrapper


def _squash(text: str) -> str:
    return " ".join(text.replace("\x00", " ").split())


def normalize_action(text: str) -> str:
    """Collapse whitespace and peel off markdown, quotes and a sentence-final period (module docstring)."""
    action = _squash(text)
    while True:
        before = action
        action = action.strip(_ALWAYS_STRIP + " ")
        for left, right in _PAIRS:
            if len(action) >= 2 and action.startswith(left) and action.endswith(right):
                action = action[len(left) : -len(right)].strip()
        if not action.endswith(".."):
            action = _FINAL_PERIOD.sub("", action)
        if action == before:
            return action


def _result(raw: str, thought: str | None, style: str) -> ParsedAction:
    action = normalize_action(raw)
    thought = _squash(thought) if thought is not None else None
    thought = thought or None
    if not action:
        return ParsedAction(None, thought, "empty action", style)
    if len(action) > MAX_ACTION_CHARS:
        return ParsedAction(None, thought, f"action longer than {MAX_ACTION_CHARS} characters", style)
    return ParsedAction(action, thought, None, style)


def _fail(error: str, style: str) -> ParsedAction:
    return ParsedAction(None, None, error, style)


def _parse_tag(text: str) -> ParsedAction:
    opening = _ACTION_OPEN.search(text)
    if opening is None:
        return _fail("no <action>...</action> block", "tag")
    closing = _ACTION_CLOSE.search(text, opening.end())
    if closing is None:
        return _fail("unterminated <action> tag", "tag")
    start = opening.end()
    for inner in _ACTION_OPEN.finditer(text, opening.end(), closing.start()):  # nested: innermost text
        start = inner.end()
    thought = None
    think = _THINK_OPEN.search(text, 0, opening.start())
    if think is not None:
        think_end = _THINK_CLOSE.search(text, think.end(), opening.start())
        if think_end is not None:
            thought = text[think.end() : think_end.start()]
    return _result(text[start : closing.start()], thought, "tag")


def _parse_react(text: str) -> ParsedAction:
    last = None
    for last in _ACTION_LINE.finditer(text):
        pass
    if last is None:
        for last in _ACTION_INLINE.finditer(text):
            pass
    if last is None:
        return _fail("no 'Action:' line", "react")
    raw = last.group("rest")
    if not normalize_action(raw):  # "Action:" alone on its line: take the next non-empty line
        for line in text[last.end() :].split("\n"):
            if normalize_action(line):
                raw = line
                break
    head = text[: last.start()]
    label = _THOUGHT_LABEL.search(head)
    thought = head[label.end() :] if label else head
    return _result(raw, thought, "react")


def parse_action(text: object, style: str = "auto") -> ParsedAction:
    """Extract the action (and thought) from a model reply; see the module docstring. Never raises on ``text``."""
    if style not in STYLES + ("auto",):
        raise ValueError(f"Unknown action style {style!r}; use one of {', '.join(STYLES + ('auto',))}")
    if text is None:
        return _fail("empty response", style)
    text = text if isinstance(text, str) else str(text)
    if not text.strip():
        return _fail("empty response", style)
    if style == "tag":
        return _parse_tag(text)
    if style == "react":
        return _parse_react(text)
    if _ACTION_OPEN.search(text):
        return _parse_tag(text)
    if _ACTION_LINE.search(text) or _ACTION_INLINE.search(text):
        return _parse_react(text)
    stripped = text.strip()
    if "\n" not in stripped and len(stripped) <= MAX_BARE_CHARS:
        return _result(stripped, None, "bare")
    return _fail("no action found: expected 'Action: ...' or <action>...</action>", "auto")


def format_action(action: str, thought: str | None = None, style: str = "react") -> str:
    """Write ``action`` (and ``thought``) the way a model should, in ``style`` ('react' or 'tag').

    The inverse of ``parse_action``: raises ``ValueError`` if the reply would not parse back, in ``style``
    and in ``auto``, to ``normalize_action(action)`` and the whitespace-collapsed ``thought``.
    """
    if style not in STYLES:
        raise ValueError(f"Unknown action style {style!r}; use one of {', '.join(STYLES)}")
    action_n = normalize_action(str(action))
    thought_n = _squash(thought) if thought else ""
    if style == "react":
        text = f"Thought: {thought_n}\nAction: {action_n}" if thought_n else f"Action: {action_n}"
    else:
        text = f"<action>{action_n}</action>"
        if thought_n:
            text = f"<think>{thought_n}</think>\n{text}"
    for parse_style in (style, "auto"):
        parsed = parse_action(text, parse_style)
        if parsed.action is None or parsed.action != action_n or parsed.thought != (thought_n or None):
            raise ValueError(
                f"action {action!r} with thought {thought!r} does not survive a {style} round trip "
                f"(parsed back in {parse_style} style as {parsed.action!r} / {parsed.thought!r}; "
                f"{parsed.error or 'text changed'})"
            )
    return text
