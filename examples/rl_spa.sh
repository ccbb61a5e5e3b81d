#!/usr/bin/env bash
# SPA-RL with our defaults (chosen on benchmarks/bench_learning.py, README "What makes a learned step reward work"):
# per-turn reward r_t = c_t - SPA_BETA * (1 - g_t), c_t from a progress estimator trained with the prefix objective
# (c_t = V(after step t) - V(before step t)), turn-level advantage (estimator spa, critic-free).
#   bash examples/rl_spa.sh <alfworld|webshop|virtualhome> [hydra overrides...]
# Needs a trained estimator: ESTIMATOR=<dir> (default $ESTIMATOR_DIR/<env>; see examples/train_estimator.sh), trained
# with the same SPA_OBJECTIVE (a run whose objective differs from the estimator's is refused at start-up).
# SPA_OBJECTIVE=sum SPA_GROUNDING=bonus SPA_BETA=0.5 SPA_CRITIC=1 is the paper's setting (it collapses on the
# benchmark: the per-step bonus is worth more than finishing; the config check warns).
# SPA_ONLINE=1 keeps training the estimator on each RL batch (replay window of the last batches).
# SPA_CRITIC=1 adds a critic (the paper's PPO setting): the spa estimator then runs turn-level GAE on its values.
# The progress scorer is a Ray actor outside verl's resource pool, which claims every GPU it is given: the trainer
# gets N_GPUS - SCORER_GPUS GPUs per node and the scorer the rest (SCORER_GPUS x NNODES; 2 or more: sharded over one
# rank per GPU, data-parallel scoring / training; SCORER_GPUS=0 scores on CPU, only for tiny models).
source "$(dirname "$0")/common.sh"
check_env "${1:-}"; ENV=$1; shift
SCORER_GPUS=${SCORER_GPUS:-1}
split_side_gpus SCORER_GPUS "a whole number of GPUs (0 = CPU)"
ESTIMATOR=${ESTIMATOR:-$ESTIMATOR_DIR/$ENV}
SPA_OBJECTIVE=${SPA_OBJECTIVE:-prefix}  # sum (the paper's MSE(sum_t c_t, R)) | prefix; = train_estimator.sh's
SPA_GROUNDING=${SPA_GROUNDING:-penalty}  # penalty: -beta on non-executed actions only | bonus: +beta per executed one
SPA_BETA=${SPA_BETA:-0.1}
if [[ "$PLATFORM" == cpu && "$DRY_RUN" != 1 && ! -e "$ESTIMATOR" ]]; then
  # a CPU run on a fresh machine makes its own estimator (minutes with the tiny model; on GPUs these are stages of
  # their own that you run on purpose: collect.sh, train_estimator.sh)
  echo "[spa-rl] PLATFORM=cpu: no estimator at $ESTIMATOR yet: collect.sh, then train_estimator.sh" >&2
  bash "$(dirname "$0")/collect.sh" "$ENV"
  SPA_OBJECTIVE=$SPA_OBJECTIVE bash "$(dirname "$0")/train_estimator.sh" "$ENV" --output "$ESTIMATOR"
fi
SPA_INVALID_PENALTY=${SPA_INVALID_PENALTY:-0.0}  # the grounding term already handles non-executed actions
SPA_CRITIC=${SPA_CRITIC:-0}
SPA_ONLINE=${SPA_ONLINE:-0}  # 1: the estimator keeps training on every RL batch (algorithm.spa.online.*)
online=()
if [[ "$SPA_ONLINE" == 1 ]]; then online=(algorithm.spa.online.enable=true); fi
critic=()
if [[ "$SPA_CRITIC" == 1 ]]; then critic_overrides; critic=("${CRITIC_ARGS[@]}"); fi
run_rl "$ENV" spa \
  algorithm.reward=spa algorithm.adv_estimator=spa "algorithm.spa.estimator_path=$ESTIMATOR" \
  "algorithm.spa.objective=$SPA_OBJECTIVE" algorithm.spa.alpha=1.0 "algorithm.spa.beta=$SPA_BETA" \
  "algorithm.spa.grounding=$SPA_GROUNDING" "algorithm.invalid_penalty=$SPA_INVALID_PENALTY" \
  "algorithm.spa.scorer_num_gpus=$SIDE_GPUS" \
  ${critic[@]+"${critic[@]}"} ${online[@]+"${online[@]}"} "$@"
