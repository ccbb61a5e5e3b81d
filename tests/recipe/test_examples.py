"""Every launch script's final command composes (DRY_RUN=1: hydra --cfg job), and the composed configs pass the
start-up checks, so the scripts cannot rot. Also the config checks' error messages and the eval table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from spa_reward.config_check import ConfigError, config_problems, validate_config
from tests.recipe.helpers import REPO, trainer_config


def dry_run(script: str, *args: str, **env_vars: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DRY_RUN="1", PYTHON=sys.executable, DATA_DIR="/data/spa", OUT_DIR="/out", **env_vars)
    return subprocess.run(["bash", str(REPO / "examples" / script), *args], capture_output=True, text=True,
                          env=env, timeout=600)


def composed(script: str, *args: str, **env_vars: str):
    proc = dry_run(script, *args, **env_vars)
    assert proc.returncode == 0, f"{script} {args}: {proc.stderr[-3000:]}"
    return OmegaConf.create(yaml.safe_load(proc.stdout))


# each algorithm once and each env once (a composition costs ~20 s of verl imports on a small CPU box)
RL = [
    ("rl_grpo.sh", "webshop", "outcome", "grpo"),
    ("rl_gigpo.sh", "virtualhome", "outcome", "gigpo"),
    ("rl_ppo.sh", "webshop", "outcome", "gae"),
    ("rl_spa.sh", "alfworld", "spa", "spa"),
]


@pytest.mark.parametrize("script,env,reward,estimator", [
    pytest.param(*case, marks=() if case[0] == "rl_spa.sh" else pytest.mark.slow) for case in RL
])
def test_rl_scripts_compose(script, env, reward, estimator):
    extra = ("algorithm.spa.clip=5", "env.max_turns=20") if reward == "spa" else ()
    cfg = composed(script, env, *extra, SPA_CRITIC="1")
    assert cfg.env.name == env and cfg.algorithm.reward == reward and cfg.algorithm.adv_estimator == estimator
    assert cfg.reward.reward_manager.name == reward
    assert cfg.trainer.v1.trainer_mode == "spa" and cfg.trainer.use_v1
    assert cfg.actor_rollout_ref.rollout.agent.default_agent_loop == "env_agent"
    # the schedule every algorithm shares (GiGPO's scripts)
    assert cfg.data.train_batch_size == 16 and cfg.actor_rollout_ref.rollout.n == 8
    assert cfg.actor_rollout_ref.actor.optim.lr == 1e-6 and cfg.actor_rollout_ref.actor.kl_loss_coef == 0.01
    assert cfg.actor_rollout_ref.actor.kl_loss_type == "low_var_kl" and cfg.algorithm.gamma == 0.95
    assert cfg.trainer.total_training_steps == 150 and cfg.actor_rollout_ref.rollout.val_kwargs.temperature == 0.4
    assert cfg.env.max_steps == {"alfworld": 50, "webshop": 15, "virtualhome": 40}[env]
    assert cfg.data.train_files == f"/data/spa/{env}_train.parquet"
    if estimator == "gae":
        assert cfg.critic.enable
    if reward == "spa":  # overrides after the env name reach the config; SPA_CRITIC=1 adds the critic
        assert cfg.reward.reward_kwargs.clip == 5 and cfg.env.max_turns == 20 and cfg.critic.enable
        assert cfg.reward.reward_kwargs.estimator_path == f"/out/estimator/{env}"
        assert cfg.reward.reward_kwargs.beta == 0.5 and cfg.reward.reward_kwargs.invalid_penalty == 0.0
        # one of the 2 GPUs goes to the progress scorer actor, so TP shrinks to the trainer's single GPU
        assert cfg.reward.reward_kwargs.scorer_num_gpus == 1 and cfg.trainer.n_gpus_per_node == 1
        assert cfg.actor_rollout_ref.rollout.tensor_model_parallel_size == 1
    else:
        assert cfg.reward.reward_kwargs.invalid_penalty == 0.1
    assert config_problems(cfg, check_files=False) == []


@pytest.mark.slow
def test_collect_eval_sft_compose():
    cfg = composed("collect.sh", "alfworld", SFT_MODEL="/ckpt/sft")
    assert cfg.trainer.val_only and cfg.actor_rollout_ref.rollout.val_kwargs.n == 10
    assert cfg.actor_rollout_ref.rollout.val_kwargs.temperature == 1.0
    assert cfg.env.collect_dir == "/out/collect/alfworld" and cfg.data.val_files == "/data/spa/alfworld_train.parquet"
    assert cfg.actor_rollout_ref.model.path == "/ckpt/sft"
    assert config_problems(cfg, check_files=False) == []
    proc = dry_run("eval.sh", "webshop", MODEL="/ckpt/rl")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "-m recipe.spa.eval_table /out/eval/webshop/rl" in proc.stdout
    proc = dry_run("sft.sh", "alfworld")
    assert proc.returncode == 0, proc.stderr[-2000:]
    sft = yaml.safe_load(proc.stdout)
    assert sft["data"]["train_files"] == "/data/spa/alfworld_sft.parquet" and sft["optim"]["lr"] == 2e-5
    assert sft["trainer"]["total_epochs"] == 3 and "hf_model" in sft["checkpoint"]["save_contents"]


def test_non_hydra_steps_print_commands():
    proc = dry_run("train_estimator.sh", "webshop", N_GPUS="1", SFT_MODEL="/ckpt/sft")
    assert proc.returncode == 0 and "-m spa_reward.progress.train --records /out/collect/webshop --model /ckpt/sft" \
        in proc.stdout
    proc = dry_run("prepare_data.sh", "webshop")
    assert proc.returncode == 0 and "-m envs.prepare webshop --output-dir /data/spa" in proc.stdout
    assert "-m envs.expert webshop --output /data/spa/webshop_sft.parquet" in proc.stdout
    assert dry_run("rl_grpo.sh", "nowhere").returncode == 2


def test_validate_config_lists_every_problem(tmp_path):
    cfg = trainer_config("algorithm.reward=spa", "algorithm.adv_estimator=nope", "env.name=mars",
                         "trainer.use_v1=false", f"env.dataset_dir={tmp_path}")
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    msg = str(err.value)
    for needle in ("algorithm.spa.estimator_path", "spa_reward.progress.train", "algorithm.adv_estimator='nope'",
                   "env.name='mars'", "trainer.use_v1=false", "data.train_files", "envs.prepare"):
        assert needle in msg, needle
    cfg = trainer_config("reward.reward_manager.name=naive")
    assert any("disagrees" in p for p in config_problems(cfg, check_files=False))
    (tmp_path / "alfworld_train.parquet").touch()
    (tmp_path / "alfworld_val.parquet").touch()
    validate_config(trainer_config(f"env.dataset_dir={tmp_path}"))  # the default config is fine


def test_eval_table(tmp_path, capsys):
    from recipe.spa.eval_table import main

    rows = [
        {"spa/won": 1.0, "spa/task_score": 1.0, "spa/executable_rate": 1.0, "spa/num_turns": 4, "spa/task_type": "pick"},
        {"spa/won": 0.0, "spa/task_score": 0.5, "spa/executable_rate": 0.5, "spa/num_turns": 8, "spa/task_type": "pick"},
        {"spa/won": 1.0, "spa/task_score": 1.0, "spa/executable_rate": 0.75, "spa/num_turns": 6, "spa/task_type": "heat"},
    ]
    (tmp_path / "0.jsonl").write_text("{}\n".replace("{}", json.dumps({"spa/won": 0.0})))
    (tmp_path / "10.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "10.jsonl" in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:] if line.strip()}
    assert lines["all"] == ["3", "66.7", "83.3", "75.0", "6.0"]
    assert lines["pick"] == ["2", "50.0", "75.0", "75.0", "6.0"] and lines["heat"][1] == "100.0"
