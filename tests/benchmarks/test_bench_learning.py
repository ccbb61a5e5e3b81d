"""benchmarks/bench_learning.py: the lock env's contract, the verl advantage wiring (hand-computed), and the
quick benchmark end to end (slow)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_learning", REPO / "benchmarks" / "bench_learning.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def _lever(bench, env, role: int) -> str:
    """A lever with the given role (1 advance, 2 trap, 3 stuck, 0 distractor) in the env's current state."""
    roles = env.roles[env._lock, env._stage]
    return f"lever{int(np.nonzero(roles == role)[0][0])}"


def test_lock_env_contract_and_true_worth(bench):
    task = bench.LockTask(n_tasks=2, n_stages=3, n_actions=6, n_traps=1, n_invalid=1, max_steps=10)
    env = bench.LockEnv(task)
    obs, info = env.reset("lock-1")
    assert obs == "task1 stage0 start" and info["anchor"] == "lock-1|stage0"
    obs, r, done, info = env.step("pull the blue one")  # not a lever: a non-executable no-op, never a raise
    assert (r, done, info["executable"], info["worth"]) == (0.0, False, False, 0.0)
    _, _, _, info = env.step(_lever(bench, env, 1))
    assert info["worth"] == pytest.approx(1 / 3) and info["anchor"] == "lock-1|stage1" and info["executable"]
    _, _, _, info = env.step(_lever(bench, env, 1))
    assert info["anchor"] == "lock-1|stage2"
    _, _, _, info = env.step(_lever(bench, env, 2))  # trap: the progress made so far is lost
    assert info["worth"] == pytest.approx(-2 / 3) and info["event"] == "reset" and info["anchor"] == "lock-1|stage0"
    _, _, _, info = env.step(_lever(bench, env, 3))
    assert info["executable"] is False and info["worth"] == 0.0
    worths = []
    for _ in range(3):
        obs, r, done, info = env.step(_lever(bench, env, 1))
        worths.append(info["worth"])
    assert done and r == 1.0 and info["won"] and sum(worths) == pytest.approx(1.0) and obs == "task1 stage3 advance"
    with pytest.raises(ValueError, match="lock-0 .. lock-1"):
        env.reset("lock-7")


def test_lock_task_rejects_impossible_layouts(bench):
    with pytest.raises(ValueError, match="n_actions=3"):
        bench.LockTask(n_actions=3, n_traps=1, n_invalid=2)
    with pytest.raises(ValueError, match="max_steps"):
        bench.LockTask(n_stages=5, max_steps=4)


def _episode(bench, uid, anchors, reward, executable=None):
    n = len(anchors)
    ep = bench.Episode(task_id="lock-0", uid=uid, prompt_ids=[1, 2, 3])
    ep.actions = [0] * n
    ep.obs_ids = [[3, 5, 6, 7]] * n  # 4 observation tokens between turns: response_mask has 0-gaps
    ep.anchors, ep.reward = list(anchors), float(reward)
    ep.executable = list(executable or [True] * n)
    return ep


def test_advantages_through_verl_match_hand_computed_values(bench):
    import spa_reward.register  # noqa: F401

    a = _episode(bench, "g", ["s0", "s0"], 1.0)
    b = _episode(bench, "g", ["s0", "s1", "s1"], 0.0)
    rewards = [[0.0, 1.0], [0.0, 0.0, 0.0]]
    grpo, _ = bench.compute_advantages([a, b], rewards, "grpo", bench.algorithm_config({"adv_estimator": "grpo"}))
    # GRPO: scores 1 and 0, mean 0.5, unbiased std 0.7071 -> +-0.7071 on every turn, 0 on the missing turn
    np.testing.assert_allclose(grpo.numpy(), [[0.70710, 0.70710, 0.0], [-0.70710, -0.70710, -0.70710]], atol=1e-4)
    gigpo, _ = bench.compute_advantages([a, b], rewards, "gigpo", bench.algorithm_config({"adv_estimator": "gigpo"}))
    # gamma 0.95: returns a = [0.95, 1], b = [0, 0, 0]. Step group s0 = {0.95, 1, 0} (mean 0.65), s1 = {0, 0}.
    # A_E (mean_norm) = +-0.5.  a: 0.5 + 0.30, 0.5 + 0.35;  b: -0.5 - 0.65, -0.5 + 0, -0.5 + 0
    np.testing.assert_allclose(gigpo.numpy(), [[0.80, 0.85, 0.0], [-1.15, -0.5, -0.5]], atol=1e-6)


