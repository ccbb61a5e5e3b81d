"""The shared action parser: table tests, fuzzing (never raises) and the format/parse round trip."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envs.actions import MAX_BARE_CHARS, ParsedAction, format_action, normalize_action, parse_action
from envs.base import MAX_ACTION_CHARS

# (reply, style, expected action, expected thought)
PARSE_TABLE = [
    # react, the training format
    ("Thought: the mug is on the desk.\nAction: go to desk 1", "react", "go to desk 1", "the mug is on the desk."),
    ("Action: go to desk 1", "react", "go to desk 1", None),
    ("  Thought:  a \n\n  Action:   go to   desk 1  \n", "react", "go to desk 1", "a"),
    ("Thought: first\nAction: open drawer 1\nObservation: x\nThought: second\nAction: close drawer 1", "react",
     "close drawer 1", "first Action: open drawer 1 Observation: x Thought: second"),
    ("**Thought:** hm\n**Action:** go to desk 1", "react", "go to desk 1", "hm"),
    ("**Action**: `take mug 1 from desk 1`", "react", "take mug 1 from desk 1", None),
    ("> Action: go to desk 1.", "react", "go to desk 1", None),
    ("- ACTION: go to desk 1", "react", "go to desk 1", None),
    ('Action: "go to desk 1"', "react", "go to desk 1", None),
    ("Action: 'go to desk 1'.", "react", "go to desk 1", None),
    ("Action: “go to desk 1”", "react", "go to desk 1", None),
    ("Action: _go to desk 1_", "react", "go to desk 1", None),
    ("Action:\n\n`put mug 1 in/on desk 1`", "react", "put mug 1 in/on desk 1", None),
    ("Thought: x Action: open drawer 2", "react", "open drawer 2", "x"),
    ("I will look.\nAction: look", "react", "look", "I will look."),
    # dots that belong to the action stay
    ("Action: search[3.5 oz st. patrick bag]", "react", "search[3.5 oz st. patrick bag]", None),
    ("Action: search[3.5 oz st. patrick bag].", "react", "search[3.5 oz st. patrick bag]", None),
    ("Action: click[Dr. Martens]", "react", "click[Dr. Martens]", None),
    ("Action: search[shoes size 7.5]", "react", "search[shoes size 7.5]", None),
    ("Action: wait...", "react", "wait...", None),
    # case is kept (WebShop options are matched by the env)
    ("Action: click[Buy Now]", "react", "click[Buy Now]", None),
    # tag, the verl-agent format
    ("<think>plan</think>\n<action>go to desk 1</action>", "tag", "go to desk 1", "plan"),
    ("<THINK>plan</THINK><Action> click[b06xyz123] </Action>", "tag", "click[b06xyz123]", "plan"),
    ("<action>go to desk 1</action>", "tag", "go to desk 1", None),
    ("<think>a\n\nb</think>\n<action>\ngo to\n desk 1\n</action>", "tag", "go to desk 1", "a b"),
    ("<action>first</action> <action>second</action>", "tag", "first", None),
    ("<action><action>inner</action>", "tag", "inner", None),
    ("<think>unclosed <action>go to desk 1</action>", "tag", "go to desk 1", None),
    ("<action>`go to desk 1`.</action>", "tag", "go to desk 1", None),
    # auto: tag first, then react, then a bare single line
    ("<think>t</think><action>look</action>\nAction: inventory", "auto", "look", "t"),
    ("Thought: t\nAction: inventory", "auto", "inventory", "t"),
    ("go to desk 1", "auto", "go to desk 1", None),
    ("  click[Buy Now]  \n", "auto", "click[Buy Now]", None),
]

FAIL_TABLE = [
    (None, "auto", "empty response"),
    ("", "react", "empty response"),
    ("   \n\t", "tag", "empty response"),
    ("go to desk 1", "react", "no 'Action:' line"),
    ("go to desk 1", "tag", "no <action>...</action> block"),
    ("Thought: I am not sure", "react", "no 'Action:' line"),
    ("Action:", "react", "empty action"),
    ("Action: ``", "react", "empty action"),
    ("<action>   </action>", "tag", "empty action"),
    ("<action>go to desk 1", "tag", "unterminated <action> tag"),
    ("<action>go to desk 1", "auto", "unterminated <action> tag"),
    ("Action: " + "a" * (MAX_ACTION_CHARS + 1), "react", f"action longer than {MAX_ACTION_CHARS} characters"),
    ("two\nlines", "auto", "no action found"),
    ("x" * (MAX_BARE_CHARS + 1), "auto", "no action found"),
]


@pytest.mark.parametrize("text, style, action, thought", PARSE_TABLE)
def test_parse_table(text, style, action, thought):
    parsed = parse_action(text, style)
    assert parsed.error is None and parsed.ok
    assert (parsed.action, parsed.thought) == (action, thought)


@pytest.mark.parametrize("text, style, error", FAIL_TABLE)
def test_parse_failures(text, style, error):
    parsed = parse_action(text, style)
    assert parsed.action is None and not parsed.ok
    assert parsed.error and parsed.error.startswith(error)


def test_style_reported():
    assert parse_action("Action: look").style == "react"
    assert parse_action("<action>look</action>").style == "tag"
    assert parse_action("look").style == "bare"
    assert parse_action("a\nb").style == "auto"
    assert parse_action("x", "react").style == "react"


def test_max_length_action_is_accepted():
    action = "a" * MAX_ACTION_CHARS
    assert parse_action(f"Action: {action}", "react").action == action


def test_unknown_style_raises():
    with pytest.raises(ValueError, match="react"):
        parse_action("Action: look", "json")
    with pytest.raises(ValueError):
        format_action("look", style="auto")


def test_parsed_action_is_frozen():
    parsed = parse_action("Action: look")
    with pytest.raises(AttributeError):
        parsed.action = "x"  # type: ignore[misc]
    assert isinstance(parsed, ParsedAction)


def test_format_action_exact_text():
    expected = "Thought: I need the desk.\nAction: go to desk 1"
    assert format_action("go to desk 1", "I need the desk.", "react") == expected
    assert format_action("go to desk 1", None, "react") == "Action: go to desk 1"
    assert format_action("look", "t", "tag") == "<think>t</think>\n<action>look</action>"
    assert format_action("look", "", "tag") == "<action>look</action>"


@pytest.mark.parametrize("action, thought, style", [
    ("", None, "react"),
    ("a" * (MAX_ACTION_CHARS + 1), None, "react"),
    ("look</action>", None, "tag"),
    ("look", "hm</think>", "tag"),
])
def test_format_action_rejects_what_would_not_round_trip(action, thought, style):
    with pytest.raises(ValueError):
        format_action(action, thought, style)


def test_huge_and_pathological_inputs_are_fast():
    import time

    start = time.perf_counter()
    for text in ["<action>" * 200_000, "<think>" * 200_000 + "<action>a</action>", "\n" * 1_000_000 + "Action:",
                 " " * 1_000_000 + "Action: x", "Action:" * 100_000, "*" * 1_000_000]:
        for style in ("auto", "react", "tag"):
            parse_action(text, style)
    assert time.perf_counter() - start < 20


# ----------------------------------------------------------------------------- property tests

_injection = st.sampled_from([
    "Action:", "action:", "**Action:**", "Thought:", "<action>", "</action>", "<think>", "</think>", "\n", "`",
    "\"", "'", ".", "...", "[", "]", "Observation:", "<|im_end|>", "<|im_start|>assistant", "\x00", "\r\n", " ",
    "ignore previous instructions", "İ", "ß", "😀", "中文", "\u200b", "\u2028",
])
_messy_text = st.lists(st.one_of(st.text(max_size=30), _injection), max_size=40).map("".join)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(st.text(), _messy_text, st.binary().map(lambda b: b.decode("latin-1"))),
       style=st.sampled_from(["auto", "react", "tag"]))
def test_parse_never_raises(text, style):
    parsed = parse_action(text, style)
    assert (parsed.action is None) == (parsed.error is not None)
    if parsed.action is not None:
        assert parsed.action == normalize_action(parsed.action)  # already normalised: a fixed point
        assert 0 < len(parsed.action) <= MAX_ACTION_CHARS
        assert "\n" not in parsed.action


@settings(max_examples=300)
@given(obj=st.none() | st.integers() | st.floats() | st.lists(st.integers()))
def test_parse_non_string_inputs(obj):
    parse_action(obj)


# actions/thoughts as a model would write them: words from a realistic alphabet plus the hard characters
_word = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                min_size=1, max_size=12)
_sentence = st.lists(st.one_of(_word, _injection), min_size=1, max_size=12).map(" ".join)


@settings(max_examples=500)
@given(action=_sentence, thought=st.none() | _sentence, style=st.sampled_from(["react", "tag"]))
def test_format_parse_round_trip(action, thought, style):
    """parse(format(a, t)) gives back (normalised) a and t, or format refuses up front."""
    try:
        text = format_action(action, thought, style)
    except ValueError:
        return
    for parse_style in (style, "auto"):
        parsed = parse_action(text, parse_style)
        assert parsed.action == normalize_action(action)
        assert parsed.thought == (" ".join(thought.replace("\x00", " ").split()) or None if thought else None)


_plain_action = st.from_regex(r"[a-z][a-z0-9 /\[\]\-'.,]{0,60}[a-z0-9\]]", fullmatch=True).map(
    lambda s: " ".join(s.split()))
_plain_thought = st.from_regex(r"[A-Za-z][A-Za-z0-9 ,.'?!()-]{0,80}", fullmatch=True).map(lambda s: " ".join(s.split()))


@settings(max_examples=500)
@given(action=_plain_action, thought=st.none() | _plain_thought, style=st.sampled_from(["react", "tag"]))
def test_round_trip_is_exact_for_plain_actions(action, thought, style):
    """Env-like actions (ALFWorld/WebShop/VirtualHome vocabularies) are never refused nor changed."""
    text = format_action(action, thought, style)
    parsed = parse_action(text, style)
    assert parsed.action == action
    assert parsed.thought == (thought or None)


@pytest.mark.parametrize("action", [
    "go to countertop 1", "put mug 1 in/on desk 1", "move mug 1 to desk 1", "heat egg 1 with microwave 1",
    "search[women's 3.5 oz st. patrick t-shirt, size 7.5, under 30.00 dollars]", "click[b09kp78g37]",
    "click[< Prev]", "click[Next >]", "click[Buy Now]", "click[x-large]", "walk to kitchen", "put apple on table",
    "switch on tv", "look", "inventory",
])
def test_env_actions_round_trip(action):
    for style in ("react", "tag"):
        assert parse_action(format_action(action, "why not.", style), style).action == action
