"""The shared chat builder (envs.prompts): per-env content, admissible actions, styles, errors."""

from __future__ import annotations

import pytest

from envs import env_names
from envs.actions import STYLES, parse_action
from envs.prompts import (
    ENV_PROMPTS,
    RESPONSE_FORMATS,
    SPA_PROMPT_VERSION,
    build_messages,
    format_observation,
    system_prompt_text,
)
from tests.envs.test_prepare_expert import tiny_chat_tokenizer

# words of each env's action syntax that the system prompt must show
SYNTAX = {
    "alfworld": ["go to <receptacle>", "take <object> from <receptacle>", "put <object> in/on <receptacle>",
                 "open <receptacle>", "heat <object> with", "cool <object> with", "clean <object> with",
                 "use <object>"],
    "webshop": ["search[<keywords>]", "click[<element>]", "Buy Now"],
    "virtualhome": ["walk to <object", "grab <object>", "switch on <object>", "put <object> on <object>"],
}
ADMISSIBLE = ["go to desk 1", "click[b0exmpl001]", "walk to kitchen"]


def test_every_registered_env_has_a_prompt():
    assert sorted(ENV_PROMPTS) == env_names() == sorted(SYNTAX)
    assert isinstance(SPA_PROMPT_VERSION, str) and SPA_PROMPT_VERSION


@pytest.mark.parametrize("env_name", sorted(SYNTAX))
@pytest.mark.parametrize("style", STYLES)
def test_build_messages_content(env_name, style):
    obs = "You arrive somewhere.\n\nYour task is to: do the thing."
    info = {"goal": "do the thing.", "admissible_actions": ADMISSIBLE + ["help"]}
    messages = build_messages(env_name, obs, info, style=style)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in messages)
    system, user = messages[0]["content"], messages[1]["content"]
    for words in SYNTAX[env_name]:
        assert words in system, (env_name, words)
    assert RESPONSE_FORMATS[style] in system
    assert "Example of a complete episode" not in system
    assert user.startswith(obs)
    for action in ADMISSIBLE:
        assert f"\n- {action}" in user
    if env_name == "alfworld":
        assert "- help" not in user  # ALFWorld's help command is never offered
    assert "Task:" not in user  # the goal is already in the observation


@pytest.mark.parametrize("env_name", sorted(SYNTAX))
@pytest.mark.parametrize("style", STYLES)
def test_one_shot_example_uses_the_style(env_name, style):
    system = system_prompt_text(env_name, style, one_shot=True)
    assert system.startswith(system_prompt_text(env_name, style))
    replies = system.split("[Your reply]\n")[1:]
    assert len(replies) == len(ENV_PROMPTS[env_name].example)
    for reply, (_obs, thought, action) in zip(replies, ENV_PROMPTS[env_name].example):
        reply = reply.split("\n[Observation]")[0]
        assert parse_action(reply, style) == parse_action(reply, "auto")
        parsed = parse_action(reply, style)
        assert (parsed.action, parsed.thought) == (action, thought)


def test_goal_added_when_observation_lacks_it():
    user = build_messages("virtualhome", "You are in the kitchen.", {"goal": "Drink water"})[1]["content"]
    assert user == "Task: Drink water\n\nYou are in the kitchen."


def test_no_system_prompt_puts_instructions_in_user_message():
    messages = build_messages("webshop", "WebShop [SEP] Instruction: [SEP] x [SEP] Search", {}, system_prompt=False)
    assert [m["role"] for m in messages] == ["user"]
    assert messages[0]["content"].startswith(system_prompt_text("webshop"))
    assert messages[0]["content"].endswith("WebShop [SEP] Instruction: [SEP] x [SEP] Search")


def test_format_observation_admissible_switch():
    info = {"admissible_actions": ["look", "help"]}
    expected = "Nothing happens.\n\nAdmissible actions:\n- look"
    assert format_observation("alfworld", " Nothing happens. \n", info) == expected
    assert format_observation("alfworld", "Nothing happens.", info, include_admissible=False) == "Nothing happens."
    assert format_observation("alfworld", "x", {"admissible_actions": ["help"]}) == "x"
    assert format_observation("alfworld", "x", {"admissible_actions": None}) == "x"
    assert format_observation("webshop", "x", None) == "x"


def test_unknown_env_and_style():
    with pytest.raises(ValueError, match="Known environments: alfworld, virtualhome, webshop"):
        build_messages("nethack", "obs", {})
    with pytest.raises(ValueError, match="Known environments"):
        format_observation("nethack", "obs", {})
    with pytest.raises(ValueError, match="react"):
        build_messages("alfworld", "obs", {}, style="json")


def test_deterministic():
    info = {"goal": "g", "admissible_actions": ["a", "b"]}
    assert build_messages("alfworld", "o", info, one_shot=True) == build_messages("alfworld", "o", info, one_shot=True)


@pytest.mark.parametrize("env_name", sorted(SYNTAX))
def test_chat_template_accepts_the_messages(env_name):
    tokenizer = tiny_chat_tokenizer()
    messages = build_messages(env_name, "obs", {"admissible_actions": ["a"]}, one_shot=True)
    messages += [{"role": "assistant", "content": "Thought: t\nAction: a"},
                 {"role": "user", "content": format_observation(env_name, "next", {})}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.count("<|im_start|>") == len(messages) + 1 and text.endswith("<|im_start|>assistant\n")


def test_virtualhome_prompt_covers_the_adapter_actions():
    """Every action template of the VirtualHome adapter is in the prompt, and the example actions parse there."""
    import re

    vh_actions = pytest.importorskip("envs.virtualhome.actions", reason="VirtualHome adapter not here")
    system = system_prompt_text("virtualhome")
    for template in set(vh_actions.CANONICAL.values()):
        pattern = re.escape(template).replace(re.escape("{}"), "<[^>]+>")
        assert re.search(pattern, system), template
    for _obs, _thought, action in ENV_PROMPTS["virtualhome"].example:
        assert vh_actions.parse_action(action) is not None, action


def test_webshop_prompt_names_the_adapter_buttons():
    pages = pytest.importorskip("envs.webshop.pages", reason="WebShop adapter not here")
    system = system_prompt_text("webshop")
    for button in (pages.BACK_TO_SEARCH, pages.NEXT_PAGE, pages.PREV_PAGE, pages.DESCRIPTION, pages.FEATURES,
                   pages.REVIEWS, pages.BUY_NOW):
        assert button in system
    assert pages.SEP.strip() in system
