"""Every launch script's final command composes (DRY_RUN=1: recipe.spa.check --print-config, hydra's compose of the
same overrides main_ppo gets), and the composed configs pass the start-up checks, so the scripts cannot rot. Run
folders, resume modes, the PPO discount, GPU splits, bad names, value ranges, a clean SIGTERM, prepare_data's limits.
Most script cases run with PYTHON=echo: the scripts' bash runs for real and the overrides it would hand to
recipe.spa.check are read back (no verl import per case); a few compose through hydra for real."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from omegaconf import OmegaConf

from hypothesis import given, settings, strategies as st

from recipe.spa import check
from spa_reward.config_check import ConfigError, config_problems, gpu_split_problems, validate_config, value_problems
from tests.recipe.helpers import REPO, trainer_config


def dry_run(script: str, *args: str, **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, "DATA_DIR": "/data/spa", "OUT_DIR": "/out",
           "PLATFORM": "gpu", **env_vars}
    return subprocess.run(["bash", str(REPO / "examples" / script), *args], capture_output=True, text=True,
                          env=env, timeout=600)


def composed(script: str, *args: str, **env_vars: str):
    proc = dry_run(script, *args, **env_vars)
    assert proc.returncode == 0, f"{script} {args}: {proc.stderr[-3000:]}"
    return OmegaConf.create(yaml.safe_load(proc.stdout))


def check_args(script: str, *args: str, **env_vars: str) -> tuple[list[str], subprocess.CompletedProcess]:
    """The arguments the script hands to ``python -m recipe.spa.check`` (PYTHON=echo: the bash runs for real)."""
    proc = dry_run(script, *args, **{"PYTHON": "echo", **env_vars})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("-m recipe.spa.check ")]
    return (lines[0].split()[2:] if lines else []), proc


def overrides(script: str, *args: str, **env_vars: str) -> dict[str, str]:
    """key -> value of the script's hydra overrides (the last one wins, as in hydra)."""
    argv, proc = check_args(script, *args, **env_vars)
    assert proc.returncode == 0 and argv, f"{script} {args}: {proc.stderr[-2000:]}"
    return dict(a.lstrip("+").split("=", 1) for a in argv if "=" in a)


