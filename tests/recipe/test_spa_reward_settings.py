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


def test_the_code_defaults_are_the_yaml_defaults():
    """One source of truth: spa_reward.fusion.SPA_DEFAULTS = algorithm.spa of spa_trainer.yaml = rl_spa.sh's defaults
    = the fallbacks of RewardSettings, fuse_turn_rewards, the config check and the service plan."""
    import dataclasses
    import inspect
    import re

    from omegaconf import OmegaConf

    from spa_reward.fusion import SPA_DEFAULTS, fuse_turn_rewards

    spa = OmegaConf.load(REPO / "recipe" / "spa" / "config" / "spa_trainer.yaml").algorithm.spa
    assert {k: spa[k] for k in SPA_DEFAULTS} == SPA_DEFAULTS == {"alpha": 1.0, "beta": 0.1, "grounding": "penalty",
                                                                 "objective": "prefix"}
    script = (REPO / "examples" / "rl_spa.sh").read_text()
    for key, var in (("beta", "SPA_BETA"), ("grounding", "SPA_GROUNDING"), ("objective", "SPA_OBJECTIVE")):
        (default,) = re.findall(rf"^{var}=\$\{{{var}:-([^}}]+)\}}", script, re.M)
        assert type(SPA_DEFAULTS[key])(default) == SPA_DEFAULTS[key], (var, default)
    assert "algorithm.spa.alpha=1.0" in script
    fields = {f.name: f.default for f in dataclasses.fields(RewardSettings)}
    params = inspect.signature(fuse_turn_rewards).parameters
    for key in ("alpha", "beta", "grounding"):
        assert fields[key] == params[key].default == SPA_DEFAULTS[key], key
    # every reward_kwargs key the yaml fills reads as the dataclass default on the composed yaml
    assert RewardSettings.from_config(trainer_config()) == RewardSettings()


def test_missing_keys_take_the_yaml_defaults_everywhere():
    """A config without algorithm.spa.{beta, grounding, objective} runs what the yaml runs (penalty 0.1, prefix),
    not the paper's bonus 0.5 / sum, and gets no warning."""
    cfg = trainer_config("algorithm.reward=spa", "algorithm.spa.estimator_path=/est", "algorithm.spa.online.enable=true",
                         "~algorithm.spa.beta", "~algorithm.spa.grounding", "~algorithm.spa.objective")
    settings = RewardSettings.from_config(cfg)
    assert (settings.grounding, settings.beta) == ("penalty", 0.1)
    assert service_plan(cfg)["settings"]["loss"] == "prefix"
    assert value_problems(cfg) == [] and config_warnings(cfg) == []


def test_the_warning_fires_exactly_on_the_effective_bonus():
    """The warning reads the fallbacks the reward manager uses: grounding=bonus without a beta runs the bonus with
    the default beta 0.1 (warned), a beta of 0.5 without a grounding runs the penalty (not warned)."""
    base = ("algorithm.reward=spa", "algorithm.spa.estimator_path=/est")
    bonus_no_beta = trainer_config(*base, "algorithm.spa.grounding=bonus", "~algorithm.spa.beta")
    assert (RewardSettings.from_config(bonus_no_beta).grounding, RewardSettings.from_config(bonus_no_beta).beta) == (
        "bonus", 0.1)
    (warning,) = config_warnings(bonus_no_beta)
    assert "algorithm.spa.grounding=bonus with algorithm.spa.beta=0.1" in warning
    beta_no_grounding = trainer_config(*base, "algorithm.spa.beta=0.5", "~algorithm.spa.grounding")
    assert RewardSettings.from_config(beta_no_grounding).grounding == "penalty"
    assert config_warnings(beta_no_grounding) == []
    # what the manager reads (reward.reward_kwargs) decides, also when it is set beside algorithm.spa
    assert config_warnings(trainer_config(*base, "reward.reward_kwargs.grounding=bonus")) != []


def test_the_grounding_warning_says_the_collapse_was_measured_with_a_critic():
    (warning,) = config_warnings(trainer_config("algorithm.reward=spa", "algorithm.spa.estimator_path=/est",
                                                "algorithm.spa.beta=0.5", "algorithm.spa.grounding=bonus"))
    assert "measured with a critic" in warning and "benchmarks/bench_learning.py" in warning
    assert "What makes a learned step reward work" in warning and "without a critic" in warning


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
