"""benchmarks/bench_learning.py, the StepAgent entries: expert-prefix episodes in the lock (the recipe's Inspection and
prefix schedule), the stepagent reward manager's reward on them (hand-checked), the implicit / irl service path,
and a tiny benchmark run with an evaluation batch from the start state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.benchmarks.test_bench_learning import _episode, bench  # noqa: F401  (fixture)

TASK_KW = dict(n_tasks=2, n_stages=3, n_actions=6, n_traps=1, n_invalid=1, max_steps=8)


def _setup(bench, seed=0):  # noqa: F811
    task = bench.LockTask(**TASK_KW)
    vocab = bench.Vocab(task)
    torch.manual_seed(seed)
    return task, vocab, bench.Policy(vocab.size, task.n_actions, hidden=8)


def _args(bench, tmp_path, *extra):  # noqa: F811
    return bench.build_parser().parse_args(["--workdir", str(tmp_path), "--episodes", "64", "--tasks-per-batch", "2",
                                           "--group-size", "4", *extra])


def _prepare(bench, name, tmp_path, seed=0, *extra):  # noqa: F811
    import spa_reward.register  # noqa: F401

    task, vocab, policy = _setup(bench, seed)
    method = bench.METHODS[name]
    algo = bench.algorithm_config({"adv_estimator": method.adv_estimator, **method.algorithm})
    ctx = method.prepare(seed, policy, task, vocab, _args(bench, tmp_path, *extra), tmp_path, algo=algo)
    return task, vocab, policy, method, algo, ctx


def test_lock_expert_is_the_advancing_lever_of_every_stage(bench):  # noqa: F811
    task = bench.LockTask(**TASK_KW)
    roles = bench.lock_layout(task)
    demos = bench.lock_expert(task)
    assert sorted(demos) == ["lock-0", "lock-1"]
    for t in range(task.n_tasks):
        demo = demos[f"lock-{t}"]
        assert len(demo) == task.n_stages
        for s, action in enumerate(demo.actions):
            assert roles[t, s, int(action.removeprefix("lever"))] == 1
        assert demo.anchors == tuple(f"lock-{t}|stage{s}" for s in (1, 2, 3))
        env = bench.LockEnv(task)  # the demo opens the lock
        env.reset(f"lock-{t}")
        for action in demo.actions:
            _, r, done, _ = env.step(action)
        assert done and r == 1.0


def test_prefix_rollout_reaches_the_experts_state_after_k_levers(bench):  # noqa: F811
    """Every k in 0..L-1: the k expert levers are stepped in the env (they count toward max_steps) and sit in the
    response as mask-0 tokens; the policy's first step acts at the expert's state after k levers, with the last
    expert lever as its previous action; the stepagent dict is the agent loop's."""
    from recipe.spa.expert_prefix import Inspection

    task, vocab, policy = _setup(bench)
    demos = bench.lock_expert(task)
    tids = [f"lock-{t}" for t in (0, 1) for _ in range(3)]
    ks = [0, 1, 2, 2, 1, 0]
    insps = [Inspection(demos[tid], k) for tid, k in zip(tids, ks)]
    eps = bench.rollout(policy, task, vocab, tids, [f"u{i}" for i in range(6)], torch.Generator().manual_seed(3),
                        insps)
    for ep, k in zip(eps, ks):
        demo = demos[ep.task_id]
        t = int(ep.task_id.removeprefix("lock-"))
        expert = [int(a.removeprefix("lever")) for a in demo.actions]
        assert ep.prefix_actions == expert[:k]
        assert ep.anchors[0] == f"lock-{t}|stage{k}"  # the state the first policy step acted on
        expected_ids = []
        for j in range(k):
            expected_ids += [vocab.ids[f"lever{expert[j]}"], vocab.ids["<obs>"], vocab.ids[f"task{t}"],
                             vocab.ids[f"stage{j + 1}"], vocab.ids["advance"]]
        assert ep.prefix_ids == expected_ids
        assert ep.feats[0] == vocab.encode(f"task{t} stage{k} {'advance' if k else 'start'}") + [
            vocab.ids[f"lever{expert[k - 1]}"] if k else vocab.ids["<none>"]]
        if not ep.won:  # the prefix's env steps count toward max_steps
            assert len(ep.actions) == task.max_steps - k
        mask, pos = bench.response_layout(ep)
        assert mask[: len(ep.prefix_ids)] == [0] * len(ep.prefix_ids) and pos[0] == len(ep.prefix_ids)
        ids, ends = bench.estimator_sequence(ep, vocab)
        sa = ep.stepagent
        assert sa["prefix_turns"] == k and sa["expert_turns"] == 3 and sa["compared"]
        assert sa["expert_action"] == demo.actions[k] and sa["agent_action"] == f"lever{ep.actions[0]}"
        assert sa["match"] == (ep.actions[0] == expert[k]) and sa["match_by"] == ("action" if sa["match"] else "")
        assert sa["context_length"] == len(ep.prompt_ids) + len(ep.prefix_ids) == ends[0]
        assert sa["expert_reply_ids"] == [vocab.ids[demo.actions[k]]]
        assert ids[sa["context_length"]] == vocab.ids[f"lever{ep.actions[0]}"]


