"""PLATFORM=cpu in the launch scripts: the overrides and environment a CPU run composes (DRY_RUN, no verl run; the
e2e tests run them for real), the logical GPU split, the tiny default model, and that a GPU launch gets none of it."""

from __future__ import annotations

import subprocess

import pytest

from tests.recipe.helpers import REPO
from tests.recipe.test_examples import composed, dry_run, overrides

CPU = {"PLATFORM": "cpu"}


def test_cpu_run_composes_the_cpu_overrides_and_validates():
    cfg = composed("rl_grpo.sh", "webshop", **CPU)
    assert cfg.trainer.device == "cpu" and cfg.trainer.n_gpus_per_node == 1
    assert cfg.actor_rollout_ref.actor.strategy == "fsdp2" and cfg.actor_rollout_ref.ref.strategy == "fsdp2"
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    rollout = cfg.actor_rollout_ref.rollout
    assert rollout.enable_sleep_mode is False and rollout.free_cache_engine is False and rollout.enforce_eager
    assert rollout.tensor_model_parallel_size == 1 and rollout.max_model_len == 2048 + 2560
    ray_init = cfg.ray_kwargs.ray_init
    assert ray_init.num_gpus == 1 and ray_init.address == "local" and ray_init._temp_dir.startswith("/tmp/spa_ray.")
    # the smoke-test schedule and the tiny model built under the output root
    assert cfg.data.train_batch_size == 2 and rollout.n == 2 and cfg.trainer.total_training_steps == 2
    assert cfg.env.max_steps == 3 and cfg.env.max_tokens_per_turn == 64 and cfg.env.pool.num_workers == 2
    assert cfg.actor_rollout_ref.model.path == "/out/tiny_model/webshop"


def test_user_settings_win_over_the_cpu_defaults():
    o = overrides("rl_grpo.sh", "alfworld", "env.max_steps=7", **CPU, MODEL_PATH="/models/m", TOTAL_STEPS="5",
                  GROUP_N="4")
    assert o["env.max_steps"] == "7" and o["actor_rollout_ref.model.path"] == "/models/m"
    assert o["trainer.total_training_steps"] == "5" and o["actor_rollout_ref.rollout.n"] == "4"


@pytest.mark.parametrize("script,extra,gpus", [
    ("rl_spa.sh", {}, 2),  # 1 trainer + 1 scorer
    ("rl_istar.sh", {"PRM_GPUS": "2"}, 3),
    ("rl_stepagent.sh", {}, 1),  # match: no PRM
    ("rl_stepagent.sh", {"STEPAGENT_MODE": "irl"}, 2),
])
def test_side_gpus_are_logical_gpus_beside_one_trainer_gpu(script, extra, gpus):
    o = overrides(script, "webshop", **CPU, **extra)
    assert o["trainer.n_gpus_per_node"] == "1" and o["ray_kwargs.ray_init.num_gpus"] == str(gpus)


def test_gpu_launch_has_no_cpu_override():
    o = overrides("rl_grpo.sh", "webshop", PLATFORM="gpu")
    assert not any(k.startswith("ray_kwargs.ray_init.num_gpus") or k == "trainer.device" for k in o)
    assert o["actor_rollout_ref.model.path"] == "Qwen/Qwen2.5-1.5B-Instruct"


def test_unknown_platform_is_refused_with_the_choices():
    proc = dry_run("rl_grpo.sh", "webshop", PLATFORM="tpu")
    assert proc.returncode == 2 and "PLATFORM=tpu: use gpu or cpu" in proc.stderr


def test_cpu_environment_selects_verls_cpu_platform():
    code = ("source examples/common.sh webshop; "
            "echo $VERL_PLATFORM $VERL_ENGINE_DEVICE $VLLM_CPU_KVCACHE_SPACE $OMP_NUM_THREADS $RAY_worker_niceness")
    env = {"PLATFORM": "cpu", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(["bash", "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["cpu", "cuda", "1", "1", "0"], out.stderr
    env["PLATFORM"] = "gpu"
    out = subprocess.run(["bash", "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == [], out.stderr
