#!/usr/bin/env bash
# Exploration rollouts of the SFT policy for estimator training (SPA-RL: temperature 1.0, 5 episodes per task on
# WebShop, 10 on ALFWorld/VirtualHome). A validation-only verl run over the TRAIN tasks with env.collect_dir on:
# every episode becomes one TrajectoryRecord in $COLLECT_DIR/<env>/*.jsonl.
#   SFT_MODEL=<hf dir> [RUN_NAME=<name>] bash examples/collect.sh <alfworld|webshop|virtualhome> [hydra overrides...]
# Never resumes a trainer checkpoint (trainer.resume_mode=disable); its verl logs go to
# $OUT_DIR/collect_runs/<env>/<RUN_NAME>/ (default RUN_NAME: a slug of the full model path).
source "$(dirname "$0")/common.sh"
check_env "${1:-}"; ENV=$1; shift
case "$ENV" in webshop) default_n=5 ;; *) default_n=10 ;; esac
COLLECT_N=${COLLECT_N:-$default_n}
COLLECT_BATCH=${COLLECT_BATCH:-$VAL_TASKS}  # tasks per batch (all train tasks are played, COLLECT_BATCH at a time)
SFT_MODEL=${SFT_MODEL:-$RL_INIT}
RUN_NAME=${RUN_NAME:-$(model_run_name "$SFT_MODEL")}
RUN_DIR=$OUT_DIR/collect_runs/$ENV/$(slug "$RUN_NAME")
RL_INIT=$SFT_MODEL RUN_DIR=$RUN_DIR run_verl "$ENV" \
  "data.val_files=$DATA_DIR/${ENV}_train.parquet" "data.val_batch_size=$COLLECT_BATCH" data.val_tasks=null \
  "actor_rollout_ref.rollout.val_kwargs.n=$COLLECT_N" actor_rollout_ref.rollout.val_kwargs.temperature=1.0 \
  actor_rollout_ref.rollout.val_kwargs.do_sample=true \
  "env.collect_dir=$COLLECT_DIR/$ENV" \
  trainer.val_only=true trainer.resume_mode=disable "trainer.validation_data_dir=$RUN_DIR/validation" \
  "trainer.default_local_dir=$RUN_DIR/checkpoints" "trainer.experiment_name=${ENV}_collect_$(slug "$RUN_NAME")" "$@"