def test_prefix_k0_plays_exactly_the_plain_rollout(bench):  # noqa: F811
    """k = 0 replays nothing: same random stream, same episodes as without inspection (the other methods' rollout
    is untouched), plus the comparison at the start state."""
    from recipe.spa.expert_prefix import Inspection

    task, vocab, policy = _setup(bench)
    demos = bench.lock_expert(task)
    tids = ["lock-0", "lock-1"] * 4
    plain = bench.rollout(policy, task, vocab, tids, tids, torch.Generator().manual_seed(5))
    k0 = bench.rollout(policy, task, vocab, tids, tids, torch.Generator().manual_seed(5),
                       [Inspection(demos[t], 0) for t in tids])
    for a, b in zip(plain, k0):
        assert (a.actions, a.logps, a.worth, a.won, a.anchors) == (b.actions, b.logps, b.worth, b.won, b.anchors)
        assert a.stepagent is None and b.stepagent["compared"] and b.prefix_ids == []


def test_stepagent_methods_are_the_recipes_settings(bench):  # noqa: F811
    from spa_reward.steprm.trainer_hooks import service_plan

    kinds = {"stepagent": None, "stepagent_reverse": None, "stepagent_irl": "stepagent_irl",
             "stepagent_implicit": "stepagent_implicit", "stepagent_irl_8steps": "stepagent_irl"}
    for name, kind in kinds.items():
        method = bench.METHODS[name]
        algo = bench.algorithm_config({"adv_estimator": method.adv_estimator, **method.algorithm})
        plan = service_plan({"algorithm": algo})
        assert (plan and plan["kind"]) == kind, name
        assert method.expert_prefix and algo.adv_estimator == "spa" and algo.spa.mode == "mean_norm"  # rl_stepagent.sh
        assert algo.stepagent.match_reward == 1.0 and algo.stepagent.grounding_beta == 0.0
    assert bench.algorithm_config(bench.METHODS["stepagent"].algorithm).stepagent.prefix == "uniform"
    assert bench.algorithm_config(bench.METHODS["stepagent_reverse"].algorithm).stepagent.prefix == "reverse"


