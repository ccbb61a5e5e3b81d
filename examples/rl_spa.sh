#!/usr/bin/env bash
# SPA-RL: per-turn reward r_t = c_t + 0.5 * g_t from the progress estimator, turn-level advantage (estimator spa).
#   bash examples/rl_spa.sh <alfworld|webshop|virtualhome> [hydra overrides...]
# Needs a trained estimator: ESTIMATOR=<dir> (default $ESTIMATOR_DIR/<env>; see examples/train_estimator.sh).
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
if [[ "$PLATFORM" == cpu && "$DRY_RUN" != 1 && ! -e "$ESTIMATOR" ]]; then
  # a CPU run on a fresh machine makes its own estimator (minutes with the tiny model; on GPUs these are stages of
  # their own that you run on purpose: collect.sh, train_estimator.sh)
  echo "[spa-rl] PLATFORM=cpu: no estimator at $ESTIMATOR yet: collect.sh, then train_estimator.sh" >&2
  bash "$(dirname "$0")/collect.sh" "$ENV"
  bash "$(dirname "$0")/train_estimator.sh" "$ENV" --output "$ESTIMATOR"
fi
SPA_INVALID_PENALTY=${SPA_INVALID_PENALTY:-0.0}  # SPA's grounding term beta * g_t already rewards valid actions
SPA_CRITIC=${SPA_CRITIC:-0}
SPA_ONLINE=${SPA_ONLINE:-0}  # 1: the estimator keeps training on every RL batch (algorithm.spa.online.*)
online=()
if [[ "$SPA_ONLINE" == 1 ]]; then online=(algorithm.spa.online.enable=true); fi
critic=()
if [[ "$SPA_CRITIC" == 1 ]]; then critic_overrides; critic=("${CRITIC_ARGS[@]}"); fi
run_rl "$ENV" spa \
  algorithm.reward=spa algorithm.adv_estimator=spa "algorithm.spa.estimator_path=$ESTIMATOR" \
  algorithm.spa.alpha=1.0 algorithm.spa.beta=0.5 "algorithm.invalid_penalty=$SPA_INVALID_PENALTY" \
  "algorithm.spa.scorer_num_gpus=$SIDE_GPUS" \
  ${critic[@]+"${critic[@]}"} ${online[@]+"${online[@]}"} "$@"
