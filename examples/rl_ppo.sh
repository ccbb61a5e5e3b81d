#!/usr/bin/env bash
# PPO baseline: outcome reward, critic (same model), verl's multi-turn GAE.
#   bash examples/rl_ppo.sh <alfworld|webshop|virtualhome> [hydra overrides...]
source "$(dirname "$0")/common.sh"
check_env "${1:-}"; ENV=$1; shift
CRITIC_LR=${CRITIC_LR:-1e-5}
run_verl "$ENV" \
  algorithm.reward=outcome algorithm.adv_estimator=gae "algorithm.invalid_penalty=$INVALID_PENALTY" \
  algorithm.lam=1.0 critic.enable=true "critic.model.path=$RL_INIT" "critic.optim.lr=$CRITIC_LR" \
  "critic.ppo_micro_batch_size_per_gpu=$MICRO_BATCH_PER_GPU" critic.use_dynamic_bsz=true \
  "critic.ppo_max_token_len_per_gpu=$MAX_TOKEN_LEN_PER_GPU" \
  "trainer.experiment_name=${ENV}_ppo$EXPERIMENT_SUFFIX" "$@"