def test_reverse_curriculum_k_per_step_and_group(bench, tmp_path):  # noqa: F811
    """reverse_steps defaults to half the run's iterations (64 episodes / 8 per batch = 8 -> 4); L = 3:
    k = floor(2 * (1 - step / 4)) = 1 at step 1 and 2, 0 from step 3 (floor(0.5)); a group shares k."""
    task, vocab, policy, method, algo, ctx = _prepare(bench, "stepagent_reverse", tmp_path)
    assert ctx["settings"].reverse_steps == 4 and ctx["info"]["reverse_steps"] == 4
    tids = ["lock-0"] * 4 + ["lock-1"] * 4
    ks = {step: [i.k for i in bench.stepagent_inspections(ctx, tids, step)] for step in (1, 2, 3, 4, 9)}
    assert ks == {1: [1] * 8, 2: [1] * 8, 3: [0] * 8, 4: [0] * 8, 9: [0] * 8}
    _, _, _, _, _, uni = _prepare(bench, "stepagent", tmp_path, seed=1)
    for step in range(1, 6):
        k = [i.k for i in bench.stepagent_inspections(uni, tids, step)]
        assert len(set(k[:4])) == len(set(k[4:])) == 1 and all(0 <= x <= 2 for x in k)  # one k per group


def test_stepagent_match_first_iteration_rewards_hand_checked(bench, tmp_path):  # noqa: F811
    """Mode match on the first batch: -1 / +1 on the compared turn (the first policy turn, after the prefix), R on the
    last turn, 0 elsewhere and nothing for the prefix (it is no turn)."""
    task, vocab, policy, method, algo, ctx = _prepare(bench, "stepagent", tmp_path)
    tids = [f"lock-{t}" for t in (0, 1) for _ in range(4)]
    eps = bench.rollout(policy, task, vocab, tids, [t + "-g" for t in tids], torch.Generator().manual_seed(1),
                        bench.stepagent_inspections(ctx, tids, 1))
    rewards, diag = method.reward(eps, ctx, algo)
    for ep, r in zip(eps, rewards):
        expected = [0.0] * len(ep.actions)
        expected[0] += 1.0 if ep.stepagent["match"] else -1.0
        expected[-1] += 1.0 if ep.won else 0.0
        assert r == expected, (ep.stepagent, ep.won)
    assert diag["match_rate"] == pytest.approx(np.mean([ep.stepagent["match"] for ep in eps]))
    assert diag["prefix_mean"] == pytest.approx(np.mean([len(ep.prefix_actions) for ep in eps]))


def test_stepagent_match_advantage_hand_computed(bench):  # noqa: F811
    """spa (critic-free, mean_norm) on stepagent rewards: a matched winner a = [+1, R=1], an unmatched loser
    b = [-1]: A_E = R - mean R = +-0.5; A_S = r_t - mean over the group's turns (1/3): a 2/3, 2/3; b -4/3."""
    import spa_reward.register  # noqa: F401

    a = _episode(bench, "g", ["s1", "s2"], 1.0)
    b = _episode(bench, "g", ["s1"], 0.0)
    a.prefix_ids = b.prefix_ids = [9, 3, 5, 6, 7]  # a prefix in the response: mask 0, moves the turns only
    algo = bench.algorithm_config(bench.METHODS["stepagent"].algorithm | {"adv_estimator": "spa"})
    adv, _ = bench.compute_advantages([a, b], [[1.0, 1.0], [-1.0]], "spa", algo)
    np.testing.assert_allclose(adv.numpy(), [[0.5 + 2 / 3, 0.5 + 2 / 3], [-0.5 - 4 / 3, 0.0]], atol=1e-6)


def test_stepagent_implicit_first_batch_is_the_env_part_then_trains_on_unmatched_pairs(bench, tmp_path):  # noqa: F811
    task, vocab, policy, method, algo, ctx = _prepare(bench, "stepagent_implicit", tmp_path)
    tids = [f"lock-{t}" for t in (0, 1) for _ in range(4)]
    eps = bench.rollout(policy, task, vocab, tids, [t + "-g" for t in tids], torch.Generator().manual_seed(1),
                        bench.stepagent_inspections(ctx, tids, 1))
    rewards, diag = method.reward(eps, ctx, algo)
    # frozen reference: the PRM is its own reference before its first update, so beta * q_t = 0 exactly
    for ep, r in zip(eps, rewards):
        assert r == [0.0] * (len(ep.actions) - 1) + [1.0 if ep.won else 0.0]
    unmatched = sum(not ep.stepagent["match"] for ep in eps)
    assert unmatched > 0 and diag["pairs"] == unmatched
    assert ctx["hooks"].handle.version == (1 if unmatched else 0) and math.isfinite(diag["steprm_loss"])


