"""The ``envs.base`` contract on all three real environments: one step-info key set on every path, and the same
answer to an ``Action:`` label and to garbled characters (never executable, state unchanged).

Each env is skipped with the reason when its engine or data is missing (WebShop uses the tiny hand-made data set,
ALFWorld a synthetic game built from the alfworld wheel, VirtualHome the tasks inside virtualhome-eval).
"""

from __future__ import annotations

import pytest

from envs.base import COMMON_STEP_INFO_KEYS, STEP_INFO_KEYS, garbled_reason

ENVS = ["webshop", "alfworld", "virtualhome"]
GARBLE = "\U000e6f13"


def _webshop(tmp_path_factory):
    pytest.importorskip("thefuzz")
    pytest.importorskip("nltk")
    from envs.webshop import WebShopEnv
    from envs.webshop.fixtures import write_tiny_dataset

    data = write_tiny_dataset(tmp_path_factory.mktemp("ws_contract"))
    env = WebShopEnv(data_dir=data, cache_dir=tmp_path_factory.mktemp("ws_cache"), test_size=2, spacy_model=None)
    return env, ["0", "1"], "search[running shoes]"


def _alfworld(tmp_path_factory):
    pytest.importorskip("textworld", reason="the ALFWorld engine is not installed")
    pytest.importorskip("fast_downward", reason="textworld[pddl] is not installed")
    pytest.importorskip("alfworld", reason="alfworld is not installed")
    from envs.alfworld import AlfWorldEnv, build_synthetic_game

    root = tmp_path_factory.mktemp("alf_contract")
    build_synthetic_game(root, grammar="move")
    build_synthetic_game(root, grammar="put")
    env = AlfWorldEnv(data_dir=root, max_steps=40)
    return env, env.list_tasks("valid_seen")[:2], "go to bed 1"


def _virtualhome(tmp_path_factory):
    try:
        from envs.virtualhome import VirtualHomeEnv

        env = VirtualHomeEnv(max_steps=60)
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"VirtualHome not available: {exc}")
    tasks = env.list_tasks("test")[:2]
    env.reset(tasks[0])
    return env, tasks, env.expert_actions()[0]


@pytest.fixture(scope="module", params=ENVS)
def real(request, tmp_path_factory):
    env, tasks, good = {"webshop": _webshop, "alfworld": _alfworld, "virtualhome": _virtualhome}[request.param](
        tmp_path_factory)
    yield request.param, env, tasks, good
    env.close()


def test_step_info_has_one_key_set_on_every_path(real):
    name, env, tasks, good = real
    keys = set(env.step_info_keys())
    assert set(COMMON_STEP_INFO_KEYS) <= keys
    seen = []

    def step(action, invalid=False):
        out = env.invalid_step(action) if invalid else env.step(action)
        seen.append((action, out[3]))
        return out

    _, reset_info = env.reset(tasks[0])
    step(good)                                 # an engine step
    step("fly to the moon and back")           # an action the engine refuses
    step("")                                   # answered by the base class
    step(f"Action: {good}")                    # refused by the base class
    step(good[:3] + GARBLE + good[3:])         # refused by the base class
    step("no action in the reply", invalid=True)
    env.reset(tasks[0])
    done = False
    for action in env.expert_actions():
        _, _, done, _ = step(action)
        if done:
            break
    assert done, f"{name}: the expert did not finish the episode"
    step(good)                                 # after the end
    for action, info in seen:
        assert set(info) == keys, (name, action, sorted(set(info) ^ keys))
    # the reset info has one key set too (two different tasks)
    _, other_info = env.reset(tasks[1])
    assert set(reset_info) == set(other_info)
    assert {"goal", "anchor", "admissible_actions", "task_id", "task_type", "step"} <= set(reset_info)


GARBLINGS = {
    "label": lambda a: f"Action: {a}", "label-lower": lambda a: f"action: {a}",
    "label-markdown": lambda a: f"**Action:** {a}", "label-spaced": lambda a: f"ACTION : {a}",
    "unassigned": lambda a: a[:3] + GARBLE + a[3:], "control": lambda a: a[:3] + "\x1f" + a[3:],
    "zero-width": lambda a: a[:3] + "\u200b" + a[3:], "nul": lambda a: "\x00" + a,
}


@pytest.mark.parametrize("garble", sorted(GARBLINGS))
def test_action_label_and_garbled_text_are_never_executable(real, garble):
    """All three envs give the same answer: not executable, state (anchor) unchanged, episode goes on; the same
    action without the label/garbage is executable."""
    name, env, tasks, good = real
    text = GARBLINGS[garble](good)
    _, info = env.reset(tasks[0])
    anchor = info["anchor"]
    obs, reward, done, info = env.step(text)
    assert info["executable"] is False and reward == 0.0 and not done, (name, text, info)
    assert info["anchor"] == anchor and info["error"]
    obs, reward, done, info = env.step(good)
    assert info["executable"] is True, (name, good, info)


@pytest.mark.parametrize("text,bad", [
    ("go to desk 1", False), ("click[Buy Now]", False), ("search[café crème 3.5mm ©]", False),
    ("  > action:go", True), ("switch on dishw\U000e6f13asher", True),
    ("grab cup\x7f", True), ("put\ufeff cup on table", True), ("grab \ue000cup", True), ("walk\x0bto", True),
])
def test_garbled_reason(text, bad):
    assert (garbled_reason(text) is not None) is bad
    assert set(STEP_INFO_KEYS) <= set(COMMON_STEP_INFO_KEYS)
