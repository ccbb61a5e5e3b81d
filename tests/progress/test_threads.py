"""The thread-count policy (spa_reward.threads) and the typed CLI helpers (envs.cli)."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from envs import cli
from spa_reward import threads


@pytest.mark.parametrize("cores,load,expected", [
    (2, 0.0, 2), (2, 0.4, 2), (2, 0.9, 1), (2, 1.0, 1), (2, 1.6, 1), (2, 2.0, 1), (2, 7.5, 1), (16, 3.2, 13),
    (16, 0.0, 16),
])
def test_free_cores_rounded(cores, load, expected, monkeypatch):
    monkeypatch.delenv(threads.ENV_VAR, raising=False)
    assert threads.pick_num_threads(ceiling=64, cores=cores, load=load) == expected


@given(st.integers(1, 256), st.floats(0, 1000), st.integers(1, 256))
def test_pick_is_within_one_and_the_ceiling(cores, load, ceiling):
    n = threads.pick_num_threads(ceiling=ceiling, cores=cores, load=load)
    assert 1 <= n <= min(cores, ceiling)


def test_env_override_and_bad_value(monkeypatch):
    monkeypatch.setenv(threads.ENV_VAR, "3")
    assert threads.pick_num_threads(ceiling=1, cores=1, load=9) == 3
    monkeypatch.setenv(threads.ENV_VAR, "zero")
    with pytest.raises(ValueError, match="SPA_NUM_THREADS='zero'"):
        threads.pick_num_threads()


def test_decorator_sets_and_restores(monkeypatch):
    monkeypatch.setenv(threads.ENV_VAR, "1")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = []

    @threads.thread_policy
    def op(x):
        seen.append(torch.get_num_threads())
        return x + 1

    try:
        assert op(1) == 2 and seen == [1]
        assert torch.get_num_threads() == 2
        assert op.__name__ == "op"
    finally:
        torch.set_num_threads(before)


def test_cli_types():
    assert cli.positive_int("3") == 3 and cli.non_negative_int("0") == 0
    assert cli.positive_float("1e-3") == 1e-3 and cli.non_negative_float("0") == 0.0
    assert cli.unit_interval(closed_right=False)("0.5") == 0.5 and cli.unit_interval()("1") == 1.0
    bad = [(cli.positive_int, "0"), (cli.positive_int, "1.5"), (cli.non_negative_int, "-1"),
           (cli.finite_float, "nan"), (cli.finite_float, "-inf"), (cli.positive_float, "0"),
           (cli.non_negative_float, "-0.1"), (cli.unit_interval(closed_right=False), "1"), (cli.unit_interval(), "1.01")]
    for fn, text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text).replace(".", r"\.")):
            fn(text)
    assert math.isinf(float("inf"))  # sanity: the refusals above are the helpers', not float()'s
