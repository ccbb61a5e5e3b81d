"""The chat an agent sees: one builder shared by the RL agent loop and the expert SFT data, so both match.

An episode's chat is::

    system     instructions for the environment (role, action syntax, response format, optional one-shot)
    user       format_observation(first observation, reset info)   (+ "Task: <goal>" when the
                                                                       observation does not contain the goal)
    assistant  format_action(action, thought, style)                 (envs.actions)
    user       format_observation(observation, step info)
    assistant  ...

``build_messages`` gives the first two messages (or one user message holding both, with
``system_prompt=False``, for chat templates without a system role); the caller appends the assistant replies
and ``format_observation`` of every later step.

The window layout (``env.history=window``, GiGPO's ``history_length`` setting) gives every step its own chat
instead, built by ``build_window_messages``: the same instructions, then ONE user message holding the task, the
last k (observation, action) pairs in a compact form and the current observation (with its admissible actions)::

    Task: <goal>                                   (when the current observation does not contain the goal)

    Your last 2 steps (of 7 so far):
    [Step 6] Observation: <observation 6, no admissible list>
    [Step 6] Action: <parsed action 6>
    [Step 7] Observation: ...
    [Step 7] Action: ...

    Current observation (step 8):
    <format_observation(current observation, info)>

With no history yet (the first step) the chat is exactly ``build_messages``' opening chat, so both layouts see
the same first prompt. Every message is a plain ``{"role", "content"}`` dict of
strings. Everything per environment lives in ``ENV_PROMPTS`` (data, no logic); ``SPA_PROMPT_VERSION``
changes whenever the text a model sees changes, so SFT data and RL runs can be matched.

The one-shot examples are short transcripts written for this project (not copied from a paper); each is a
different task from the evaluation ones, and its assistant turns are written with ``format_action`` in the
episode's style, so the example shows exactly the format the parser expects.
"""

from __future__ import annotations

from dataclasses import dataclass

from envs import check_env_name
from envs.actions import STYLES, format_action

SPA_PROMPT_VERSION = "spa-prompts-v1"

__all__ = ["ENV_PROMPTS", "HISTORY_LAYOUTS", "NO_ACTION", "RESPONSE_FORMATS", "SPA_PROMPT_VERSION", "EnvPrompt",
           "PROMPT_INFO_KEYS", "build_messages", "build_window_messages", "format_observation",
           "format_window_history", "prompt_info", "system_prompt_text"]

HISTORY_LAYOUTS = ("full", "window")  # env.history: one packed row per episode | one row per step (last k steps)
NO_ACTION = "(no valid action)"  # what the window history shows for a reply without a parseable action
# the keys of an env's info dict that the builders below read (format_observation: admissible_actions; the task
# line: goal); trajectory records keep exactly these per step, so either layout's prompts can be rebuilt
PROMPT_INFO_KEYS = ("admissible_actions", "goal")


def prompt_info(info: dict | None) -> dict:
    """The part of an env ``info`` dict the prompt builders read (:data:`PROMPT_INFO_KEYS`), as plain JSON data:
    ``admissible_actions`` as a list of str, ``goal`` as a str; absent keys stay absent."""
    out: dict = {}
    info = info or {}
    if info.get("admissible_actions") is not None:
        out["admissible_actions"] = [str(a) for a in info["admissible_actions"]]
    if info.get("goal") is not None:
        out["goal"] = str(info["goal"])
    return out


@dataclass(frozen=True)
class EnvPrompt:
    """The text pieces of one environment's prompt."""

    role: str  # who the agent is and what a task looks like
    actions: str  # the action syntax
    example: tuple[tuple[str, str, str], ...]  # one-shot transcript: (observation, thought, action) per step
    example_last_observation: str  # what the environment answered to the example's last action
    hidden_actions: tuple[str, ...] = ()  # admissible actions never listed (e.g. ALFWorld's "help")
    show_admissible: bool = True  # list the admissible actions under each observation when the env gives them
    admissible_header: str = "Admissible actions:"


RESPONSE_FORMATS = {
    "react": (
        "Reply to every observation in exactly this format, with nothing after the action:\n"
        "Thought: <one or two sentences of reasoning about what to do next>\n"
        "Action: <exactly one action, written in the syntax above>"
    ),
    "tag": (
        "Reply to every observation by first reasoning step by step inside <think> </think>, then giving exactly "
        "one action, written in the syntax above, inside <action> </action>."
    ),
}

