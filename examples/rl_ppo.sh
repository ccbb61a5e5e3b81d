#!/usr/bin/env bash
# PPO baseline: outcome reward, critic (same model), GAE over TURNS with the same per-turn gamma as the others.
#   bash examples/rl_ppo.sh <alfworld|webshop|virtualhome> [hydra overrides...]
# The advantage is the spa estimator's critic form with the outcome reward (algorithm.adv_estimator=spa,
# critic.enable=true, algorithm.reward=outcome): delta_k = r_k + gamma V_{k+1} - V_k over assistant turns, so
# gamma=0.95 discounts once per turn as in GiGPO. verl's own `gae` discounts once per TOKEN (observation tokens
# included): with gamma=0.95 the final reward is worth ~0.13 one 40-token turn back, which cripples the baseline;
# with gamma=1 it is undiscounted, unlike the other runs. PPO_GAE=token runs verl's gae anyway, with gamma=1
# lam=1 (undiscounted Monte-Carlo returns minus V; the comparison table then says so).
source "$(dirname "$0")/common.sh"
check_env "${1:-}"; ENV=$1; shift
PPO_GAE=${PPO_GAE:-turn}
case "$PPO_GAE" in
  turn) adv=(algorithm.adv_estimator=spa algorithm.lam=1.0) ;;
  token) adv=(algorithm.adv_estimator=gae algorithm.gamma=1.0 algorithm.lam=1.0) ;;
  *) echo "PPO_GAE=$PPO_GAE: use turn (turn-level GAE, per-turn gamma) or token (verl's gae, gamma=1 lam=1)" >&2; exit 2 ;;
esac
critic_overrides
run_rl "$ENV" ppo \
  algorithm.reward=outcome "${adv[@]}" "algorithm.invalid_penalty=$INVALID_PENALTY" "${CRITIC_ARGS[@]}" "$@"
