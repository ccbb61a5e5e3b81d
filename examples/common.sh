#!/usr/bin/env bash
# Shared settings and helpers of the spa-rl launch scripts (sourced by examples/*.sh, not run on its own).
# Every variable below can be overridden from the environment, e.g.
#   MODEL_PATH=/models/Qwen2.5-1.5B-Instruct N_GPUS=4 bash examples/rl_spa.sh webshop
# DRY_RUN=1 composes and prints the full config of a verl run (hydra --cfg job) without starting it (no GPU
# needed; the CPU tests use this); for non-hydra steps it prints the command. PRINT_CMD=1 prints the command too.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}

# ---- model, hardware
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-1.5B-Instruct}  # base policy (GiGPO's baselines start here)
RL_INIT=${RL_INIT:-$MODEL_PATH}                       # policy the RL runs start from (SPA-RL: the SFT checkpoint)
N_GPUS=${N_GPUS:-2}
NNODES=${NNODES:-1}
TP=${TP:-2}                                            # vLLM tensor parallel size
ROLLOUT_ENGINE=${ROLLOUT_ENGINE:-vllm}
GPU_MEM_UTIL=${GPU_MEM_UTIL:-0.6}

# ---- data and outputs
DATA_DIR=${DATA_DIR:-$REPO_DIR/data}                   # <env>_{train,val,test}.parquet (envs.prepare), <env>_sft.parquet
SHARED_DATA=${SHARED_DATA:-${SPA_SHARED_DATA:-$REPO_DIR/../shared/data}}  # engine data: alfworld/, webshop/, ...
OUT_DIR=${OUT_DIR:-$REPO_DIR/outputs}
SFT_DIR=${SFT_DIR:-$OUT_DIR/sft}                       # SFT checkpoints: $SFT_DIR/<env>
COLLECT_DIR=${COLLECT_DIR:-$OUT_DIR/collect}           # exploration records: $COLLECT_DIR/<env>
ESTIMATOR_DIR=${ESTIMATOR_DIR:-$OUT_DIR/estimator}     # progress estimators: $ESTIMATOR_DIR/<env>

# ---- RL schedule shared by every algorithm so runs compare (GiGPO's scripts)
TRAIN_TASKS=${TRAIN_TASKS:-16}          # tasks per iteration (data.train_batch_size)
GROUP_N=${GROUP_N:-8}                   # episodes per task (rollout.n)
VAL_TASKS=${VAL_TASKS:-128}             # tasks per validation (data.val_batch_size)
TOTAL_STEPS=${TOTAL_STEPS:-150}         # PPO iterations
LR=${LR:-1e-6}
KL_COEF=${KL_COEF:-0.01}
GAMMA=${GAMMA:-0.95}
VAL_TEMPERATURE=${VAL_TEMPERATURE:-0.4}
TEST_FREQ=${TEST_FREQ:-5}
SAVE_FREQ=${SAVE_FREQ:-50}
MINI_BATCH=${MINI_BATCH:-$TRAIN_TASKS}  # trajectories per PPO mini-batch
MICRO_BATCH_PER_GPU=${MICRO_BATCH_PER_GPU:-1}
MAX_TOKEN_LEN_PER_GPU=${MAX_TOKEN_LEN_PER_GPU:-24576}
INVALID_PENALTY=${INVALID_PENALTY:-0.1} # outcome-reward baselines (GiGPO's invalid_action_penalty_coef)
LOGGER=${LOGGER:-[console]}
EXPERIMENT_SUFFIX=${EXPERIMENT_SUFFIX:-}

DRY_RUN=${DRY_RUN:-0}
PRINT_CMD=${PRINT_CMD:-0}

check_env() {
  case "${1:-}" in
    alfworld|webshop|virtualhome) ;;
    *) echo "usage: $0 <alfworld|webshop|virtualhome> [extra hydra overrides...]" >&2; exit 2 ;;
  esac
}

# engine data folder of an env ("null" lets the adapter pick its default)
env_data_dir() {
  if [[ -d "$SHARED_DATA/$1" ]]; then echo "$SHARED_DATA/$1"; else echo null; fi
}

# run a command, or print it (DRY_RUN=1 for non-hydra steps, PRINT_CMD=1)
run_cmd() {
  if [[ "$PRINT_CMD" == 1 || "$DRY_RUN" == 1 ]]; then printf '%q ' "$@"; echo; fi
  if [[ "$DRY_RUN" != 1 ]]; then "$@"; fi
}

# verl's PPO entry point with the spa-rl config for env $1; the remaining arguments are hydra overrides.
# With DRY_RUN=1 it composes the config (--cfg job) and prints it instead of training.
run_verl() {
  local env=$1; shift
  local cmd=(
    "$PYTHON" -m verl.trainer.main_ppo
    --config-path="$REPO_DIR/recipe/spa/config" --config-name=spa_trainer
    "env=$env"
    "env.dataset_dir=$DATA_DIR"
    "env.env_kwargs.data_dir=$(env_data_dir "$env")"
    "actor_rollout_ref.model.path=$RL_INIT"
    "actor_rollout_ref.rollout.name=$ROLLOUT_ENGINE"
    "actor_rollout_ref.rollout.tensor_model_parallel_size=$TP"
    "actor_rollout_ref.rollout.gpu_memory_utilization=$GPU_MEM_UTIL"
    "actor_rollout_ref.rollout.n=$GROUP_N"
    "actor_rollout_ref.rollout.val_kwargs.temperature=$VAL_TEMPERATURE"
    "actor_rollout_ref.actor.optim.lr=$LR"
    "actor_rollout_ref.actor.ppo_mini_batch_size=$MINI_BATCH"
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=$MICRO_BATCH_PER_GPU"
    "actor_rollout_ref.actor.use_dynamic_bsz=true"
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=$MAX_TOKEN_LEN_PER_GPU"
    "actor_rollout_ref.actor.use_kl_loss=true"
    "actor_rollout_ref.actor.kl_loss_coef=$KL_COEF"
    "actor_rollout_ref.actor.kl_loss_type=low_var_kl"
    "actor_rollout_ref.model.enable_gradient_checkpointing=true"
    "actor_rollout_ref.ref.fsdp_config.param_offload=true"
    "algorithm.gamma=$GAMMA"
    "algorithm.use_kl_in_reward=false"
    "data.train_batch_size=$TRAIN_TASKS"
    "data.val_batch_size=$VAL_TASKS"
    "trainer.n_gpus_per_node=$N_GPUS"
    "trainer.nnodes=$NNODES"
    "trainer.total_training_steps=$TOTAL_STEPS"
    "trainer.total_epochs=$TOTAL_STEPS"
    "trainer.test_freq=$TEST_FREQ"
    "trainer.save_freq=$SAVE_FREQ"
    "trainer.val_before_train=true"
    "trainer.logger=$LOGGER"
    "trainer.default_local_dir=$OUT_DIR/rl/$env"
    "$@"
  )
  if [[ "$DRY_RUN" == 1 ]]; then
    cmd+=(--cfg job)
  fi
  if [[ "$PRINT_CMD" == 1 ]]; then printf '%q ' "${cmd[@]}"; echo; fi
  "${cmd[@]}"
}
