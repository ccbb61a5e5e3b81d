"""benchmarks/bench_credit.py: the identifiability analysis on hand-checkable cases (the trained-estimator part is
bench_learning's prepare_spa, tested there)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from tests.benchmarks.test_bench_learning import REPO


@pytest.fixture(scope="module")
def credit():
    spec = importlib.util.spec_from_file_location("bench_credit", REPO / "benchmarks" / "bench_credit.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _episodes(credit, fixed: bool, n: int = 400):
    bench = credit._bench()
    task = bench.LockTask(n_tasks=1, n_stages=2, n_actions=4, n_traps=1, n_invalid=1, max_steps=5, fixed_length=fixed)
    vocab = bench.Vocab(task)
    torch.manual_seed(0)
    policy = bench.Policy(vocab.size, task.n_actions, hidden=8)  # uniform: every (stage, lever) is seen often
    eps = bench.rollout(policy, task, vocab, ["lock-0"] * n, [f"u{i}" for i in range(n)], torch.Generator().manual_seed(0))
    return eps, task


def test_sum_supervision_is_exact_when_the_worth_adds_up_to_r(credit):
    """Fixed length with partial credit: R = sum of the worth, which is a function of (stage, lever), so the exact
    least-squares solution of sum_t c_t = R recovers it (Pearson 1); the lock variant loses progress at the
    truncation, so the worth itself does not fit R there."""
    eps, task = _episodes(credit, fixed=True)
    out = credit.identifiability(eps, task)
    assert out["worth_sum_mse"] == pytest.approx(0.0, abs=1e-12)
    assert out["ls_sum_pearson"] == pytest.approx(1.0, abs=1e-6) and out["ls_sum_mse"] == pytest.approx(0, abs=1e-9)
    eps, task = _episodes(credit, fixed=False)
    out = credit.identifiability(eps, task)
    assert out["worth_sum_mse"] > 0.01 and out["ls_sum_pearson"] < 0.99
    assert 0.0 <= out["success"] <= 1.0 and out["var_r"] > 0


def test_step_keys_follow_the_stage(credit):
    eps, task = _episodes(credit, fixed=False, n=20)
    for ep, keys in zip(eps, credit._step_keys(eps, task)):
        stage = 0
        for a, w, k in zip(ep.actions, ep.worth, keys):
            assert k == (0 * (task.n_stages + 1) + stage) * task.n_actions + a
            stage = round(stage + w * task.n_stages)
    assert credit.mean_by_step([[1.0, 2.0], [3.0]], 3)[:2] == [2.0, 2.0] and np.isnan(credit.mean_by_step([[1.0]], 2)[1])
