#!/usr/bin/env bash
# Exploration rollouts of the SFT policy for estimator training (SPA-RL: temperature 1.0, 5 episodes per task on
# WebShop, 10 on ALFWorld/VirtualHome). A validation-only verl run over the TRAIN tasks with env.collect_dir on:
# every episode becomes one TrajectoryRecord in $COLLECT_DIR/<env>/*.jsonl.
#   SFT_MODEL=<hf dir> bash examples/collect.sh <alfworld|webshop|virtualhome> [hydra overrides...]
source "$(dirname "$0")/common.sh"
check_env "${1:-}"; ENV=$1; shift
case "$ENV" in webshop) default_n=5 ;; *) default_n=10 ;; esac
COLLECT_N=${COLLECT_N:-$default_n}
SFT_MODEL=${SFT_MODEL:-$RL_INIT}
RL_INIT=$SFT_MODEL run_verl "$ENV" \
  "data.val_files=$DATA_DIR/${ENV}_train.parquet" data.val_batch_size=null \
  "actor_rollout_ref.rollout.val_kwargs.n=$COLLECT_N" actor_rollout_ref.rollout.val_kwargs.temperature=1.0 \
  actor_rollout_ref.rollout.val_kwargs.do_sample=true \
  "env.collect_dir=$COLLECT_DIR/$ENV" \
  trainer.val_only=true "trainer.experiment_name=${ENV}_collect" "$@"
