"""The StepAgent comparison at the first policy turn: equal, different and paraphrased actions (normalised text:
case, whitespace, final period, markdown), and different strings with the same resulting state (anchor match, on
the real ALFWorld engine with a synthetic put-grammar game where ``move X to Y`` becomes ``put X in/on Y``)."""

from __future__ import annotations

import pytest

from envs.actions import format_action
from envs.expert import ExpertDemo
from recipe.spa.expert_prefix import Inspection, same_action
from tests.recipe.conftest import tokenizer, toy_env  # noqa: F401  (fixtures)
from tests.recipe.helpers import ToyEnv
from tests.stepagent.test_prefix import check_prefix_episode, play, stepagent_config, step_row, toy_cfg, write_demos


def compared(agent: str, executable: bool = True, anchor_after: str = "s1", anchors=("s1", "s2"),
             expert=("go to desk 1", "take pen 1 from desk 1")) -> Inspection:
    insp = Inspection(ExpertDemo("t", "x", tuple(expert), None if anchors is None else tuple(anchors)), 0)
    insp.expert_action = expert[0]
    insp.compare(agent, executable, anchor_after)
    return insp


@pytest.mark.parametrize("agent", ["go to desk 1", "Go to Desk 1", "go  to desk 1.", "`go to desk 1`",
                                   "  GO TO DESK 1 ", "**go to desk 1**"])
def test_equal_and_paraphrased_actions_match_by_action(agent):
    insp = compared(agent, anchor_after="not-s1")  # the text decides, whatever the anchor
    assert insp.compared and insp.match and insp.match_by == "action" and insp.agent_action == agent
    assert insp.as_dict()["match"] and insp.as_dict()["expert_action"] == "go to desk 1"


@pytest.mark.parametrize("agent", ["go to desk 2", "go to desk", "take pen 1 from desk 1", "go to desk 1 now"])
def test_different_actions_do_not_match(agent):
    insp = compared(agent, anchor_after="s0")
    assert insp.compared and not insp.match and insp.match_by == ""
    assert not same_action(agent, "go to desk 1")


def test_anchor_match_needs_anchors_an_action_and_an_executed_step():
    assert compared("walk to desk 1").match_by == "anchor"  # another string, the same resulting state
    assert not compared("walk to desk 1", anchors=None).match  # a demo without anchors: action equality only
    assert not compared("walk to desk 1", executable=False).match  # a refused action left the state as it was
    assert not compared("", anchor_after="s1").match  # nothing parsed
    assert not compared("walk to desk 1", anchor_after="s2").match  # a different resulting state


def walk_policy(text: str):
    return lambda turn, prompt: format_action(text, "I go on.", "react")


class WalkToyEnv(ToyEnv):
    """The toy line where 'walk' is another name for 'step forward' (same resulting state, other string); its own
    env name, so the process-wide env pool never hands out a plain toy env built by an earlier test."""

    name = "walktoy"

    def _step(self, action):
        return super()._step("step forward" if action == "walk" else action)


@pytest.mark.parametrize("agent,match_by", [("step forward", "action"), ("Step Forward.", "action"),
                                            ("walk", "anchor"), ("wait", ""), ("jump", "")])
def test_match_flag_through_the_loop(tokenizer, toy_env, tmp_path, monkeypatch, agent, match_by):  # noqa: F811
    import envs
    from envs import prompts

    monkeypatch.setitem(envs.ENV_REGISTRY, "walktoy", "tests.stepagent.test_match:WalkToyEnv")
    monkeypatch.setitem(prompts.ENV_PROMPTS, "walktoy", prompts.ENV_PROMPTS["toy"])
    path = tmp_path / "walktoy_sft.parquet"
    write_demos("walktoy", WalkToyEnv(), ["t2"], path)
    out = play(stepagent_config(toy_cfg(name="walktoy"), path), tokenizer, walk_policy(agent),
               step_row("t2", 0, env_name="walktoy"))
    _, sa = check_prefix_episode(out, tokenizer, 2, 3, "walktoy", "reach 3", ["step forward"] * 3)
    assert sa["match_by"] == match_by and sa["match"] == bool(match_by) and sa["agent_action"] == agent.rstrip(".")
    assert out.episode_info["stepagent_match"] == float(bool(match_by))


ALFWORLD_PUT_TASK = "valid_seen/pick_and_place_simple-Book-None-Sofa-999/trial_T20000101_000000_000001"


@pytest.mark.parametrize("agent,match_by", [("put book 1 in/on sofa 1", "action"),
                                            ("Put book 1 in/on sofa 1.", "action"),
                                            ("move book 1 to sofa 1", "anchor"),  # the game's put, other words
                                            ("go to bed 1", "")])
def test_alfworld_different_string_same_state_matches_by_anchor(tokenizer, tmp_path, agent, match_by):  # noqa: F811
    pytest.importorskip("textworld", reason="the ALFWorld engine is not installed: pip install -e '.[alfworld]'")
    pytest.importorskip("alfworld", reason="alfworld is not installed: pip install -e '.[alfworld]'")
    from envs.alfworld import AlfWorldEnv, build_synthetic_game

    games = tmp_path / "games"
    build_synthetic_game(games, grammar="put")
    kwargs = {"data_dir": str(games), "plan_cache_dir": False}
    env = AlfWorldEnv(**kwargs, max_steps=10)
    try:
        rows = write_demos("alfworld", env, [ALFWORLD_PUT_TASK], tmp_path / "alfworld_sft.parquet")
    finally:
        env.close()
    actions = rows[0]["actions"]
    assert actions[-1] == "put book 1 in/on sofa 1" and len(rows[0]["anchors"]) == len(actions) == 4
    cfg = {"name": "alfworld", "max_steps": 10, "reward_scale": 10.0, "env_kwargs": kwargs,
           "pool": {"backend": "thread", "num_workers": 1}}
    out = play(stepagent_config(cfg, tmp_path / "alfworld_sft.parquet"), tokenizer, walk_policy(agent),
               step_row(ALFWORLD_PUT_TASK, 0, env_name="alfworld"))  # reverse at step 0: k = 3
    goal = "put a book in sofa"
    _, sa = check_prefix_episode(out, tokenizer, 3, 4, "alfworld", goal, actions)
    assert sa["match_by"] == match_by and sa["match"] == bool(match_by)
    assert out.turn_anchors[0] == rows[0]["anchors"][2]  # the replay reached the expert's state after 3 actions
    assert out.extra_fields["env_episode"]["won"] == bool(match_by)
