#!/usr/bin/env bash
# GiGPO: outcome reward + episode-level and anchor-state step-level group advantages (spa_reward.advantage).
#   bash examples/rl_gigpo.sh <alfworld|webshop|virtualhome> [hydra overrides...]
source "$(dirname "$0")/common.sh"
check_env "${1:-}"; ENV=$1; shift
GIGPO_MODE=${GIGPO_MODE:-mean_norm}  # GiGPO's ALFWorld script: mean_std_norm; WebShop: mean_norm
run_rl "$ENV" gigpo \
  algorithm.reward=outcome algorithm.adv_estimator=gigpo "algorithm.invalid_penalty=$INVALID_PENALTY" \
  algorithm.gigpo.step_advantage_w=1.0 "algorithm.gigpo.mode=$GIGPO_MODE" "$@"