# each algorithm once and each env once (a composition costs ~10-20 s of verl imports on a small CPU box)
RL = [
    ("rl_grpo.sh", "webshop", "outcome", "grpo"),
    ("rl_gigpo.sh", "virtualhome", "outcome", "gigpo"),
    ("rl_ppo.sh", "webshop", "outcome", "spa"),
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
    # the run owns its folder: checkpoints, validation dumps, verl's file log
    run_dir = f"/out/rl/{env}/{cfg.trainer.experiment_name}"
    assert cfg.trainer.experiment_name.startswith(f"{env}_{script[3:-3]}_{reward}_{estimator}")
    assert cfg.trainer.default_local_dir == f"{run_dir}/checkpoints" and cfg.trainer.resume_mode == "auto"
    assert cfg.trainer.validation_data_dir == f"{run_dir}/validation" and "file" in cfg.trainer.logger
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH.startswith(f"{run_dir}/logs/metrics_")
    if script == "rl_ppo.sh":  # turn-level GAE: the critic form of the spa estimator on the outcome reward
        assert cfg.critic.enable and cfg.algorithm.lam == 1.0
    if reward == "spa":  # overrides after the env name reach the config; SPA_CRITIC=1 adds the critic
        assert cfg.reward.reward_kwargs.clip == 5 and cfg.env.max_turns == 20 and cfg.critic.enable
        assert cfg.reward.reward_kwargs.estimator_path == f"/out/estimator/{env}"
        # our defaults (README "What makes a learned step reward work"): prefix objective, penalty-only grounding
        assert cfg.reward.reward_kwargs.beta == 0.1 and cfg.reward.reward_kwargs.invalid_penalty == 0.0
        assert cfg.reward.reward_kwargs.grounding == "penalty" and cfg.algorithm.spa.objective == "prefix"
        # one of the 2 GPUs goes to the progress scorer actor, so TP shrinks to the trainer's single GPU
        assert cfg.reward.reward_kwargs.scorer_num_gpus == 1 and cfg.trainer.n_gpus_per_node == 1
        assert cfg.actor_rollout_ref.rollout.tensor_model_parallel_size == 1
    else:
        assert cfg.reward.reward_kwargs.invalid_penalty == 0.1
    assert config_problems(cfg, check_files=False) == []


STEPAGENT_MODES = ("match", "implicit", "irl")


def test_rl_stepagent_modes_name_their_folders_and_split_gpus():
    """rl_stepagent.sh: each mode gets its own run folder (reward slug stepagent-<mode>), the PRM modes a GPU of
    their own, the expert file from DATA_DIR; ADV / EXPERT / STEPAGENT_CRITIC reach the overrides."""
    names = set()
    for mode in STEPAGENT_MODES:
        o = overrides("rl_stepagent.sh", "alfworld", STEPAGENT_MODE=mode, N_GPUS="3", TP="2")
        assert o["algorithm.reward"] == "stepagent" and o["algorithm.stepagent.mode"] == mode
        assert o["algorithm.stepagent.expert_path"] == "/data/spa/alfworld_sft.parquet"
        assert o["algorithm.adv_estimator"] == "spa" and o["algorithm.stepagent.prefix"] == "uniform"
        assert o["trainer.experiment_name"] == f"alfworld_stepagent_stepagent-{mode}_spa"
        assert o["trainer.default_local_dir"] == f"/out/rl/alfworld/alfworld_stepagent_stepagent-{mode}_spa/checkpoints"
        names.add(o["trainer.experiment_name"])
        if mode == "match":  # no PRM: every GPU trains
            assert o["trainer.n_gpus_per_node"] == "3" and "algorithm.stepagent.num_gpus" not in o
        else:
            assert o["trainer.n_gpus_per_node"] == "2" and o["algorithm.stepagent.num_gpus"] == "1"
    assert len(names) == 3
    assert "algorithm.stepagent.mode" not in overrides("rl_grpo.sh", "alfworld")  # others unchanged
    o = overrides("rl_stepagent.sh", "webshop", ADV="grpo", EXPERT="/e/x.parquet", PREFIX="reverse")
    assert o["algorithm.adv_estimator"] == "grpo" and o["algorithm.stepagent.expert_path"] == "/e/x.parquet"
    assert o["algorithm.stepagent.prefix"] == "reverse" and o["trainer.experiment_name"].endswith("stepagent-match_grpo")
    o = overrides("rl_stepagent.sh", "webshop", STEPAGENT_CRITIC="1")
    assert o["critic.enable"] == "true" and o["trainer.experiment_name"].endswith("_spa_critic")
    for bad, msg in ((dict(STEPAGENT_MODE="imitate"), "STEPAGENT_MODE=imitate"), (dict(ADV="gae"), "ADV=gae"),
                     (dict(STEPAGENT_CRITIC="1", ADV="grpo"), "needs ADV=spa"),
                     (dict(STEPAGENT_MODE="irl", N_GPUS="1"), "leaves no GPU")):
        _, proc = check_args("rl_stepagent.sh", "webshop", **bad)
        assert proc.returncode == 2 and msg in proc.stderr


@pytest.mark.parametrize("mode", [pytest.param(m, marks=() if m == "irl" else pytest.mark.slow)
                                  for m in STEPAGENT_MODES])
def test_rl_stepagent_composes(mode):
    cfg = composed("rl_stepagent.sh", "virtualhome", "algorithm.stepagent.irl_clip=3", STEPAGENT_MODE=mode)
    a = cfg.algorithm
    assert a.reward == "stepagent" and a.stepagent.mode == mode and a.adv_estimator == "spa"
    assert cfg.reward.reward_manager.name == "stepagent" and cfg.trainer.v1.trainer_mode == "spa"
    assert a.stepagent.expert_path == "/data/spa/virtualhome_sft.parquet" and a.stepagent.irl_clip == 3
    assert cfg.data.train_batch_size == 16 and cfg.actor_rollout_ref.rollout.n == 8  # the shared schedule
    assert cfg.trainer.experiment_name == f"virtualhome_stepagent_stepagent-{mode}_spa"
    assert config_problems(cfg, check_files=False) == []


def test_run_folders_resume_and_ppo_discount():
    runs = {
        "grpo": overrides("rl_grpo.sh", "webshop"),
        "gigpo": overrides("rl_gigpo.sh", "webshop"),
        "ppo": overrides("rl_ppo.sh", "webshop"),
        "spa": overrides("rl_spa.sh", "webshop", ESTIMATOR="/est/a/webshop"),
        "spa_other_estimator": overrides("rl_spa.sh", "webshop", ESTIMATOR="/est/b/webshop"),
        "spa_critic": overrides("rl_spa.sh", "webshop", ESTIMATOR="/est/a/webshop", SPA_CRITIC="1"),
        "grpo_named": overrides("rl_grpo.sh", "webshop", RUN_NAME="try 2"),
        "grpo_suffix": overrides("rl_grpo.sh", "webshop", EXPERIMENT_SUFFIX="_old"),
    }
    names = {k: o["trainer.experiment_name"] for k, o in runs.items()}
    assert len(set(names.values())) == len(names), names  # every algorithm / estimator / suffix: its own run
    assert names["grpo"] == "webshop_grpo_outcome_grpo" and names["ppo"] == "webshop_ppo_outcome_spa_critic"
    assert names["spa"].startswith("webshop_spa_spa_spa_est-webshop-")
    assert names["grpo_named"] == "webshop_grpo_outcome_grpo_try-2"
    assert names["grpo_suffix"] == "webshop_grpo_outcome_grpo_old"
    for key, o in runs.items():
        run_dir = f"/out/rl/webshop/{names[key]}"
        assert o["trainer.default_local_dir"] == f"{run_dir}/checkpoints", key
        assert o["trainer.validation_data_dir"] == f"{run_dir}/validation" and o["trainer.resume_mode"] == "auto"
        assert o["ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH"].startswith(f"{run_dir}/logs/")
    # PPO: GAE over turns with the shared per-turn gamma (not verl's per-token gae with gamma 0.95)
    ppo = runs["ppo"]
    assert ppo["algorithm.adv_estimator"] == "spa" and ppo["critic.enable"] == "true"
    assert ppo["algorithm.reward"] == "outcome" and ppo["algorithm.gamma"] == "0.95" and ppo["algorithm.lam"] == "1.0"
    token = overrides("rl_ppo.sh", "webshop", PPO_GAE="token")
    assert token["algorithm.adv_estimator"] == "gae" and token["algorithm.gamma"] == "1.0"
    assert token["trainer.experiment_name"] == "webshop_ppo_outcome_gae_critic"
    assert overrides("rl_grpo.sh", "webshop", RESUME="disable")["trainer.resume_mode"] == "disable"
    for script, env in (("rl_grpo.sh", {"RESUME": "latest"}), ("rl_ppo.sh", {"PPO_GAE": "tokens"})):
        _, proc = check_args(script, "webshop", **env)
        assert proc.returncode == 2 and "use" in proc.stderr, proc.stderr


def test_run_verl_keeps_its_plain_form(tmp_path):
    """A new script can still call ``run_verl "$ENV" <overrides>``: the run folder follows its experiment name."""
    script = tmp_path / "rl_new.sh"
    script.write_text(f'source "{REPO}/examples/common.sh"\nENV=$1; shift\n'
                      'run_verl "$ENV" algorithm.reward=outcome "trainer.experiment_name=${ENV}_new" "$@"\n')
    proc = subprocess.run(["bash", str(script), "webshop"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DRY_RUN": "1", "PYTHON": "echo", "OUT_DIR": "/out"})
    o = dict(a.lstrip("+").split("=", 1) for a in proc.stdout.split()[3:] if "=" in a)
    assert o["trainer.default_local_dir"] == "/out/rl/webshop/webshop_new/checkpoints"
    assert o["trainer.resume_mode"] == "auto" and o["trainer.validation_data_dir"].startswith("/out/rl/webshop/webshop_new/")


def test_eval_and_collect_never_resume_and_name_by_model(tmp_path):
    a = overrides("eval.sh", "alfworld", MODEL="/ckpt/a/global_step_9/actor/huggingface")
    b = overrides("eval.sh", "alfworld", MODEL="/ckpt/b/global_step_9/actor/huggingface")
    assert a["trainer.resume_mode"] == "disable" and a["trainer.val_only"] == "true"
    assert a["trainer.validation_data_dir"] == "/out/eval/alfworld/ckpt-a-global_step_9-actor-huggingface/validation"
    assert a["trainer.validation_data_dir"] != b["trainer.validation_data_dir"]
    assert a["trainer.default_local_dir"].startswith("/out/eval/alfworld/")
    assert a["data.val_files"] == "/data/spa/alfworld_val.parquet" and a["data.val_batch_size"] == "128"
    named = overrides("eval.sh", "alfworld", MODEL="/ckpt/a", RUN_NAME="sft")
    assert named["trainer.validation_data_dir"] == "/out/eval/alfworld/sft/validation"
    # the unseen split when the test parquet exists; the table says which split it was
    (tmp_path / "alfworld_test.parquet").touch()
    argv, proc = check_args("eval.sh", "alfworld", MODEL="/ckpt/a", DATA_DIR=str(tmp_path))
    unseen = dict(x.split("=", 1) for x in argv if "=" in x)
    assert unseen["data.val_files"] == f"{tmp_path}/alfworld_test.parquet"
    table = [line for line in proc.stdout.splitlines() if "recipe.spa.eval_table" in line]
    assert "valid_unseen" in table[0] and "alfworld_test.parquet" in table[0]
    _, proc = check_args("eval.sh", "alfworld", MODEL="/ckpt/a")
    assert "valid_seen" in [line for line in proc.stdout.splitlines() if "eval_table" in line][0]
    c = overrides("collect.sh", "webshop", SFT_MODEL="/ckpt/sft")
    assert c["trainer.resume_mode"] == "disable" and c["trainer.val_only"] == "true"
    assert c["data.val_batch_size"] == "128" and c["actor_rollout_ref.rollout.val_kwargs.n"] == "5"
    assert c["env.collect_dir"] == "/out/collect/webshop" and c["trainer.default_local_dir"].startswith("/out/collect_runs/")


def test_check_refuses_gpu_splits_with_the_valid_choices(capsys):
    argv, _ = check_args("rl_spa.sh", "webshop", N_GPUS="4")
    assert "trainer.n_gpus_per_node=3" in argv and "actor_rollout_ref.rollout.tensor_model_parallel_size=2" in argv
    assert check.main(["--no-files", *argv]) == 1
    err = capsys.readouterr().err
    assert "N_GPUS in [3, 5, 9, 17]" in err and "SCORER_GPUS in [2]" in err and "valid TP" in err
    argv, _ = check_args("rl_spa.sh", "webshop", N_GPUS="4", SCORER_GPUS="2")
    assert check.main(["--no-files", *argv]) == 0
    assert "settings that must be equal" in capsys.readouterr().err


def test_check_names_bad_values_and_writes_settings(tmp_path, capsys):
    argv, _ = check_args("rl_grpo.sh", "alfworld")
    assert check.main(["--no-files", *argv, "algorithm.reward=spa"]) == 1
    assert "algorithm.spa.estimator_path" in capsys.readouterr().err
    assert check.main(["--no-files", *argv, "env=mars"]) == 2
    assert "mars" in capsys.readouterr().err
    assert check.main(["--no-files", "--require-gpus", "100000", *argv]) == 1
    err = capsys.readouterr().err
    assert "needs 100000 GPUs" in err and "DRY_RUN=1" in err and "PLATFORM=cpu" in err
    out = tmp_path / "run" / "run_settings.json"
    assert check.main(["--no-files", "--settings-out", str(out), *argv]) == 0
    saved = json.loads(out.read_text())
    assert set(check.COMPARED) <= set(saved) and saved["history"] == "full" and saved["group_n"] == 8
    assert saved["train_tasks"] == 16 and saved["kl"]["kl_loss_coef"] == 0.01 and saved["total_steps"] == 150
    assert saved["advantage"].startswith("GRPO") and saved["gpus"] == 2 and saved["max_steps"] == 50
    # the same run again is fine (a resume); other settings in the same folder are refused
    assert check.main(["--no-files", "--settings-out", str(out), *argv]) == 0
    capsys.readouterr()
    assert check.main(["--no-files", "--settings-out", str(out), *argv, "actor_rollout_ref.actor.optim.lr=3e-6"]) == 1
    err = capsys.readouterr().err
    assert "already holds a run with other settings (lr: 1e-06 -> 3e-06)" in err and "RUN_NAME" in err
    assert json.loads(out.read_text())["lr"] == 1e-6


def test_dry_run_refuses_bad_names():
    proc = dry_run("rl_grpo.sh", "alfworld", "algorithm.adv_estimator=gipgo", "algorithm.reward=spq",
                   "env.prompt_style=reactt")
    assert proc.returncode == 1 and proc.stdout == ""
    for bad in ("algorithm.adv_estimator='gipgo'", "algorithm.reward='spq'", "env.prompt_style='reactt'"):
        assert bad in proc.stderr, proc.stderr[-2000:]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_stops_the_launch_and_its_process_group(tmp_path):
    fake = tmp_path / "python"  # passes the check, then stands in for main_ppo with a child of its own
    fake.write_text("#!/bin/bash\n"
                    "if [[ \"$1 $2\" == \"-m recipe.spa.check\" ]]; then exit 0; fi\n"
                    "echo $$ > \"$PIDFILE.tmp\"; sleep 300 & echo $! >> \"$PIDFILE.tmp\"; "
                    "mv \"$PIDFILE.tmp\" \"$PIDFILE\"; wait\n")
    fake.chmod(0o755)
    pidfile = tmp_path / "pids"
    # PATH without ray: this test must never stop anybody's Ray
    env = dict(os.environ, PYTHON=str(fake), PIDFILE=str(pidfile), OUT_DIR=str(tmp_path / "out"),
               PATH="/usr/bin:/bin")
    proc = subprocess.Popen(["bash", str(REPO / "examples" / "rl_grpo.sh"), "webshop"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if pidfile.exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert pidfile.exists(), proc.communicate(timeout=10)
    pids = [int(x) for x in pidfile.read_text().split()]
    assert all(_alive(p) for p in pids)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "TERM: stopping the launch" in err
    for _ in range(200):
        if not any(_alive(p) for p in pids):
            break
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


@pytest.mark.slow
def test_real_launch_without_gpus_stops_at_once(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "examples" / "rl_grpo.sh"), "webshop"], capture_output=True, text=True,
                          env=dict(os.environ, PYTHON=sys.executable, N_GPUS="64", TP="1", PLATFORM="gpu",
                                   OUT_DIR=str(tmp_path)), timeout=600)
    assert proc.returncode == 1 and "torch sees" in proc.stderr and "PLATFORM=cpu" in proc.stderr
    assert not (tmp_path / "rl" / "webshop" / "webshop_grpo_outcome_grpo" / "logs").exists()


@pytest.mark.slow
def test_dry_run_n_gpus_4_spa_refuses():
    proc = dry_run("rl_spa.sh", "webshop", N_GPUS="4")
    assert proc.returncode == 1 and "SCORER_GPUS in [2]" in proc.stderr


@pytest.mark.slow
def test_collect_eval_sft_compose():
    cfg = composed("collect.sh", "alfworld", SFT_MODEL="/ckpt/sft")
    assert cfg.trainer.val_only and cfg.actor_rollout_ref.rollout.val_kwargs.n == 10
    assert cfg.actor_rollout_ref.rollout.val_kwargs.temperature == 1.0 and cfg.trainer.resume_mode == "disable"
    assert cfg.env.collect_dir == "/out/collect/alfworld" and cfg.data.val_files == "/data/spa/alfworld_train.parquet"
    assert cfg.actor_rollout_ref.model.path == "/ckpt/sft"
    assert config_problems(cfg, check_files=False) == []
    proc = dry_run("eval.sh", "webshop", MODEL="/ckpt/rl")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "-m recipe.spa.eval_table /out/eval/webshop/ckpt-rl/validation --split" in proc.stdout
    proc = dry_run("sft.sh", "alfworld")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("not yet there (DRY_RUN does not need it, a real launch does): /data/spa/alfworld_sft.parquet (the expert "
            "demonstrations): make it with `bash examples/prepare_data.sh alfworld`") in proc.stderr
    sft = yaml.safe_load(proc.stdout)
    assert sft["data"]["train_files"] == "/data/spa/alfworld_sft.parquet" and sft["optim"]["lr"] == 2e-5
    assert sft["trainer"]["total_epochs"] == 3 and "hf_model" in sft["checkpoint"]["save_contents"]


def test_non_hydra_steps_print_commands():
    proc = dry_run("train_estimator.sh", "webshop", N_GPUS="1", SFT_MODEL="/ckpt/sft")
    assert proc.returncode == 0 and "-m spa_reward.progress.train --records /out/collect/webshop --model /ckpt/sft" \
        in proc.stdout
    assert "/out/collect/webshop (the exploration records): make it with `bash examples/collect.sh webshop`" \
        in proc.stderr
    proc = dry_run("prepare_data.sh", "webshop")
    assert proc.returncode == 0 and "-m envs.prepare webshop --output-dir /data/spa" in proc.stdout
    assert "-m envs.expert webshop --output /data/spa/webshop_sft.parquet" in proc.stdout
    # limits reach both steps, each in the form it accepts (envs.prepare --max-train, envs.expert --max-tasks)
    proc = dry_run("prepare_data.sh", "alfworld", "--max-tasks", "4", "--workers", "2", "--seed", "3",
                   SPA_DATA="/nowhere")
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == 2, proc.stderr
    assert lines[0].split()[1:] == ["-m", "envs.prepare", "alfworld", "--output-dir", "/data/spa", "--max-train", "4",
                                    "--seed", "3"]
    assert lines[1].split()[1:] == ["-m", "envs.expert", "alfworld", "--output", "/data/spa/alfworld_sft.parquet",
                                    "--style", "react", "--max-tasks", "4", "--workers", "2", "--seed", "3"]
    proc = dry_run("prepare_data.sh", "alfworld", "--max-task", "4")
    assert proc.returncode == 2 and "--max-task" in proc.stderr
    assert dry_run("rl_grpo.sh", "nowhere").returncode == 2


def test_cpu_prepare_keeps_the_small_set_and_the_whole_pipeline_composes(tmp_path):
    """PLATFORM=cpu: prepare_data.sh (and so pipeline_spa.sh) prepares CPU_TASKS tasks per split, as a CPU launch
    does for itself, instead of the full set with hours of expert planning; --max-tasks still wins."""
    cpu = dict(PLATFORM="cpu", SPA_DATA="/nowhere", DATA_DIR=str(tmp_path / "data"), OUT_DIR=str(tmp_path / "out"))
    lines = dry_run("prepare_data.sh", "alfworld", **cpu).stdout.splitlines()
    assert lines[0].split()[-2:] == ["--max-tasks", "8"] and lines[1].split()[-2:] == ["--max-tasks", "8"]
    lines = dry_run("prepare_data.sh", "alfworld", "--max-tasks", "3", **cpu, CPU_TASKS="5").stdout.splitlines()
    assert "--max-tasks 5" not in " ".join(lines) and lines[0].split()[-2:] == ["--max-train", "3"]
    proc = dry_run("pipeline_spa.sh", "webshop", **cpu)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [line.split()[1:4] for line in proc.stdout.splitlines() if line.startswith(sys.executable)]
    assert ["-m", "envs.prepare", "webshop"] in steps and ["-m", "spa_reward.progress.train", "--records"] in steps
    assert "-m envs.expert webshop" in proc.stdout and "--max-tasks 8" in proc.stdout
    assert "verl.trainer.main_ppo" in proc.stdout or "adv_estimator" in proc.stdout  # the RL and eval launches composed


def test_data_root_and_deprecated_names(tmp_path):
    (tmp_path / "webshop").mkdir()
    argv, proc = check_args("rl_grpo.sh", "webshop", SPA_DATA=str(tmp_path))
    assert f"env.env_kwargs.data_dir={tmp_path}/webshop" in argv and "deprecated" not in proc.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("SPA_DATA", "SPA_SHARED_DATA", "SHARED_DATA")}
    for old in ("SHARED_DATA", "SPA_SHARED_DATA"):
        proc = subprocess.run(["bash", str(REPO / "examples" / "rl_grpo.sh"), "webshop"], capture_output=True,
                              text=True, env=dict(env, DRY_RUN="1", PYTHON="echo", **{old: str(tmp_path)}))
        assert f"env.env_kwargs.data_dir={tmp_path}/webshop" in proc.stdout
        assert f"{old} is deprecated, use SPA_DATA" in proc.stderr
    argv, _ = check_args("rl_grpo.sh", "alfworld", SPA_DATA=str(tmp_path))  # no alfworld/: the adapter resolves it
    assert "env.env_kwargs.data_dir=null" in argv


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


def test_dry_run_lists_what_is_not_there_yet(tmp_path, capsys):
    """--no-files (DRY_RUN): a missing estimator, expert file or parquet is not a problem (exit 0) but is listed as
    not yet there, each with the command that makes it; a real check stops on the same list; what exists is left
    out."""
    (tmp_path / "webshop_test.parquet").touch()
    spa = ["env=webshop", f"env.dataset_dir={tmp_path}", "algorithm.reward=spa", "algorithm.adv_estimator=spa",
           f"algorithm.spa.estimator_path={tmp_path}/est"]
    stepagent = ["env=webshop", f"env.dataset_dir={tmp_path}", "algorithm.reward=stepagent",
                 f"algorithm.stepagent.expert_path={tmp_path}/webshop_sft.parquet"]
    wanted = {"spa": ("algorithm.spa.estimator_path=", "examples/collect.sh webshop",
                      "examples/train_estimator.sh webshop"),
              "stepagent": ("algorithm.stepagent.expert_path=", "examples/prepare_data.sh webshop")}
    for name, args in (("spa", spa), ("stepagent", stepagent)):
        assert check.main(["--no-files", *args]) == 0
        err = capsys.readouterr().err
        assert "[spa-rl] not yet there (2;" in err and "settings that must be equal" in err
        listed = err.split("not yet there")[1].split("[spa-rl] settings")[0]
        assert all(needle in listed for needle in wanted[name]), listed
        assert f"data.train_files: '{tmp_path}/webshop_train.parquet' does not exist" in listed
        assert "envs.prepare webshop" in listed and "webshop_test.parquet" not in listed  # it exists
        assert check.main(args) == 1
        assert "2 problems, nothing started" in capsys.readouterr().err
    (tmp_path / "est").mkdir()
    (tmp_path / "webshop_train.parquet").touch()
    assert check.main(["--no-files", *spa]) == 0 and "not yet there" not in capsys.readouterr().err


def test_value_problems_name_key_and_value():
    cfg = trainer_config("algorithm.spa.alpha=nan", "algorithm.spa.beta=-1", "algorithm.invalid_penalty=inf",
                         "algorithm.spa.clip=0", "algorithm.spa.mode=mean", "algorithm.gigpo.mode=std",
                         "algorithm.gamma=0", "algorithm.lam=1.5", "algorithm.spa.outcome_coef=-inf",
                         "env.pool.step_timeout=0", "env.pool.reset_timeout=inf",
                         "algorithm.max_env_failure_share=1.5")
    problems = config_problems(cfg, check_files=False)
    for needle in ("algorithm.spa.alpha=nan", "algorithm.spa.beta=-1", "algorithm.invalid_penalty=inf",
                   "algorithm.spa.clip=0", "algorithm.spa.mode='mean'", "algorithm.gigpo.mode='std'",
                   "algorithm.gamma=0", "algorithm.lam=1.5", "algorithm.spa.outcome_coef=-inf",
                   "env.pool.step_timeout=0.0", "env.pool.reset_timeout=inf", "algorithm.max_env_failure_share=1.5"):
        assert sum(needle in p for p in problems) == 1, (needle, problems)
    assert len(problems) == 12
    fine = {"algorithm": {"spa": {"alpha": 0.0, "beta": 2, "clip": 5.0, "mode": "mean_std_norm"},
                          "gigpo": {"mode": "mean_norm"}, "invalid_penalty": 0, "gamma": 1.0, "lam": 0.0}}
    assert value_problems(fine) == []
    assert value_problems({"algorithm": {"gamma": 1.01}}) == ["algorithm.gamma=1.01 must be in (0, 1] (the per-turn "
                                                              "discount)"]


def _split_cfg(world, tp, mini, n, critic_mini=None, sp=1):
    cfg = {"trainer": {"n_gpus_per_node": world, "nnodes": 1},
           "actor_rollout_ref": {"rollout": {"tensor_model_parallel_size": tp, "n": n},
                                 "actor": {"ppo_mini_batch_size": mini, "ulysses_sequence_parallel_size": sp}}}
    if critic_mini is not None:
        cfg["critic"] = {"enable": True, "ppo_mini_batch_size": critic_mini}
    return cfg


@settings(max_examples=200, deadline=None)
@given(world=st.integers(1, 16), tp=st.sampled_from([1, 2, 4, 8]), mini=st.integers(1, 64), n=st.integers(1, 16))
def test_gpu_split_matches_verls_asserts(world, tp, mini, n):
    """No problem exactly when verl's own asserts pass: world % tp (rollout mesh) and mini * n % dp (mini-batch)."""
    problems = gpu_split_problems(_split_cfg(world, tp, mini, n))
    assert (problems == []) == (world % tp == 0 and (mini * n) % world == 0)
    for p in problems:  # every suggested GPU count is one verl accepts
        if "valid trainer GPU counts: [" in p:
            gpus = json.loads(p.split("valid trainer GPU counts: ")[1].split("]")[0] + "]")
            assert gpus and all(g % tp == 0 and (mini * n) % g == 0 for g in gpus)


def test_gpu_split_critic_and_sequence_parallel():
    assert gpu_split_problems(_split_cfg(2, 2, 16, 8, critic_mini=16)) == []
    (problem,) = gpu_split_problems(_split_cfg(2, 2, 16, 1, critic_mini=3))
    assert "critic's PPO mini-batch critic.ppo_mini_batch_size=3" in problem
    assert gpu_split_problems(_split_cfg(4, 2, 2, 1, sp=2)) == []  # dp = 4 / 2 = 2 divides 2
    assert "data-parallel size 4" in gpu_split_problems(_split_cfg(4, 2, 2, 1))[0]


def test_eval_table(tmp_path, capsys):
    from recipe.spa.eval_table import main

    rows = [
        {"spa/won": 1.0, "spa/task_score": 1.0, "spa/executable_rate": 1.0, "spa/num_turns": 4, "spa/task_type": "pick"},
        {"spa/won": 0.0, "spa/task_score": 0.5, "spa/executable_rate": 0.5, "spa/num_turns": 8, "spa/task_type": "pick"},
        {"spa/won": 1.0, "spa/task_score": 1.0, "spa/executable_rate": 0.75, "spa/num_turns": 6, "spa/task_type": "heat"},
        # the env failed (e.g. a step timeout): counted, and left out of the rates (verl's val-core scores it 0)
        {"spa/won": 0.0, "spa/task_score": 0.0, "spa/executable_rate": 0.0, "spa/num_turns": 1, "spa/task_type": "heat",
         "spa/env_failed": 1.0},
    ]
    (tmp_path / "0.jsonl").write_text("{}\n".replace("{}", json.dumps({"spa/won": 0.0})))
    (tmp_path / "10.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "10.jsonl" in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:] if line.strip()}
    assert out.splitlines()[1].split() == ["group", "episodes", "env_fail", "success", "score", "grounding", "turns"]
    assert lines["all"] == ["4", "1", "66.7", "83.3", "75.0", "6.0"]
    assert lines["pick"] == ["2", "0", "50.0", "75.0", "75.0", "6.0"]
    assert lines["heat"] == ["2", "1", "100.0", "100.0", "75.0", "6.0"]


def test_history_setting_reaches_the_config_and_the_run_name():
    full = overrides("rl_gigpo.sh", "webshop")
    assert full["env.history"] == "full" and "_h" not in full["trainer.experiment_name"]
    window = overrides("rl_gigpo.sh", "webshop", HISTORY="2")
    assert window["env.history"] == "window" and window["env.history_length"] == "2"
    assert window["data.max_response_length"] == "512"
    # its own run folder: a windowed run never resumes the full-history run's checkpoints
    assert window["trainer.experiment_name"].endswith("_h2")
    assert window["trainer.default_local_dir"] != full["trainer.default_local_dir"]
    _, proc = check_args("rl_grpo.sh", "webshop", HISTORY="two")
    assert proc.returncode == 2 and "HISTORY=two" in proc.stderr


def test_run_settings_carry_the_history_layout():
    from recipe.spa import check

    assert check.run_settings(trainer_config())["history"] == "full"
    window = check.run_settings(trainer_config("env.history=window", "env.history_length=3"))
    assert window["history"] == "window:3" and "history" in check.COMPARED  # compare refuses mixing layouts


def test_eval_table_refuses_empty_and_torn_dumps(tmp_path, capsys):
    from recipe.spa.eval_table import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "5.jsonl").write_text("\n")
    assert main([str(tmp_path / "empty")]) == 1  # was NaN with exit 0
    assert "5.jsonl: no episodes" in capsys.readouterr().err
    good = json.dumps({"spa/won": 1.0, "spa/task_score": 1.0}).encode()
    torn = json.dumps({"spa/won": 0.0, "spa/task_type": "pick \u00e9tag\u00e8re"}, ensure_ascii=False).encode()[:-6]
    dump = tmp_path / "torn"
    dump.mkdir()
    (dump / "3.jsonl").write_bytes(good + b"\n" + torn + b"\n" + good + b"\n")
    assert main([str(dump)]) == 1
    assert "3.jsonl:2:" in capsys.readouterr().err  # file and line named
    assert main([str(dump), "--skip-invalid"]) == 0
    out = capsys.readouterr().out
    assert "1 invalid lines skipped" in out and out.splitlines()[2].split()[:4] == ["all", "2", "0", "100.0"]
