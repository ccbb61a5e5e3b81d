#!/usr/bin/env bash
# Task parquet files (one row per task, agent_name=env_agent) and expert SFT data for one environment:
#   $DATA_DIR/<env>_{train,val,test}.parquet   (python -m envs.prepare)
#   $DATA_DIR/<env>_sft.parquet                (python -m envs.expert: won expert episodes as chats)
#   bash examples/prepare_data.sh <alfworld|webshop|virtualhome> [--max-tasks N] [--workers N] [--seed N]
#                                 [--splits train,val,test] [--one-shot] [--no-system-prompt]
# Limits reach the step that accepts them: --max-tasks N keeps N train tasks in both (envs.prepare --max-train N,
# envs.expert --max-tasks N; same --seed), --workers only envs.expert (its replay processes), --splits only
# envs.prepare, --one-shot / --no-system-prompt only envs.expert. Engine data: $SPA_DATA/<env> when it exists.
# PLATFORM=cpu without --max-tasks: CPU_TASKS (8) tasks in every split, the set a CPU run prepares for itself.
source "$(dirname "$0")/common.sh"
_SPA_PREPARING=1  # PLATFORM=cpu: this is the preparation (check_env does not prepare its small set first)
check_env "${1:-}"; ENV=$1; shift
STYLE=${STYLE:-react}
prepare_args=() expert_args=() limited=0
while (( $# )); do
  case "$1" in
    --max-tasks) prepare_args+=(--max-train "$2"); expert_args+=(--max-tasks "$2"); limited=1; shift 2 ;;
    --max-tasks=*) prepare_args+=("--max-train=${1#*=}"); expert_args+=("--max-tasks=${1#*=}"); limited=1; shift ;;
    --seed) prepare_args+=(--seed "$2"); expert_args+=(--seed "$2"); shift 2 ;;
    --seed=*) prepare_args+=("$1"); expert_args+=("$1"); shift ;;
    --workers) expert_args+=(--workers "$2"); shift 2 ;;
    --workers=*) expert_args+=("$1"); shift ;;
    --splits) prepare_args+=(--splits "$2"); shift 2 ;;
    --splits=*) prepare_args+=("$1"); shift ;;
    --one-shot|--no-system-prompt) expert_args+=("$1"); shift ;;
    *) echo "prepare_data.sh: unknown argument '$1' (accepted: --max-tasks N, --workers N, --seed N," \
            "--splits LIST, --one-shot, --no-system-prompt)" >&2; exit 2 ;;
  esac
done
if [[ "$PLATFORM" == cpu && "$limited" == 0 ]]; then
  # the small set of a CPU run (as cpu_data prepares it): CPU_TASKS tasks in every split, not hours of expert planning
  echo "[spa-rl] PLATFORM=cpu: $CPU_TASKS tasks per split (CPU_TASKS; --max-tasks N overrides it)" >&2
  prepare_args+=(--max-tasks "$CPU_TASKS"); expert_args+=(--max-tasks "$CPU_TASKS")
fi
data_dir=()
if [[ "$(env_data_dir "$ENV")" != null ]]; then data_dir=(--data-dir "$(env_data_dir "$ENV")"); fi
run_cmd "$PYTHON" -m envs.prepare "$ENV" --output-dir "$DATA_DIR" ${data_dir[@]+"${data_dir[@]}"} \
  ${prepare_args[@]+"${prepare_args[@]}"}
run_cmd "$PYTHON" -m envs.expert "$ENV" --output "$DATA_DIR/${ENV}_sft.parquet" --style "$STYLE" \
  ${data_dir[@]+"${data_dir[@]}"} ${expert_args[@]+"${expert_args[@]}"}