ENV_PROMPTS: dict[str, EnvPrompt] = {
    "alfworld": EnvPrompt(
        role=(
            "You are an agent in a text-based household simulator (ALFWorld). Each task asks you to find objects "
            "and put them somewhere, sometimes after cleaning, heating or cooling them, or to examine an object "
            "under a light. You see the world only through short text observations. A command that cannot be "
            "done has no effect and the environment answers \"Nothing happens.\""
        ),
        actions=(
            "Actions (replace the parts in angle brackets with the exact names from the observations, "
            "numbers included):\n"
            "- go to <receptacle>\n"
            "- open <receptacle> / close <receptacle>\n"
            "- take <object> from <receptacle>\n"
            "- put <object> in/on <receptacle>   (type \"in/on\" literally)\n"
            "- clean <object> with <receptacle>   (a sinkbasin)\n"
            "- heat <object> with <receptacle>   (a microwave)\n"
            "- cool <object> with <receptacle>   (a fridge)\n"
            "- use <object>   (switch on a lamp)\n"
            "- examine <object or receptacle>\n"
            "- look\n"
            "- inventory\n"
            "You can carry one object at a time, and you must go to a receptacle before you can use it."
        ),
        example=(
            (
                "You are in the middle of a room. Looking quickly around you, you see a cabinet 1, a countertop 1, "
                "a fridge 1, a sinkbasin 1 and a toaster 1.\n\nYour task is to: put a clean lettuce in fridge.",
                "I need a lettuce first. Lettuce is often on the countertop, so I will look there.",
                "go to countertop 1",
            ),
            (
                "On the countertop 1, you see a knife 1 and a lettuce 1.",
                "The lettuce 1 is here. I will pick it up.",
                "take lettuce 1 from countertop 1",
            ),
            (
                "You pick up the lettuce 1 from the countertop 1.",
                "Now I need to clean it, which I can do at the sinkbasin.",
                "go to sinkbasin 1",
            ),
            (
                "On the sinkbasin 1, you see nothing.",
                "I am at the sinkbasin with the lettuce, so I can clean it.",
                "clean lettuce 1 with sinkbasin 1",
            ),
            (
                "You clean the lettuce 1 using the sinkbasin 1.",
                "The lettuce is clean. Next I take it to the fridge.",
                "go to fridge 1",
            ),
            ("The fridge 1 is closed.", "The fridge is closed, so I open it first.", "open fridge 1"),
            (
                "You open the fridge 1. The fridge 1 is open. In it, you see a egg 2.",
                "The fridge is open. I put the clean lettuce in it to finish the task.",
                "put lettuce 1 in/on fridge 1",
            ),
        ),
        example_last_observation="You put the lettuce 1 in/on the fridge 1.",
        hidden_actions=("help",),
    ),
    "webshop": EnvPrompt(
        role=(
            "You are a shopping agent on a simplified web store (WebShop). An instruction describes a product "
            "the user wants: its kind, attributes, options such as size or color, and a price limit. Find the "
            "best matching product, select the requested options and buy it. Each observation is the text of "
            "the current web page, its parts separated by [SEP]. An invalid action leaves the page unchanged."
        ),
        actions=(
            "Actions:\n"
            "- search[<keywords>]   (only on the search page)\n"
            "- click[<element>]   (an element of the current page, written exactly as on the page: a product "
            "id such as B0EXMPL001, an option value, or a button: Back to Search, Next >, < Prev, Description, "
            "Features, Reviews, Buy Now)\n"
            "Clicking Buy Now ends the episode; select every option the instruction asks for before buying."
        ),
        example=(
            (
                "WebShop [SEP] Instruction: [SEP] Find me gluten free oat bars in a pack of 12, and price lower "
                "than 30.00 dollars [SEP] Search",
                "I should search for the product with its key words.",
                "search[gluten free oat bars pack of 12]",
            ),
            (
                "Instruction: [SEP] Find me gluten free oat bars in a pack of 12, and price lower than 30.00 "
                "dollars [SEP] Back to Search [SEP] Page 1 (Total results: 3) [SEP] Next > [SEP] B0EXMPL001 "
                "[SEP] Oat Crunch Gluten Free Oat Bars [SEP] $21.99 [SEP] B0EXMPL002 [SEP] Honey Oat Bars, 24 "
                "Count [SEP] $36.5 [SEP] B0EXMPL003 [SEP] Gluten Free Granola Bites [SEP] $9.99",
                "The first result is gluten free oat bars under 30 dollars, so I open it.",
                "click[B0EXMPL001]",
            ),
            (
                "Instruction: [SEP] Find me gluten free oat bars in a pack of 12, and price lower than 30.00 "
                "dollars [SEP] Back to Search [SEP] < Prev [SEP] size [SEP] pack of 6 [SEP] pack of 12 [SEP] "
                "Oat Crunch Gluten Free Oat Bars [SEP] Price: $21.99 [SEP] Rating: N.A. [SEP] Description "
                "[SEP] Features [SEP] Buy Now",
                "The instruction asks for a pack of 12, so I select that size.",
                "click[pack of 12]",
            ),
            (
                "Instruction: [SEP] Find me gluten free oat bars in a pack of 12, and price lower than 30.00 "
                "dollars [SEP] Back to Search [SEP] < Prev [SEP] size [SEP] pack of 6 [SEP] pack of 12 [SEP] "
                "Selected options: size: pack of 12 [SEP] Oat Crunch Gluten Free Oat Bars [SEP] Price: $21.99 "
                "[SEP] Rating: N.A. [SEP] Description [SEP] Features [SEP] Buy Now",
                "The product matches and the size is selected, so I buy it.",
                "click[Buy Now]",
            ),
        ),
        example_last_observation="Thank you for shopping with us! [SEP] Purchased: B0EXMPL001 [SEP] ...",
    ),
    "virtualhome": EnvPrompt(
        role=(
            "You are a household robot in a text version of the VirtualHome simulator. A task names a household "
            "activity and describes how to do it; reach the situation the activity ends in. You see the rooms of "
            "the house, the objects of your room, the objects near you with their states, and what you hold. An "
            "action that cannot be done has no effect and the environment answers \"Nothing happens.\""
        ),
        actions=(
            "Actions (replace <object> with a room or object name from the observations; when two objects share "
            "a name the observation shows their ids, write e.g. \"chair 356\"):\n"
            "- walk to <object or room> / run to <object> / find <object>\n"
            "- grab <object> / put <object> on <object> / put <object> in <object> / put back <object> / drop "
            "<object>\n"
            "- open <object> / close <object> / switch on <object> / switch off <object> / plug in <object> / "
            "plug out <object>\n"
            "- sit on <object> / lie on <object> / stand up / sleep / wake up\n"
            "- look at <object> / watch <object> / read <object> / turn to <object> / point at <object> / "
            "touch <object> / greet <object>\n"
            "- drink <object> / eat <object> / pour <object> into <object> / cut <object>\n"
            "- wash <object> / rinse <object> / scrub <object> / wipe <object> / squeeze <object>\n"
            "- push <object> / pull <object> / move <object> / type on <object>\n"
            "- put on <clothes> / take off <clothes>\n"
            "You must walk to an object before you can use it, and hold it to put it somewhere."
        ),
        example=(
            (
                "The task is Drink water (Get a glass from the kitchen, fill it at the faucet and drink).\n"
                "The house has 2 rooms: bedroom, dining room (the kitchen).\nYou are in the bedroom.\n"
                "The bedroom has: bed, desk, light, window.",
                "The glass and the faucet are in the kitchen, which is the dining room.",
                "walk to dining room",
            ),
            (
                "You walk to the dining room.\nYou are in the dining room.\nThe dining room has: cupboard, "
                "faucet, sink, table, water glass.",
                "I see a water glass here, so I go to it.",
                "walk to water glass",
            ),
            (
                "You walk to the water glass.\nYou are in the dining room.\nNear you: table, water glass (on "
                "table).",
                "The glass is near me. I pick it up.",
                "grab water glass",
            ),
            (
                "You grab the water glass.\nYou are in the dining room.\nNear you: table.\nYou have water glass.",
                "Now I go to the faucet to fill the glass.",
                "walk to faucet",
            ),
            (
                "You walk to the faucet.\nYou are in the dining room.\nNear you: faucet (off), sink.\nYou have "
                "water glass.",
                "I turn on the faucet to get water.",
                "switch on faucet",
            ),
            (
                "You switch on the faucet.\nYou are in the dining room.\nNear you: faucet (on), sink.\nYou have "
                "water glass.",
                "The glass is filled, so I drink from it.",
                "drink water glass",
            ),
        ),
        example_last_observation="You drink the water glass.\nYou are in the dining room.",
    ),
}