def test_stepagent_irl_rewards_are_the_initial_discriminators_clipped_logits(bench, tmp_path):  # noqa: F811
    from spa_reward.steprm.service import StepRewardModel

    task, vocab, policy, method, algo, ctx = _prepare(bench, "stepagent_irl_all", tmp_path)
    fresh = StepRewardModel(ctx["hooks"].handle.settings)  # same settings and seed: the same initial weights
    tids = [f"lock-{t}" for t in (0, 1) for _ in range(4)]
    eps = bench.rollout(policy, task, vocab, tids, [t + "-g" for t in tids], torch.Generator().manual_seed(1),
                        bench.stepagent_inspections(ctx, tids, 1))
    items = []
    for ep in eps:
        ids, ends = bench.estimator_sequence(ep, vocab)
        items.append({"input_ids": ids, "prompt_length": len(ep.prompt_ids), "turn_spans": [[e, e + 1] for e in ends]})
    logits = fresh.score(items)
    rewards, diag = method.reward(eps, ctx, algo)
    clip = algo.stepagent.irl_clip
    for ep, r, q in zip(eps, rewards, logits):
        env = [0.0] * (len(ep.actions) - 1) + [1.0 if ep.won else 0.0]
        np.testing.assert_allclose(r, [e + x for e, x in zip(env, q)], rtol=1e-5, atol=1e-6)
        assert all(abs(x) <= clip for x in q)
    assert ctx["hooks"].handle.version == 1 and diag["pairs"] == sum(not ep.stepagent["match"] for ep in eps)
    # the recipe's default (prm_turns=compared): the same logit on the compared turn (the first policy turn), none after
    task, vocab, policy, method, algo, ctx = _prepare(bench, "stepagent_irl", tmp_path / "compared")
    rewards, _ = method.reward(eps, ctx, algo)
    for ep, r, q in zip(eps, rewards, logits):
        env = [0.0] * (len(ep.actions) - 1) + [1.0 if ep.won else 0.0]
        expected = [e + (x if t == 0 and ep.stepagent["compared"] else 0.0) for t, (e, x) in enumerate(zip(env, q))]
        np.testing.assert_allclose(r, expected, rtol=1e-5, atol=1e-6)


def test_tiny_benchmark_with_stepagent_measures_success_from_the_start_state(bench, tmp_path):  # noqa: F811
    """A few iterations of the benchmark: stepagent trains on prefix episodes and reports the success of an extra
    evaluation batch per iteration (counted in the table), grpo's success is its own training batch."""
    result = bench.main(["--methods", "grpo", "stepagent", "stepagent_implicit", "--seeds", "1", "--episodes", "96",
                         "--n-tasks", "2", "--n-stages", "3", "--tasks-per-batch", "2", "--group-size", "8",
                         "--hidden", "8", "--est-hidden", "16", "--out-dir", str(tmp_path / "out"),
                         "--workdir", str(tmp_path / "work")])
    runs = {r["method"]: r for r in result["runs"]}
    for name in ("stepagent", "stepagent_implicit"):
        r = runs[name]
        assert r["prepare"]["eval_episodes"] == 96 and len(r["success"]) == 6
        assert all(0 <= x <= 1 for x in r["success"] + r["train_success"] + r["match_rate"])
        assert max(r["prefix_mean"]) > 0  # uniform k over 0..2: some prefixes
    assert runs["grpo"]["success"] == runs["grpo"]["train_success"] and "eval_episodes" not in runs["grpo"]["prepare"]
    rows = {row["method"]: row for row in result["rows"]}
    assert rows["stepagent"]["extra episodes"] == "96 (evaluation)" and rows["grpo"]["extra episodes"] == 0
    assert (tmp_path / "out" / "learning.png").stat().st_size > 0
