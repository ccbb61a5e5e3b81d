"""StepAgent across the seam: episodes played by the real agent loop with an expert prefix (toy env, fake LLM server)
go through verl's streaming reward path with the ``stepagent`` reward manager and the v1 TransferQueue postprocess,
and the captured TransferQueue fields feed the trainer hooks (``StepRewardHooks.process``) exactly as ``on_batch``
reads them. Checks that what the loop writes (``stepagent`` dict: context_length, expert_reply_ids, compared,
match) is what the reward side reads."""

from __future__ import annotations

import torch

from envs.expert import make_thought
from envs.actions import format_action
from spa_reward.steprm.service import StepRewardModel
from spa_reward.steprm.trainer_hooks import StepRewardHooks, episode_items, stepagent_pairs
from tests.recipe.conftest import tokenizer, toy_env  # noqa: F401  (fixtures)
from tests.recipe.helpers import score_episodes, trainer_config
from tests.stepagent.test_prefix import step_row, stepagent_config, toy_cfg, toy_demos  # noqa: F401  (fixture)
from tests.steprm.helpers import tiny_backbone

REPLY = {a: format_action(a, f"I will {a}.", "react") for a in ("wait", "step forward")}


def waits_first(turn, prompt):
    """Policy: 'wait' at the compared turn (executable, not the expert's action, another state), then forward."""
    return REPLY["wait"] if turn == 0 else REPLY["step forward"]


def reward_cfg(mode: str, expert_path) -> object:
    return trainer_config("algorithm.reward=stepagent", f"algorithm.stepagent.mode={mode}",
                          f"algorithm.stepagent.expert_path={expert_path}", "algorithm.adv_estimator=spa",
                          "env.name=toy", "env.reward_scale=10.0")


def play_scored(tokenizer, monkeypatch, demos, policy, mode="match", task="t2"):  # noqa: F811
    loop_cfg = stepagent_config(toy_cfg(), demos, prefix="reverse")
    return score_episodes(tokenizer, reward_cfg(mode, demos), [(policy, step_row(task, 0))], monkeypatch,
                          loop_config=loop_cfg)[0]


def test_match_reward_lands_on_the_compared_turn_and_not_on_the_prefix(tokenizer, toy_demos, monkeypatch):  # noqa: F811
    """t2 needs 3 forward steps; reverse step 0 replays k = 2, the policy waits (no match: other action, other
    state), then steps forward and wins: r = -1 on the compared turn, R = 10 on the last, 0 on every prefix token."""
    out, fields, _ = play_scored(tokenizer, monkeypatch, toy_demos, waits_first)
    ep = out.extra_fields["env_episode"]
    sa = fields["stepagent"]
    assert sa["compared"] and not sa["match"] and sa["prefix_turns"] == 2 and sa["agent_action"] == "wait"
    assert ep["num_turns"] == 2 and ep["won"]
    scores = fields["rm_scores"].tolist()
    ends = ep["turn_ends"]
    assert scores[ends[0]] == -1.0 and scores[ends[1]] == 10.0
    assert sum(abs(x) for i, x in enumerate(scores) if i not in ends) == 0.0
    assert not any(out.response_mask[: ep["turn_starts"][0]])  # the prefix: mask 0


def test_matched_first_action_gets_plus_match_reward(tokenizer, toy_demos, monkeypatch):  # noqa: F811
    out, fields, _ = play_scored(tokenizer, monkeypatch, toy_demos, lambda t, p: REPLY["step forward"])
    ep = out.extra_fields["env_episode"]
    assert fields["stepagent"]["match"] and ep["num_turns"] == 1  # k = 2, one forward step wins t2
    assert fields["rm_scores"][ep["turn_ends"][0]].item() == 1.0 + 10.0


def _columns(fields_list):
    names = ("prompts", "responses", "response_mask", "uid", "episode_info", "episode_reward", "rm_scores", "stepagent")
    return {n: [f[n] for f in fields_list] for n in names}