def _spec(env_name: str) -> EnvPrompt:
    check_env_name(env_name)
    if env_name not in ENV_PROMPTS:  # a registered env without prompt text is a bug in this module
        raise ValueError(f"No prompt defined for environment {env_name!r}; prompts exist for {sorted(ENV_PROMPTS)}")
    return ENV_PROMPTS[env_name]


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"Unknown response style {style!r}; use one of {', '.join(STYLES)}")


def _example_text(spec: EnvPrompt, style: str) -> str:
    lines = ["Example of a complete episode (a different task):"]
    for observation, thought, action in spec.example:
        lines.append(f"[Observation]\n{observation}")
        lines.append(f"[Your reply]\n{format_action(action, thought, style)}")
    lines.append(f"[Observation]\n{spec.example_last_observation}")
    return "\n".join(lines)


def system_prompt_text(env_name: str, style: str = "react", one_shot: bool = False) -> str:
    """The instructions for ``env_name``: role, action syntax, response format and the optional example."""
    spec = _spec(env_name)
    _check_style(style)
    parts = [spec.role, spec.actions, RESPONSE_FORMATS[style]]
    if one_shot:
        parts.append(_example_text(spec, style))
    return "\n\n".join(parts)


def format_observation(env_name: str, observation: str, info: dict | None = None,
                       include_admissible: bool | None = None) -> str:
    """The user message after a step: the observation, then the admissible actions when the env gives them.

    ``include_admissible=None`` uses the environment's default (``EnvPrompt.show_admissible``).
    """
    spec = _spec(env_name)
    text = str(observation).strip()
    show = spec.show_admissible if include_admissible is None else include_admissible
    admissible = (info or {}).get("admissible_actions") if show else None
    if admissible:
        listed = [str(a) for a in admissible if str(a) not in spec.hidden_actions]
        if listed:
            text = f"{text}\n\n{spec.admissible_header}\n" + "\n".join(f"- {a}" for a in listed)
    return text


