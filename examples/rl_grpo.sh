#!/usr/bin/env bash
# GRPO baseline: outcome reward (R = 10 * success on the last turn, -0.1 per invalid action), group-normalised.
#   bash examples/rl_grpo.sh <alfworld|webshop|virtualhome> [hydra overrides...]
source "$(dirname "$0")/common.sh"
check_env "${1:-}"; ENV=$1; shift
run_rl "$ENV" grpo \
  algorithm.reward=outcome algorithm.adv_estimator=grpo "algorithm.invalid_penalty=$INVALID_PENALTY" "$@"