def test_hooks_build_the_pair_from_the_loops_tokens_and_score_policy_turns_only(tokenizer, toy_demos, monkeypatch):  # noqa: F811
    """irl: the pair is (prompt + response before the compared turn, the expert's reply tokens, the agent's turn
    tokens) from the real loop's output; the discriminator's clipped logit is added on the policy turns' last tokens
    only, and one update trains on the pair."""
    out, fields, _ = play_scored(tokenizer, monkeypatch, toy_demos, waits_first, mode="irl")
    cols = _columns([fields])
    ep = out.extra_fields["env_episode"]
    items, trainable = episode_items(cols["prompts"], cols["responses"], cols["response_mask"], cols["uid"],
                                     cols["episode_info"], cols["episode_reward"])
    pairs, counts = stepagent_pairs(items, trainable, cols["stepagent"])
    P, start, end = len(out.prompt_ids), ep["turn_starts"][0], ep["turn_ends"][0]
    full = list(out.prompt_ids) + list(out.response_ids)
    assert counts["stepagent/pairs"] == 1.0
    assert pairs[0]["input_ids"] == full[: P + start]
    assert pairs[0]["agent_ids"] == full[P + start: P + end + 1]
    reply = format_action("step forward", make_thought("toy", "step forward", "reach 3", 2), "react")
    assert tokenizer.decode(pairs[0]["expert_ids"]) == reply + "<|im_end|>"
    torch.manual_seed(0)
    svc = StepRewardModel(dict(objective="discriminator", loss="bce", head="linear", reward_clip=5.0, online=True,
                               backbone_config=tiny_backbone(vocab_size=len(tokenizer)), lr=1e-2, device="cpu"))
    hooks = StepRewardHooks(reward_cfg("irl", toy_demos), service=svc)
    before = cols["rm_scores"][0].clone()
    metrics: dict = {}
    new = hooks.process(cols, metrics)[0]
    changed = torch.nonzero(new != before).flatten().tolist()
    assert set(changed) <= set(ep["turn_ends"]) and changed  # policy turns only, never the prefix
    assert metrics["stepagent/pairs"] == 1.0 and metrics["steprm/version"] == 1.0


def test_window_layout_compared_row_gets_the_match_term(tokenizer, toy_demos, monkeypatch):  # noqa: F811
    """env.history=window: the prefix steps are history, row 0 is the compared step (-1: it waited), the last row
    carries R; verl's postprocess writes each row's own reward."""
    loop_cfg = stepagent_config(toy_cfg(history="window", history_length=2), toy_demos, prefix="reverse")
    cfg = reward_cfg("match", toy_demos)
    out, fields, _ = score_episodes(tokenizer, cfg, [(waits_first, step_row("t2", 0))], monkeypatch,
                                    loop_config=loop_cfg)[0]
    assert isinstance(out, list) and len(out) == 2  # two policy steps: wait, forward
    assert fields["stepagent"]["compared"] and not fields["stepagent"]["match"]
    row0 = fields["rm_scores"].tolist()
    assert row0[-1] == -1.0 and sum(abs(x) for x in row0[:-1]) == 0.0
    prompt0 = tokenizer.decode(out[0].prompt_ids)
    assert prompt0.count("step forward") >= 2  # the two replayed expert actions are the window's history


def test_collection_with_expert_prefixes_is_refused(toy_demos):  # noqa: F811
    from spa_reward.config_check import config_problems

    cfg = trainer_config("algorithm.reward=stepagent", f"algorithm.stepagent.expert_path={toy_demos}",
                         "env.collect_dir=/tmp/records")
    problems = config_problems(cfg, check_files=False)
    assert any("env.collect_dir" in p and "stepagent" in p for p in problems), problems
    ok = config_problems(trainer_config("algorithm.reward=stepagent", f"algorithm.stepagent.expert_path={toy_demos}"),
                         check_files=False)
    assert not any("env.collect_dir" in p for p in ok)


def test_stepagent_batch_metrics_by_hand():
    """Four finished episodes: k = 2, 0, 3, 0; compared 3 of them, 1 matched; wins 1, 0, 1, 1; one env failure is
    left out; the no-prefix success rate counts only the k = 0 episodes (a prefix starts closer to the goal)."""
    from spa_reward.metrics import episode_metrics

    def info(k, compared, match, won, failed=False, diverged=0.0):
        return {"won": float(won), "num_turns": 2, "stepagent_prefix_turns": float(k),
                "stepagent_compared": float(compared), "stepagent_match": float(match),
                "stepagent/prefix_diverged": diverged, "stepagent/prefix_shortened": 0.0,
                "env_failed": 1.0 if failed else 0.0, "env_error": "timeout:step" if failed else ""}

    m = episode_metrics([info(2, 1, 1, 1), info(0, 1, 0, 0), info(3, 0, 0, 1, diverged=1.0), info(0, 1, 0, 1),
                         info(1, 1, 1, 1, failed=True)])
    assert m["stepagent/prefix_turns"] == 5 / 4
    assert m["stepagent/compared_rate"] == 3 / 4 and m["stepagent/match_rate"] == 1 / 3
    assert m["stepagent/prefix_diverged"] == 1.0 and m["episode/success_rate"] == 3 / 4
    assert m["episode/success_rate_no_prefix"] == 1 / 2
    assert "stepagent/prefix_turns" not in episode_metrics([{"won": 1.0}])  # other rewards: no StepAgent keys