def build_messages(env_name: str, first_observation: str, reset_info: dict | None = None, style: str = "react",
                   one_shot: bool = False, system_prompt: bool = True,
                   include_admissible: bool | None = None) -> list[dict[str, str]]:
    """The opening chat of an episode: ``[system, user]``, or ``[user]`` when ``system_prompt`` is False
    (then the instructions open the user message)."""
    instructions = system_prompt_text(env_name, style, one_shot)
    reset_info = reset_info or {}
    first = format_observation(env_name, first_observation, reset_info, include_admissible)
    goal = str(reset_info.get("goal") or "").strip()
    if goal and goal not in str(first_observation):
        first = f"Task: {goal}\n\n{first}"
    if system_prompt:
        return [{"role": "system", "content": instructions}, {"role": "user", "content": first}]
    return [{"role": "user", "content": f"{instructions}\n\n{first}"}]


def _task_line(first: str, observation: str, reset_info: dict | None) -> str:
    goal = str((reset_info or {}).get("goal") or "").strip()
    if goal and goal not in str(observation):
        return f"Task: {goal}\n\n{first}"
    return first


def format_window_history(history, first_step: int = 1, total_steps: int | None = None) -> str:
    """The compact block of past steps: ``history`` = [(observation, action), ...] oldest first, numbered from
    ``first_step`` (1-based); an empty action is shown as ``NO_ACTION``. ``""`` for no history."""
    history = list(history)
    if not history:
        return ""
    total = first_step + len(history) - 1 if total_steps is None else int(total_steps)
    noun = "step" if len(history) == 1 else "steps"
    lines = [f"Your last {len(history)} {noun} (of {total} so far):"]
    for i, (observation, action) in enumerate(history):
        n = first_step + i
        obs = " ".join(str(observation).split())  # one line per observation: compact, newlines folded
        lines.append(f"[Step {n}] Observation: {obs}")
        lines.append(f"[Step {n}] Action: {str(action).strip() or NO_ACTION}")
    return "\n".join(lines)


def build_window_messages(env_name: str, observation: str, info: dict | None = None, history=(),
                          history_length: int = 2, reset_info: dict | None = None, style: str = "react",
                          one_shot: bool = False, system_prompt: bool = True,
                          include_admissible: bool | None = None) -> list[dict[str, str]]:
    """The chat of one step in the window layout (see the module docstring).

    ``observation``/``info``: the current observation and the info it came with (reset info at the first step).
    ``history``: every past (observation, action) pair of the episode, oldest first; only the last
    ``history_length`` are shown (``history_length=0``: none). ``reset_info`` carries the task (``goal``); None
    uses ``info``. The first step (no history) gives exactly ``build_messages(env_name, observation, info, ...)``.
    """
    if int(history_length) < 0:
        raise ValueError(f"history_length must be >= 0, got {history_length}")
    history = list(history)
    instructions = system_prompt_text(env_name, style, one_shot)
    shown = history[max(0, len(history) - int(history_length)):] if int(history_length) else []
    current = format_observation(env_name, observation, info, include_admissible)
    if shown:
        block = format_window_history(shown, first_step=len(history) - len(shown) + 1, total_steps=len(history))
        current = f"{block}\n\nCurrent observation (step {len(history) + 1}):\n{current}"
    user = _task_line(current, observation, reset_info if reset_info is not None else info)
    if system_prompt:
        return [{"role": "system", "content": instructions}, {"role": "user", "content": user}]
    return [{"role": "user", "content": f"{instructions}\n\n{user}"}]