def test_methods_table_names_a_registered_estimator(bench):
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    import spa_reward.register  # noqa: F401

    for name, method in bench.METHODS.items():
        if method.adv_estimator != "grpo":  # grpo is verl's own branch of compute_advantage
            assert callable(get_adv_estimator_fn(method.adv_estimator)), name
    assert set(bench.DEFAULT_METHODS) <= set(bench.METHODS)


@pytest.mark.slow
def test_quick_benchmark_every_method_finishes_and_grpo_learns(bench, tmp_path):
    result = bench.main(["--quick", "--out-dir", str(tmp_path / "out"), "--workdir", str(tmp_path / "work")])
    for name in ("learning.png", "learning_credit.png", "learning.md", "learning.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    runs = result["runs"]
    seeds = result["args"]["seeds"]
    assert sorted({r["method"] for r in runs}) == sorted(bench.DEFAULT_METHODS)
    assert sorted({r["variant"] for r in runs}) == ["fixed", "lock"]
    for r in runs:
        assert len(r["success"]) == len(r["episodes"]) > 0
        assert all(math.isfinite(x) for x in r["success"] + r["loss"]), (r["method"], r["seed"])
    for variant in ("lock", "fixed"):
        for name in bench.DEFAULT_METHODS:
            assert len([r for r in runs if r["method"] == name and r["variant"] == variant]) == seeds
        for seed in range(seeds):  # every method of a seed starts from the same imitation-trained policy
            mine = [r for r in runs if r["variant"] == variant and r["seed"] == seed]
            assert len({r["prepare"]["sft_success"] for r in mine}) == 1
        grpo = [r for r in runs if r["method"] == "grpo" and r["variant"] == variant]
        first = np.mean([np.mean(r["success"][:3]) for r in grpo])
        final = np.mean([np.mean(r["success"][-5:]) for r in grpo])
        assert final > first + 0.1, (variant, first, final)
    spa = [r for r in runs if r["method"] == "spa"]
    assert all(r["prepare"]["explore_episodes"] > 0 and r["prepare"]["objective"] == "prefix" for r in spa)
    per_iter = result["args"]["tasks_per_batch"] * result["args"]["group_size"]
    stepagent = [r for r in runs if bench.METHODS[r["method"]].expert_prefix]
    assert {r["method"] for r in stepagent} >= {"stepagent", "stepagent_reverse", "stepagent_irl", "stepagent_implicit"}
    for r in stepagent:  # success from an extra evaluation batch per iteration, from the start state
        assert r["prepare"]["eval_episodes"] == per_iter * len(r["episodes"]), r["method"]
        assert max(r["prefix_mean"]) > 0 and all(0 <= x <= 1 for x in r["match_rate"]), r["method"]
    saved = json.loads((tmp_path / "out" / "learning.json").read_text())
    assert [(row["task"], row["method"]) for row in saved["rows"]] == [
        (v, m) for v in ("lock", "fixed") for m in bench.DEFAULT_METHODS]
    assert "imitation-trained start, success: lock" in (tmp_path / "out" / "learning.md").read_text()
    redrawn = bench.main(["--from-json", str(tmp_path / "out" / "learning.json"), "--out-dir", str(tmp_path / "re")])
    assert redrawn["rows"] == saved["rows"] and (tmp_path / "re" / "learning.png").stat().st_size > 0
    # two invocations (here: the variants split apart) redraw as one
    for variant in ("lock", "fixed"):
        part = {**saved, "args": {**saved["args"], "variants": [variant]},
                "runs": [r for r in saved["runs"] if r["variant"] == variant]}
        (tmp_path / f"{variant}.json").write_text(json.dumps(part))
    merged = bench.main(["--from-json", str(tmp_path / "lock.json"), str(tmp_path / "fixed.json"),
                         "--out-dir", str(tmp_path / "merged")])
    assert merged["rows"] == saved["rows"]
    # a merged file merges again (its wall time is already "a + b" text)
    again_merged = bench.main(["--from-json", str(tmp_path / "merged" / "learning.json"), str(tmp_path / "lock.json"),
                               "--out-dir", str(tmp_path / "merged2")])
    assert again_merged["rows"] == saved["rows"] and again_merged["wall_s"].count("+") == 2
    # a later file's run replaces the same (variant, method, seed): here grpo's, run "again" with other numbers
    again = {**saved, "runs": [dict(r, success=[0.0] * len(r["success"])) for r in saved["runs"]
                               if r["method"] == "grpo"]}
    (tmp_path / "again.json").write_text(json.dumps(again))
    replaced = bench.main(["--from-json", str(tmp_path / "out" / "learning.json"), str(tmp_path / "again.json"),
                           "--out-dir", str(tmp_path / "again")])
    assert len(replaced["runs"]) == len(saved["runs"])
    assert all(max(r["success"]) == 0.0 for r in replaced["runs"] if r["method"] == "grpo")
    assert [r for r in replaced["rows"] if r["method"] == "spa"] == [r for r in saved["rows"] if r["method"] == "spa"]
    picked = bench.main(["--from-json", str(tmp_path / "out" / "learning.json"), "--methods", "spa", "grpo",
                         "--out-dir", str(tmp_path / "picked")])  # a view of some methods, in the order asked
    assert [(r["task"], r["method"]) for r in picked["rows"]] == [(v, m) for v in ("lock", "fixed")
                                                                  for m in ("spa", "grpo")]


def _tiny_args(bench, tmp_path, **kw):
    args = bench.build_parser().parse_args(["--explore-episodes", "64", "--est-epochs", "1", "--est-batch", "32",
                                           "--workdir", str(tmp_path)])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def _first_batch(bench, name, tmp_path, seed=0):
    """The method's prepared context and its first RL batch (2 locks x group 4) of a fresh policy."""
    import spa_reward.register  # noqa: F401

    task = bench.LockTask(n_tasks=2, n_stages=2, n_actions=6, n_traps=1, n_invalid=1, max_steps=6)
    vocab = bench.Vocab(task)
    torch_mod = pytest.importorskip("torch")
    torch_mod.manual_seed(seed)
    policy = bench.Policy(vocab.size, task.n_actions, hidden=8)
    method = bench.METHODS[name]
    algo = bench.algorithm_config({"adv_estimator": method.adv_estimator, **method.algorithm})
    ctx = method.prepare(seed, policy, task, vocab, _tiny_args(bench, tmp_path), tmp_path, algo=algo)
    tids = [f"lock-{k}" for k in (0, 1) for _ in range(4)]
    eps = bench.rollout(policy, task, vocab, tids, [t + "-g" for t in tids], torch_mod.Generator().manual_seed(1))
    return ctx, eps, algo, method


def test_step_reward_methods_plan_the_trainers_service(bench):
    from spa_reward.steprm.trainer_hooks import service_plan

    kinds = {"spa_online": "progress_online", "spa_online_sum": "progress_online", "istar": "implicit",
             "istar_frozen": "implicit"}
    for name, kind in kinds.items():
        method = bench.METHODS[name]
        algo = bench.algorithm_config({"adv_estimator": method.adv_estimator, **method.algorithm})
        assert service_plan({"algorithm": algo})["kind"] == kind, name
    assert bench.algorithm_config(bench.METHODS["istar"].algorithm).spa.mode == "rloo"  # as examples/rl_istar.sh
    assert service_plan({"algorithm": bench.algorithm_config(bench.METHODS["spa_online"].algorithm)}
                        )["settings"]["loss"] == "prefix"
    assert service_plan({"algorithm": bench.algorithm_config(bench.METHODS["spa_online_sum"].algorithm)}
                        )["settings"]["loss"] == "sum"


def test_istar_first_batch_rewards_are_beta_times_the_log_ratio(bench, tmp_path):
    import torch

    from spa_reward.steprm.objectives import token_logprobs

    # frozen reference: the PRM is its own reference before its first update, so every q_t is exactly 0
    ctx, eps, algo, method = _first_batch(bench, "istar_frozen", tmp_path)
    rewards, diag = method.reward(eps, ctx, algo)
    assert [len(r) for r in rewards] == [len(ep.actions) for ep in eps]
    assert all(x == 0.0 for r in rewards for x in r)
    assert ctx["hooks"].handle.version == 1  # scored, then one DPO update on the batch
    # rollout reference: r_t = beta * (log pi_phi(a_t | prefix) - log pi_policy(a_t)), pi_phi = the same initial PRM
    frozen_initial = ctx["hooks"].handle.reference
    ctx, eps, algo, method = _first_batch(bench, "istar", tmp_path)
    rewards, _ = method.reward(eps, ctx, algo)
    beta = algo.istar.beta
    for ep, r in zip(eps, rewards):
        ids, ends = bench.estimator_sequence(ep, ctx["vocab"])
        with torch.no_grad():
            lp = token_logprobs(frozen_initial(input_ids=torch.tensor([ids])).logits, torch.tensor([ids]))[0]
        expected = [beta * (float(lp[e]) - lp_pol) for e, lp_pol in zip(ends, ep.logps)]
        np.testing.assert_allclose(r, expected, rtol=1e-4, atol=1e-6)
    adv, _ = bench.compute_advantages(eps, rewards, method.adv_estimator, algo)
    assert adv.shape == (len(eps), max(len(ep.actions) for ep in eps)) and torch.isfinite(adv).all()


def test_spa_online_starts_from_the_offline_estimator_and_trains(bench, tmp_path):
    ctx, eps, algo, method = _first_batch(bench, "spa_online", tmp_path)
    items = bench.scorer_items(eps, ctx["vocab"])
    offline = ctx["scorer"].score(items)  # the spa entry's frozen scorer
    rewards, diag = method.reward(eps, ctx, algo)
    expected = [bench.fuse_turn_rewards(c, ep.executable, alpha=1.0, beta=0.1, grounding="penalty")[0]
                for c, ep in zip(offline, eps)]
    for r, e in zip(rewards, expected):
        np.testing.assert_allclose(r, e, rtol=1e-4, atol=1e-6)
    service = ctx["hooks"].handle
    assert service.version == 1 and math.isfinite(diag["steprm_loss"])
    after = service.score(items)  # trained on the batch: the online weights moved away from the offline ones
    assert max(abs(a - b) for x, y in zip(after, offline) for a, b in zip(x, y)) > 1e-6


def test_fixed_variant_runs_every_step_keeps_the_lock_open_and_pays_the_progress_kept(bench):
    task = bench.LockTask(n_tasks=1, n_stages=2, n_actions=5, n_traps=1, n_invalid=1, max_steps=6, fixed_length=True)
    env = bench.LockEnv(task)
    env.reset("lock-0")
    rewards, worths = [], []
    for role in (1, 1, 2, 3, 0):  # opens at step 2; the open lock ignores every later pull, traps included
        lever = _lever(bench, env, role) if env._stage < task.n_stages else "lever0"
        _, r, done, info = env.step(lever)
        rewards.append(r)
        worths.append(info["worth"])
        assert not done
    assert info["won"] and info["event"] == "moved" and env._stage == task.n_stages
    _, r, done, info = env.step("lever1")  # the last step ends the episode with R = final stage / n_stages
    assert done and r == 1.0 and info["won"] and info["truncated"]
    assert rewards == [0.0] * 5 and sum(worths) + info["worth"] == pytest.approx(r)
    # partial credit: a trap on the last step leaves R = 0, a stage kept leaves R = 1/2
    for last_role, expected in ((2, 0.0), (0, 0.5)):
        env.reset("lock-0")
        env.step(_lever(bench, env, 1))
        for _ in range(4):
            env.step(_lever(bench, env, 0))
        _, r, done, _ = env.step(_lever(bench, env, last_role))
        assert done and r == expected


def test_noisy_expert_and_the_imitation_stage(bench):
    import torch

    task = bench.LockTask(n_tasks=2, n_stages=2, n_actions=4, n_traps=1, n_invalid=1, max_steps=6)
    vocab = bench.Vocab(task)
    expert = bench.NoisyExpert(task, vocab, noise=0.6)
    roles = bench.lock_layout(task)
    feats = torch.tensor([[vocab.ids["task1"], vocab.ids["stage1"], vocab.ids["advance"], vocab.ids["<none>"]]])
    probs = expert(feats).exp()[0]
    advance = int(np.nonzero(roles[1, 1] == 1)[0][0])
    expected = np.full(4, 0.6 / 4)
    expected[advance] += 0.4
    np.testing.assert_allclose(probs.numpy(), expected, atol=1e-6)
    args = bench.build_parser().parse_args(["--sft-episodes", "256", "--sft-noise", "0.3", "--sft-steps", "300",
                                           "--hidden", "16"])
    sft = bench.pretrain_policy(0, task, vocab, args)
    assert sft["info"]["sft_success"] > 0.5  # uniform play opens this lock far less often
    assert bench.pretrain_policy(0, task, vocab, args) is sft  # cached: every method of a seed starts from it


def test_critic_values_reach_spa_as_turn_gae(bench):
    import spa_reward.register  # noqa: F401

    a = _episode(bench, "g", ["s0", "s1"], 1.0)
    b = _episode(bench, "g", ["s0", "s1", "s2"], 0.0)
    algo = bench.algorithm_config({"adv_estimator": "spa"})
    adv, ret = bench.compute_advantages([a, b], [[0.0, 1.0], [0.0, 0.0, 0.0]], "spa", algo,
                                        values=[[0.5, 0.8], [0.2, 0.1, 0.0]])
    # gamma 0.95, lam 1: returns = A_t + V_t = the discounted return of each turn
    np.testing.assert_allclose(ret.numpy(), [[0.95, 1.0, 0.0], [0.0, 0.0, 0.0]], atol=1e-6)
    # A_t before whitening: a = [0.45, 0.2], b = [-0.2, -0.1, 0.0]; whitened over the five turns
    raw = np.array([0.45, 0.2, -0.2, -0.1, 0.0])
    white = (raw - raw.mean()) / raw.std(ddof=1)
    np.testing.assert_allclose(adv.numpy()[[0, 0, 1, 1, 1], [0, 1, 0, 1, 2]], white, atol=1e-4)
    with pytest.raises(ValueError, match="critic values reach only the spa estimator"):
        bench.compute_advantages([a], [[0.0, 1.0]], "gigpo", bench.algorithm_config({"adv_estimator": "gigpo"}),
                                 values=[[0.5, 0.8]])


def test_the_benchmarks_spa_is_what_rl_spa_sh_runs(bench):
    """The benchmark's ``spa`` method is examples/rl_spa.sh's default run: the same algorithm.spa settings (the
    recipe yaml's, which the script sets explicitly too), the same invalid penalty and the same critic choice."""
    from tests.recipe.test_examples import overrides

    script = overrides("rl_spa.sh", "webshop")
    algo = bench.algorithm_config({"adv_estimator": "spa", **bench.METHODS["spa"].algorithm})
    for key in ("objective", "alpha", "beta", "grounding"):
        assert str(algo.spa[key]) == script[f"algorithm.spa.{key}"], key
    assert float(algo.invalid_penalty) == float(script["algorithm.invalid_penalty"])
    assert script["algorithm.adv_estimator"] == bench.METHODS["spa"].adv_estimator == "spa"
    assert (script.get("critic.enable") == "true") == bench.METHODS["spa"].critic
    # train_estimator.sh trains the estimator with the objective the run reads (DRY_RUN prints its command)
    from tests.recipe.test_examples import dry_run

    proc = dry_run("train_estimator.sh", "webshop", SFT_MODEL="/models/sft")
    assert proc.returncode == 0, proc.stderr[-2000:]
    argv = proc.stdout.split()
    assert argv[argv.index("--objective") + 1] == script["algorithm.spa.objective"]
