"""algorithm.spa.objective and algorithm.spa.grounding: the config check names bad values, refuses an estimator
trained with another objective, warns about the farmable grounding bonus; the reward manager, the online
service plan and the launch check read them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from spa_reward.config_check import config_problems, config_warnings, value_problems
from spa_reward.reward_manager import RewardSettings
from spa_reward.steprm.trainer_hooks import service_plan
from tests.recipe.helpers import REPO, trainer_config


def test_bad_objective_and_grounding_are_named():
    problems = value_problems({"algorithm": {"spa": {"objective": "prefixx", "grounding": "always"}}})
    assert any("algorithm.spa.objective='prefixx' is not one of ('sum', 'prefix')" in p for p in problems)
    assert any("algorithm.spa.grounding='always' is not one of ('bonus', 'penalty')" in p for p in problems)
    assert value_problems({"algorithm": {"spa": {"objective": "prefix", "grounding": "penalty"}}}) == []


def test_grounding_bonus_warns_and_penalty_does_not():
    bonus = trainer_config("algorithm.reward=spa", "algorithm.spa.estimator_path=/est", "algorithm.spa.beta=0.5",
                           "algorithm.spa.grounding=bonus")
    (warning,) = config_warnings(bonus)
    assert "algorithm.spa.grounding=bonus with algorithm.spa.beta=0.5" in warning and "grounding=penalty" in warning
    assert config_warnings(trainer_config("algorithm.reward=spa", "algorithm.spa.estimator_path=/est",
                                          "algorithm.spa.beta=0.5", "algorithm.spa.grounding=penalty")) == []
    assert config_warnings(trainer_config("algorithm.reward=spa", "algorithm.spa.estimator_path=/est",
                                          "algorithm.spa.beta=0", "algorithm.spa.grounding=bonus")) == []
    assert config_warnings(trainer_config("algorithm.reward=outcome")) == []


def test_reward_manager_and_online_service_read_the_settings():
    cfg = trainer_config("algorithm.reward=spa", "algorithm.spa.estimator_path=/est", "algorithm.spa.grounding=penalty",
                         "algorithm.spa.objective=prefix", "algorithm.spa.online.enable=true")
    assert RewardSettings.from_config(cfg).grounding == "penalty"
    plan = service_plan(cfg)
    assert plan["kind"] == "progress_online" and plan["settings"]["loss"] == "prefix"


def test_an_estimator_with_another_objective_is_refused(tmp_path):
    from spa_reward.progress.model import ProgressEstimator, ProgressEstimatorConfig, build_tiny_backbone_config

    ProgressEstimator(ProgressEstimatorConfig(backbone_config=build_tiny_backbone_config(vocab_size=32, hidden_size=16),
                                              objective="sum")).save_pretrained(tmp_path / "est")
    cfg = trainer_config("algorithm.reward=spa", f"algorithm.spa.estimator_path={tmp_path / 'est'}",
                         "algorithm.spa.objective=prefix")
    problems = config_problems(cfg, check_files=False)
    assert any("trained with --objective sum but this run sets algorithm.spa.objective=prefix" in p for p in problems)
    same = trainer_config("algorithm.reward=spa", f"algorithm.spa.estimator_path={tmp_path / 'est'}",
                          "algorithm.spa.objective=sum")
    assert not any("objective" in p for p in config_problems(same, check_files=False))


def test_the_launch_check_prints_the_warning_and_starts():
    proc = subprocess.run([sys.executable, "-m", "recipe.spa.check", "--no-files", "env=webshop",
                           "algorithm.reward=spa", "algorithm.adv_estimator=spa", "algorithm.spa.estimator_path=/est",
                           "algorithm.spa.grounding=bonus", "algorithm.spa.beta=0.5"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[spa-rl] warning: algorithm.spa.grounding=bonus with algorithm.spa.beta=0.5" in proc.stderr
